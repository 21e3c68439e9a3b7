"""What a method author gets: options checked at construction (names, types, ranges), the classes
exported, one batch key for the task's target, init phases, per-sample fields, opt-in plugins."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from crossdistill import methods
from crossdistill.distiller import Distiller
from crossdistill.errors import ConfigError
from crossdistill.methods import METHODS, DataSetup, InitPhase, Method, build_method, load_plugins
from crossdistill.tasks import create_task

from helpers import TinyNet, toy_batch


# -- options: checked when the method is built, whoever builds it --------------------------------------
@pytest.mark.parametrize("cls_name,bad", [
    ("KD", {"T": "hot"}), ("KD", {"T": 0}), ("KD", {"weight": -1}), ("AT", {"p": -2}),
    ("CRD", {"nce_k": 0}), ("CRD", {"nce_t": 0.0}), ("CRD", {"nce_m": 1.0}), ("CRD", {"z_momentum": -0.1}),
    ("CRD", {"feat_dim": 1.5}), ("VID", {"init_variance": 0}), ("VID", {"init_variance": 1e-6}),
    ("RKD", {"w_dist": -1}), ("CC", {"gamma": 0}), ("CC", {"order": 0}), ("FT", {"rate": 0}),
    ("AB", {"margin": -1}), ("AB", {"init_epochs": -1}), ("FSP", {"init_epochs": 2.5}),
    ("SpectralRegulariser", {"k_frac": 1.5}), ("SpectralRegulariser", {"max_rows": 0}),
    ("FitNet", {"projector": "sideways"}), ("KD", {"Tx": 2}),
])
def test_bad_options_fail_at_construction(cls_name, bad):
    cls = getattr(methods, cls_name)
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=key):
        cls(**bad)


def test_good_options_are_coerced_and_positional_options_work():
    from crossdistill.methods import KD

    kd = KD(T="2.5", weight=0)
    assert kd.T == 2.5 and isinstance(kd.T, float) and kd.weight == 0.0
    assert KD(3).T == 3.0
    # a config and a direct call give the same error text
    with pytest.raises(ConfigError, match=r"method 'kd': bad value for 'T'"):
        build_method("kd", T="hot")


def test_every_builtin_method_class_is_exported():
    builtin = [c for c in METHODS.registered().values() if c.__module__.startswith("crossdistill.methods.")]
    assert len(builtin) >= 14
    for cls in builtin:  # (other tests register methods of their own)
        assert getattr(methods, cls.__name__) is cls
        assert cls.__name__ in methods.__all__


# -- the task's target under one key ------------------------------------------------------------------
def test_methods_find_the_task_target_under_batch_target():
    seen = {}

    class Peek(Method):
        def forward(self, s, t, batch):
            seen.update(batch)
            return s[0].sum() * 0

    torch.manual_seed(0)
    b = toy_batch()
    d = Distiller(TinyNet(), TinyNet(), [Peek()], task=create_task("classification", 5), example_input=b["input"])
    d(b)
    assert torch.equal(seen["target"], b["label"])
    # the task decides which field is the target: here a task that reads "mask"

    class MaskTask:
        name, target_key = "mask_task", "mask"

        def loss(self, output, batch):
            return output.sum() * 0

    seen.clear()
    d.task = MaskTask()
    mask = torch.zeros(16, 16, 16, dtype=torch.long)
    d({"input": b["input"], "mask": mask})
    assert torch.equal(seen["target"], mask)


def test_setup_tells_methods_the_task():
    got = {}

    class Setup(Method):
        def setup(self, data):
            got["task"] = data.task

        def forward(self, s, t, batch):
            return s[0].sum() * 0

    b = toy_batch()
    d = Distiller(TinyNet(), TinyNet(), [Setup()], task=create_task("classification", 5), example_input=b["input"])
    d.setup(DataSetup(num_samples=16))
    assert got["task"] == "classification"


# -- init phases --------------------------------------------------------------------------------------
def test_init_phase_helper_declares_the_phase_and_is_not_weighted():
    class Warm(InitPhase, Method):
        default_weight = 7.0

        def __init__(self, init_epochs: int = 2, in_main: bool = False, **sides):
            super().__init__(**sides)
            self.init_epochs, self.in_main = init_epochs, in_main

        def build(self, s, t):
            self.scale = torch.nn.Parameter(torch.ones(()))

        def init_loss(self, s, t, batch):
            return (self.scale * s[0]).pow(2).mean()

        def forward(self, s, t, batch):
            return s[0].pow(2).mean()

    b = toy_batch()
    d = Distiller(TinyNet(), TinyNet(), [Warm()], example_input=b["input"])
    term = d.terms[0]
    assert d.phases() == [("init", 2)] and not term.active_in("main") and term.active_in("init")
    assert [id(p) for p in d.trainable_parameters("init")] == [id(term.scale)]
    d.phase = "init"
    loss, parts = d(b)
    torch.testing.assert_close(loss, parts["warm"])  # not × 7: weights belong to the main phase
    d.phase = "main"
    assert d(b)[1] == {}  # inactive in main: nothing computed


# -- per-sample fields: a generic mechanism, computed by the data pipeline -----------------------------
class _Tagged(Method):
    """Declares one per-sample field: a random draw that depends on (seed, epoch, index) only."""

    needs_teacher = False

    def sample_fields(self):
        return {"coin": _coin}

    def forward(self, s, t, batch):
        self.last = batch["coin"]
        return s[0].sum() * 0


def _coin(index, rng):
    return torch.tensor(float(rng.random()) + index)


def test_sample_fields_come_from_the_pipeline_or_are_drawn_on_the_spot():
    from crossdistill.data import SampleFieldsDataset

    b = toy_batch()
    term = _Tagged()
    d = Distiller(TinyNet(), None, [term], example_input=b["input"])
    fields = d.sample_fields()
    assert list(fields) == ["_tagged.coin"]
    ds = SampleFieldsDataset([{"index": torch.tensor(i)} for i in range(16)], fields, seed=1)
    batch = {**b, "_tagged.coin": torch.stack([ds[i]["_tagged.coin"] for i in range(16)])}
    d(batch)
    assert torch.equal(term.last, batch["_tagged.coin"])  # the term reads it under its own name
    d(b)  # a loop without the pipeline: drawn from the index on the spot
    assert torch.equal(term.last.floor(), torch.arange(16.0))
    del b["index"]
    with pytest.raises(ConfigError, match="IndexedDataset"):
        d(b)


def test_the_run_builder_adds_the_fields_to_the_training_set(tmp_path):
    from crossdistill.build import build_run
    from crossdistill.config import parse_config
    from crossdistill.data import SampleFieldsDataset

    cfg = parse_config({"task": "classification", "data": {"name": "shapes", "options": {"train_size": 32, "test_size": 8, "image_size": 16}},
                        "student": {"name": "resnet8"},
                        "teachers": {"default": {"model": "resnet8", "num_classes": 10, "random_init": True}},
                        "distill": {"terms": [{"method": "crd", "nce_k": 8}]}, "output_dir": str(tmp_path)})
    run = build_run(cfg)
    assert isinstance(run.train_set, SampleFieldsDataset)
    sample = run.train_set[3]
    assert sample["crd.contrast_index"].shape == (9,) and int(sample["crd.contrast_index"][0]) == 3


# -- plugins: opt-in entry points, never code named in a config --------------------------------------
PLUGIN = textwrap.dedent('''
    from crossdistill.losses import hint_loss
    from crossdistill.methods import Method, register_method

    @register_method("mine")
    class Mine(Method):
        """Mine — a third-party method."""
        def forward(self, s, t, batch):
            return hint_loss(s[0], t[0])
''')


def _install_plugin(root):
    (root / "mine_plugin.py").write_text(PLUGIN)
    info = root / "mine_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[crossdistill.methods]\nmine = mine_plugin:Mine\n")


def _cli(args, root, plugins=None):
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("CROSSDISTILL_PLUGINS", None)
    if plugins is not None:
        env["CROSSDISTILL_PLUGINS"] = plugins
    return subprocess.run([sys.executable, "-m", "crossdistill.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_plugins_are_loaded_only_when_asked(tmp_path):
    _install_plugin(tmp_path)
    off = _cli(["list", "methods"], tmp_path)
    assert off.returncode == 0 and "mine" not in off.stdout.split()
    on = _cli(["list", "methods"], tmp_path, plugins="mine")
    assert on.returncode == 0 and "mine" in on.stdout, on.stderr
    bad = _cli(["list", "methods"], tmp_path, plugins="nosuch")
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:") and "nosuch" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_load_plugins_in_process(tmp_path, monkeypatch):
    _install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins("") == []
    try:
        assert load_plugins("mine") == ["mine"]
        assert build_method("mine").name == "mine"
    finally:
        METHODS._items.pop("mine", None)
        sys.modules.pop("mine_plugin", None)
