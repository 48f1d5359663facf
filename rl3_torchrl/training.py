"""PPO meta-training of RL² and RL³ with stock TorchRL parts.

One iteration collects one meta-episode per env with a :class:`~torchrl.collectors.Collector` (the actor's step
path, KV cache inside the module), computes values with the critic's window path and advantages with
:class:`~torchrl.objectives.value.GAE`, then runs :class:`~torchrl.objectives.ClipPPOLoss` for several epochs on
minibatches of whole meta-episodes. Collection runs in this process, in several worker processes, on a Ray
cluster, or in one worker process overlapped with the update (``collector.*`` keys, :mod:`rl3_torchrl.collectors`);
the batch is always ``[num_envs, H]``. As in the
paper, the actor stops updating for the rest of an iteration once the approximate KL to the behaviour policy exceeds
``ppo.target_kl``, while the critic keeps training; the entropy bonus can decay linearly to zero; the critic alone
has weight decay. ``ppo.reward_scale`` multiplies the rewards that GAE and the critic see (e.g. 0.01 on gridworlds,
whose meta-episode returns reach the thousands); logged and evaluated returns stay unscaled.

The configuration (:mod:`rl3_torchrl.config`, whose functions this module re-exports) is an OmegaConf tree;
:func:`train` runs it.

Who owns the loop. ``recipes/ppo_rl3.py`` does, in the layout of TorchRL's sota-implementations: ``with
trainer.run() as batches: for data in batches:`` advantages, its own ``update`` (the PPO epochs written out), then
:meth:`Trainer.end_iteration`. What must not be re-implemented per recipe stays here, one helper for both callers:
building the parts from the configuration, the run lock, exact resume and the output folder (:meth:`Trainer.run`),
the weights sent to the collector, logging with ``frames``, evaluation and atomic checkpoints
(:meth:`Trainer.end_iteration`), the paper's actor-only KL stop (:class:`ActorKLStop`), critic-only weight decay
(:func:`make_optimizer`) and the non-finite guards (:meth:`Trainer.step_is_finite`, :meth:`Trainer.summarize`).
:meth:`Trainer.train` is the same loop with :meth:`Trainer.update`, for callers without the recipe (the study
runner, the tests); the recipe's ``update`` repeats only its ten-line loop skeleton, which is the part a user
changes, and a test checks that the two give bit-identical weights. A run is therefore changed without a library
edit (change ``update`` in a copy of the recipe), and a library caller still gets a whole run from one call. The
alternatives were worse: a ``Trainer`` with hooks for every step hides the loop the issue asks to show, and a recipe
that re-implements resume, locking and logging would duplicate the fault-tested parts.

What a run guarantees: a run killed at any moment resumes (``checkpoint.resume=true``) to the same logs and weights
as an uninterrupted run; a non-finite loss, gradient, weight, policy output or reward stops it with
:class:`NonFiniteError` before anything of that iteration is written (or, with ``ppo.on_nonfinite=skip``, skips
the minibatch); only one process writes into an ``output_dir`` at a time (:class:`~rl3_torchrl.checkpoint.RunLock`).
"""
from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl._utils import timeit
from torchrl.data import LazyTensorStorage, ReplayBuffer, SamplerWithoutReplacement
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE
from torchrl.record.loggers import get_logger
from tqdm.auto import tqdm

from rl3_torchrl._validation import check_choice, check_float, check_int
from rl3_torchrl.config import (  # noqa: F401  (re-exported: the study runner and older callers import them here)
    COMPILE_MODES,
    CONFIG_DIR,
    MAX_REWARD_SCALE,
    flat_config,
    load_config,
    named_configs,
    unflatten_config,
    validate_config,
    save_config,
)
from rl3_torchrl.checkpoint import (
    CheckpointError,
    RunLock,
    check_config,
    keep_checkpoint,
    load_checkpoint,
    save_checkpoint,
    temporary_files,
)
from rl3_torchrl.collectors import MetaEnvFactory, fold_workers, make_collector, shutdown_collector, worker_seed
from rl3_torchrl.minibatch_backward import MinibatchBackward, critic_loss
from rl3_torchrl.modules import INPUT_KEYS, make_actor_critic
from rl3_torchrl.modules.transformer import MetaCausalTransformer, MetaTransformerModule
from rl3_torchrl.objectives import PROXIMAL_LOG_PROB_KEY, DecoupledClipPPOLoss
from rl3_torchrl.tasks import ALGORITHMS, TASKS, make_meta_env, task_family

CHECKPOINT_NAME = "checkpoint.pt"
#: The best checkpoint by held-out return, with ``checkpoint.keep_best=true``.
BEST_CHECKPOINT_NAME = "checkpoint_best.pt"
#: The resolved configuration every run writes into its ``output_dir``.
CONFIG_NAME = "config.yaml"
#: The rewards GAE and the critic see: ``("next", "reward")`` times ``ppo.reward_scale``.
SCALED_REWARD_KEY = "scaled_reward"
# Keys that may change when a run is resumed; everything else must match the checkpoint.
# The collection, compilation and attention-kernel settings may change too (e.g. resume a run on a cluster): they do not
# change the model.
# The paths may change too: a moved or copied run folder resumes.
RESUMABLE_KEYS = (
    "iterations",
    "output_dir",
    "logger.exp_name",
    "checkpoint.every",
    "checkpoint.resume",
    "checkpoint.overwrite",
    "checkpoint.keep_last",
    "checkpoint.keep_best",
    "logger.backend",
    "eval.every",
    "progress",
    "collector.backend",
    "collector.workers",
    "collector.threads_per_worker",
    "collector.ray.address",
    "collector.ray.num_cpus_per_worker",
    "collector.ray.num_gpus_per_worker",
    "compile.enabled",
    "compile.backend",
    "compile.mode",
    "model.attention",
)


