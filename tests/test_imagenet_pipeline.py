"""The standard ImageNet pipeline on a small image folder made here: crops from the original image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossdistill.data import create_dataset
from crossdistill.data.imagenet import ResizeCenterCrop, check_batchable, draft_size, eval_resize
from crossdistill.data.seeded import AugmentedDataset
from crossdistill.data.transforms import RandomResizedCrop, build_eval_transform, build_train_transform
from crossdistill.errors import ConfigError

SIZES = {"wide": (160, 96), "tall": (90, 150), "square": (120, 120)}  # (W, H) per class folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, (w, h) in SIZES.items():
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                # large flat blocks: JPEG keeps them, so geometry can be checked on pixel values
                blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
                img = np.kron(blocks, np.ones((math.ceil(h / 4), math.ceil(w / 4), 1), dtype=np.uint8))[:h, :w]
                Image.fromarray(img).save(root / split / name / f"{i}.jpg", quality=95)
    return root


def _dataset(folder, split, **options):
    return create_dataset("imagefolder", split, str(folder), image_size=64, pipeline="imagenet", **options)


def test_images_keep_their_own_size_and_leave_at_image_size(folder):
    train = _dataset(folder, "train")
    shapes = {tuple(train[i]["input"].shape) for i in range(len(train))}
    assert shapes == {(3, h, w) for w, h in SIZES.values()}  # nothing resized before the crop
    aug = AugmentedDataset(train, build_train_transform(train.info, "imagenet"), seed=0)
    assert all(aug[i]["input"].shape == (3, 64, 64) for i in range(len(aug)))
    test = _dataset(folder, "test")  # falls back to val/
    ev = AugmentedDataset(test, build_eval_transform(test.info), seed=0)
    assert all(ev[i]["input"].shape == (3, 64, 64) for i in range(len(ev)))


def test_training_crop_is_a_box_of_the_original_image(folder):
    train = _dataset(folder, "train")
    aug = AugmentedDataset(train, build_train_transform(train.info, "imagenet"), seed=3)
    aug.set_epoch(2)
    index = next(i for i in range(len(train)) if train[i]["input"].shape[-1] == 160)
    got = aug[index]["input"]
    # replay: the same seed gives the same box on the original 96×160 image, resized, maybe flipped
    original = train[index]["input"]
    seed = (3 * 1_000_003 + 2 * 7_919 + index * 104_729) % (2**63 - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        crop = RandomResizedCrop((64, 64), scale=(0.08, 1.0))
        i, j, ch, cw = crop._box(96, 160)
        flip = torch.rand(()).item() < 0.5
    want = torch.nn.functional.interpolate(original[None, :, i:i + ch, j:j + cw], size=(64, 64), mode="bilinear",
                                           align_corners=False, antialias=True)[0]
    if flip:
        want = want.flip(-1)
    assert torch.allclose(got, want, atol=1e-6)


def test_deterministic_with_the_seed(folder):
    train = _dataset(folder, "train")
    a = AugmentedDataset(train, build_train_transform(train.info, "imagenet"), seed=1)
    b = AugmentedDataset(train, build_train_transform(train.info, "imagenet"), seed=1)
    assert all(torch.equal(a[i]["input"], b[i]["input"]) for i in range(len(train)))
    b.set_epoch(1)
    assert not all(torch.equal(a[i]["input"], b[i]["input"]) for i in range(len(train)))


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
@pytest.mark.parametrize("hw", [(375, 500), (500, 333), (64, 64)])
def test_crop_statistics_follow_the_documented_algorithm(scale, hw):
    h, w = hw
    crop = RandomResizedCrop((224, 224), scale=scale, generator=torch.Generator().manual_seed(0))
    areas, ratios, sides = [], [], []
    for _ in range(2000):
        i, j, ch, cw = crop._box(h, w)
        assert 0 <= i <= h - ch and 0 <= j <= w - cw
        areas.append(ch * cw / (h * w))
        ratios.append(cw / ch)
        sides.append(min(ch, cw))
    areas, ratios, sides = np.array(areas), np.array(ratios), np.array(sides)
    slack = 1.01 / sides  # each side is rounded to a whole pixel
    assert (areas >= scale[0] * (1 - slack) ** 2).all() and areas.max() <= 1.0
    assert (ratios >= 3 / 4 * (1 - slack)).all() and (ratios <= 4 / 3 * (1 + slack)).all()
    # the log-ratio is drawn uniformly, so on a square image the boxes are as often wide as tall (on
    # others the boxes that fit lean towards the image's own shape: rejection, as documented)
    if h == w:
        assert abs(np.median(np.log(ratios))) < 0.05
    else:
        assert (np.median(np.log(ratios)) > 0) == (w > h)
    # large boxes are rejected more often, so the mean area fraction is below the scale's mean
    assert scale[0] < areas.mean() < (scale[0] + scale[1]) / 2 + 0.02


def test_fallback_is_the_centre_crop():
    crop = RandomResizedCrop((8, 8), scale=(0.99, 1.0), ratio=(1.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert crop._box(10, 100) == (0, 45, 10, 10)  # no square of 99% area fits in 10×100: centre square


def test_eval_resize_and_centre_crop(folder):
    from PIL import Image

    assert eval_resize((224, 224)) == 256
    test = _dataset(folder, "test")
    index = next(i for i in range(len(test)) if test[i]["input"].shape[-1] == 90)  # the tall 150×90 one
    got = ResizeCenterCrop((64, 64))(test[index])["input"]
    # PIL's own resize of the shorter side to 73 + centre crop: the same picture (blocks stay blocks)
    with Image.open(test.files[index]) as im:
        im = im.convert("RGB").resize((73, round(150 * 73 / 90)), Image.BILINEAR)
        top = (im.height - 64) // 2
        ref = torch.from_numpy(np.array(im.crop((4, top, 68, top + 64)), dtype=np.float32)).permute(2, 0, 1) / 255
    ref = (ref - torch.tensor(test.info.mean).view(3, 1, 1)) / torch.tensor(test.info.std).view(3, 1, 1)
    assert (got - ref).abs().mean() < 0.05
    # fixed-size inputs (every built-in dataset) pass unchanged
    x = {"input": torch.randn(3, 64, 64)}
    assert ResizeCenterCrop((64, 64))(x) is x


def test_large_jpeg_is_decoded_reduced_but_never_below_the_crop(tmp_path):
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.full((2400, 3200, 3), 128, np.uint8)).save(tmp_path / "train" / "a" / "big.jpg")
    ds = create_dataset("imagefolder", "train", str(tmp_path), image_size=224, pipeline="imagenet")
    assert ds[0]["input"].shape == (3, 1200, 1600)  # decoded at ½: the smallest crop keeps ≥ 224 px
    w, h = draft_size(3200, 2400, (224, 224), "train")
    assert math.sqrt(0.08 * w * h * 3 / 4) >= 224
    assert draft_size(3200, 2400, (224, 224), "eval")[1] >= 256


def test_a_size_keeping_augment_is_refused(folder):
    with pytest.raises(ConfigError, match="data.augment=crop_flip"):
        check_batchable(_dataset(folder, "train"), "crop_flip")
    with pytest.raises(ConfigError, match="pipeline"):
        create_dataset("imagefolder", "train", str(folder), pipeline="fast")


def test_resize_pipeline_is_unchanged(folder):
    ds = create_dataset("imagefolder", "train", str(folder), image_size=32)
    assert all(ds[i]["input"].shape == (3, 32, 32) for i in range(len(ds)))
