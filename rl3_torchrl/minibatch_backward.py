"""A PPO minibatch's losses and gradients, computed on one thread or spread over several of this process.

The actor and the critic are separate networks, so their forward and backward passes do not depend on each other.
:class:`MinibatchBackward` with ``threads=2`` runs the critic's on a second thread while the actor's run on the calling
one: torch releases the GIL inside its kernels, so two single-threaded passes use two cores. On a machine where
another process (the ``collector.backend=async`` worker) also wants a core, this degrades gracefully, while torch's own
intra-op threads wait for each other at every op (``benchmarks/README.md``, issue #14's sixth pass).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import ClipPPOLoss

from rl3_torchrl._validation import check_int


class MinibatchBackward:
    """Evaluate a minibatch's PPO losses and write their gradients into ``.grad``, on ``threads`` threads.

    ``backward(batch, kl_stop)`` returns ``(out, total)``: the losses (as ``loss_module(batch)`` returns them while
    the actor trains; ``loss_critic`` alone once it has stopped) and the total loss of the minibatch, after writing
    the gradients of ``total`` into the parameters' ``.grad`` (call ``optimizer.zero_grad(set_to_none=True)``
    before). ``kl_stop`` is the iteration's :class:`~rl3_torchrl.training.ActorKLStop`, which decides from the
    minibatch's ``kl_approx`` whether the actor's terms enter ``total``.

    * ``threads=1``: ``out = kl_stop.losses(loss_module, batch)``, ``total = kl_stop(out)``, ``total.backward()``.
    * ``threads=n > 1``: while the actor trains, its losses and gradients are computed on the calling thread while
      the critic's run on a helper thread: the same losses, and gradients bit-identical to ``threads=1``'s when the
      actor and the critic share no parameter. Once the actor has stopped, the critic's minibatch is split by
      episodes into ``n`` shards, one per thread, each loss weighted by its share of the minibatch's elements, and
      the gradients are summed in shard order: the same loss and gradients as one pass up to rounding, and
      deterministic (the same seed gives the same run).

    Not with ``torch.compile``d modules: while one thread compiles, torch's compiling flag and torchrl's recurrent
    mode are process-wide, and the other threads take the wrong (window or step) path (``Trainer`` rejects
    ``compile.enabled=true`` with ``ppo.update_threads > 1``).

    Each thread runs torch's kernels with ``intra_op_threads`` threads (default: ``torch.get_num_threads() //
    threads`` at construction, at least 1). The calling thread's count is set for the call and restored after it.

    Args:
        loss_module (ClipPPOLoss): the PPO loss (or a subclass such as
            :class:`~rl3_torchrl.objectives.DecoupledClipPPOLoss`) with its critic.
        threads (int): threads to spread a minibatch over; 1 computes everything on the calling thread.
        intra_op_threads (int, optional): torch threads of each of them.

    Examples:
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor, ValueOperator
        >>> from rl3_torchrl.training import ActorKLStop
        >>> _ = torch.manual_seed(0)
        >>> actor = ProbabilisticActor(TensorDictModule(torch.nn.Linear(3, 2), ["obs"], ["logits"]),
        ...                            in_keys=["logits"], distribution_class=torch.distributions.Categorical,
        ...                            return_log_prob=True)
        >>> critic = ValueOperator(torch.nn.Linear(3, 1), in_keys=["obs"])
        >>> loss = ClipPPOLoss(actor, critic, functional=False)
        >>> batch = TensorDict(obs=torch.randn(4, 3), action=torch.randint(2, (4,)), advantage=torch.randn(4, 1),
        ...                    value_target=torch.randn(4, 1), action_log_prob=torch.full((4,), -0.7),
        ...                    batch_size=[4])
        >>> backward = MinibatchBackward(loss, threads=2)
        >>> out, total = backward(batch, ActorKLStop(target_kl=None))
        >>> sorted(k for k in out.keys() if k.startswith("loss_")), critic.module.weight.grad is not None
        (['loss_critic', 'loss_entropy', 'loss_objective'], True)
        >>> backward.close()
    """

    def __init__(self, loss_module: ClipPPOLoss, threads: int = 1, intra_op_threads: int | None = None):
        check_int("threads", threads, low=1)
        if intra_op_threads is None:
            intra_op_threads = max(1, torch.get_num_threads() // threads)
        check_int("intra_op_threads", intra_op_threads, low=1)
        if threads > 1 and not getattr(loss_module, "_has_critic", False):
            raise ValueError(
                f"MinibatchBackward(threads={threads}) spreads the actor's and the critic's passes over threads; "
                "the loss module has no critic term (critic_network=None or critic_coeff=0): use threads=1."
            )
        self.loss_module = loss_module
        self.threads = threads
        self.intra_op_threads = intra_op_threads
        # the same module without its critic term (a shallow copy: the same parameters, buffers and keys)
        self._actor_loss = copy.copy(loss_module)
        self._actor_loss._has_critic = False
        self._params = list(loss_module.parameters())
        self._pool: ThreadPoolExecutor | None = None

    def __call__(self, batch: TensorDictBase, kl_stop) -> tuple[TensorDictBase, torch.Tensor]:
        if self.threads == 1:
            out = kl_stop.losses(self.loss_module, batch)
            total = kl_stop(out)
            total.backward()
            return out, total
        if kl_stop.active:  # the actor's passes here, the critic's whole minibatch on a helper thread
            (out, contributions), critic = self.run(
                partial(self._actor_grads, batch, kl_stop), partial(self._critic_grads, batch, None)
            )
            loss_critic, grads, stats = critic
            out.update({"loss_critic": loss_critic, **stats})  # as ClipPPOLoss.forward
            self._write_grads([*contributions, grads])
            return out, kl_stop(out)
        shards = _episode_shards(batch, self.threads)  # the critic alone: one shard of episodes per thread
        weights = self._shard_weights(shards)
        critic = self.run(*(partial(self._critic_grads, *job) for job in zip(shards, weights)))
        self._write_grads([grads for _, grads, _ in critic])
        loss_critic = torch.stack([loss for loss, _, _ in critic]).sum() if len(critic) > 1 else critic[0][0]
        out = TensorDict(loss_critic=loss_critic)  # as ActorKLStop.losses
        return out, kl_stop(out)

    def run(self, *calls: Callable[[], Any]) -> list:
        """Run ``calls`` at once, the first on the calling thread and the others on the helper threads, each with
        ``intra_op_threads`` torch threads and the caller's grad mode; returns their results in order. With
        ``threads=1``, one after the other on the calling thread as it is.

        :class:`~rl3_torchrl.training.Trainer` runs GAE's critic pass beside the proximal actor pass of
        :class:`~rl3_torchrl.objectives.DecoupledClipPPOLoss` with it. Only the first call may set tensordict's
        process-wide modes (``set_interaction_type``, ``set_skip_existing``, as a loss module's ``forward`` does):
        they are not per thread, so the other calls would see them.

        Examples:
            >>> from tensordict.nn import TensorDictModule
            >>> from torchrl.modules import ProbabilisticActor, ValueOperator
            >>> actor = ProbabilisticActor(TensorDictModule(torch.nn.Linear(3, 2), ["obs"], ["logits"]),
            ...                            in_keys=["logits"], distribution_class=torch.distributions.Categorical)
            >>> loss = ClipPPOLoss(actor, ValueOperator(torch.nn.Linear(3, 1), in_keys=["obs"]), functional=False)
            >>> backward = MinibatchBackward(loss, threads=2, intra_op_threads=1)
            >>> backward.run(lambda: 1, lambda: 2)
            [1, 2]
            >>> with backward.intra_op():  # the calling thread on intra_op_threads torch threads (see intra_op)
            ...     torch.get_num_threads()
            1
            >>> backward.close()
        """
        if self.threads == 1 or len(calls) == 1:
            return [call() for call in calls]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.threads - 1, "minibatch_backward", initializer=torch.set_num_threads,
                initargs=(self.intra_op_threads,),
            )
        grad_mode = torch.is_grad_enabled()
        with self.intra_op():
            jobs = [self._pool.submit(_with_grad_mode, grad_mode, call) for call in calls[1:]]
            first = calls[0]()
            return [first, *(job.result() for job in jobs)]

    @contextmanager
    def intra_op(self):
        """With ``threads > 1``: the calling thread runs torch's kernels on ``intra_op_threads`` threads inside the
        block, its own count restored after it (with ``threads=1``, nothing changes).

        :meth:`run` holds it; the update loops of ``Trainer`` and ``recipes/ppo_rl3.py`` hold it around their epochs
        (and ``Trainer.advantages`` around GAE), so that the optimizer step, the gradient clipping and the minibatch
        sampling between two calls also run on the update's threads: with the caller's default count (one per core),
        each of those ops waited for a thread that the ``async`` worker had descheduled (``benchmarks/README.md``,
        issue #14's seventh pass). Example: see :meth:`run`.
        """
        if self.threads == 1:
            yield
            return
        caller_threads = torch.get_num_threads()
        torch.set_num_threads(self.intra_op_threads)
        try:
            yield
        finally:
            torch.set_num_threads(caller_threads)

    def close(self) -> None:
        """Stop the helper threads (they start again at the next multi-threaded call)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _actor_grads(self, batch: TensorDictBase, kl_stop) -> tuple[TensorDictBase, list]:
        """The actor's losses on ``batch`` and, unless ``kl_stop`` stops the actor at this minibatch, the gradients of
        its terms."""
        out = self._actor_loss(batch)
        if not kl_stop.actor_trains(out):
            return out, []
        return out, [self._grads(out["loss_objective"] + out["loss_entropy"])]

    def _critic_grads(self, shard: TensorDictBase, weight: torch.Tensor | None):
        """The critic's loss on ``shard`` (reduced as ``ClipPPOLoss.forward`` reduces it) times ``weight``, its
        gradients, and the statistics ``loss_critic`` returns besides (``value_clip_fraction``,
        ``explained_variance``, where configured)."""
        loss, stats = critic_loss(self.loss_module, shard)
        if weight is not None:
            loss = loss * weight
        return loss.detach(), self._grads(loss), stats

    def _shard_weights(self, shards: list[TensorDictBase]) -> list[torch.Tensor | None]:
        """Each shard's share of the minibatch's loss elements (those its validity masks keep): the mean over the
        minibatch is the weighted sum of the shards' means. ``[None]`` for a single shard (its mean as it is)."""
        if len(shards) == 1:
            return [None]
        reduce = self.loss_module._reduce_loss
        counts = [reduce(torch.ones((*s.shape, 1), device=s.device), s, reduction="sum") for s in shards]
        total = torch.stack(counts).sum().clamp_min(1)
        return [count / total for count in counts]

    def _grads(self, loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return torch.autograd.grad(loss, self._params, allow_unused=True)

    def _write_grads(self, contributions: list[tuple[torch.Tensor | None, ...]]) -> None:
        """Accumulate each parameter's gradients into its ``.grad``, in the order given, as ``backward`` would."""
        for i, param in enumerate(self._params):
            parts = [grads[i] for grads in contributions if grads[i] is not None]
            if not parts:
                continue
            grad = parts[0]
            for part in parts[1:]:
                grad = grad + part
            if param.grad is not None:
                param.grad.add_(grad)
            elif grad.stride() != param.stride():  # the layout backward gives .grad: the parameter's
                param.grad = torch.empty_like(param).copy_(grad)
            else:
                param.grad = grad


def critic_loss(loss_module: ClipPPOLoss, batch: TensorDictBase) -> tuple[torch.Tensor, dict]:
    """``loss_critic`` of ``loss_module(batch)`` without the actor's passes: ``loss_module.loss_critic`` reduced as
    ``ClipPPOLoss.forward`` reduces it (its private ``_reduce_loss``, which honours the batch's validity masks such as
    ``shifted_valid``), and the statistics it returns besides (``value_clip_fraction``, ``explained_variance``, where
    configured). The critic's values are not written into ``batch``."""
    batch = batch.clone(False)
    value, clip_fraction, explained_variance = loss_module.loss_critic(batch)
    stats = {"value_clip_fraction": clip_fraction, "explained_variance": explained_variance}
    return loss_module._reduce_loss(value, batch).squeeze(-1), {k: v for k, v in stats.items() if v is not None}


def _with_grad_mode(enabled: bool, call: Callable[[], Any]):
    with torch.set_grad_enabled(enabled):  # grad mode is per thread
        return call()


def _episode_shards(batch: TensorDictBase, shards: int) -> list[TensorDictBase]:
    """``batch`` split along its first (episode) dim into ``shards`` parts as equal as possible (fewer when it has
    fewer episodes)."""
    size = batch.shape[0]
    shards = min(shards, size)
    bounds = [i * size // shards for i in range(shards + 1)]
    return [batch[bounds[i]:bounds[i + 1]] for i in range(shards)]