class Trainer:
    """Builds every part of a PPO meta-training run from a configuration, and runs it.

    Args:
        cfg (DictConfig): from :func:`load_config`.

    Examples:
        >>> import tempfile
        >>> cfg = load_config(["horizon=8", "num_envs=4", "iterations=2", "ppo.minibatch_episodes=2",
        ...                    "model.d_model=16", "model.hidden_sizes=[16]", "model.ffn_dim=16", "model.num_layers=1",
        ...                    "eval.every=0", "progress=false", f"output_dir={tempfile.mkdtemp()}"])
        >>> history = Trainer(cfg).train()
        >>> len(history), sorted(history[0])[:3]
        (2, ['actor_updates', 'clip_fraction', 'entropy'])
    """

    def __init__(self, cfg: DictConfig):
        validate_config(cfg)
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_path = self.output_dir / CHECKPOINT_NAME
        self.best_checkpoint_path = self.output_dir / BEST_CHECKPOINT_NAME
        self._check_output_dir()
        factory = MetaEnvFactory(
            cfg.env,
            cfg.algo,
            cfg.num_envs,
            horizon=cfg.horizon,
            seed=cfg.seed,
            device=cfg.device,
            prev_observation=cfg.model.prev_observation,
        )
        self.env = factory()
        self.horizon = self.env.base_env.horizon
        self.actor, self.critic = actor_critic_from_config(self.env, cfg, self.device)
        if cfg.compile.enabled:
            for module in (*self.actor.modules(), *self.critic.modules()):
                if isinstance(module, MetaCausalTransformer):
                    module.compile_window(backend=cfg.compile.backend, mode=cfg.compile.mode)
        ppo = cfg.ppo
        self.loss = (DecoupledClipPPOLoss if ppo.decoupled else ClipPPOLoss)(
            self.actor,
            self.critic,
            clip_epsilon=ppo.clip_epsilon,
            entropy_coeff=ppo.entropy_coeff,
            critic_coeff=ppo.critic_coeff,
            loss_critic_type=ppo.loss_critic_type,
            normalize_advantage=ppo.normalize_advantage,
            functional=False,  # the modules' own parameters: the same losses, without swapping them in per call
            log_explained_variance=False,  # per time step across a minibatch's episodes: see explained_variance
        )
        self.minibatch_backward = MinibatchBackward(self.loss, threads=ppo.update_threads)
        # the stock call: one causal pass of the critic over each meta-episode and its last next step (shifted=True)
        self.gae = GAE(gamma=ppo.gamma, lmbda=ppo.lmbda, value_network=self.critic, shifted=True, device=self.device)
        self.gae.set_keys(reward=SCALED_REWARD_KEY)
        self.optimizer = make_optimizer(
            self.actor,
            self.critic,
            lr=ppo.lr,
            eps=ppo.adam_eps,
            critic_weight_decay=ppo.critic_weight_decay,
            fused=ppo.fused_optimizer,
        )
        self.buffer = ReplayBuffer(
            storage=LazyTensorStorage(cfg.num_envs, device=self.device),
            sampler=SamplerWithoutReplacement(),
            batch_size=ppo.minibatch_episodes,
        )
        self.frames_per_batch = cfg.num_envs * self.horizon
        self.iteration = 0
        self.best_eval_return = -math.inf  # of this run's evaluations, for checkpoint.keep_best
        self.logger = None
        self._collector = self._bar = None

    # ------------------------------------------------------------------ parts
    def entropy_coeff(self, iteration: int) -> float:
        """The entropy bonus of an iteration (linear decay to 0 at the last one, or constant)."""
        c = self.cfg.ppo.entropy_coeff
        if self.cfg.ppo.entropy_schedule == "linear":
            c *= 1 - iteration / self.cfg.iterations
        return c

    def env_factories(self) -> list[MetaEnvFactory]:
        """One env constructor per collection worker, each with its own seed.

        The seed is :func:`~rl3_torchrl.collectors.worker_seed` of ``seed``, the worker index and the iteration the
        collector starts at; each worker steps ``num_envs / workers`` envs.
        """
        cfg, workers = self.cfg, self.cfg.collector.workers
        return [
            MetaEnvFactory(
                cfg.env,
                cfg.algo,
                cfg.num_envs // workers,
                horizon=self.horizon,
                seed=worker_seed(cfg.seed, w, self.iteration),
                device=str(self.device),
                num_threads=cfg.collector.threads_per_worker,
                prev_observation=cfg.model.prev_observation,
            )
            for w in range(workers)
        ]

    def _make_collector(self, iterations: int):
        collector_cfg = self.cfg.collector
        sizes = dict(
            frames_per_batch=self.frames_per_batch, total_frames=iterations * self.frames_per_batch, device=self.device
        )
        if collector_cfg.backend == "single":
            return make_collector("single", None, self.actor, env=self.env, **sizes)
        ray_cfg = collector_cfg.ray
        remote = {"num_cpus": ray_cfg.num_cpus_per_worker}
        if ray_cfg.num_gpus_per_worker:
            remote["num_gpus"] = ray_cfg.num_gpus_per_worker
        rng = torch.get_rng_state()  # the trainer's stream (minibatch order) must not depend on the backend's setup
        try:
            collector = make_collector(
                collector_cfg.backend,
                self.env_factories(),
                self.actor,
                ray_init_config={"address": ray_cfg.address, "include_dashboard": False},
                ray_remote_config=remote,
                **sizes,
            )
        finally:
            torch.set_rng_state(rng)
        if collector_cfg.backend != "async":  # async copies the trainer's weights itself, between batches
            collector.update_policy_weights_(self.actor)  # the workers start from the trainer's weights
        return collector

    def _make_logger(self, state: dict | None):
        backend = self.cfg.logger.backend
        if not backend:
            return None
        log_dir = str(self.output_dir / "logs")
        try:
            return get_logger(backend, logger_name=log_dir, experiment_name=self.cfg.logger.exp_name)
        except ImportError as err:
            raise ImportError(
                f"logger.backend={backend!r} needs its package: pip install 'rl3_torchrl[loggers]' "
                f"(or pass logger.backend=csv): {err}"
            ) from err

    def log_dir(self) -> Path:
        """Where the CSV logger writes its ``scalars/*.csv`` files."""
        return self.output_dir / "logs" / self.cfg.logger.exp_name

    # ------------------------------------------------------------------ the output folder
    def _log_files(self) -> list[Path]:
        """Every CSV log of the output folder (of any ``logger.exp_name``)."""
        return sorted((self.output_dir / "logs").glob("**/*.csv"))

    def _run_outputs(self) -> list[Path]:
        """What an earlier run left in the output folder: its checkpoint, temporary checkpoint files, its logs."""
        logs = self.output_dir / "logs"
        has_logs = logs.is_dir() and any(p.is_file() for p in logs.rglob("*"))
        kept = [self.best_checkpoint_path, self.output_dir / "checkpoints"]
        found = [p for p in (self.checkpoint_path, *kept) if p.exists()]
        return found + temporary_files(self.checkpoint_path) + ([logs] if has_logs else [])

    def _check_output_dir(self) -> None:
        """A resumed run needs a checkpoint; a fresh one needs a folder without another run's outputs (or
        ``checkpoint.overwrite=true``)."""
        ckpt = self.cfg.checkpoint
        if ckpt.resume and not self.checkpoint_path.exists():
            raise CheckpointError(
                f"checkpoint.resume=true but there is no checkpoint at {str(self.checkpoint_path)!r}."
            )
        found = self._run_outputs()
        if not ckpt.resume and not ckpt.overwrite and found:
            names = ", ".join(str(p.relative_to(self.output_dir)) for p in found)
            raise FileExistsError(
                f"output_dir {str(self.output_dir)!r} holds the outputs of an earlier run ({names}): pass "
                "checkpoint.resume=true to continue that run from its checkpoint, checkpoint.overwrite=true to "
                "delete them and start over, or choose another output_dir."
            )

    def _prepare_output_dir(self, state: dict | None) -> None:
        """Under the run lock: delete an overwritten run's outputs, or cut the logs back to the checkpoint."""
        self._check_output_dir()
        for tmp in temporary_files(self.checkpoint_path):
            tmp.unlink()  # a save killed mid-write; the checkpoint beside it is intact
        if self.cfg.checkpoint.overwrite:
            self.checkpoint_path.unlink(missing_ok=True)
            self.best_checkpoint_path.unlink(missing_ok=True)
            for folder in ("logs", "checkpoints"):
                shutil.rmtree(self.output_dir / folder, ignore_errors=True)
        if state is not None:
            _truncate_logs(self._log_files(), _log_sizes(state, self.output_dir))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        base = self.env.base_env
        return {
            "config": flat_config(self.cfg),
            "iteration": self.iteration,
            "best_eval_return": self.best_eval_return,
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "env_rng": base.rng_state(),
            "log_sizes": {str(p.relative_to(self.output_dir)): p.stat().st_size for p in self._log_files()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.env.base_env.set_rng_state(state["env_rng"])
        self.iteration = state["iteration"]
        self.best_eval_return = state.get("best_eval_return", -math.inf)

    def _resume_state(self) -> dict | None:
        if not self.cfg.checkpoint.resume:
            return None
        state = load_checkpoint(self.checkpoint_path)
        check_config(
            self._comparable(state.get("config", {})),
            self._comparable(flat_config(self.cfg)),
            ignore=RESUMABLE_KEYS,
            defaults=flat_config(OmegaConf.load(CONFIG_DIR / "ppo.yaml")),
            source=self.checkpoint_path,
        )
        return state

    def _comparable(self, flat: dict) -> dict:
        """A flat configuration with equivalent values made equal: ``horizon=null`` is the preset's ``H``."""
        return {**flat, "horizon": self.horizon} if flat.get("horizon", self.horizon) is None else flat

    def save(self) -> Path:
        """Write the checkpoint of the current iteration atomically (and keep the ``checkpoint.keep_last`` newest
        as ``checkpoints/iteration_<N>.pt``)."""
        path = save_checkpoint(self.state_dict(), self.checkpoint_path)
        if self.cfg.checkpoint.keep_last:
            keep_checkpoint(path, self.iteration, self.cfg.checkpoint.keep_last)
        return path

    # ------------------------------------------------------------------ one iteration
    def advantages(self, data) -> None:
        """GAE on the rewards times ``ppo.reward_scale``, in place (the critic learns the scaled returns); with
        ``ppo.decoupled``, also the proximal log-probs of the actions under the weights the update starts from (beside
        GAE, on :attr:`minibatch_backward`'s threads). With ``ppo.update_threads > 1`` the calling thread runs on its
        share of torch's threads (:meth:`MinibatchBackward.intra_op`).

        The stock call ``GAE(gamma, lmbda, value_network=critic, shifted=True)(data)`` on the ``[B, H]`` batch (its
        last dim is named ``"time"``, so the critic runs its window path over each whole meta-episode)."""
        data["next", SCALED_REWARD_KEY] = data["next", "reward"] * self.cfg.ppo.reward_scale
        if not isinstance(self.loss, DecoupledClipPPOLoss):
            with torch.no_grad(), self.minibatch_backward.intra_op():
                self.gae(data)
            return
        proximal = data.clone(False)  # its own keys: the actor's pass writes there while GAE writes into data
        with torch.no_grad():  # with ppo.update_threads > 1 the two passes run at once
            self.minibatch_backward.run(partial(self.gae, data), partial(self.loss.write_proximal_log_prob, proximal))
        data.set(PROXIMAL_LOG_PROB_KEY, proximal.get(PROXIMAL_LOG_PROB_KEY))

    def update(self, data) -> dict:
        """The library's PPO update: epochs on minibatches of whole meta-episodes; returns the iteration's means.

        The same loop as ``update`` in ``recipes/ppo_rl3.py`` (the copy a user edits), built from the same helpers:
        :class:`ActorKLStop`, :attr:`minibatch_backward` (a
        :class:`~rl3_torchrl.minibatch_backward.MinibatchBackward` on ``ppo.update_threads`` threads),
        :meth:`step_is_finite`, :meth:`summarize`. Each minibatch's total loss and gradient
        norm are checked (one host sync): a non-finite one raises :class:`NonFiniteError` before the optimizer
        step, or, with ``ppo.on_nonfinite=skip``, skips that minibatch. The weights are checked once at the end.
        """
        ppo = self.cfg.ppo
        self.loss.entropy_coeff.fill_(self.entropy_coeff(self.iteration))
        self.buffer.empty()
        self.buffer.extend(data)
        kl_stop, outs, actor_updates, skipped = ActorKLStop(ppo.target_kl), [], 0, 0
        with self.minibatch_backward.intra_op():
            for epoch in range(ppo.epochs):
                for minibatch, batch in enumerate(self.buffer):
                    self.optimizer.zero_grad(set_to_none=True)
                    out, total = self.minibatch_backward(batch, kl_stop)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.loss.parameters(), ppo.max_grad_norm)
                    where = f"epoch {epoch + 1}, minibatch {minibatch + 1}"
                    if not self.step_is_finite(out, total, grad_norm, where):
                        skipped += 1
                        continue
                    actor_updates += kl_stop.active
                    self.optimizer.step()
                    outs.append(out.detach())
        return self.summarize(outs, actor_updates=actor_updates, skipped=skipped)

    def step_is_finite(self, out, total: torch.Tensor, grad_norm: torch.Tensor, where: str) -> bool:
        """Whether a minibatch's total loss and gradient norm are finite (one host sync).

        If not: raises :class:`NonFiniteError` naming the non-finite losses and ``where`` (``ppo.on_nonfinite=stop``)
        or returns ``False`` so that the caller skips the optimizer step (``ppo.on_nonfinite=skip``).
        """
        if bool(torch.isfinite(total.detach()) & torch.isfinite(grad_norm)):
            return True
        if self.cfg.ppo.on_nonfinite == "stop":
            raise self._nonfinite(_nonfinite_losses(out, grad_norm), where)
        return False

    def summarize(self, outs: list, *, actor_updates: int, skipped: int = 0) -> dict:
        """The iteration's row of update statistics: the mean of each loss statistic over the minibatches that
        stepped, ``actor_updates`` and, with ``ppo.on_nonfinite=skip``, ``skipped_minibatches``.

        The actor's statistics (all but ``loss_critic``) are means over the minibatches that evaluated the actor:
        those before :class:`ActorKLStop` stopped it, and the one that stopped it (NaN if none stepped).

        Raises :class:`NonFiniteError` when no minibatch stepped or when a weight is no longer finite.
        """
        if not outs:
            raise self._nonfinite(["every minibatch's loss"], "ppo.on_nonfinite=skip skipped them all")
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.loss.parameters()]).all()):
            bad = [name for name, p in self.loss.named_parameters() if not bool(torch.isfinite(p).all())]
            raise self._nonfinite([f"the weights {bad[:3]}"], "after the optimizer steps")
        result = {k: _mean([o[k] for o in outs if k in o]) for k in LOSS_STATS}
        result["actor_updates"] = actor_updates
        if self.cfg.ppo.on_nonfinite == "skip":
            result["skipped_minibatches"] = skipped
        return result

    def _check_batch(self, data) -> None:
        """One host sync per batch: the env's rewards and the policy's logits must be finite (a NaN logit would
        otherwise silently sample action 0)."""
        reward, logits = data["next", "reward"], data["logits"]
        if not bool(torch.isfinite(reward).all() & torch.isfinite(logits).all()):
            checked = {"the env's rewards": reward, "the policy's logits (non-finite inputs or weights)": logits}
            bad = [name for name, value in checked.items() if not bool(torch.isfinite(value).all())]
            raise self._nonfinite(bad, "the collected batch")

    def _nonfinite(self, quantities: list[str], where: str) -> NonFiniteError:
        return NonFiniteError(
            f"iteration {self.iteration + 1} ({where}): {', '.join(quantities)} not finite. Nothing of this "
            f"iteration was written; the last checkpoint in {str(self.output_dir)!r} stays (resume with "
            "checkpoint.resume=true). Likely causes: a learning rate too high (ppo.lr) or ppo.adam_eps too small, "
            "rewards too large for ppo.reward_scale (the critic squares scaled returns), non-finite rewards or "
            "observations from the env, or ppo.max_grad_norm too large."
        )

    # ------------------------------------------------------------------ the run
    def train(self) -> list[dict]:
        """Run (or resume) the configured number of iterations; returns the logged rows of this call.

        The loop of ``recipes/ppo_rl3.py`` with the library's :meth:`update`::

            with trainer.run() as batches:
                for data in batches:
                    trainer.advantages(data)
                    trainer.end_iteration(data, trainer.update(data))

        Raises:
            NonFiniteError: a loss, gradient, weight, policy output or reward is not finite (nothing of that
                iteration is written; the last checkpoint stays).
        """
        history = []
        with self.run() as batches:
            for data in batches:
                self.advantages(data)
                history.append(self.end_iteration(data, self.update(data)))
        return history

    @contextmanager
    def run(self) -> Iterator[Iterator]:
        """Open the run and give the iterator of its remaining iterations' batches.

        On entry: takes the :class:`~rl3_torchrl.checkpoint.RunLock` of ``output_dir``; resumes from the checkpoint
        (``checkpoint.resume``: weights, optimizer, RNG streams, logs cut back to the checkpoint) or clears an
        overwritten run; writes the resolved ``config.yaml``; builds the logger and the collector. Each batch it yields is one meta-episode per env,
        ``[num_envs, H]``, checked finite; the caller updates on it and then calls :meth:`end_iteration`. On exit
        (also by an exception) the collector shuts down and the lock is released.

        Examples:
            >>> import tempfile
            >>> cfg = load_config(["env=bandit", "horizon=6", "num_envs=2", "iterations=1",
            ...                    "ppo.minibatch_episodes=1", "model.d_model=8", "model.hidden_sizes=[8]",
            ...                    "model.ffn_dim=8", "model.num_heads=2", "eval.every=0", "progress=false",
            ...                    f"output_dir={tempfile.mkdtemp()}"])
            >>> trainer = Trainer(cfg)
            >>> with trainer.run() as batches:
            ...     for data in batches:
            ...         trainer.advantages(data)
            ...         row = trainer.end_iteration(data, trainer.update(data))
            >>> data.shape, row["frames"], trainer.iteration
            (torch.Size([2, 6]), 12, 1)
        """
        with RunLock(self.output_dir):
            state = self._resume_state()
            self._prepare_output_dir(state)
            if state is not None:
                self.load_state_dict(state)
            save_config(self.cfg, self.output_dir / CONFIG_NAME)
            self.logger = self._make_logger(state)
            remaining = self.cfg.iterations - self.iteration
            if remaining <= 0:
                yield iter(())
                return
            threads = torch.get_num_threads()
            self._collector = self._make_collector(remaining)
            if state is not None:  # the collector's construction drew tasks: restore the streams after it
                self.env.base_env.set_rng_state(state["env_rng"])
                torch.set_rng_state(state["torch_rng"])
            cfg = self.cfg
            self._bar = tqdm(total=cfg.iterations, initial=self.iteration, disable=not cfg.progress,
                             desc=f"{cfg.algo} {cfg.env}")
            try:
                yield self._batches()
            finally:
                self._bar.close()
                shutdown_collector(self._collector)
                self._collector = None
                self.minibatch_backward.close()
                torch.set_num_threads(threads)  # torchrl's multi-process collectors raise them at shutdown

    def _batches(self) -> Iterator:
        data_iter = iter(self._collector)
        while self.iteration < self.cfg.iterations:
            iteration = self.iteration
            timeit.erase()
            self._started = time.perf_counter()
            with timeit("collection"):
                data = fold_workers(next(data_iter), self.horizon)
            self._check_batch(data)
            self._collected = time.perf_counter()
            yield data
            if self.iteration == iteration:
                raise RuntimeError(
                    f"iteration {iteration + 1} was not ended: call trainer.end_iteration(data, stats) after the "
                    "update of each batch (it sends the new weights to the collector, logs, evaluates and saves)."
                )

    def end_iteration(self, data, stats: dict) -> dict:
        """Finish the iteration of ``data`` after its update; returns its logged row.

        Sends the new weights to the collector, adds to ``stats`` the training return, the critic's
        :func:`explained_variance` on the batch (before the update), ``frames`` (collected so far), the throughput,
        the entropy coefficient and the time of each phase, evaluates on held-out tasks every ``eval.every``
        iterations, logs every value at step ``iteration``, writes the checkpoint every
        ``checkpoint.every`` iterations and, with ``checkpoint.keep_best``, ``checkpoint_best.pt`` whenever the
        held-out return improves (see :meth:`run`'s example).
        """
        if self._collector is None:
            raise RuntimeError("end_iteration(data, stats) ends an iteration of `with trainer.run() as batches:`; "
                               "call it inside that loop, after the update of each batch.")
        backend = self.cfg.collector.backend
        if backend == "single":
            self._collector.update_policy_weights_()
        elif backend != "async":  # async: the collector copies them when the next batch arrives
            self._collector.update_policy_weights_(self.actor)
        end = time.perf_counter()
        times = timeit.todict(percall=False)
        row = dict(stats)
        row.update(
            {
                "return": float(data["next", "reward"].sum(-2).mean()),
                **({"explained_variance": explained_variance(data["state_value"], data["value_target"])}
                   if "value_target" in data.keys() else {}),
                "frames": (self.iteration + 1) * self.frames_per_batch,
                "frames_per_s": self.frames_per_batch / (end - self._started),
                "entropy_coeff": self.entropy_coeff(self.iteration),
                "time_collection": times.get("collection", 0.0),
                "time_q_estimation": times.get("q_estimation", 0.0),
                "time_update": end - self._collected,
            }
        )
        self.iteration += 1
        row.update(self._evaluate())
        self._log(row)
        if self.cfg.checkpoint.keep_best and row.get("eval_return", -math.inf) > self.best_eval_return:
            self.best_eval_return = row["eval_return"]
            save_checkpoint(self.state_dict(), self.best_checkpoint_path)
        self._bar.set_postfix(ret=f"{row['return']:.1f}", fps=f"{row['frames_per_s']:.0f}")
        self._bar.update()
        if self.iteration % self.cfg.checkpoint.every == 0 or self.iteration == self.cfg.iterations:
            self.save()
        return row

    def _evaluate(self) -> dict:
        every = self.cfg.eval.every
        if not every or (self.iteration % every and self.iteration != self.cfg.iterations):
            return {}
        from rl3_torchrl.evaluation import evaluate_actor

        result = evaluate_actor(
            self.actor,
            self.cfg.env,
            self.cfg.algo,
            num_tasks=self.cfg.eval.num_tasks,
            horizon=self.horizon,
            seed=self.cfg.seed,
            device=self.device,
        )
        return {
            "eval_return": result["return_mean"],
            "eval_return_stderr": result["return_stderr"],
            "eval_normalized_return": result["normalized_mean"],
        }

    def _log(self, row: dict) -> None:
        if self.logger is None:
            return
        for key, value in row.items():
            self.logger.log_scalar(key, value, step=self.iteration)


