"""Meta-train RL³ (or RL², RL³-coarse) with PPO, in the layout of TorchRL's recipes.

    python recipes/ppo_rl3.py                                   # small default: RL³ on random MDPs, minutes on CPU
    python recipes/ppo_rl3.py algo=rl2 iterations=100           # any key of rl3_torchrl/configs/ppo.yaml
    python recipes/ppo_rl3.py config=paper_random_mdp device=cuda
    python recipes/ppo_rl3.py config=paper_gridworld algo=rl3_coarse
    python recipes/ppo_rl3.py checkpoint.resume=true            # continue a killed run from its checkpoint
    python recipes/ppo_rl3.py collector.backend=multiprocess collector.workers=2   # 2 collection processes
    python recipes/ppo_rl3.py collector.backend=ray collector.workers=2 collector.ray.address=auto  # a Ray cluster

Logs (CSV by default) and ``checkpoint.pt`` go to ``output_dir`` (default ``runs/<env>_<algo>_s<seed>``). Scaling out
(worker processes, a Ray cluster, a GPU): docs/scaling.rst.
"""
import sys

from omegaconf import OmegaConf

from rl3_torchrl.evaluation import evaluate_baseline
from rl3_torchrl.plotting import plot_training_curves
from rl3_torchrl.training import Trainer, load_config, named_configs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("named configs:", ", ".join(named_configs()))
        print(OmegaConf.to_yaml(load_config()))
        return None
    cfg = load_config(argv)
    print(OmegaConf.to_yaml(cfg))
    trainer = Trainer(cfg)
    history = trainer.train()
    evaluated = [row for row in history if "eval_return" in row]
    if evaluated:
        last = evaluated[-1]
        print(f"first training batch return: {history[0]['return']:.2f}")
        print(f"on {cfg.eval.num_tasks} held-out tasks (return, oracle-normalised):")
        print(f"  {cfg.algo} after {trainer.iteration} iterations: {last['eval_return']:.2f} ± "
              f"{last['eval_return_stderr']:.2f} ({last['eval_normalized_return']:.3f})")
        # what was learned: the same tasks played by a random policy and by greedy action on RL³'s own Q features
        for name in ("random", "greedy_q"):
            base = evaluate_baseline(name, cfg.env, horizon=trainer.horizon, num_tasks=cfg.eval.num_tasks,
                                     seed=cfg.seed, device=cfg.device)
            print(f"  {name}: {base['return_mean']:.2f} ± {base['return_stderr']:.2f} "
                  f"({base['normalized_mean']:.3f})")
    if cfg.logger.backend == "csv" and history:
        figure = trainer.output_dir / "training_curves.png"
        plot_training_curves({cfg.algo: trainer.log_dir()}).savefig(figure, dpi=100)
        print(f"training curves: {figure}")
    print(f"logs and checkpoint in {trainer.output_dir}")
    return history


if __name__ == "__main__":
    main()
