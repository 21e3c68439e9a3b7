"""The data package: procedural generators, transforms, wrappers and the file-format loaders
(tested on tiny files in the official layouts, written here)."""
from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from crossdistill.data import IndexedDataset, create_dataset, list_datasets
from crossdistill.data.registry import DatasetInfo
from crossdistill.data.scenes import NUM_SEG_CLASSES, render_scenes, sample_scenes
from crossdistill.data.transforms import (
    Compose, Normalize, RandomCropPad, RandomHorizontalFlip, RandomResizedCrop,
    build_eval_transform, build_train_transform,
)
from crossdistill.data.seeded import AugmentedDataset
from crossdistill.errors import ConfigError, DataError

SMALL_SHAPES = dict(train_size=120, test_size=60)
SMALL_SCENES = dict(train_size=24, test_size=12, image_size=32)


@pytest.fixture(autouse=True)
def _no_user_data(tmp_path, monkeypatch):
    """Default search paths must not see a developer's real data folder."""
    monkeypatch.setenv("CROSSDISTILL_DATA", str(tmp_path / "default-data-root"))


def _one_line_data_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, DataError)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------- registry / options

def test_all_datasets_registered():
    assert {"shapes", "scenes", "cifar10", "cifar100", "imagefolder", "fashion_mnist", "nyuv2"} <= set(list_datasets())


@pytest.mark.parametrize("name", ["shapes", "scenes", "cifar10", "cifar100", "imagefolder", "fashion_mnist", "nyuv2"])
def test_unknown_option_is_a_config_error(name, tmp_path):
    with pytest.raises(ConfigError) as e:
        create_dataset(name, "train", root=str(tmp_path), bogus_option=1)
    assert "bogus_option" in str(e.value) and "valid options" in str(e.value)


def test_unknown_split_is_a_config_error():
    with pytest.raises(ConfigError, match="split"):
        create_dataset("shapes", "validation", **SMALL_SHAPES)


# --------------------------------------------------------------------------- shapes

def test_shapes_fields_and_determinism():
    a = create_dataset("shapes", "train", **SMALL_SHAPES)
    b = create_dataset("shapes", "train", **SMALL_SHAPES)
    c = create_dataset("shapes", "train", seed=1, **SMALL_SHAPES)
    t = create_dataset("shapes", "test", **SMALL_SHAPES)
    assert len(a) == 120 and len(t) == 60
    s = a[0]
    assert s["input"].shape == (3, 32, 32) and s["input"].dtype == torch.float32
    assert s["label"].shape == () and s["label"].dtype == torch.long
    assert a.info.num_classes == 10 and a.info.fields == ("input", "label") and len(a.info.mean) == 3
    assert torch.equal(a.data["input"], b.data["input"]) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.data["input"], c.data["input"])
    assert not torch.equal(a.data["input"][:60], t.data["input"])
    assert a.info == t.info  # same normalisation for both splits
    assert torch.bincount(a.labels, minlength=10).tolist() == [12] * 10
    # normalised with its own statistics: roughly zero mean, unit std
    x = torch.stack([a[i]["input"] for i in range(len(a))])
    assert x.mean().abs() < 0.2 and 0.8 < x.std() < 1.2


def test_shapes_options():
    g = create_dataset("shapes", "test", in_channels=1, image_size=24, num_classes=100, test_size=200)
    assert g[0]["input"].shape == (1, 24, 24) and g.info.num_classes == 100
    assert len(set(g.class_names)) == 100 and int(g.labels.max()) == 99
    with pytest.raises(ConfigError, match="num_classes"):
        create_dataset("shapes", "test", num_classes=10_000)
    with pytest.raises(ConfigError, match="in_channels"):
        create_dataset("shapes", "test", in_channels=2)


# --------------------------------------------------------------------------- scenes

