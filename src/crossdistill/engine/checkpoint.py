"""Atomic, trusted-format checkpoints.

Writing: a temporary file in the same folder, flushed and fsynced, then ``os.replace`` — so the
previous checkpoint stays intact until the new one is complete, whatever kills the process. A
write that fails (disk full, no permission) removes its temporary file and raises one clear error.

Reading: always ``torch.load(..., weights_only=True)`` — tensors, numbers, strings and containers
only; a file that needs anything else (pickled classes, code) is refused as untrusted.
"""
from __future__ import annotations

import errno
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from ..errors import CheckpointError

FORMAT = "crossdistill-checkpoint"
VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write to '{path.parent}': {e.strerror}; choose a writable output_dir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            hint = "free some disk space" if e.errno == errno.ENOSPC else "check the output_dir permissions"
            raise CheckpointError(f"could not write checkpoint '{path}': {e.strerror or e}; {hint} "
                                  "(the previous checkpoint is intact)") from None
        raise
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_file(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` and one clear error for each way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"checkpoint '{path}' holds objects other than tensors and plain values "
                                  f"and is refused as untrusted ({first[:120]}); re-save it as a state_dict") from None
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({first[:120]}); use an earlier checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, IndexError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({msg[:120]}); use an earlier checkpoint") from None


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """A crossdistill checkpoint (training state or exported student)."""
    obj = load_file(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a crossdistill checkpoint (a plain state_dict? "
                              "give it as `weights:` of a model instead)")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"checkpoint '{path}' has format version {obj['version']}, newer than this "
                              f"crossdistill understands ({VERSION}); upgrade crossdistill")
    return obj


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A state dict: a plain ``{name: tensor}`` file, or the student of a crossdistill checkpoint."""
    obj = load_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return student_state(obj)
    for key in ("state_dict", "model", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{path}' is not a state dict (a mapping of names to tensors)")
    return obj


def load_into(model: torch.nn.Module, state: Dict[str, torch.Tensor], what: str, source: str) -> None:
    """``load_state_dict`` with a one-line message on missing/unexpected keys or shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(x for x in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {wrong[:2]}" if wrong else "") if x)
        raise CheckpointError(f"weights in '{source}' do not fit the {what}: {detail}; "
                              "check the model name, num_classes and in_channels")
    model.load_state_dict(state)


def student_state(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The student's weights from an exported student or a full training checkpoint."""
    if "student" in ckpt:
        return ckpt["student"]
    prefix = "student."
    return {k[len(prefix):]: v for k, v in ckpt["distiller"].items() if k.startswith(prefix)}
