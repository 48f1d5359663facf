"""Meta-episode collection on one process, several processes or a Ray cluster, with torchrl's own collectors.

A training batch is ``[B, H]``: ``B = num_envs`` whole meta-episodes of ``H`` steps. :func:`make_collector` builds

* ``backend="single"``: one :class:`torchrl.collectors.Collector` over the trainer's env (the default);
* ``backend="multiprocess"``: a :class:`torchrl.collectors.MultiSyncCollector` with ``workers`` processes;
* ``backend="ray"``: a :class:`torchrl.collectors.distributed.RayCollector` with ``workers`` Ray actors (``sync=True``),
  on a local or remote Ray cluster (``pip install rl3_torchrl[distributed]``);
* ``backend="async"``: an :class:`OverlappedCollector`, one worker process that collects the next batch while the
  trainer updates on the current one, with the weights of one update earlier (PPO one iteration off-policy).

With ``workers = W``, ``num_envs`` must be a multiple of ``W``: each worker steps its own batch of ``num_envs // W``
envs with its own transforms (its own online Q estimator) and its own copy of the policy, and draws its tasks from
its own seed (:func:`worker_seed`). The ``W`` sub-batches ``[W, num_envs // W, H]`` are folded into ``[num_envs, H]``
(:func:`fold_workers`), so GAE and PPO see whole meta-episodes exactly as in the single-process case.

Every worker runs a :class:`MetaEpisodeCollector`, which empties the module-owned KV cache of the policy's
:class:`~rl3_torchrl.modules.MetaTransformerModule` at the start of every batch. torchrl copies new weights into the
workers' policies in place through ``.data`` (or shares them through shared memory), which the cache's parameter
fingerprint cannot see; since every batch starts with all meta-episodes reset and weights change only between batches
(``sync=True``), emptying the cache there is exact.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector

from rl3_torchrl._validation import check_choice
from rl3_torchrl.modules.transformer import MetaTransformerModule
from rl3_torchrl.tasks import make_meta_env

__all__ = [
    "BACKENDS",
    "MetaEnvFactory",
    "MetaEpisodeCollector",
    "OverlappedCollector",
    "fold_workers",
    "make_collector",
    "shutdown_collector",
    "worker_seed",
]

#: The collection backends of :func:`make_collector` (config key ``collector.backend``).
BACKENDS = ("single", "multiprocess", "ray", "async")


def worker_seed(seed: int, worker: int, start_iteration: int = 0) -> int:
    """The seed of one collection worker: distinct for every ``(seed, worker, start_iteration)``.

    The seeds come from numpy's ``SeedSequence``, so that, unlike ``seed + worker``, run ``seed=0`` does not share a
    task stream with run ``seed=1``; a resumed run (``start_iteration > 0``) draws fresh tasks.

    Examples:
        >>> len({worker_seed(0, w) for w in range(4)} | {worker_seed(1, w) for w in range(4)})
        8
        >>> worker_seed(0, 1) == worker_seed(0, 1)
        True
    """
    words = [int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, int(worker), int(start_iteration)]
    hi, lo = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 31) ^ int(lo)) & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class MetaEnvFactory:
    """A picklable constructor of one worker's env: :func:`~rl3_torchrl.tasks.make_meta_env` with its own seed.

    Called in the worker process, it also seeds the worker's torch generator (action sampling) with ``seed`` and
    limits it to ``num_threads`` threads.

    Examples:
        >>> env = MetaEnvFactory("bandit", "rl3", 2, horizon=6, seed=worker_seed(0, 1))()
        >>> env.batch_size, env.base_env.horizon
        (torch.Size([2]), 6)
    """

    task: str
    algo: str
    num_envs: int
    horizon: int | None = None
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    prev_observation: bool = False

    def __call__(self):
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        torch.manual_seed(self.seed)
        return make_meta_env(
            self.task,
            self.algo,
            self.num_envs,
            horizon=self.horizon,
            seed=self.seed,
            split="train",
            device=self.device,
            prev_observation=self.prev_observation,
        )


def _reset_caches(policy) -> None:
    if isinstance(policy, torch.nn.Module):
        for module in policy.modules():
            if isinstance(module, MetaTransformerModule):
                module.reset_cache()


class MetaEpisodeCollector(Collector):
    """A :class:`torchrl.collectors.Collector` that empties the policy's KV caches before every batch.

    Used as the per-worker collector class of the multi-process and Ray backends; it takes the arguments of
    :class:`~torchrl.collectors.Collector` and is meant for ``reset_at_each_iter=True`` (every batch starts new
    meta-episodes), where it is exact whatever way the weights reached the worker.

    Examples:
        >>> from rl3_torchrl.modules import make_actor_critic
        >>> env = MetaEnvFactory("bandit", "rl3", 2, horizon=4)()
        >>> actor, _ = make_actor_critic(env, "rl3", d_model=8, hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
        >>> collector = MetaEpisodeCollector(env, actor, frames_per_batch=8, total_frames=8, reset_at_each_iter=True,
        ...                                  auto_register_policy_transforms=False)
        >>> next(iter(collector)).batch_size
        torch.Size([2, 4])
        >>> collector.shutdown()
    """

    def rollout(self) -> TensorDictBase:
        _reset_caches(self.policy)
        return super().rollout()

    def __repr__(self) -> str:  # short: Ray prefixes every log line of an actor with it
        return f"{type(self).__name__}(worker={getattr(self, 'worker_idx', None)})"


class OverlappedCollector(MultiAsyncCollector):
    """One worker process that collects batch ``k + 1`` while the trainer updates on batch ``k``.

    A :class:`torchrl.collectors.MultiAsyncCollector` with one worker (a :class:`MetaEpisodeCollector`) and
    ``update_at_each_batch=True``: as soon as a batch arrives, the collector copies the trainer's current weights into
    the worker's policy and sends the worker off to the next batch, then hands the batch to the trainer. So batch
    ``k + 1`` is collected with the weights the trainer had when batch ``k`` arrived, i.e. before its update on batch
    ``k``: every batch after the second is one update old (batches 0 and 1 both use the initial weights). PPO's
    ratio uses the log-probabilities stored at collection, so the clipped objective corrects for the lag, but the
    algorithm is one iteration off-policy: a learning change, measured in ``results/ablation/async_collection``.

    The worker's policy is a copy of ``policy`` in shared memory that only this collector writes, and only while the
    worker waits between two batches, so a run is as reproducible as a single-process one (the same seed gives the
    same batches and losses): the trainer's optimizer steps never reach a batch being collected. Weights are taken
    from ``policy`` itself; :meth:`update_policy_weights_` accepts no other source.

    Args:
        env_factory (MetaEnvFactory): the worker's env.
        policy: the trainer's actor (it is not moved or shared).

    Keyword Args:
        **kwargs: :class:`~torchrl.collectors.MultiAsyncCollector`'s (``frames_per_batch``, ``total_frames``,
            ``reset_at_each_iter=True``, ``device`` ...).

    Examples:
        >>> from rl3_torchrl.modules import make_actor_critic
        >>> env = MetaEnvFactory("bandit", "rl3", 2, horizon=4)
        >>> actor, _ = make_actor_critic(env(), "rl3", d_model=8, hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
        >>> collector = OverlappedCollector(env, actor, frames_per_batch=8, total_frames=16, reset_at_each_iter=True,
        ...                                 device="cpu")
        >>> [tuple(batch.shape) for batch in collector]
        [(2, 4), (2, 4)]
        >>> shutdown_collector(collector)
    """

    def __init__(self, env_factory: MetaEnvFactory, policy, **kwargs):
        behaviour = copy.deepcopy(policy)
        self._trainer_weights = TensorDict.from_module(policy)
        self._behaviour_weights = TensorDict.from_module(behaviour)
        super().__init__(
            [env_factory],
            behaviour,
            collector_class=MetaEpisodeCollector,
            update_at_each_batch=True,
            auto_register_policy_transforms=False,
            **kwargs,
        )

    def update_policy_weights_(self, policy_or_weights=None, **kwargs) -> None:
        """Copy the trainer's weights into the worker's policy (called by the iterator between two batches)."""
        if policy_or_weights is not None or kwargs:
            raise TypeError(
                "OverlappedCollector takes the trainer's weights itself, between two batches; calling "
                "update_policy_weights_ with weights would reach the worker in the middle of a batch."
            )
        with torch.no_grad():
            self._behaviour_weights.update_(self._trainer_weights)


def shutdown_collector(collector) -> None:
    """Shut ``collector`` down, and with it the weight-sync schemes of torchrl's multi-process collectors.

    ``collector.shutdown()`` leaves those schemes open; one still referenced when the interpreter exits (e.g. by the
    traceback of an exception raised inside the training loop) shuts down from its ``__del__`` and can deadlock the
    exit, waiting for a queue thread that no longer starts. Closing them here leaves nothing for that moment.

    Examples:
        >>> from rl3_torchrl.modules import make_actor_critic
        >>> env = MetaEnvFactory("bandit", "rl2", 2, horizon=4)()
        >>> actor, _ = make_actor_critic(env, "rl2", d_model=8, hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
        >>> shutdown_collector(make_collector("single", None, actor, env=env, frames_per_batch=8, total_frames=8,
        ...                                   device="cpu"))
    """
    collector.shutdown()
    for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
        scheme.shutdown()


def fold_workers(data: TensorDictBase, horizon: int) -> TensorDictBase:
    """Fold a ``[W, B_w, H]`` multi-worker batch into ``[W * B_w, H]`` whole meta-episodes (a no-op on ``[B, H]``).

    Examples:
        >>> from tensordict import TensorDict
        >>> fold_workers(TensorDict(a=torch.zeros(2, 3, 6), batch_size=[2, 3, 6]), 6).batch_size
        torch.Size([6, 6])
    """
    if data.shape[-1] != horizon:
        raise ValueError(f"expected batches of whole meta-episodes [..., H={horizon}], got {tuple(data.shape)}.")
    if data.ndim == 2:
        return data
    data = data.reshape(-1, horizon)
    data.names = [None, "time"]
    return data


def make_collector(
    backend: str,
    env_factories: list[MetaEnvFactory] | None,
    policy,
    *,
    frames_per_batch: int,
    total_frames: int,
    device,
    env=None,
    ray_init_config: dict | None = None,
    ray_remote_config: dict | None = None,
):
    """A collector of whole meta-episodes for a backend of :data:`BACKENDS` (synchronous, except ``"async"``).

    Args:
        backend (str): ``"single"`` (uses ``env``), ``"multiprocess"`` or ``"ray"`` (one factory per worker), or
            ``"async"`` (one factory: an :class:`OverlappedCollector`).
        env_factories (list of MetaEnvFactory): one per worker.
        policy: the actor; workers get copies, refreshed by ``collector.update_policy_weights_()``.

    Keyword Args:
        frames_per_batch (int): over all workers (``num_envs * H``).
        total_frames (int): the collector stops after this many frames.
        device: of envs, policy and data.
        env: the env of the single-process backend.
        ray_init_config (dict): ``ray.init`` arguments (``address`` …) when Ray is not initialised yet.
        ray_remote_config (dict): the resources of each Ray actor (``num_cpus``, ``num_gpus``, ``memory``).

    Examples:
        >>> from rl3_torchrl.modules import make_actor_critic
        >>> env = MetaEnvFactory("bandit", "rl2", 2, horizon=4)()
        >>> actor, _ = make_actor_critic(env, "rl2", d_model=8, hidden_sizes=[8], ffn_dim=8, num_heads=2, num_layers=1)
        >>> collector = make_collector("single", None, actor, env=env, frames_per_batch=8, total_frames=8, device="cpu")
        >>> next(iter(collector))["next", "done"][:, -1].all().item()
        True
        >>> collector.shutdown()
    """
    check_choice("collector.backend", backend, BACKENDS)
    common = dict(
        frames_per_batch=frames_per_batch,
        total_frames=total_frames,
        reset_at_each_iter=True,
        device=device,
    )
    if backend == "single":
        return Collector(env, policy, auto_register_policy_transforms=False, **common)
    threads = dict(num_threads=torch.get_num_threads(), num_sub_threads=env_factories[0].num_threads or 1)
    if backend == "async":
        if len(env_factories) != 1:
            raise ValueError(f"collector.backend=async runs one worker process, got {len(env_factories)} env factories.")
        return OverlappedCollector(env_factories[0], policy, **threads, **common)
    if backend == "multiprocess":
        return MultiSyncCollector(
            list(env_factories),
            policy,
            collector_class=MetaEpisodeCollector,
            auto_register_policy_transforms=False,
            **threads,  # num_threads keeps the trainer's threads (the default lowers them)
            **common,
        )
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "collector.backend=ray needs Ray: pip install 'rl3_torchrl[distributed]'"
        ) from err
    from torchrl.collectors.distributed import RayCollector

    collector = RayCollector(
        list(env_factories),
        policy,
        collector_class=MetaEpisodeCollector,
        collector_kwargs={"auto_register_policy_transforms": False},
        sync=True,
        ray_init_config=ray_init_config,
        remote_configs=ray_remote_config,
        **common,
    )
    return collector
