"""The teacher cache: distillation without the teacher on the training path (in the spirit of FKD,
Shen & Xing, ECCV 2022, which stores soft labels of augmented regions so that training never runs
the teacher).

With ``teacher_cache: {views: V}`` every training sample gets V fixed augmented views
(:class:`~crossdistill.data.seeded.AugmentedDataset`: view ``v`` of sample ``i`` is replayed from
``(teacher_cache.seed, i, v)``); each epoch shows one view per sample, picked from
``(seed, epoch, i)``. Before training, the teacher runs once over every (sample, view) and the
tensors the configured terms read of it — its output (logits, dense maps) and its tapped features,
exactly ``Distiller.teacher_reads()`` — go to disk; from then on every batch carries them
(``teacher/<name>/<path>`` fields) and the ``Distiller`` takes them from the batch instead of running
the teacher (a generic path: no method is named). Every method that reads only teacher tensors
works unchanged, CRD included (it receives the cached pooled features).

Storage: one ``.npy`` file per tensor, ``[N, V, *shape]``, read through numpy memory maps (never
pickle), float16 by default (``dtype``); ``topk: k`` keeps only the k largest entries of a
``[classes]`` output (values, indices, and the log-sum-exp of the rest: the dense logits are rebuilt
with every other entry set to one value that keeps their total probability mass at T = 1 exactly).
The fill is resumable (``filled.npy`` marks finished samples; a killed fill continues where it
stopped) and split across DDP ranks (rank r fills every r-th chunk; the folder must be visible to
every rank); each rank then reads the rows of its shard.

A ``manifest.json`` keys the cache: a hash of every teacher's weights (and class, input view), the
data set's identity (name, options, size, a hash of a few raw samples), the augmentation (kind,
transform, view seed, image size), V, the stored tensors (paths, shapes, dtype, top-k) and the
teacher's precision. A cache whose manifest differs is refused in one line naming what changed (or
rebuilt with ``rebuild: true``): a cached output is never returned for another view, teacher or data
set.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from .data.seeded import AugmentedDataset
from .engine.checkpoint import atomic_write_text
from .engine.run_folder import LOCK, FolderLock
from .errors import ConfigError, DataError
from .sides import teacher_key
from .taps import OUTPUT
from .teacher_runtime import unfolded_state_dict

FORMAT = 1
MANIFEST = "manifest.json"
FILLED = "filled.npy"
#: what a manifest difference means, for the one-line refusal
WHAT = {"teachers": "the teacher (its weights, class or input view)", "data": "the data set",
        "augment": "the augmentation", "views": "the number of views", "tensors": "the stored teacher tensors",
        "precision": "the teacher's precision", "format": "the cache format"}


# ------------------------------------------------------------------------------ keys

def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, values); a teacher's state as it was before
    its BatchNorms were folded (``distill.fast_teacher``), so the cache does not depend on that option."""
    h = hashlib.sha256()
    for name, t in sorted(unfolded_state_dict(model).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _innermost(ds: Any) -> Any:
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def _augmented(ds: Any):
    while ds is not None and not isinstance(ds, AugmentedDataset):
        ds = getattr(ds, "dataset", None)
    return ds


def data_fingerprint(ds: Dataset) -> str:
    """sha256 of the size and a few raw (un-augmented) samples: catches another data set or split."""
    raw = _innermost(ds)
    n = len(raw)
    h = hashlib.sha256(str(n).encode())
    for i in sorted({0, n // 3, (2 * n) // 3, n - 1}):
        for key, value in sorted(raw[i].items()):
            if isinstance(value, Tensor):
                h.update(key.encode())
                h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def manifest_for(run, shapes: Dict[str, Dict[str, Any]], precision: str) -> Dict[str, Any]:
    """Everything the cached tensors depend on."""
    cfg, tc = run.cfg, run.cfg.teacher_cache
    aug = _augmented(run.train_set)
    distiller = run.distiller
    return {
        "format": FORMAT,
        "teachers": {n: {"weights_sha256": weights_hash(distiller.teachers[n]), "class": type(distiller.teachers[n]).__name__,
                         "input": cfg.teachers[n].input if n in cfg.teachers else "identity"}
                     for n in sorted(distiller.teacher_reads())},
        "data": {"name": cfg.data.name, "options": cfg.data.options, "size": len(run.train_set),
                 "fingerprint": data_fingerprint(run.train_set)},
        "augment": {"kind": cfg.data.augment, "transform": repr(aug.transform) if aug is not None else None,
                    "view_seed": tc.seed, "image_size": list(run.train_set[0]["input"].shape)},
        "views": tc.views,
        "tensors": shapes,
        "precision": precision,
    }


def _differs(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    for key in WHAT:
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(new.get(key), sort_keys=True):
            return key
    return None


# ------------------------------------------------------------------------------ storage

class _Store:
    """The ``.npy`` files of one cache folder (memory maps opened on first use in each process)."""

    def __init__(self, folder: Path, manifest: Dict[str, Any]):
        self.folder, self.manifest = folder, manifest
        self.views = int(manifest["views"])
        self._maps: Dict[str, np.ndarray] = {}

    def files(self) -> Dict[str, tuple]:
        """file name → (shape, numpy dtype) of every array of the cache."""
        n, v = self.manifest["data"]["size"], self.views
        out = {FILLED: ((n,), np.bool_)}
        for key, spec in self.manifest["tensors"].items():
            stem = key.replace("/", "__")
            dtype = np.float16 if spec["dtype"] == "float16" else np.float32
            if spec.get("topk"):
                k = spec["topk"]
                out[f"{stem}.values.npy"] = ((n, v, k), dtype)
                out[f"{stem}.indices.npy"] = ((n, v, k), np.int32)
                out[f"{stem}.rest_lse.npy"] = ((n, v), np.float32)
            else:
                out[f"{stem}.npy"] = ((n, v, *spec["shape"]), dtype)
        return out

    def create(self) -> None:
        for name, (shape, dtype) in self.files().items():
            arr = np.lib.format.open_memmap(self.folder / name, mode="w+", dtype=dtype, shape=shape)
            if name == FILLED:
                arr[:] = False
            arr.flush()
            del arr

    def array(self, name: str, write: bool = False) -> np.ndarray:
        key = (name, write)
        if key not in self._maps:
            try:
                self._maps[key] = np.load(self.folder / name, mmap_mode="r+" if write else "r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(f"teacher cache file '{self.folder / name}' cannot be read ({e}); delete the folder "
                                f"'{self.folder}' to rebuild the cache") from None
        return self._maps[key]

    def __getstate__(self):  # data-loader workers open their own maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    # -- rows ---------------------------------------------------------------------------------
    def write(self, key: str, rows: np.ndarray, view: int, value: Tensor) -> None:
        spec = self.manifest["tensors"][key]
        stem = key.replace("/", "__")
        value = value.detach().float().cpu()
        dtype = np.float16 if spec["dtype"] == "float16" else np.float32
        if spec.get("topk"):
            k = spec["topk"]
            top = value.topk(k, dim=1)
            rest = value.scatter(1, top.indices, float("-inf"))
            self.array(f"{stem}.values.npy", True)[rows, view] = top.values.numpy().astype(dtype)
            self.array(f"{stem}.indices.npy", True)[rows, view] = top.indices.numpy().astype(np.int32)
            self.array(f"{stem}.rest_lse.npy", True)[rows, view] = torch.logsumexp(rest, dim=1).numpy()
        else:
            self.array(f"{stem}.npy", True)[rows, view] = value.numpy().astype(dtype)

    def read(self, index: int, view: int) -> Dict[str, Tensor]:
        if not self.array(FILLED)[index]:
            raise DataError(f"teacher cache '{self.folder}' has no entry for sample {index}: the fill did not finish; "
                            "run again to complete it")
        out: Dict[str, Tensor] = {}
        for key, spec in self.manifest["tensors"].items():
            stem = key.replace("/", "__")
            if spec.get("topk"):
                out[key] = dense_from_topk(torch.from_numpy(np.array(self.array(f"{stem}.values.npy")[index, view])).float(),
                                           torch.from_numpy(np.array(self.array(f"{stem}.indices.npy")[index, view])).long(),
                                           float(self.array(f"{stem}.rest_lse.npy")[index, view]), spec["shape"][0])
            else:
                out[key] = torch.from_numpy(np.array(self.array(f"{stem}.npy")[index, view])).float()
        return out

    def flush(self) -> None:
        for (_, write), arr in self._maps.items():
            if write:
                arr.flush()

    def close(self) -> None:
        self.flush()
        self._maps.clear()

    def size_bytes(self) -> int:
        return sum((self.folder / name).stat().st_size for name in self.files())


def dense_from_topk(values: Tensor, indices: Tensor, rest_lse: float, classes: int) -> Tensor:
    """Dense logits from the k largest ones: every other entry gets ``rest_lse − log(classes − k)``,
    so that at T = 1 the softmax keeps the k stored probabilities and the rest's total mass exactly."""
    k = values.shape[-1]
    fill = rest_lse - math.log(classes - k) if classes > k else float("-inf")
    return torch.full((classes,), fill, dtype=torch.float32).scatter(0, indices, values)


# ------------------------------------------------------------------------------ the dataset

class CachedTeacherDataset(Dataset):
    """The training set with the teacher's stored tensors added to every sample."""

    def __init__(self, dataset: Dataset, store: _Store):
        self.dataset, self.store = dataset, store

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        sample = dict(self.dataset[index])
        sample.update(self.store.read(int(index), int(sample["view"])))
        return sample

    @property
    def info(self):
        return self.dataset.info

    @property
    def labels(self):
        return getattr(self.dataset, "labels", None)


# ------------------------------------------------------------------------------ filling

def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def _probe_shapes(run, device: torch.device, amp_dtype, channels_last: bool) -> Dict[str, Dict[str, Any]]:
    """Per stored tensor: its per-sample shape, storage dtype and top-k (from one teacher forward)."""
    tc = run.cfg.teacher_cache
    aug = _augmented(run.train_set)
    x = _inputs(aug, [0], 0, device, channels_last)
    shapes: Dict[str, Dict[str, Any]] = {}
    for name, paths in sorted(run.distiller.teacher_reads().items()):
        feats = _teacher(run.distiller, name, x, device, amp_dtype)
        for p in paths:
            shape = list(feats[p].shape[1:])
            topk = tc.topk if tc.topk and p == OUTPUT and len(shape) == 1 and tc.topk < shape[0] else None
            shapes[teacher_key(name, p)] = {"shape": shape, "dtype": tc.dtype, "topk": topk}
    return shapes


def _inputs(aug, rows: Sequence[int], view: int, device: torch.device, channels_last: bool) -> Tensor:
    x = torch.stack([aug.view(int(i), view)["input"] for i in rows]).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _teacher(distiller, name: str, x: Tensor, device: torch.device, amp_dtype) -> Dict[str, Tensor]:
    if amp_dtype is None:
        return distiller.teacher_features(name, x)
    with torch.autocast(device.type, dtype=amp_dtype):
        return distiller.teacher_features(name, x)


def _fill(run, store: _Store, device, amp_dtype, channels_last, rank: int, world: int, batch: int, log) -> int:
    aug = _augmented(run.train_set)
    filled = store.array(FILLED, True)
    n = len(filled)
    chunks = [range(s, min(s + batch, n)) for s in range(0, n, batch)]
    todo = [c for j, c in enumerate(chunks) if j % world == rank and not bool(np.all(filled[c.start:c.stop]))]
    reads = run.distiller.teacher_reads()
    done = 0
    for c in todo:
        rows = np.arange(c.start, c.stop)
        for v in range(store.views):
            x = _inputs(aug, rows, v, device, channels_last)
            for name, paths in reads.items():
                feats = _teacher(run.distiller, name, x, device, amp_dtype)
                for p in paths:
                    store.write(teacher_key(name, p), rows, v, feats[p])
        store.flush()  # the rows before their flag: a killed fill never marks a row it did not write
        filled[c.start:c.stop] = True
        filled.flush()
        done += len(rows)
        if log and rank == 0 and len(todo) > 1:
            log(f"teacher cache: {done * world}/{n} samples × {store.views} views")
    return done


def attach(run, device: torch.device, amp_dtype: Optional[torch.dtype], channels_last: bool = False,
           rank: int = 0, world: int = 1, output_dir: Optional[Path] = None, log=None) -> Dict[str, Any]:
    """:func:`cached_training_set`, put in front of the run's training set (``run.train_set`` is
    replaced); returns what it did."""
    run.train_set, info = cached_training_set(run, device, amp_dtype, channels_last, rank, world, output_dir, log)
    return info


def cached_training_set(run, device: torch.device, amp_dtype: Optional[torch.dtype], channels_last: bool = False,
                        rank: int = 0, world: int = 1, output_dir: Optional[Path] = None, log=None):
    """Open (or build, or finish filling) the run's teacher cache: ``(training set that reads it,
    info)`` — info says what it did: folder, bytes on disk, samples filled by this process and the
    fill time. Without ``teacher_cache`` in the config: ``(run.train_set, {})``. The run is unchanged."""
    tc = run.cfg.teacher_cache
    if tc is None:
        return run.train_set, {}
    if not run.distiller.teacher_reads():
        raise ConfigError("teacher_cache is set but no term reads a teacher: remove teacher_cache, or add a term "
                          "that distils from a teacher")
    if _augmented(run.train_set) is None or _augmented(run.train_set).views != tc.views:
        raise ConfigError("teacher_cache needs the training set built with its views (build_run does this); "
                          "build the run from the same config")
    folder = Path(tc.dir).expanduser() if tc.dir else Path(output_dir or run.cfg.output_dir) / "teacher_cache"
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    precision += " channels_last" if channels_last else ""
    was_training = run.distiller.training
    run.distiller.eval()
    # one run at a time opens and fills a folder: runs that share teacher_cache.dir (seeds started side
    # by side) wait for each other, and the later ones find it filled; the ranks of one DDP run share
    # the fill through barriers instead
    lock = FolderLock(folder, "teacher_cache.dir").acquire(wait=True) if world == 1 else None
    try:
        manifest = manifest_for(run, _probe_shapes(run, device, amp_dtype, channels_last), precision)
        store = _open(folder, manifest, tc.rebuild, rank, world)
        t0 = time.perf_counter()
        batch = tc.fill_batch_size or run.cfg.data.eval_batch_size or run.cfg.data.batch_size
        filled = _fill(run, store, device, amp_dtype, channels_last, rank, world, batch, log)
        seconds = time.perf_counter() - t0
        store.close()
        _barrier(world)
        if rank == 0 and not _read_manifest(folder).get("complete"):
            if not bool(np.all(store.array(FILLED))):
                raise DataError(f"teacher cache '{folder}' is incomplete after the fill; delete it and run again")
            _write_manifest(folder, {**manifest, "complete": True})
        _barrier(world)
    finally:
        if lock is not None:
            lock.release()
        run.distiller.train(was_training)
    store = _Store(folder, manifest)
    cached = CachedTeacherDataset(run.train_set, store)
    info = {"dir": str(folder), "bytes": store.size_bytes(), "filled_samples": filled, "fill_seconds": seconds,
            "samples": manifest["data"]["size"], "views": tc.views}
    if log and rank == 0 and filled:
        log(f"teacher cache: filled {filled} samples × {tc.views} views in {seconds:.1f} s; "
            f"{info['bytes'] / 2**20:.1f} MiB in {folder}")
    return cached, info


def _read_manifest(folder: Path) -> Dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(folder: Path, manifest: Dict[str, Any]) -> None:
    atomic_write_text(json.dumps(manifest, indent=1, sort_keys=True), folder / MANIFEST)


def _open(folder: Path, manifest: Dict[str, Any], rebuild: bool, rank: int, world: int) -> _Store:
    """Check the folder's manifest against ``manifest``: the same → reuse (finish a partial fill);
    none → create; another → refuse (or rebuild). Rank 0 creates, the others wait."""
    old = _read_manifest(folder)
    changed = _differs(old, manifest) if old else None
    if changed and not rebuild:
        raise ConfigError(f"teacher cache '{folder}' was built for another setup: {WHAT[changed]} changed; "
                          f"delete the folder, set teacher_cache.dir to another folder, or teacher_cache.rebuild=true")
    if folder.exists() and not old and any(p.name != LOCK for p in folder.iterdir()):
        raise ConfigError(f"'{folder}' is not empty and holds no teacher cache manifest; choose another "
                          "teacher_cache.dir (nothing was overwritten)")
    fresh = not old or changed is not None
    _barrier(world)  # every rank has read the folder before rank 0 changes it
    if rank == 0 and fresh:
        if changed:
            print(f"note: rebuilding the teacher cache in '{folder}': {WHAT[changed]} changed", file=sys.stderr)
            for p in folder.iterdir():  # all but the lock file, which a waiting run may hold open
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        store = _Store(folder, manifest)
        store.create()
        _write_manifest(folder, {**manifest, "complete": False})
    _barrier(world)
    return _Store(folder, manifest)


def describe(info: Dict[str, Any]) -> List[str]:
    """Lines for a report: size on disk per 10 000 samples and the fill time."""
    if not info:
        return []
    per_10k = info["bytes"] / max(info["samples"], 1) * 10_000
    return [f"teacher cache: {info['views']} views, {info['bytes'] / 2**20:.1f} MiB "
            f"({per_10k / 2**20:.1f} MiB per 10 000 samples), filled in {info['fill_seconds']:.1f} s"]