def test_scenes_fields_ranges_and_determinism():
    a = create_dataset("scenes", "train", **SMALL_SCENES)
    b = create_dataset("scenes", "train", **SMALL_SCENES)
    c = create_dataset("scenes", "train", seed=3, **SMALL_SCENES)
    info = a.info
    assert info.fields == ("input", "label", "mask", "depth", "translation")
    assert info.num_seg_classes == NUM_SEG_CLASSES and info.num_classes == 4
    s = a[0]
    assert s["input"].shape == (3, 32, 32) and s["input"].dtype == torch.float32
    assert s["mask"].shape == (32, 32) and s["mask"].dtype == torch.long
    assert s["depth"].shape == (1, 32, 32) and s["depth"].dtype == torch.float32
    assert s["translation"].shape == (3, 32, 32) and s["label"].dtype == torch.long
    for key in a.data:
        assert torch.equal(a.data[key], b.data[key]), key
    assert not torch.equal(a.data["input"], c.data["input"])
    mask, depth = a.data["mask"].long(), a.data["depth"][:, 0]
    assert mask.min() >= 0 and mask.max() < NUM_SEG_CLASSES
    assert torch.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 20.0
    assert (depth[mask == 0] == 0).all()                    # sky has no depth
    assert (depth[mask >= 2] > 0).all()                     # walls and objects always do
    assert (mask >= 3).any()                                # objects are visible
    tr = torch.stack([a[i]["translation"] for i in range(4)])
    assert tr.min() >= 0 and tr.max() <= 1
    assert not torch.allclose(tr, torch.stack([a[i]["input"] for i in range(4)]))


def test_scenes_floor_depth_is_real_geometry():
    """Without objects, the outdoor floor's z-depth is h / (sin(pitch) - y cos(pitch)) per row."""
    g = torch.Generator().manual_seed(0)
    p = sample_scenes(torch.tensor([0, 1]), 4, g)
    p["cat"][:] = -1
    p["indoor"][:] = False
    s = 16
    out = render_scenes(p, s, g)
    f = s / (2 * math.tan(math.radians(30)))
    y = -((torch.arange(s) + 0.5 - s / 2) / f)             # camera "up" coordinate per row
    for i in range(2):
        h, ph = float(p["cam_h"][i]), float(p["pitch"][i])
        denom = math.sin(ph) - y * math.cos(ph)
        expected = torch.where(denom > 0, h / denom.clamp(min=1e-9), torch.zeros(s))
        expected = torch.where(expected > 20.0, torch.zeros(s), expected)
        got = out["depth"][i, 0, :, 5]
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4)
        assert ((out["mask"][i, :, 5] == 1) == (denom > 0)).all()      # floor below the horizon, sky above


def test_scenes_label_is_majority_category():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(64) % 4
    p = sample_scenes(labels, 4, g)
    for i in range(64):
        cats = p["cat"][i][p["cat"][i] >= 0]
        counts = torch.bincount(cats, minlength=4)
        assert int(counts.argmax()) == int(labels[i]) and (counts < counts.max()).sum() == 3


# --------------------------------------------------------------------------- transforms

def _paired_sample(h=10, w=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, h, w, generator=g)
    return {
        "input": x,
        "mask": (x[0] > 0).long(),             # a known function of the image
        "depth": x[1:2].abs() + 1.0,           # valid everywhere, > 0
        "translation": torch.sigmoid(x),
        "label": torch.tensor(3),
    }


def test_crop_pad_and_flip_move_dense_fields_with_the_image():
    g = torch.Generator().manual_seed(0)
    t = Compose([RandomCropPad((10, 12), padding=3, generator=g), RandomHorizontalFlip(0.5, generator=g)])
    saw_padding = False
    for k in range(20):
        s = t(_paired_sample(seed=k))
        assert s["input"].shape == (3, 10, 12) and s["mask"].shape == (10, 12) and s["depth"].shape == (1, 10, 12)
        assert s["label"] == 3
        pad = s["mask"] == 255
        saw_padding |= bool(pad.any())
        assert (s["depth"][0][pad] == 0).all() and (s["input"][:, pad] == 0).all()
        assert (s["depth"][0][~pad] > 0).all()
        assert torch.equal(s["mask"][~pad], (s["input"][0] > 0).long()[~pad])
        assert torch.allclose(s["depth"][0][~pad], s["input"][1].abs()[~pad] + 1)
        assert torch.allclose(s["translation"][:, ~pad], torch.sigmoid(s["input"])[:, ~pad])
    assert saw_padding


