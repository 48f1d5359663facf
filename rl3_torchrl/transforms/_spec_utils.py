"""Spec and key helpers shared by the transforms."""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torchrl.data import Binary, Categorical, MultiCategorical, MultiOneHot, OneHot


def discrete_action_size(spec, owner: str) -> tuple[int, bool]:
    """``(n_actions, one_hot)`` of a ``Categorical`` or ``OneHot`` action spec; a clear error for anything else."""
    if isinstance(spec, OneHot) and not isinstance(spec, MultiOneHot):
        return int(spec.space.n), True
    if isinstance(spec, Categorical) and not isinstance(spec, (Binary, MultiCategorical)):
        return int(spec.space.n), False
    raise TypeError(
        f"{owner} needs a discrete action spec (Categorical or OneHot) to infer the number of actions, got "
        f"{type(spec).__name__}; wrap a continuous or multi-discrete env differently or pass n_actions= where allowed."
    )


def parent_action_size(transform, action_key, owner: str) -> tuple[int, bool]:
    """``(n_actions, one_hot)`` of ``action_key`` in the action spec of the env that holds ``transform``."""
    if transform.parent is None:
        raise RuntimeError(f"{owner} must be used inside a TransformedEnv (it reads the action spec).")
    spec = transform.parent.full_action_spec
    if action_key not in spec.keys(True, True):
        raise KeyError(
            f"{owner}: action_key={action_key!r} is not an action of the env; available: "
            f"{sorted(str(k) for k in spec.keys(True, True))}."
        )
    return discrete_action_size(spec[action_key], owner)


def action_index(action: torch.Tensor, one_hot: bool) -> torch.Tensor:
    """Integer action indices from a Categorical (``[*B]``) or one-hot (``[*B, A]``, any dtype, bool included)
    action."""
    if not one_hot:
        return action
    return (action.to(torch.uint8) if action.dtype == torch.bool else action).argmax(-1)


def get_key(tensordict: TensorDictBase, key, argument: str, owner: str) -> torch.Tensor:
    """``tensordict[key]``, or a ``KeyError`` naming the argument, the key and the keys available."""
    value = tensordict.get(key, None)
    if value is None:
        available = sorted(str(k) for k in tensordict.keys(True, True))
        raise KeyError(f"{owner}: {argument}={key!r} is not in the tensordict; available keys: {available}.")
    return value
