"""Every shipped recipe parses and validates (schema, method options), without data or training."""
import pytest

from crossdistill.cli import RECIPES, list_configs
from crossdistill.config import load_config


@pytest.mark.parametrize("name", list_configs())
def test_recipe_validates(name):
    cfg = load_config(RECIPES / f"{name}.yaml")
    assert cfg.student.name


def test_cifar100_recipes_cover_the_zoo_for_both_pairs():
    names = set(list_configs())
    for pair in ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2"):
        for m in ("kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "crd", "crd_kd"):
            assert f"cifar100/{pair}/{m}" in names
    cfg = load_config(RECIPES / "cifar100/resnet32x4_resnet8x4/crd_kd.yaml")
    assert cfg.train.epochs == 240 and cfg.train.schedule.milestones == [150, 180, 210]
    assert [t.method for t in cfg.distill.terms] == ["crd", "kd"]