def test_flip_is_a_mirror():
    s = _paired_sample()
    f = RandomHorizontalFlip(1.0)(s)
    for k in ("input", "mask", "depth", "translation"):
        assert torch.equal(f[k], s[k].flip(-1))
    assert RandomHorizontalFlip(0.0)(s) is s


def test_random_resized_crop_keeps_fields_aligned():
    g = torch.Generator().manual_seed(1)
    t = RandomResizedCrop(8, scale=(0.2, 1.0), generator=g)
    for k in range(10):
        s = _paired_sample(16, 16, seed=k)
        s["translation"] = s["input"].clone()          # bilinear fields: identical in, identical out
        s["depth"] = s["mask"][None].float() + 1.0     # nearest fields: identical in, identical out
        o = t(s)
        assert o["input"].shape == (3, 8, 8) and o["mask"].shape == (8, 8) and o["mask"].dtype == torch.long
        assert torch.equal(o["translation"], o["input"])
        assert torch.equal(o["depth"][0], o["mask"].float() + 1.0)
        assert set(o["mask"].unique().tolist()) <= {0, 1}
    ident = RandomResizedCrop(16, scale=(1.0, 1.0), ratio=(1.0, 1.0))(s)
    assert torch.equal(ident["input"], s["input"])


def test_transforms_are_seedable():
    info = DatasetInfo(num_classes=2, in_channels=3, image_size=(10, 12), fields=("input",))
    for kind in ("crop_flip", "resized_crop_flip"):
        torch.manual_seed(5)
        a = build_train_transform(info, kind)(_paired_sample())
        torch.manual_seed(5)
        b = build_train_transform(info, kind)(_paired_sample())
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["mask"], b["mask"])
        c = build_train_transform(info, kind, generator=torch.Generator().manual_seed(7))(_paired_sample())
        d = build_train_transform(info, kind, generator=torch.Generator().manual_seed(7))(_paired_sample())
        assert torch.equal(c["input"], d["input"])
    s = _paired_sample()
    assert build_train_transform(info, "none")(s)["input"] is s["input"]
    assert build_eval_transform(info)(s)["input"] is s["input"]
    with pytest.raises(ConfigError, match="crop_flip"):
        build_train_transform(info, "autoaugment")


def test_normalize():
    s = {"input": torch.full((2, 3, 3), 0.5), "mask": torch.zeros(3, 3, dtype=torch.long)}
    o = Normalize((0.25, 0.5), (0.5, 0.25))(s)
    assert torch.allclose(o["input"][0], torch.full((3, 3), 0.5)) and torch.allclose(o["input"][1], torch.zeros(3, 3))
    assert o["mask"] is s["mask"]


# --------------------------------------------------------------------------- wrappers

def test_indexed_and_transformed_dataset():
    ds = create_dataset("shapes", "test", **SMALL_SHAPES)
    idx = IndexedDataset(ds)
    assert len(idx) == len(ds) and idx.info is ds.info and idx.labels is ds.labels
    s = idx[17]
    assert s["index"].dtype == torch.long and s["index"].shape == () and int(s["index"]) == 17
    assert torch.equal(s["input"], ds[17]["input"])
    batch = next(iter(DataLoader(idx, batch_size=8, shuffle=False)))
    assert batch["index"].tolist() == list(range(8)) and batch["input"].shape == (8, 3, 32, 32)
    flipped = AugmentedDataset(idx, RandomHorizontalFlip(1.0))
    assert torch.equal(flipped[3]["input"], ds[3]["input"].flip(-1)) and int(flipped[3]["index"]) == 3
    assert flipped.labels is ds.labels


