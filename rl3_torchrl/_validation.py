"""Argument checks shared by every public constructor.

Each check raises a ``ValueError`` (or ``TypeError``) whose message names the argument, the value received and
what is allowed, so that a user can fix the call without reading the source.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    _check_range(name, value, low, high, low_inclusive=True)
    return int(value)


def check_float(
    name: str, value, *, low: float | None = None, high: float | None = None, low_inclusive: bool = True
) -> float:
    """Return ``value`` as a ``float`` after checking it is a finite real number in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__}).")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    _check_range(name, value, low, high, low_inclusive=low_inclusive)
    return float(value)


def check_choice(name: str, value, choices: Iterable):
    """Return ``value`` after checking it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {choices}.")
    return value


def optional(check):
    """A check ``(name, value)`` that also admits ``None`` (and returns it)."""
    return lambda name, value: None if value is None else check(name, value)


def _check_range(name, value, low, high, *, low_inclusive):
    below = low is not None and (value < low if low_inclusive else value <= low)
    above = high is not None and value > high
    if below or above:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{name}={value!r} is out of range; allowed: {bracket}{lo}, {hi}].")
