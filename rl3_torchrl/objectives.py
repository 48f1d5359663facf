"""Decoupled PPO: TorchRL's ``ClipPPOLoss`` with its trust region around a proximal policy read from the batch.

With collection overlapped with the update (``collector.backend=async``) a batch comes from the weights of one
update earlier, so PPO's clipping and the KL stop (``ppo.target_kl``) measure how far the actor moved from that
older *behaviour* policy and stop it early. The decoupled objective (Hilton, Cobbe & Schulman, "Batch
size-invariance for policy optimization", 2022) clips around the *proximal* policy, the weights at the update's
start, and weights each sample by ``π_prox / π_behav``:
``E_behav[(π_prox/π_behav) · min(r·Â, clip(r, 1 ± ε)·Â)]`` with ``r = π_θ / π_prox``. TorchRL's ``ClipPPOLoss``
computes exactly this objective from the proximal log-probs (its ``delay_actor=True``, which evaluates a target actor
on every minibatch); here they are computed once per update, by one gradient-free window pass of the actor over
the batch, and read from :data:`PROXIMAL_LOG_PROB_KEY`. ``kl_approx`` estimates ``KL(π_prox ‖ π_θ)``, what the KL
stop bounds, from the behaviour policy's samples: ``E_behav[(π_prox/π_behav) · (log π_prox − log π_θ)]``. Without
the weight (``ClipPPOLoss(delay_actor=True)``'s estimate) its expectation is
``KL(π_behav ‖ π_θ) − KL(π_behav ‖ π_prox)``, about twice the weighted one on async batches (a one-off trace); it
stopped the actor early (``results/ablation/async_decoupled``).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.objectives import ClipPPOLoss

#: The batch key of ``log π_prox(a | history)``, written by :meth:`DecoupledClipPPOLoss.write_proximal_log_prob`.
PROXIMAL_LOG_PROB_KEY = "proximal_log_prob"


class DecoupledClipPPOLoss(ClipPPOLoss):
    """``ClipPPOLoss`` whose clipping and ``kl_approx`` act around the proximal policy of :data:`PROXIMAL_LOG_PROB_KEY`.

    Takes ``ClipPPOLoss``'s arguments, except ``delay_actor`` and ``max_importance_ratio`` (the proximal policy and
    the importance weights are this class's own). Call :meth:`write_proximal_log_prob` on each batch before its
    minibatches. When the batch was collected by the current weights (synchronous collection) the proximal policy
    is the behaviour policy and the losses equal ``ClipPPOLoss``'s, up to the rounding difference between the
    actor's step path (collection) and window path (the loss). It overrides two private methods of torchrl 0.14's
    ``ClipPPOLoss`` (``_log_weight``, and ``_get_cur_log_prob`` for the proximal pass, so that both log-probs come
    from the same code); ``tests/test_objectives.py`` checks the result against the objective written out by hand.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor, ValueOperator
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> actor = ProbabilisticActor(TensorDictModule(torch.nn.Linear(3, 2), ["obs"], ["logits"]), in_keys=["logits"],
        ...                            distribution_class=torch.distributions.Categorical, return_log_prob=True)
        >>> critic = ValueOperator(torch.nn.Linear(3, 1), in_keys=["obs"])
        >>> loss = DecoupledClipPPOLoss(actor, critic, normalize_advantage=False)
        >>> data = TensorDict(obs=torch.randn(8, 3), action=torch.randint(2, (8,)), advantage=torch.randn(8, 1),
        ...                   value_target=torch.randn(8, 1), batch_size=[8])
        >>> loss.write_proximal_log_prob(data)
        >>> data["action_log_prob"] = data[PROXIMAL_LOG_PROB_KEY] - 0.1  # a behaviour policy other than the proximal
        >>> out = loss(data)  # at the proximal weights: r = 1, each sample weighted by π_prox/π_behav = e^0.1
        >>> torch.allclose(out["loss_objective"], -(data["advantage"] * torch.tensor(0.1).exp()).mean())
        True
        >>> abs(float(out["kl_approx"])) < 1e-6  # KL(π_prox ‖ π_θ): zero at the proximal weights
        True
    """

    def __init__(self, *args, **kwargs):
        for name in ("delay_actor", "max_importance_ratio"):
            if kwargs.get(name):
                raise ValueError(
                    f"DecoupledClipPPOLoss does not take {name}={kwargs[name]!r}: its proximal policy is the one "
                    f"written by write_proximal_log_prob; use torchrl's ClipPPOLoss for {name}."
                )
        super().__init__(*args, **kwargs)

    @torch.no_grad()
    def write_proximal_log_prob(self, data: TensorDictBase) -> None:
        """Write ``log π(action)`` under the current actor weights into ``data[PROXIMAL_LOG_PROB_KEY]``, in place.

        Call it once per update, before the first minibatch. A ``[B, T]`` batch whose last dim is named ``"time"``
        (as collectors write it) runs the Transformer's window path over each whole meta-episode.
        """
        log_prob, _, _ = self._get_cur_log_prob(data)
        data.set(PROXIMAL_LOG_PROB_KEY, log_prob.detach())

    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        # ClipPPOLoss measures against the behaviour log-prob; move its ratio and KL to the proximal policy and
        # return log(π_prox / π_behav) as the (gradient-free) importance weight of the surrogate, which also
        # weights the per-sample KL term so that its mean estimates KL(π_prox ‖ π_θ) from behaviour samples
        log_weight, dist, kl_approx, _ = super()._log_weight(tensordict, adv_shape)
        proximal = tensordict.get(PROXIMAL_LOG_PROB_KEY, None)
        if proximal is None:
            raise KeyError(
                f"DecoupledClipPPOLoss needs {PROXIMAL_LOG_PROB_KEY!r} in the batch: call "
                "loss.write_proximal_log_prob(data) on each batch before its minibatches."
            )
        behaviour = tensordict.get(self.tensor_keys.sample_log_prob)
        log_is_weight = (proximal - behaviour).reshape(log_weight.shape)
        kl_proximal = (kl_approx + log_is_weight) * log_is_weight.exp()
        return log_weight - log_is_weight, dist, kl_proximal, log_is_weight