# --------------------------------------------------------------------------- CIFAR

def _write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _cifar_arrays(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]


def test_cifar10_official_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _cifar_arrays(3, 10, i)
        batches[name] = (data, labels)
        _write_pickle(folder / name, {b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": []})
    for root in (tmp_path, folder):          # the parent or the folder itself
        tr = create_dataset("cifar10", "train", root=str(root))
        assert len(tr) == 15 and tr.info.num_classes == 10 and tr.info.image_size == (32, 32)
    te = create_dataset("cifar10", "test", root=str(tmp_path))
    data, labels = batches["test_batch"]
    assert te.labels.tolist() == labels
    s = te[1]
    raw = torch.from_numpy(data[1].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(te.info.mean).view(3, 1, 1), torch.tensor(te.info.std).view(3, 1, 1)
    assert torch.allclose(s["input"], (raw - mean) / std, atol=1e-5)
    assert len(create_dataset("cifar10", "train", root=str(tmp_path), subset=4)) == 4


def test_cifar100_and_malformed(tmp_path):
    folder = tmp_path / "cifar-100-python"
    for name, n in (("train", 5), ("test", 2)):
        data, labels = _cifar_arrays(n, 100, n)
        _write_pickle(folder / name, {b"data": data, b"fine_labels": labels, b"coarse_labels": labels})
    tr = create_dataset("cifar100", "train", root=str(tmp_path))
    assert len(tr) == 5 and tr.info.num_classes == 100 and tr[0]["input"].shape == (3, 32, 32)
    # wrong key
    _write_pickle(folder / "test", {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError) as e:
        create_dataset("cifar100", "test", root=str(tmp_path))
    assert "fine_labels" in _one_line_data_error(e)
    # wrong shape
    _write_pickle(folder / "test", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(DataError, match="3072"):
        create_dataset("cifar100", "test", root=str(tmp_path))
    # not a pickle
    (folder / "test").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError) as e:
        create_dataset("cifar100", "test", root=str(tmp_path))
    _one_line_data_error(e)


# --------------------------------------------------------------------------- Fashion-MNIST

def _idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_fmnist(folder, gz: bool, n_train=6, n_test=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, n).astype(np.uint8)
        arrays[prefix] = (imgs, labs)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", imgs), (f"{prefix}-labels-idx1-ubyte", labs)):
            raw = _idx_bytes(arr)
            if gz:
                with gzip.open(folder / (stem + ".gz"), "wb") as fh:
                    fh.write(raw)
            else:
                (folder / stem).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx(tmp_path, gz):
    arrays = _write_fmnist(tmp_path / "fm", gz)
    tr = create_dataset("fashion_mnist", "train", root=str(tmp_path / "fm"))
    assert len(tr) == 6 and tr.info.in_channels == 1 and tr.info.image_size == (28, 28)
    assert tr.labels.tolist() == arrays["train"][1].tolist()
    x = tr[2]["input"]
    assert x.shape == (1, 28, 28)
    assert torch.allclose(x * 0.3530 + 0.2860, torch.from_numpy(arrays["train"][0][2]).float()[None] / 255, atol=1e-5)
    te = create_dataset("fashion_mnist", "test", root=str(tmp_path / "fm"), pad_to=32, subset=3)
    assert len(te) == 3 and te[0]["input"].shape == (1, 32, 32) and te.info.image_size == (32, 32)
    raw = te.data["input"][0, 0]
    assert raw[:2].sum() == 0 and torch.equal(raw[2:30, 2:30], torch.from_numpy(arrays["t10k"][0][0]))
    # test_subset: the test split's own count (a small training subset, a larger test set)
    opts = dict(root=str(tmp_path / "fm"), subset=2, test_subset=4)
    assert len(create_dataset("fashion_mnist", "train", **opts)) == 2
    assert len(create_dataset("fashion_mnist", "test", **opts)) == 4


def test_fashion_mnist_options_and_malformed(tmp_path):
    _write_fmnist(tmp_path / "fashion-mnist", gz=False)
    small = create_dataset("fashion_mnist", "train", root=str(tmp_path), image_size=14, in_channels=3)
    assert small[0]["input"].shape == (3, 14, 14) and small.info.in_channels == 3
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError) as e:
        create_dataset("fashion_mnist", "train", root=str(tmp_path))
    assert "truncated" in _one_line_data_error(e) or "malformed" in str(e.value)
    (tmp_path / "fashion-mnist" / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x56\x78" + bytes(100))
    with pytest.raises(DataError, match="magic"):
        create_dataset("fashion_mnist", "train", root=str(tmp_path))


def test_fashion_mnist_real_files_if_installed():
    from crossdistill.data.fashion_mnist import SYSTEM_DIR

    if not (SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").exists() and not (SYSTEM_DIR / "t10k-images-idx3-ubyte").exists():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    te = create_dataset("fashion_mnist", "test", subset=100)
    assert len(te) == 100 and te[0]["input"].shape == (1, 28, 28)
    assert 0 <= int(te.labels.min()) and int(te.labels.max()) <= 9


# --------------------------------------------------------------------------- ImageFolder

def _write_png(path, colour, size=(20, 16)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_imagefolder(tmp_path):
    _write_png(tmp_path / "train" / "dog" / "a.png", (255, 0, 0))
    _write_png(tmp_path / "train" / "dog" / "b.PNG", (255, 0, 0))
    _write_png(tmp_path / "train" / "cat" / "c.png", (0, 0, 255))
    _write_png(tmp_path / "val" / "dog" / "d.png", (255, 0, 0))     # "test" falls back to "val"
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    tr = create_dataset("imagefolder", "train", root=str(tmp_path), image_size=8)
    assert tr.classes == ("cat", "dog") and tr.labels.tolist() == [0, 1, 1] and tr.info.num_classes == 2
    s = tr[0]
    assert s["input"].shape == (3, 8, 8) and s["label"] == 0
    blue = (torch.tensor([0.0, 0.0, 1.0]) - torch.tensor(tr.info.mean)) / torch.tensor(tr.info.std)
    assert torch.allclose(s["input"][:, 3, 3], blue, atol=1e-3)
    te = create_dataset("imagefolder", "test", root=str(tmp_path), image_size=(6, 10), in_channels=1)
    assert te.labels.tolist() == [1] and te[0]["input"].shape == (1, 6, 10)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"garbage")
    broken = create_dataset("imagefolder", "train", root=str(tmp_path))
    with pytest.raises(DataError) as e:
        broken[0]
    assert "broken.png" in _one_line_data_error(e)


def test_imagefolder_empty(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        create_dataset("imagefolder", "train", root=str(tmp_path))
    assert "no images" in _one_line_data_error(e)


# --------------------------------------------------------------------------- NYUv2

def _write_nyu(path, n=4, w=16, h=12):
    import h5py

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, w, h), dtype=np.uint8)          # MATLAB layout seen by h5py
    depths = rng.uniform(0.5, 10.0, (n, w, h)).astype(np.float32)
    labels = rng.integers(0, 895, (n, w, h)).astype(np.uint16)
    labels[:, 0, 0] = 0
    with h5py.File(path, "w") as fh:
        fh["images"], fh["depths"], fh["labels"] = images, depths, labels
    return images, depths, labels


def test_nyuv2_layout_and_raw_labels(tmp_path):
    images, depths, labels = _write_nyu(tmp_path / "nyu_depth_v2_labeled.mat")
    tr = create_dataset("nyuv2", "train", root=str(tmp_path), num_seg_classes=894, image_size=(12, 16))
    te = create_dataset("nyuv2", "test", root=str(tmp_path / "nyu_depth_v2_labeled.mat"), num_seg_classes=894,
                        image_size=(12, 16))
    assert len(tr) == 3 and len(te) == 1 and not set(tr.indices) & set(te.indices)    # seeded 80/20
    assert tr.info.fields == ("input", "mask", "depth") and tr.info.num_seg_classes == 894
    i = tr.indices[0]
    s = tr[0]
    assert s["input"].shape == (3, 12, 16) and s["mask"].shape == (12, 16) and s["depth"].shape == (1, 12, 16)
    rgb = torch.from_numpy(images[i]).permute(0, 2, 1).float() / 255
    assert torch.allclose(s["input"] * torch.tensor(tr.info.std).view(3, 1, 1) + torch.tensor(tr.info.mean).view(3, 1, 1),
                          rgb, atol=1e-5)
    assert torch.allclose(s["depth"][0], torch.from_numpy(depths[i]).T)
    raw = torch.from_numpy(labels[i].astype(np.int64)).T
    assert s["mask"][0, 0] == 255 and torch.equal(s["mask"][raw > 0], raw[raw > 0] - 1)
    # resizing keeps fields aligned in shape
    half = create_dataset("nyuv2", "train", root=str(tmp_path), num_seg_classes=894, image_size=(6, 8))
    h = half[0]
    assert h["input"].shape == (3, 6, 8) and h["mask"].shape == (6, 8) and h["depth"].shape == (1, 6, 8)
    assert (h["depth"] > 0).all()


def test_nyuv2_class_map_and_splits(tmp_path):
    import scipy.io

    _, _, labels = _write_nyu(tmp_path / "nyu_depth_v2_labeled.mat")
    with pytest.raises(DataError) as e:
        create_dataset("nyuv2", "train", root=str(tmp_path))          # 40 classes need a map file
    assert "class_map_file" in _one_line_data_error(e)
    m = np.arange(895) % 41                                            # 1-based, 0 = void
    np.save(tmp_path / "map40.npy", m)
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2], [4]])})
    ds = create_dataset("nyuv2", "test", root=str(tmp_path), class_map_file=str(tmp_path / "map40.npy"),
                        splits_file=str(tmp_path / "splits.mat"), image_size=(12, 16))
    assert ds.indices == [1, 3] and ds.info.num_seg_classes == 40
    mask = ds[0]["mask"]
    raw = torch.from_numpy(labels[1].astype(np.int64)).T
    expected = torch.where(torch.from_numpy(m)[raw] == 0, 255, torch.from_numpy(m)[raw] - 1)
    assert torch.equal(mask, expected) and mask[mask != 255].max() < 40
    np.save(tmp_path / "bad.npy", np.arange(10))
    with pytest.raises(DataError, match="895"):
        create_dataset("nyuv2", "train", root=str(tmp_path), class_map_file=str(tmp_path / "bad.npy"))


