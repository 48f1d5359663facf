"""Atomic, validated training checkpoints.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder, flushed to disk and then
renamed over the previous one, so a run killed at any moment leaves either the old or the new checkpoint, never a
torn file. Loading checks the format tag and that the run's configuration matches, and turns any unreadable file
into a clear error instead of a silent fresh start.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

FORMAT = "rl3_torchrl-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different run configuration.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> _ = open(path, "wb").write(b"garbage")
        >>> try:
        ...     load_checkpoint(path)
        ... except CheckpointError as err:
        ...     print("corrupt" in str(err))
        True
    """


def save_checkpoint(state: dict, path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + ``fsync`` + rename).

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> _ = save_checkpoint({"iteration": 3}, path)
        >>> load_checkpoint(path)["iteration"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path, *, expected_config: dict | None = None, ignore: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        expected_config (dict, optional): the flattened configuration of the run that resumes; every key of it
            but those in ``ignore`` must equal the checkpoint's, otherwise :class:`CheckpointError` names them.
        ignore (tuple of str): configuration keys allowed to differ (e.g. the number of iterations).

    Raises:
        CheckpointError: the file is missing, unreadable, not a checkpoint of this library, or incompatible.

    Examples:
        >>> import tempfile, os
        >>> path = save_checkpoint({"config": {"algo": "rl3"}}, os.path.join(tempfile.mkdtemp(), "c.pt"))
        >>> load_checkpoint(path, expected_config={"algo": "rl2"})
        Traceback (most recent call last):
        ...
        rl3_torchrl.checkpoint.CheckpointError: ... different configuration (algo: checkpoint 'rl3' vs run 'rl2').
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # any unpickling/zip error means the file is unusable
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or unreadable: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an rl3_torchrl checkpoint (expected format {FORMAT!r}).")
    if expected_config is not None:
        saved = state.get("config", {})
        keys = (set(saved) | set(expected_config)) - set(ignore)
        diff = {k: (saved.get(k), expected_config.get(k)) for k in sorted(keys)}
        diff = {k: pair for k, pair in diff.items() if pair[0] != pair[1]}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"checkpoint {str(path)!r} was written by a different configuration ({lines}).")
    return state
