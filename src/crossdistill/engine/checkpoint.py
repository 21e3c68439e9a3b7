"""Atomic, trusted-format checkpoints.

Writing: a temporary file in the same folder, flushed and fsynced, then ``os.replace`` — so the
previous checkpoint stays intact until the new one is complete, whatever kills the process. A
write that fails (disk full, no permission) removes its temporary file and raises one clear error.

Reading: always ``torch.load(..., weights_only=True)`` — tensors, numbers, strings and containers
only; a file that needs anything else (pickled classes, code) is refused as untrusted. The zip
archive's CRCs are checked first (torch does not), so a damaged file is an error, not bad weights.
See docs/reliability.md and docs/security.md.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List

import torch

from ..errors import CheckpointError

FORMAT = "crossdistill-checkpoint"
VERSION = 1


#: Test hook (see docs/reliability.md): seconds to pause after the temporary file is complete and
#: fsynced but before it is renamed over the checkpoint, so a test can SIGKILL a run mid-save.
SLOW_SAVE_ENV = "CROSSDISTILL_TEST_SLOW_SAVE"


def temp_prefix(path: Path) -> str:
    """Temporary files of ``atomic_save(…, path)`` are ``.{name}.XXXXXXXX.tmp`` next to it."""
    return f".{path.name}."


def atomic_save(obj: Any, path: str | os.PathLike, keep_previous: str | os.PathLike | None = None) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path`` (atomic on POSIX).

    A reader sees either the previous complete file or the new complete file, never a mix; a kill at
    any moment leaves at most a stale ``.NAME.*.tmp`` beside it (never read; removed on resume by
    :func:`remove_stale_temps`). With ``keep_previous``, the file being replaced is kept under that
    name (a hard link, so ``path`` itself never goes missing).
    """
    return _atomic_write(path, lambda f: torch.save(obj, f), keep_previous)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """A small text file (e.g. summary.json) written with the same protocol as :func:`atomic_save`."""
    return _atomic_write(path, lambda f: f.write(text.encode()))


def _atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any],
                  keep_previous: str | os.PathLike | None = None) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write to '{path.parent}' ({e.strerror or e}); "
                              "choose a writable output_dir=...") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        pause = os.environ.get(SLOW_SAVE_ENV)
        if pause:
            time.sleep(float(pause))
        if keep_previous is not None and path.exists():
            _keep_as(path, Path(keep_previous))
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        e = _os_error_in(e)
        if isinstance(e, OSError):
            hint = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else \
                "check the output_dir permissions"
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing was half-written"
            raise CheckpointError(f"could not write '{path}' ({e.strerror or e}); {hint}, then continue with "
                                  f"--resume ({kept})") from None
        raise
    return path


def _os_error_in(e: BaseException) -> BaseException:
    """The OSError behind ``e``, if any: torch.save turns a failed write (ENOSPC) into
    ``RuntimeError: … unexpected pos …`` raised while closing its archive, with the OSError as its
    context."""
    seen = e
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    return seen if seen is not None else e


def _keep_as(path: Path, previous: Path) -> None:
    """``previous`` becomes a copy of ``path`` (a hard link, renamed into place atomically)."""
    fd, link = tempfile.mkstemp(prefix=temp_prefix(previous), suffix=".tmp", dir=previous.parent)
    os.close(fd)
    os.unlink(link)
    try:
        os.link(path, link)
    except OSError:  # no hard links on this file system: a plain copy
        import shutil

        shutil.copyfile(path, link)
    os.replace(link, previous)


def remove_stale_temps(path: str | os.PathLike) -> List[Path]:
    """Delete temporary files left beside ``path`` by a save that was killed; returns them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(temp_prefix(path) + "*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


CORRUPT_HINT = "use an earlier checkpoint"


def load_file(path: str | os.PathLike, corrupt_hint: str = CORRUPT_HINT) -> Any:
    """``torch.load`` with ``weights_only=True`` and one clear error for each way it can fail;
    ``corrupt_hint`` is what a damaged file's message advises."""
    path = Path(os.path.expanduser(path))
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' is not a file; give the path of a .pt file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint '{path}' ({e.strerror or e}); check its permissions") from None
    if not head:
        raise CheckpointError(f"checkpoint '{path}' is empty (an interrupted copy?); {corrupt_hint}")
    if head != _ZIP_MAGIC and not head.startswith(_PICKLE_PROTO):
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint (it starts with {head!r}, not a torch.save "
                              "archive); give a file written by crossdistill or torch.save")
    if head == _ZIP_MAGIC:
        _check_crc(path, corrupt_hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found or (head != _ZIP_MAGIC and "Weights only load failed" in text):
            what = f"needs the Python object '{found.group(1)}'" if found else \
                "is not a tensors-only torch.save file (a raw pickle?)"
            raise CheckpointError(f"checkpoint '{path}' {what} and is refused: only tensors and plain values are "
                                  "loaded (weights_only=True), because unpickling can run code; if you trust the "
                                  "file, convert it to a state_dict as shown in docs/security.md") from None
        detail = re.search(r"Unsupported [^\n.]+", text)
        detail = detail.group(0).strip() if detail else _first_line(e)
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated (damaged pickle data: {detail}); "
                              f"{corrupt_hint}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError, IndexError,
            KeyError, TypeError, MemoryError, OverflowError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({_first_line(e)}); "
                              f"{corrupt_hint}") from None