def test_nyuv2_not_hdf5(tmp_path):
    (tmp_path / "nyu_depth_v2_labeled.mat").write_bytes(b"MATLAB 5.0 MAT-file, not v7.3")
    with pytest.raises(DataError) as e:
        create_dataset("nyuv2", "train", root=str(tmp_path), num_seg_classes=894)
    assert "HDF5" in _one_line_data_error(e)


# --------------------------------------------------------------------------- missing data

@pytest.mark.parametrize("name, needle", [
    ("cifar10", "cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python.tar.gz"),
    ("fashion_mnist", "apt-get install dataset-fashion-mnist"),
    ("imagefolder", "train"),
    ("nyuv2", "nyu_depth_v2_labeled.mat"),
])
@pytest.mark.parametrize("with_root", [True, False])
def test_missing_dataset_is_a_one_line_data_error(name, needle, with_root, tmp_path, monkeypatch):
    if name == "fashion_mnist" and not with_root:
        import crossdistill.data.fashion_mnist as fm

        monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "no-system-dir")
    root = str(tmp_path / "nothing-here") if with_root else None
    with pytest.raises(DataError) as e:
        create_dataset(name, "train", root=root)
    msg = _one_line_data_error(e)
    assert needle in msg
    if with_root:
        assert "nothing-here" in msg
