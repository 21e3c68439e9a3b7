"""``"nyuv2"``: the labelled NYU Depth v2 set (1449 RGB-D images with dense labels).

Reads ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5, via h5py). h5py shows MATLAB arrays with
their axes reversed: ``images`` ``[N, 3, W, H]`` uint8, ``depths`` ``[N, W, H]`` float (metres) and
``labels`` ``[N, W, H]`` uint16 (0 = unlabelled, 1…894 = raw object classes); we transpose back to
``[C, H, W]``. Fields: ``input`` (normalised RGB, ImageNet mean/std), ``mask`` (long, 255 = ignore),
``depth`` (``[1, H, W]`` metres, 0 = invalid). There is no image-level label, so
``info.num_classes`` is 0; the segmentation classes are ``info.num_seg_classes``.

``root``: the .mat file itself or a folder holding it; default ``$CROSSDISTILL_DATA/nyuv2`` then
``$CROSSDISTILL_DATA`` (``~/data`` when the variable is unset).

Options:

- ``num_seg_classes``: 13 or 40 (the usual benchmarks) or 894 (the raw labels, ``raw − 1``, with
  0 → ignore). The 13- and 40-class mappings are not in the .mat file; they come from separate
  files (e.g. ``classMapping40.mat`` of Gupta et al., the 13-class map of Couprie et al.). We ship no
  built-in copy, so 13/40 need ``class_map_file``: a ``.npy`` of 895 integers mapping each raw label
  to a class. Two conventions are accepted: 0-based (classes ``0…K−1``, ignore = 255 or −1) and
  1-based with 0 = void (values ``0…K``, recognised because ``K`` itself appears); the latter is
  shifted down by one with 0 → 255.
- ``splits_file``: the standard 795/654 split (``splits.mat`` with 1-based ``trainNdxs`` /
  ``testNdxs``). Without it we use a **seeded 80/20 split** (``seed``, default 0) of the file's
  images — deterministic, but not the published split, so numbers are not comparable to papers.
- ``image_size``: output ``(H, W)``, default ``(240, 320)`` (half resolution); RGB is resized
  bilinearly, depth and labels with nearest (no blending of labels or of the invalid 0).
- ``subset``: keep the first N samples of the split.

Samples are read lazily from the file in ``__getitem__`` (each process opens its own handle), so
construction is instant and memory stays small.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError
from .registry import DatasetInfo, register_dataset
from .wrappers import Sample, as_size, check_split, default_data_root, optional_subset, resolve_options

FILENAME = "nyu_depth_v2_labeled.mat"
URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
NUM_RAW = 894
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULTS = dict(num_seg_classes=40, class_map_file=None, splits_file=None, image_size=(240, 320), seed=0, subset=None)


def _find_file(root: Optional[str]) -> Path:
    if root is not None:
        base = Path(root).expanduser()
        tried = [base] if base.suffix == ".mat" else [base / FILENAME, base / "nyuv2" / FILENAME]
    else:
        base = default_data_root()
        tried = [base / "nyuv2" / FILENAME, base / FILENAME]
    for p in tried:
        if p.is_file():
            return p
    raise DataError(
        f"nyuv2: {FILENAME} not found (tried {', '.join(map(str, tried))}); download it (2.8 GB) from "
        f"{URL} and put it in {tried[0].parent}, or pass root=PATH_TO_THE_FILE"
    )


def load_class_map(path: str, num_classes: int) -> torch.Tensor:
    """A ``[895]`` long tensor: raw label → class in ``0…K−1`` or 255 (ignore)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"nyuv2: class_map_file {p} does not exist; pass a .npy of {NUM_RAW + 1} integers")
    try:
        m = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"nyuv2: cannot read class_map_file {p} as .npy ({type(e).__name__}); save it with numpy.save") from None
    if m.shape != (NUM_RAW + 1,) or not np.issubdtype(m.dtype, np.integer):
        raise DataError(
            f"nyuv2: class_map_file {p} must hold {NUM_RAW + 1} integers (raw label 0…{NUM_RAW} → class), "
            f"got {m.dtype}{list(m.shape)}"
        )
    m = m.astype(np.int64)
    if m.max() == num_classes:                 # 1-based with 0 = void
        m = np.where(m == 0, 255, m - 1)
    m = np.where(m < 0, 255, m)
    bad = (m != 255) & ((m < 0) | (m >= num_classes))
    if bad.any():
        raise DataError(
            f"nyuv2: class_map_file {p} maps to values outside 0…{num_classes - 1} (or 255 = ignore), "
            f"e.g. {int(m[bad][0])}; does it match num_seg_classes={num_classes}?"
        )
    return torch.from_numpy(m)


