"""Every shipped recipe parses and validates (schema, method options), without data or training."""
import pytest

from crossdistill.cli import RECIPES, list_configs
from crossdistill.config import load_config


@pytest.mark.parametrize("name", list_configs())
def test_recipe_validates(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    assert cfg.student.name


def test_cifar100_recipes_cover_the_zoo_for_every_pair():
    """Every method that declares ``zoo = True`` (the registry, not a list kept here) has its CIFAR-100
    recipe for every pair (``PAIRS``), and uses it."""
    from crossdistill.catalog import builtin_names, method_recipes
    from crossdistill.methods import METHODS

    names = set(list_configs())
    zoo = [m for m in builtin_names() if METHODS.get(m).zoo]
    assert {"kd", "fitnet", "crd"} <= set(zoo)
    for pair in PAIRS:
        for m in [*zoo, "crd_kd"]:
            assert f"cifar100/{pair}/{m}" in names, f"method '{m}' declares zoo = True but has no cifar100/{pair}/{m} recipe"
        for m in zoo:
            assert f"cifar100/{pair}/{m}" in method_recipes()[m]
    cfg = load_config(RECIPES / "cifar100/resnet32x4_resnet8x4/crd_kd.yaml")
    assert cfg.train.epochs == 240 and cfg.train.schedule.milestones == [150, 180, 210]
    assert [t.method for t in cfg.distill.terms] == ["crd", "kd"]


def _fake_imagefolder(root, classes=("a", "b"), per_class=3, size=40):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                # different aspect ratios, as real photos: the ImageNet pipeline crops each from its original
                Image.fromarray(rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _torchvision_layout_weights(path):
    """A fake self-supervised ResNet-50 checkpoint in torchvision layout (MoCo style), converted."""
    import torch

    from crossdistill.models import create_model
    from crossdistill.models.resnet import state_dict_from_torchvision

    torch.manual_seed(0)
    ours = create_model("ResNet50", num_classes=1000, stem="imagenet").state_dict()
    tv = {}
    for k, v in ours.items():
        k = k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")
        if not k.startswith("fc."):
            tv["module.encoder_q." + k] = v
    tv.update({"module.encoder_q.fc.0.weight": torch.randn(2048, 2048), "module.encoder_q.fc.2.weight": torch.randn(128, 2048),
               "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7), "queue": torch.randn(128, 10)})
    converted = state_dict_from_torchvision(tv, "module.encoder_q.", num_classes=1000)
    assert set(converted) == set(ours)
    assert all(torch.equal(converted[k], ours[k]) for k in ours if not k.startswith("fc."))
    torch.save(converted, path)


def test_imagenet_simreg_recipes_run_a_few_steps_on_fake_data(tmp_path):
    """Each SimReg recipe as shipped, on a fake image folder, its teachers loaded from state-dict files."""
    from crossdistill.build import build_run
    from crossdistill.engine.trainer import Trainer

    _fake_imagefolder(tmp_path / "data")
    _torchvision_layout_weights(tmp_path / "r50.pt")
    names = [n for n in list_configs() if n.startswith("imagenet/simreg_")]
    assert {"imagenet/simreg_r50_r18", "imagenet/simreg_two_teachers_r18", "imagenet/simreg_r50_r18_different_views"} <= set(names)
    for name in names:
        cfg = load_config(RECIPES / f"{name}.yaml")
        assert cfg.train.epochs == 130 and cfg.train.optimizer.lr == 0.05 and cfg.data.batch_size == 256
        assert cfg.task == "self_supervised" and cfg.data.augment == "resized_crop_flip"
        overrides = [f"data.root={tmp_path / 'data'}", "data.options={image_size: 32, pipeline: imagenet}", "data.batch_size=3",
                     "data.num_workers=0", f"output_dir={tmp_path / name.replace('/', '_')}", "train.epochs=1",
                     "train.max_steps_per_epoch=2", "train.precision=fp32", "train.channels_last=false",
                     "train.progress=false"]
        overrides += [f"teachers.{t}.weights={tmp_path / 'r50.pt'}" for t in cfg.teachers]
        run = build_run(load_config(RECIPES / f"{name}.yaml", overrides))
        summary = Trainer(run).fit()
        assert 0 <= summary["last"]["knn_acc"] <= 1


# -- the three CIFAR-100 pairs: every method's recipe, and the logit methods' recipes build and step ------
PAIRS = {"resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4"), "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2"),
         "vgg13_vgg8": ("vgg13", "vgg8")}
OLD_METHODS = ("kd", "fitnet", "fitnet_inverted", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd",
               "crd_kd", "dpk")
LOGIT_METHODS = ("dkd", "dkd_ls", "kd_ls", "dist", "ctkd", "mlkd", "mlkd_ls")
NEW_FEATURE_METHODS = ("reviewkd", "srd", "srd_inverted", "vkd", "vkd_inverted")


def test_every_pair_has_a_recipe_for_every_method():
    names = set(list_configs())
    assert {"cifar100/teacher_vgg13", "cifar100/student_vgg8"} <= names
    for pair in PAIRS:
        for m in OLD_METHODS + LOGIT_METHODS + NEW_FEATURE_METHODS:
            assert f"cifar100/{pair}/{m}" in names, (pair, m)
    mlkd = load_config(RECIPES / "cifar100/vgg13_vgg8/mlkd.yaml")
    assert mlkd.data.copy_augment == ["crop_flip", "randaugment"] and mlkd.train.optimizer.lr == 0.025
    assert mlkd.teachers["strong"].checkpoint == mlkd.teachers["default"].checkpoint
    assert load_config(RECIPES / "cifar100/wrn_40_2_wrn_16_2/dkd.yaml").distill.terms[0].beta == 6.0


def _on_fake_data(name, tmp_path, teacher):
    """Recipe ``name`` on a small fake 100-class set with a random teacher (every teacher entry)."""
    cfg = load_config(RECIPES / f"{name}.yaml")
    overrides = ["data.name=shapes", "data.root=null", "data.num_workers=0", "data.batch_size=4",
                 "data.options={num_classes: 100, image_size: 32, train_size: 8, test_size: 4}",
                 f"output_dir={tmp_path / name.replace('/', '_')}", "train.epochs=1", "train.max_steps_per_epoch=1",
                 "train.precision=fp32", "train.channels_last=false", "train.progress=false"]
    for t, tc in cfg.teachers.items():
        overrides.append(f"teachers.{t}={{model: {teacher}, num_classes: 100, random_init: true, "
                         f"input_field: {tc.input_field}}}")
    return load_config(RECIPES / f"{name}.yaml", overrides)


@pytest.mark.parametrize("method", OLD_METHODS + NEW_FEATURE_METHODS)
def test_vgg_pair_recipes_build(method, tmp_path):
    """The vgg13 → vgg8 recipes of the feature methods wire up on the VGG layer names (a dry run)."""
    from crossdistill.build import build_run

    build_run(_on_fake_data(f"cifar100/vgg13_vgg8/{method}", tmp_path, "vgg13"))


def test_logit_method_recipes_take_a_step(tmp_path):
    """On the new pair (the other pairs' recipes differ only in names and β; they validate above)."""
    from crossdistill.build import build_run
    from crossdistill.engine.trainer import Trainer

    torch = pytest.importorskip("torch")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for m in LOGIT_METHODS:
            summary = Trainer(build_run(_on_fake_data(f"cifar100/vgg13_vgg8/{m}", tmp_path, "vgg13"))).fit()
            assert 0 <= summary["last"]["acc"] <= 1, m
    finally:
        torch.set_num_threads(n)


def test_vgg_reviewkd_reads_the_maps_mdistiller_reads(tmp_path):
    """vgg8's outputs of groups 2-5 and vgg13's pre-ReLU maps of groups 2-5 (the last BN of each,
    so with negative values), then the pooled feature: on 32 px, 128@16, 256@8, 512@4, 512@4, 512."""
    import torch

    from crossdistill.build import build_run

    distiller = build_run(_on_fake_data("cifar100/vgg13_vgg8/reviewkd", tmp_path, "vgg13")).distiller
    term = distiller.terms[0]
    seen = {}
    original = term.forward

    def capture(s, t, batch):
        seen["s"], seen["t"] = s, t
        return original(s, t, batch)

    term.forward = capture
    distiller({"input": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1])})
    shapes = [(128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
    assert [tuple(x.shape[1:]) for x in seen["s"][:4]] == shapes == [tuple(x.shape[1:]) for x in seen["t"][:4]]
    assert seen["s"][4].shape[1] == seen["t"][4].shape[1] == 512 and seen["s"][4].numel() == 2 * 512
    assert all((x >= 0).all() for x in seen["s"][:4])  # the student's post-ReLU group outputs
    assert all((x < 0).any() for x in seen["t"][:4])    # the teacher's pre-activations