class ActorKLStop:
    """The paper's actor-only early stop of a PPO iteration: once the approximate KL between the behaviour policy
    and the trained one exceeds ``target_kl``, the actor's losses leave the objective for the rest of the iteration
    while the critic keeps training.

    Make one per iteration. For each minibatch, :meth:`losses` evaluates the
    :class:`~torchrl.objectives.ClipPPOLoss` (the whole loss while :attr:`active`; once stopped, the critic's loss
    alone: the actor's forward pass would not enter the objective, so it is skipped), and calling the stop on that
    output returns the loss to backpropagate (``loss_critic``, plus ``loss_objective + loss_entropy`` while
    :attr:`active`). The gradients and weights are those of the whole loss with the actor's terms dropped.

    Args:
        target_kl (float or None): the threshold on ``kl_approx``; ``None`` never stops the actor.

    Examples:
        >>> from tensordict import TensorDict
        >>> out = TensorDict(loss_objective=torch.tensor(1.0), loss_entropy=torch.tensor(0.5),
        ...                  loss_critic=torch.tensor(2.0), kl_approx=torch.tensor(0.001))
        >>> stop = ActorKLStop(0.01)
        >>> stop(out), stop.active
        (tensor(3.5000), True)
        >>> out["kl_approx"] = torch.tensor(0.02)
        >>> stop(out), stop.active
        (tensor(2.), False)
        >>> stop(TensorDict(loss_critic=torch.tensor(1.5)))  # a stopped actor's minibatch: see losses()
        tensor(1.5000)
    """

    def __init__(self, target_kl: float | None):
        if target_kl is not None:
            check_float("target_kl", target_kl, low=0.0, low_inclusive=False)
        self.target_kl = target_kl
        self.active = True

    def losses(self, loss_module: ClipPPOLoss, batch):
        """``loss_module(batch)`` while the actor trains; once it has stopped, only ``loss_critic``, without running
        the actor (:func:`~rl3_torchrl.minibatch_backward.critic_loss`: the value and its gradients are bit-identical
        to the whole loss's)."""
        if self.active:
            return loss_module(batch)
        loss, _ = critic_loss(loss_module, batch)
        return TensorDict(loss_critic=loss)

    def actor_trains(self, out) -> bool:
        """Whether the actor's terms of ``out``, a minibatch's losses with the actor evaluated, enter the objective:
        ``False`` once stopped, and from the minibatch whose ``kl_approx`` exceeds ``target_kl`` on."""
        if self.target_kl is not None and self.active and out["kl_approx"].detach() > self.target_kl:
            self.active = False  # the actor has moved far enough this iteration; the critic goes on
        return self.active

    def __call__(self, out) -> torch.Tensor:
        total = out["loss_critic"]
        if self.actor_trains(out):  # False without reading out once the actor has stopped
            total = total + out["loss_objective"] + out["loss_entropy"]
        return total