def _load_splits(path: str, n: int) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"nyuv2: splits_file {p} does not exist; it is splits.mat with trainNdxs/testNdxs")
    import scipy.io

    try:
        try:
            d = scipy.io.loadmat(str(p))
        except NotImplementedError:  # MATLAB v7.3 → HDF5
            import h5py

            with h5py.File(p, "r") as fh:
                d = {k: np.asarray(fh[k]) for k in ("trainNdxs", "testNdxs") if k in fh}
    except (OSError, ValueError, TypeError) as e:
        raise DataError(f"nyuv2: cannot read splits_file {p} ({type(e).__name__}); expected splits.mat") from None
    if "trainNdxs" not in d or "testNdxs" not in d:
        raise DataError(f"nyuv2: splits_file {p} has no trainNdxs/testNdxs arrays")
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        idx = np.asarray(d[key]).astype(np.int64).ravel() - 1   # MATLAB indices are 1-based
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise DataError(f"nyuv2: {key} in {p} must hold 1-based indices in 1…{n}")
        out[split] = np.sort(idx)
    return out


class NYUv2(torch.utils.data.Dataset):
    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options("nyuv2", options, DEFAULTS)
        check_split("nyuv2", split)
        k = o["num_seg_classes"]
        if k not in (13, 40, NUM_RAW):
            raise ConfigError(f"dataset 'nyuv2': num_seg_classes={k!r} must be 13, 40 or {NUM_RAW} (raw labels)")
        size = as_size(o["image_size"], "nyuv2")
        subset = optional_subset(o["subset"], "nyuv2")
        seed = o["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"dataset 'nyuv2': option seed={seed!r} must be an int")

        path = _find_file(root)
        n = self._check_file(path)
        if o["class_map_file"] is not None:
            self.class_map = load_class_map(o["class_map_file"], k)
        elif k == NUM_RAW:
            self.class_map = torch.cat([torch.tensor([255]), torch.arange(NUM_RAW)])
        else:
            raise DataError(
                f"nyuv2: num_seg_classes={k} needs class_map_file=PATH.npy (895 ints, raw label → class), "
                f"because the {k}-class mapping is not in {FILENAME}; make one from the published mapping "
                f"(e.g. classMapping40.mat) or use num_seg_classes={NUM_RAW} for the raw labels"
            )
        if o["splits_file"] is not None:
            indices = _load_splits(o["splits_file"], n)[split]
            self.split_kind = "official"
        else:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
            n_train = int(round(0.8 * n))
            indices = np.sort(perm[:n_train] if split == "train" else perm[n_train:])
            self.split_kind = f"seeded 80/20 (seed={seed})"
        if subset is not None:
            indices = indices[:subset]
        self.indices: List[int] = [int(i) for i in indices]
        self.path, self.split = path, split
        self.info = DatasetInfo(
            num_classes=0, in_channels=3, image_size=size, fields=("input", "mask", "depth"),
            mean=MEAN, std=STD, num_seg_classes=k,
        )
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)
        self._fh = None
        self._pid = None

    @staticmethod
    def _check_file(path: Path) -> int:
        import h5py

        try:
            fh = h5py.File(path, "r")
        except OSError:
            raise DataError(
                f"nyuv2: {path} is not a MATLAB v7.3 (HDF5) file; use the labelled set {FILENAME} from {URL}"
            ) from None
        with fh:
            missing = [k for k in ("images", "depths", "labels") if k not in fh]
            if missing:
                raise DataError(f"nyuv2: {path} lacks the arrays {missing}; is it {FILENAME}?")
            im, de, la = fh["images"].shape, fh["depths"].shape, fh["labels"].shape
            ok = len(im) == 4 and im[1] == 3 and de == (im[0], im[2], im[3]) and la == de
            if not ok:
                raise DataError(
                    f"nyuv2: unexpected array shapes in {path}: images {list(im)}, depths {list(de)}, labels {list(la)} "
                    "(expected [N,3,W,H], [N,W,H], [N,W,H])"
                )
            return int(im[0])

    def _file(self):
        if self._fh is None or self._pid != os.getpid():   # one handle per (worker) process
            import h5py

            self._fh = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._fh

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"], state["_pid"] = None, None
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        fh = self._file()
        i = self.indices[index]
        rgb = torch.from_numpy(np.ascontiguousarray(np.asarray(fh["images"][i]).transpose(0, 2, 1)))
        depth = torch.from_numpy(np.ascontiguousarray(np.asarray(fh["depths"][i], dtype=np.float32).T))
        raw = torch.from_numpy(np.asarray(fh["labels"][i]).astype(np.int64).T)
        if raw.numel() and (raw.min() < 0 or raw.max() > NUM_RAW):
            raise DataError(f"nyuv2: labels of image {i} in {self.path} are outside 0…{NUM_RAW}; the file is corrupt")
        mask = self.class_map[raw]
        depth = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
        size = self.info.image_size
        x = rgb.float().div_(255.0)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
            depth = F.interpolate(depth[None, None], size=size, mode="nearest")[0, 0]
            mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return {"input": (x - self._mean) / self._std, "mask": mask, "depth": depth[None]}


register_dataset("nyuv2")(NYUv2)
