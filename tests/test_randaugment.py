"""The strong augmentation (tensor RandAugment, MLKD's strong view) and one augmentation per copy."""
from __future__ import annotations

import pytest
import torch

from crossdistill.config import load_config
from crossdistill.data.randaugment import OPERATIONS, RandAugment, cutout, equalize, posterize, solarize
from crossdistill.errors import ConfigError

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def image(seed=0, size=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g)


@pytest.mark.parametrize("i", range(len(OPERATIONS)))
def test_every_operation_keeps_shape_and_range(i):
    op, low, high = OPERATIONS[i]
    for v in (low, high, (low + high) / 2):
        out = op(image(i), v)
        assert out.shape == (3, 8, 8) and out.min() >= 0 and out.max() <= 1


def test_operations_match_their_pil_definitions_on_small_cases():
    x = torch.tensor([[[0.0, 0.5], [0.75, 1.0]]])
    assert torch.equal(solarize(x, 128), torch.tensor([[[0.0, 0.5], [0.25, 0.0]]]))  # ≥ 128/255 is inverted
    assert torch.allclose(posterize(x, 4) * 255, torch.tensor([[[0.0, 128.0], [176.0, 240.0]]]))
    flat = torch.full((1, 2, 2), 0.3)
    assert torch.equal(equalize(flat, 0), (flat * 255).round() / 255)  # one level: PIL leaves it
    cut = cutout(torch.zeros(3, 8, 8), 0.5, torch.Generator().manual_seed(0))
    assert (cut != 0).any() and (cut == 0).any()


def test_randaugment_is_seeded_normalised_and_strong():
    x = (image(3, 16) - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    aug = RandAugment(MEAN, STD, n=2)
    torch.manual_seed(1)
    a = aug({"input": x, "label": torch.tensor(2)})
    torch.manual_seed(1)
    b = aug({"input": x, "label": torch.tensor(2)})
    assert torch.equal(a["input"], b["input"]) and a["label"] == 2
    changed = sum(not torch.equal(aug({"input": x})["input"], x) for _ in range(10))
    assert changed >= 9  # Cutout alone changes almost every draw


def test_copy_augment_gives_each_copy_its_own_augmentation(tmp_path):
    from crossdistill.build import build_data

    raw = {"output_dir": str(tmp_path / "run"), "student": {"name": "resnet8"},
           "data": {"name": "shapes", "copies": 2, "copy_augment": ["none", "randaugment"],
                    "options": {"num_classes": 3, "image_size": 16, "train_size": 4, "test_size": 4}}}
    train, *_ = build_data(load_config(data=raw))
    plain = build_data(load_config(data={**raw, "data": {**raw["data"], "copies": 1, "copy_augment": None,
                                                           "augment": "none"}}))[0]
    s = train[0]
    assert torch.equal(s["input"], plain[0]["input"])  # copy 0: the weak (here: no) augmentation
    assert not torch.equal(s["input_1"], s["input"])    # copy 1: RandAugment
    with pytest.raises(ConfigError, match="one per copy"):
        load_config(data={**raw, "data": {**raw["data"], "copy_augment": ["crop_flip"]}})


def test_mlkd_trains_through_the_trainer_on_weak_and_strong_views(tmp_path):
    """The recipe's wiring: two copies (crop_flip, randaugment), the teacher declared twice (one per
    view), the term reading both."""
    from crossdistill.build import build_run
    from crossdistill.engine.trainer import Trainer

    teacher = {"model": "resnet8", "num_classes": 3, "random_init": True, "seed": 5}
    raw = {"output_dir": str(tmp_path / "mlkd"), "student": {"name": "resnet8"},
           "data": {"name": "shapes", "batch_size": 8, "copies": 2, "copy_augment": ["crop_flip", "randaugment"],
                    "options": {"num_classes": 3, "image_size": 16, "train_size": 16, "test_size": 8}},
           "teachers": {"default": teacher, "strong": {**teacher, "input_field": "input_1"}},
           "distill": {"task_weight": 0.1, "terms": [{"method": "mlkd", "from_teacher": ["default", "strong"]}]},
           "train": {"epochs": 1, "precision": "fp32", "progress": False, "optimizer": {"lr": 0.025}}}
    run = build_run(load_config(data=raw))
    t = run.distiller.teachers
    assert all(torch.equal(a, b) for a, b in zip(t["default"].state_dict().values(), t["strong"].state_dict().values()))
    summary = Trainer(run).fit()
    assert 0 <= summary["last"]["acc"] <= 1


def test_every_operation_matches_pil_on_a_real_image_grid():
    """The reference's operations are PIL's (sunshangquan/logit-standardization-KD,
    mdistiller/dataset/cifar100.py, ``augment_list``): ours agree to ≤ 1.5/255 per pixel (PIL rounds
    to uint8 after each operation). Magnitudes avoid exact ties of the geometric maps, where PIL's
    float order and ours may floor an integral coordinate differently."""
    np = pytest.importorskip("numpy")
    pil = pytest.importorskip("PIL.Image")
    from PIL import ImageEnhance, ImageOps

    import crossdistill.data.randaugment as R

    arr = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = pil.fromarray(arr)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    op = {fn.__name__: fn for fn, *_ in R.OPERATIONS if fn.__name__ != "<lambda>"}
    lam = [fn for fn, *_ in R.OPERATIONS]
    cases = {
        "autocontrast": (ImageOps.autocontrast(img), op["auto_contrast"](x, 0)),
        "brightness": (ImageEnhance.Brightness(img).enhance(0.6), lam[1](x, 0.6)),
        "color": (ImageEnhance.Color(img).enhance(0.6), lam[2](x, 0.6)),
        "contrast": (ImageEnhance.Contrast(img).enhance(0.6), lam[3](x, 0.6)),
        "equalize": (ImageOps.equalize(img), op["equalize"](x, 0)),
        "posterize": (ImageOps.posterize(img, 5), op["posterize"](x, 5)),
        "rotate": (img.rotate(17.3), op["rotate"](x, 17.3)),
        "sharpness": (ImageEnhance.Sharpness(img).enhance(0.5), op["sharpness"](x, 0.5)),
        "shear_x": (img.transform(img.size, pil.AFFINE, (1, 0.2137, 0, 0, 1, 0)), lam[9](x, 0.2137)),
        "shear_y": (img.transform(img.size, pil.AFFINE, (1, 0, 0, -0.1731, 1, 0)), lam[10](x, -0.1731)),
        "solarize": (ImageOps.solarize(img, 100), op["solarize"](x, 100)),
        "translate_x": (img.transform(img.size, pil.AFFINE, (1, 0, 0.2 * 32, 0, 1, 0)), lam[12](x, 0.2)),
        "translate_y": (img.transform(img.size, pil.AFFINE, (1, 0, 0, 0, 1, -0.2 * 32)), lam[13](x, -0.2)),
    }
    for name, (ref, ours) in cases.items():
        ref = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1).float() / 255
        assert (ref - ours).abs().max() * 255 <= 1.5, name
