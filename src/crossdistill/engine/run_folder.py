"""A run's output folder: its files, its lock, and the checks made before anything is written.

One run per folder: a run holds an exclusive ``flock`` on ``.lock`` for its whole life. The kernel
releases it when the process ends, however it ends (SIGKILL included), so a stale lock never
blocks ``--resume``; a second run on the same folder is refused in one line while the first runs.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import CheckpointError, ConfigError, FolderInUseError
from .checkpoint import atomic_write_text, load_checkpoint, remove_stale_temps

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.previous.pt"  # the checkpoint before the last one (a damaged last one falls back to it)
STUDENT = "student.pt"
SUMMARY = "summary.json"
LOG = "metrics.jsonl"
CONFIG = "config.yaml"
LOCK = ".lock"

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``FOLDER/.lock``.

    The lock file is created once and never written or removed (removing it would race with a
    process about to lock it), so taking the lock changes no file of a finished run."""

    def __init__(self, folder: Path, setting: str = "output_dir"):
        self.folder = folder
        self.setting = setting  # the config key that names the folder, for the messages
        self._fd: Optional[int] = None

    def acquire(self, wait: bool = False) -> "FolderLock":
        """Take the lock; ``wait``: block until the holder releases it, instead of refusing."""
        if fcntl is None or self._fd is not None:
            return self
        path = self.folder / LOCK
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ConfigError(f"{self.setting} '{self.folder}' is not writable ({e.strerror or e}); "
                              f"choose another {self.setting}=...") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            owner = _lock_owner(fd)
            os.close(fd)
            who = f" (pid {owner})" if owner else ""
            raise FolderInUseError(
                f"output_dir '{self.folder}' is in use by another crossdistill run{who}; wait for it to finish "
                "(then --resume continues it), stop it, or choose another output_dir=... (nothing was changed)"
            ) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __del__(self):  # a Trainer dropped without fit() must not keep its folder locked
        try:
            self.release()
        except Exception:
            pass


def _lock_owner(fd: int) -> Optional[int]:
    """The pid holding a flock on ``fd``'s file, from /proc/locks (Linux; None elsewhere)."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].split(":")[-1] == str(st.st_ino):
                    return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


def check_new_run(out: Path) -> None:
    """Without --resume, a folder that holds a run is refused (nothing is overwritten)."""
    held = [n for n in (CHECKPOINT, PREVIOUS, STUDENT, SUMMARY) if (out / n).exists()]
    if held:
        raise ConfigError(f"'{out}' already holds a run ({held[0]}); pass --resume to continue it, "
                          "or choose another output_dir=... (nothing was overwritten)")


def prepare(out: Path) -> None:
    """Make the folder, prove it writable, clear stale temporary files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir '{out}' is not writable ({e.strerror or e}); "
                          "choose another output_dir=...") from None
    # a save killed half-way leaves a temporary file; it is never read, and goes now
    for name in (CHECKPOINT, PREVIOUS, STUDENT, SUMMARY, LOG, CONFIG):
        remove_stale_temps(out / name)


def write_config(out: Path, config_yaml: str) -> None:
    """A readable copy of the run's config (the checkpoint holds the same, for resume checks)."""
    try:
        same = (out / CONFIG).read_text() == config_yaml
    except OSError:
        same = False
    if not same:  # rewritten only when it changed (a resume may change a few keys)
        atomic_write_text(config_yaml, out / CONFIG)


def load_resume_checkpoint(out: Path) -> Optional[Dict[str, Any]]:
    """The training checkpoint to resume from, or None for a run killed before its first one.

    A damaged ``checkpoint.pt`` falls back to ``checkpoint.previous.pt`` (with a note), and the
    damaged file is set aside as ``checkpoint.damaged.pt`` so that it never becomes "previous".
    """
    path, previous = out / CHECKPOINT, out / PREVIOUS
    if not path.exists() and not previous.exists():
        done = [n for n in (STUDENT, SUMMARY) if (out / n).exists()]
        if done:
            raise CheckpointError(f"'{out}' holds {done[0]} but no {CHECKPOINT} to resume from; "
                                  "choose another output_dir=... for a new run (nothing was overwritten)")
        return None  # killed before its first checkpoint: start again from the beginning
    if not path.exists():  # killed between the two renames of a save without hard links
        return _train_checkpoint(load_checkpoint(previous), previous)
    hint = (f"the previous checkpoint '{PREVIOUS}' is used instead" if previous.exists() else
            f"no earlier checkpoint is kept in '{out}' — start a new run with another output_dir=...")
    try:
        return _train_checkpoint(load_checkpoint(path, corrupt_hint=hint), path)
    except CheckpointError as damaged:
        if not previous.exists():
            raise
        try:
            ckpt = _train_checkpoint(load_checkpoint(previous), previous)
        except CheckpointError:
            raise CheckpointError(f"both '{path}' and '{previous}' are damaged; start a new run with another "
                                  "output_dir=...") from None
        os.replace(path, out / "checkpoint.damaged.pt")
        print(f"note: {damaged}; resuming from step {ckpt['position']['global_step']}", file=sys.stderr)
        return ckpt


def _train_checkpoint(ckpt: Dict[str, Any], path: Path) -> Dict[str, Any]:
    if ckpt.get("kind") != "train":
        raise CheckpointError(f"'{path}' is an exported student, not a training checkpoint; it cannot be resumed")
    return ckpt