def _check_crc(path: Path, corrupt_hint: str = CORRUPT_HINT) -> None:
    """torch.load does not verify the archive's CRC32s, so a flipped bit in a tensor would load
    silently; check them first (one extra read of the file, ~1 GB/s)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({_first_line(e)}); "
                              f"{corrupt_hint}") from None
    if bad is not None:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: its part '{bad}' fails its CRC check (damaged on "
                              f"disk or in transfer); {corrupt_hint}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    return line if len(line) <= 100 else line[:97] + "..."


def load_checkpoint(path: str | os.PathLike, corrupt_hint: str = CORRUPT_HINT) -> Dict[str, Any]:
    """A crossdistill checkpoint (training state or exported student)."""
    return _validated(load_file(path, corrupt_hint), path)


def _validated(obj: Any, path: str | os.PathLike) -> Dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a crossdistill checkpoint (a plain state_dict? "
                              "give it as `weights:` of a model instead)")
    version = obj.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"checkpoint '{path}' has format version {version!r}, newer than this "
                              f"crossdistill understands ({VERSION}); upgrade crossdistill")
    kind = obj.get("kind")
    need = {"train": ("model_spec", "distiller", "optimizer", "position", "rng"),
            "student": ("model_spec", "student")}.get(kind)
    if need is None:
        raise CheckpointError(f"checkpoint '{path}' has an unknown kind {kind!r} (expected 'train' or 'student'); "
                              "it was not written by crossdistill")
    lacking = [k for k in need if not isinstance(obj.get(k), (dict, list, tuple))]
    spec = obj.get("model_spec")
    if isinstance(spec, dict):
        types = {"name": str, "options": dict, "num_classes": int, "in_channels": int}
        lacking += [f"model_spec.{k}" for k, t in types.items() if not isinstance(spec.get(k), t)]
    if lacking:
        raise CheckpointError(f"checkpoint '{path}' lacks {', '.join(lacking)}; it is damaged or was not written "
                              "by crossdistill — use an earlier checkpoint")
    return obj


def load_state_dict_file(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """A state dict: a plain ``{name: tensor}`` file, or the student of a crossdistill checkpoint."""
    obj = load_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return student_state(_validated(obj, path))
    for key in ("state_dict", "model", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"'{path}' is not a state dict (a mapping of names to tensors)")
    return obj


def load_into(model: torch.nn.Module, state: Dict[str, torch.Tensor], what: str, source: str) -> None:
    """``load_state_dict`` with a one-line message on missing/unexpected keys or shape mismatch."""
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"weights in '{source}' are not all tensors ({not_tensors[:3]}); "
                              "give a state_dict file (names → tensors)")
    try:
        # torch's own strict load first: it runs the models' key-renaming hooks
        # (_load_from_state_dict), so legacy layouts a model knows how to read are accepted
        model.load_state_dict(state)
        return
    except RuntimeError:
        pass
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    detail = "; ".join(x for x in (
        f"{len(missing)} missing {missing[:3]}" if missing else "",
        f"{len(unexpected)} unexpected {unexpected[:3]}" if unexpected else "",
        f"{len(wrong)} of another shape {wrong[:2]}" if wrong else "") if x) or "torch refused the state dict"
    raise CheckpointError(f"weights in '{source}' do not fit the {what}: {detail}; "
                          "check the model name, num_classes and in_channels")


def student_state(ckpt: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The student's weights from an exported student or a full training checkpoint."""
    if "student" in ckpt:
        return ckpt["student"]
    prefix = "student."
    return {k[len(prefix):]: v for k, v in ckpt["distiller"].items() if k.startswith(prefix)}