def actor_critic_from_config(env, cfg: DictConfig, device, **sizes):
    """The actor and critic of a run's configuration: ``algo``'s input layout (plus ``prev_observation`` with
    ``model.prev_observation``) and the ``model`` sizes, with ``sizes`` overriding them.

    Examples:
        >>> cfg = load_config(["model.prev_observation=true"])
        >>> env = make_meta_env(cfg.env, cfg.algo, 2, horizon=8, prev_observation=True)
        >>> actor, critic = actor_critic_from_config(env, cfg, "cpu")
        >>> "prev_observation" in actor.in_keys
        True
    """
    model = OmegaConf.to_container(cfg.model, resolve=True)
    keys = INPUT_KEYS[ALGORITHMS[cfg.algo].model_inputs]
    if model.pop("prev_observation", False):
        keys = (*keys, "prev_observation")
    return make_actor_critic(env, keys, device=device, **{**model, **sizes})


def make_optimizer(
    actor, critic, *, lr: float, eps: float, critic_weight_decay: float, fused: bool = False
) -> torch.optim.AdamW:
    """AdamW over the actor's and the critic's parameters with weight decay on the critic's alone (as in the paper).

    Parameters the critic shares with the actor belong to the actor's group (no decay). ``fused=True`` takes torch's
    fused AdamW kernel (config key ``ppo.fused_optimizer``): one kernel for all parameters instead of a few small ops
    per parameter, the same update rule with a different rounding (``results/ablation/fused_optimizer``).

    Examples:
        >>> actor, critic = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
        >>> optimizer = make_optimizer(actor, critic, lr=1e-3, eps=1e-7, critic_weight_decay=0.01)
        >>> [group["weight_decay"] for group in optimizer.param_groups]
        [0.0, 0.01]
    """
    actor_params = list(actor.parameters())
    actor_ids = {id(p) for p in actor_params}
    critic_params = [p for p in critic.parameters() if id(p) not in actor_ids]
    return torch.optim.AdamW(
        [
            {"params": actor_params, "weight_decay": 0.0},
            {"params": critic_params, "weight_decay": critic_weight_decay},
        ],
        lr=lr,
        eps=eps,
        fused=fused,
    )


