"""Meta-train RL³ (or RL², RL³-coarse) with PPO: the loop of TorchRL's sota-implementations/ppo, in one file.

    python recipes/ppo_rl3.py                                   # small default: RL³ on random MDPs, minutes on CPU
    python recipes/ppo_rl3.py algo=rl2 iterations=100           # any key of rl3_torchrl/configs/ppo.yaml
    python recipes/ppo_rl3.py config=paper_random_mdp device=cuda
    python recipes/ppo_rl3.py config=paper_gridworld algo=rl3_coarse
    python recipes/ppo_rl3.py checkpoint.resume=true            # continue a killed run from its checkpoint
    python recipes/ppo_rl3.py collector.backend=multiprocess collector.workers=2   # 2 collection processes
    python recipes/ppo_rl3.py collector.backend=async ppo.decoupled=true  # collect during the update; decoupled PPO
    python recipes/ppo_rl3.py collector.backend=ray collector.workers=2 collector.ray.address=auto  # a Ray cluster
    python recipes/ppo_rl3.py config=paper_random_mdp --help    # the merged configuration, with its comments

Logs (CSV by default), the resolved ``config.yaml`` and ``checkpoint.pt`` go to ``output_dir`` (default
``runs/<env>_<algo>_s<seed>``). Scaling out (worker processes, a Ray cluster, a GPU): docs/scaling.rst.

What lives where. This file owns the loop: collect one meta-episode per env, compute advantages, run the PPO epochs
(:func:`update`, the part to edit to change the update: the loss, the minibatches, the KL stop, the optimiser
step), then end the iteration (weights to the collector, logging, evaluation, checkpoint). The library builds the
parts from the configuration and keeps what must not be re-implemented per recipe:
:class:`~rl3_torchrl.training.Trainer` (env, transforms, actor-critic, ``ClipPPOLoss`` or with ``ppo.decoupled`` its
subclass :class:`~rl3_torchrl.objectives.DecoupledClipPPOLoss`, stock ``GAE``, the optimiser
with critic-only weight decay, the minibatch buffer; ``run()`` = run lock, exact resume, collector;
``end_iteration()`` = logs with ``frames``, evaluation, atomic checkpoints), :class:`~rl3_torchrl.training.ActorKLStop`
(the paper's actor-only KL stop) and the non-finite guards. ``Trainer.train()`` is this same loop with
``Trainer.update`` (the library's copy of :func:`update`, for callers without this file such as the study runner);
tests check that the two give bit-identical weights.
"""
import sys

import torch
from omegaconf import OmegaConf

from rl3_torchrl.evaluation import evaluate_baseline
from rl3_torchrl.plotting import plot_training_curves
from rl3_torchrl.config import commented_config, load_config, named_configs
from rl3_torchrl.training import ActorKLStop, Trainer


def update(trainer: Trainer, data) -> dict:
    """One iteration of PPO on ``data`` (``[num_envs, H]``, advantages computed); returns the statistics to log."""
    cfg = trainer.cfg.ppo
    loss_module, optimizer, buffer = trainer.loss, trainer.optimizer, trainer.buffer
    loss_module.entropy_coeff.fill_(trainer.entropy_coeff(trainer.iteration))  # linear decay (ppo.entropy_schedule)
    buffer.empty()
    buffer.extend(data)  # minibatches of whole meta-episodes: the critic and the actor see each from its start
    kl_stop = ActorKLStop(cfg.target_kl)  # the actor stops for this iteration above target_kl; the critic goes on
    outs, actor_updates, skipped = [], 0, 0
    with trainer.minibatch_backward.intra_op():  # ppo.update_threads > 1: the loop on the update's threads
        for epoch in range(cfg.epochs):
            for minibatch, batch in enumerate(buffer):
                optimizer.zero_grad(set_to_none=True)
                # the losses and gradients, on ppo.update_threads threads (the critic's alone once the actor stopped)
                out, loss = trainer.minibatch_backward(batch, kl_stop)
                grad_norm = torch.nn.utils.clip_grad_norm_(loss_module.parameters(), cfg.max_grad_norm)
                # a non-finite loss or gradient raises NonFiniteError (nothing of the iteration is written), or is
                # skipped with ppo.on_nonfinite=skip
                where = f"epoch {epoch + 1}, minibatch {minibatch + 1}"
                if not trainer.step_is_finite(out, loss, grad_norm, where):
                    skipped += 1
                    continue
                actor_updates += kl_stop.active
                optimizer.step()
                outs.append(out.detach())
    return trainer.summarize(outs, actor_updates=actor_updates, skipped=skipped)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        print("named configs:", ", ".join(named_configs()))
        print(commented_config([a for a in argv if a not in ("-h", "--help")]))
        return None
    cfg = load_config(argv)
    print(OmegaConf.to_yaml(cfg))
    trainer = Trainer(cfg)  # env + transforms, actor-critic, ClipPPOLoss, GAE, optimiser, buffer: from cfg

    history = []
    with trainer.run() as batches:  # run lock, resume from checkpoint.pt, logger, collector
        for data in batches:  # one meta-episode per env: [num_envs, H]
            trainer.advantages(data)  # stock GAE(critic, shifted=True) on reward × ppo.reward_scale; ppo.decoupled:
            # also the actions' log-probs under the weights the update starts from (the proximal policy)
            stats = update(trainer, data)
            history.append(trainer.end_iteration(data, stats))  # weights to the collector, log, eval, checkpoint

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
