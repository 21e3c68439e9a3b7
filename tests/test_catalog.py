"""The methods' declarations (paper, year, kind) and the tables generated from them: the README's and
docs/zoo.md's methods table must be the generated one, so a new method file shows up there once the
table is regenerated (and a stale table fails here, saying how)."""
from pathlib import Path

import pytest

from crossdistill.catalog import (
    REGENERATE,
    builtin_names,
    committed_block,
    generated_block,
    method_recipes,
    methods_lines,
    methods_table,
    update_document,
)
from crossdistill.methods import METHODS, Method, register_method
from crossdistill.methods.base import KINDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_method_declares_paper_year_and_kind(name):
    cls = METHODS.get(name)
    assert cls.paper and " — " in cls.paper, f"{name}: paper = 'Authors, VENUE YEAR — Title'"
    assert 2000 < cls.year < 2100 and str(cls.year) in cls.paper
    assert cls.kind in KINDS


@pytest.mark.parametrize("doc", ["README.md", "docs/zoo.md"])
def test_committed_methods_table_is_the_generated_one(doc):
    text = (ROOT / doc).read_text(encoding="utf-8")
    block = committed_block(text)
    assert block is not None, f"{doc} lost its <!-- methods:begin --> … <!-- methods:end --> markers"
    assert block == generated_block(), (f"{doc}'s methods table is stale (a method or recipe was added or its "
                                        f"declaration changed): regenerate it with `{REGENERATE}`")


def test_recipes_are_read_from_the_packaged_configs():
    recipes = method_recipes()
    assert "quickstart/kd" in recipes["kd"] and "cifar100/resnet32x4_resnet8x4/crd_kd" in recipes["kd"]
    assert "cifar100/resnet32x4_resnet8x4/crd_kd" in recipes["crd"]
    assert "simsiam" not in recipes  # no built-in recipe uses it
    assert "imagenet/simreg_two_teachers_r18" in recipes["simreg"]  # terms inherited through base: count too


def test_table_and_listing_show_every_method_once():
    table = methods_table(builtin_names())
    for name in builtin_names():
        assert table.count(f"| `{name}` |") == 1
    lines = methods_lines(builtin_names()).splitlines()
    assert len(lines) == len(builtin_names())
    kd = next(line for line in lines if line.startswith("kd "))
    assert "logits" in kd and "2015" in kd and "temperature" in kd


def test_update_document_rewrites_only_the_marked_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- methods:begin -->\nold\n<!-- methods:end -->\noutro\n")
    assert update_document(doc) is True
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and committed_block(text) == generated_block()
    assert update_document(doc) is False


def test_an_unknown_kind_is_refused_at_registration():
    class Typo(Method):
        kind = "logit"

    with pytest.raises(ValueError, match="kind 'logit' is not one of logits"):
        register_method("typo_kind")(Typo)
    assert "typo_kind" not in METHODS.registered()