class NonFiniteError(FloatingPointError):
    """A training run met a non-finite loss, gradient, weight, policy output or reward.

    :meth:`Trainer.train` raises it before anything of the failing iteration is written, so the last checkpoint
    stays good and ``checkpoint.resume=true`` continues from it. The message names the iteration, the quantity and
    the likely causes.

    Examples:
        >>> issubclass(NonFiniteError, ArithmeticError)
        True
    """


def _mean(values: list[torch.Tensor]) -> float:
    return float(torch.stack(values).float().mean()) if values else math.nan


def _nonfinite_losses(out, grad_norm) -> list[str]:
    """The names of the non-finite losses of a minibatch (and the gradient norm), for the error message."""
    losses = [key for key in ("loss_objective", "loss_critic", "loss_entropy") if key in out]  # see ActorKLStop.losses
    names = [key for key in losses if not bool(torch.isfinite(out[key]))]
    return names + ([] if bool(torch.isfinite(grad_norm)) else ["the gradient norm"])


#: The loss statistics of :class:`~torchrl.objectives.ClipPPOLoss` that :meth:`Trainer.summarize` averages.
LOSS_STATS = (
    "loss_objective",
    "loss_critic",
    "loss_entropy",
    "entropy",
    "kl_approx",
    "clip_fraction",
)


