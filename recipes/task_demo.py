"""Build a batch of random-MDP tasks, roll out a random policy, and print its return next to the exact oracle.

    python recipes/task_demo.py --preset ood --num-envs 256 --horizon 100
"""
import argparse

import torch

from rl3_torchrl.envs import RandomMDPEnv, oracle_return, random_policy_return


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=sorted(RandomMDPEnv.PRESETS))
    parser.add_argument("--num-envs", type=int, default=256)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    env = RandomMDPEnv.from_preset(args.preset, args.num_envs, horizon=args.horizon, seed=args.seed, split="test")
    rng = torch.Generator().manual_seed(args.seed)
    env.reset()
    returns = torch.zeros(args.num_envs)
    for _ in range(args.horizon):
        returns += env.advance_tasks(torch.randint(env.n_actions, env.batch_size, generator=rng))[1]
    stderr = returns.std() / args.num_envs**0.5
    print(f"{args.num_envs} '{args.preset}' tasks, H = {args.horizon}")
    print(f"random policy, sampled : {returns.mean():8.2f} ± {stderr:.2f}")
    print(f"random policy, exact   : {random_policy_return(env).mean():8.2f}")
    print(f"oracle (knows the task): {oracle_return(env).mean():8.2f}")


if __name__ == "__main__":
    main()
