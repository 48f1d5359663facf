"""Atomic, validated training checkpoints.

A checkpoint is one ``torch.save`` file written to a temporary name in the same folder, flushed to disk and then
renamed over the previous one, so a run killed at any moment leaves either the old or the new checkpoint, never a
torn file. Loading checks the format tag and that the run's configuration matches, and turns any unreadable file
into a clear error instead of a silent fresh start. :class:`RunLock` keeps a second process from writing into the
same run folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
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
    tmp = path.with_name(f"{_temporary_prefix(path)}{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def keep_checkpoint(path, iteration: int, keep_last: int) -> list[Path]:
    """Keep the checkpoint at ``path`` as ``checkpoints/iteration_<N>.pt`` beside it; delete all but the
    ``keep_last`` newest kept ones. Returns the kept files, oldest first.

    The kept file is a hard link to the checkpoint (no extra space: :func:`save_checkpoint` later renames a new
    file over ``path``, the link keeps the old one), made under a temporary name and renamed into place, so a kill
    never leaves a torn file. This is keep-last-k; torchrl's ``CheckpointRotation`` does the same for its own
    directory format, which :func:`load_checkpoint`, ``load_actor`` and the committed runs do not use.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> for iteration in (10, 20, 30):
        ...     _ = save_checkpoint({"iteration": iteration}, path)
        ...     kept = keep_checkpoint(path, iteration, keep_last=2)
        >>> [p.name for p in kept], load_checkpoint(kept[0])["iteration"]
        (['iteration_000020.pt', 'iteration_000030.pt'], 20)
    """
    path = Path(path)
    folder = path.parent / "checkpoints"
    folder.mkdir(exist_ok=True)
    target = folder / f"iteration_{iteration:06d}.pt"
    tmp = target.with_name(f"{_temporary_prefix(target)}{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(path, tmp)
    os.replace(tmp, target)
    kept = sorted(folder.glob("iteration_*.pt"))
    for old in kept[: max(len(kept) - keep_last, 0)]:
        old.unlink()
    return kept[-keep_last:] if keep_last else []


def temporary_files(path) -> list[Path]:
    """The temporary files :func:`save_checkpoint` leaves beside ``path`` when its process is killed mid-write.

    Examples:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.pt")
        >>> _ = open(os.path.join(os.path.dirname(path), ".checkpoint.pt.tmp-123"), "wb").write(b"torn")
        >>> [p.name for p in temporary_files(path)]
        ['.checkpoint.pt.tmp-123']
    """
    path = Path(path)
    return sorted(path.parent.glob(f"{_temporary_prefix(path)}*"))


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def load_checkpoint(
    path, *, expected_config: dict | None = None, ignore: tuple[str, ...] = (), defaults: dict | None = None
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        expected_config (dict, optional): the flattened configuration of the run that resumes; every key of it
            but those in ``ignore`` must equal the checkpoint's, otherwise :class:`CheckpointError` names them.
        ignore (tuple of str): configuration keys allowed to differ (e.g. the number of iterations).
        defaults (dict, optional): the default value of each configuration key (see :func:`check_config`).

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
        check_config(state.get("config", {}), expected_config, ignore=ignore, defaults=defaults, source=path)
    return state


def check_config(
    saved: dict, expected: dict, *, ignore: tuple[str, ...] = (), defaults: dict | None = None, source="checkpoint"
) -> None:
    """Check that the flat configuration of a run matches the one ``saved`` in its checkpoint.

    Every key but those in ``ignore`` must be equal; a key ``saved`` lacks (one added after the checkpoint was
    written) matches a run that holds its value in ``defaults``. :func:`load_checkpoint` calls it with its
    ``expected_config``.

    Raises:
        CheckpointError: naming every key that differs, with both values.

    Examples:
        >>> check_config({"lr": 0.1}, {"lr": 0.1, "added": "stop"}, defaults={"added": "stop"})
        >>> check_config({"lr": 0.1}, {"lr": 0.2, "iterations": 9}, ignore=("iterations",), source="c.pt")
        Traceback (most recent call last):
        ...
        rl3_torchrl.checkpoint.CheckpointError: checkpoint 'c.pt' ... configuration (lr: checkpoint 0.1 vs run 0.2).
    """
    saved = {**{k: v for k, v in (defaults or {}).items() if k in expected}, **saved}
    keys = (set(saved) | set(expected)) - set(ignore)
    diff = {k: (saved.get(k), expected.get(k)) for k in sorted(keys)}
    diff = {k: pair for k, pair in diff.items() if pair[0] != pair[1]}
    if diff:
        lines = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"checkpoint {str(source)!r} was written by a different configuration ({lines}).")


class RunLock:
    """An exclusive lock on a run folder: one writer per ``output_dir``, across processes and hosts.

    The lock is an ``flock`` on ``<directory>/.lock``, which records the owner's pid and host. The kernel drops it
    when its process ends, even by ``kill -9``, so a lock left by a dead run never blocks the next one. Acquiring a
    lock held by a live process raises a ``RuntimeError`` naming that process. Use it as a context manager.

    Args:
        directory: the run folder (created if missing).

    Examples:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> with RunLock(folder):
        ...     RunLock(folder).acquire()
        Traceback (most recent call last):
        ...
        RuntimeError: ... is in use by pid ... on host ...
        >>> with RunLock(folder) as lock:  # released: free again
        ...     lock.owner()["pid"] == os.getpid()
        True
    """

    NAME = ".lock"

    def __init__(self, directory):
        self.path = Path(directory) / self.NAME
        self._fd: int | None = None

    def owner(self) -> dict:
        """The ``{"pid", "host"}`` recorded in the lock file (empty if there is none or it is unreadable)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        """Take the lock, or raise ``RuntimeError`` naming the live process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = self.owner()
                raise RuntimeError(
                    f"{str(self.path.parent)!r} is in use by pid {owner.get('pid', '?')} on host "
                    f"{owner.get('host', '?')} (lock {str(self.path)!r}): one run writes into a folder at a time; "
                    "wait for it to end or choose another output_dir."
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # the previous owner removed the file between our open and our flock
                same_file = False
            if not same_file:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
            self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (nothing if it is not held)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