def explained_variance(values: torch.Tensor, targets: torch.Tensor) -> float:
    """``1 − Var(targets − values) / Var(targets)`` over every element: how much of the variance of the value
    targets the critic's values explain (1: all, 0: no better than their mean, negative: worse).

    The :class:`Trainer` logs it per iteration over the whole ``[num_envs, H]`` batch, with the critic's values and
    the GAE targets of that batch (before the iteration's update). ``ClipPPOLoss``'s own statistic is turned off:
    it takes the variance over the first dim only, i.e. per time step across the few episodes of a minibatch.

    Examples:
        >>> t = torch.tensor([1.0, 2.0, 3.0, 4.0])
        >>> explained_variance(t, t), explained_variance(torch.full_like(t, 2.5), t)
        (1.0, 0.0)
    """
    targets = targets.detach().float()
    total = targets.var(correction=0)
    return float(1.0 - (targets - values.detach().float()).var(correction=0) / total.clamp_min(torch.finfo().eps))


def _log_sizes(state: dict, output_dir: Path) -> dict[Path, int]:
    """The size of each CSV log at the checkpoint, as paths in ``output_dir`` (checkpoints written before the paths
    became relative to the run folder hold them under the ``output_dir`` they were written in)."""
    written_in = Path(state.get("config", {}).get("output_dir", "."))
    sizes = {}
    for name, size in state.get("log_sizes", {}).items():
        path = Path(name)
        sizes[output_dir / (path.relative_to(written_in) if path.is_relative_to(written_in) else path)] = size
    return sizes


def _truncate_logs(files: list[Path], sizes: dict[Path, int]) -> None:
    """Cut every CSV log back to its size at the checkpoint (and delete those created after it), so a resumed run
    logs every iteration exactly once."""
    for path in files:
        size = sizes.get(path)
        if size is None:
            path.unlink()
        elif path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)


def train(cfg: DictConfig) -> list[dict]:
    """Build a :class:`Trainer` from ``cfg`` and run it; returns the logged rows.

    Examples:
        >>> import tempfile
        >>> cfg = load_config(["env=bandit", "horizon=6", "num_envs=2", "iterations=1", "ppo.minibatch_episodes=1",
        ...                    "model.d_model=8", "model.hidden_sizes=[8]", "model.ffn_dim=8", "model.num_layers=1",
        ...                    "model.num_heads=2", "eval.every=0", "progress=false",
        ...                    f"output_dir={tempfile.mkdtemp()}"])
        >>> len(train(cfg))
        1
    """
    return Trainer(cfg).train()


def load_actor(
    path, *, task: str | None = None, horizon: int | None = None, device=None
) -> tuple[MetaTransformerModule, DictConfig]:
    """Rebuild the trained actor of a checkpoint; returns ``(actor, config)``.

    Args:
        path: the ``checkpoint.pt`` of a run.

    Keyword Args:
        task (str, optional): the task it will be evaluated on; it must belong to the task family the actor was
            trained on (its in-distribution task or an OOD shift of it), otherwise a ``ValueError`` names both.
        horizon (int, optional): the ``H`` it will be evaluated at. With ``model.positions=learned`` its learned
            positions must cover it (``H`` at most the trained one), otherwise a ``ValueError`` names both; with
            ``model.positions=none`` the actor is built for any ``H``.
        device: where to build the actor.

    Examples:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> _ = train(load_config(["env=bandit", "horizon=6", "num_envs=2", "iterations=1", "ppo.minibatch_episodes=1",
        ...                        "model.d_model=8", "model.hidden_sizes=[8]", "model.ffn_dim=8", "model.num_heads=2",
        ...                        "eval.every=0", "progress=false", f"output_dir={out}"]))
        >>> actor, cfg = load_actor(f"{out}/checkpoint.pt", task="bandit_ood")
        >>> cfg.env, type(actor).__name__
        ('bandit', 'CategoricalActor')
        >>> load_actor(f"{out}/checkpoint.pt", horizon=7)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: checkpoint ... was trained at H=6: its actor cannot act at horizon=7; allowed: [1, 6].
    """
    state = load_checkpoint(path)
    cfg = OmegaConf.create(unflatten_config(state["config"]))
    if task is not None and TASKS[check_choice("task", task, TASKS)].family != TASKS[cfg.env].family:
        raise ValueError(
            f"checkpoint {str(path)!r} was trained on env={cfg.env!r}; it cannot act on task={task!r} "
            f"(allowed: {task_family(cfg.env)})."
        )
    cfg.model.setdefault("prev_observation", False)  # checkpoints written before the key existed
    env = make_meta_env(cfg.env, cfg.algo, 1, horizon=cfg.horizon, device=device,
                        prev_observation=cfg.model.prev_observation)
    max_len = {}
    if cfg.model.get("positions") == "none" and horizon is not None:  # no learned positions: any H fits
        max_len["max_len"] = max(env.horizon, check_int("horizon", horizon, low=1)) + 1
    actor, _ = actor_critic_from_config(env, cfg, device, **max_len)
    actor.load_state_dict(state["actor"])
    if horizon is not None:
        longest = min(m.max_len for m in actor.modules() if isinstance(m, MetaCausalTransformer)) - 1
        if check_int("horizon", horizon, low=1) > longest:
            raise ValueError(
                f"checkpoint {str(path)!r} was trained at H={env.horizon}: its actor cannot act at "
                f"horizon={horizon}; allowed: [1, {longest}]."
            )
    return actor, cfg
