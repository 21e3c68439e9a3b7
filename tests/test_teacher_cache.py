"""The teacher cache: replayable views, the same tensors as a live teacher for the same view, a
manifest that refuses (or rebuilds) a cache built for another teacher / data set / augmentation,
never a stale view; resumable fill, training that never runs the teacher, dense tasks, CRD, DDP."""
from __future__ import annotations

import copy
import json
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from crossdistill import teacher_cache as tcache
from crossdistill.build import build_run
from crossdistill.config import load_config
from crossdistill.data.scenes import NUM_SEG_CLASSES
from crossdistill.distiller import teacher_key
from crossdistill.engine.device import pick_channels_last
from crossdistill.engine.trainer import Trainer
from crossdistill.errors import ConfigError

sys.path.insert(0, os.path.dirname(__file__))

BASE = {
    "seed": 1,
    "data": {"name": "shapes", "batch_size": 16,
             "options": {"num_classes": 4, "image_size": 16, "train_size": 48, "test_size": 16}},
    "student": {"name": "resnet8"},
    "teachers": {"default": {"model": "resnet8", "num_classes": 4, "random_init": True, "seed": 3}},
    "distill": {"terms": [{"method": "kd", "T": 4}, {"method": "fitnet", "student": "layer2", "teacher": "layer2"}]},
    "train": {"epochs": 2, "device": "cpu", "precision": "fp32", "progress": False, "threads": 1},
    "teacher_cache": {"views": 3, "dtype": "float32"},
}


def _cfg(tmp_path, **changes):
    raw = copy.deepcopy(BASE)
    raw["output_dir"] = str(tmp_path / "run")
    for key, value in changes.items():  # dotted keys
        cur = raw
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = value
    return load_config(data=raw)


def _attach(cfg, **kw):
    run = build_run(cfg)
    info = tcache.attach(run, torch.device("cpu"), None, output_dir=cfg.output_dir, **kw)
    return run, info


# ------------------------------------------------------------------------------ views

def test_views_are_replayable_and_each_epoch_picks_one(tmp_path):
    run = build_run(_cfg(tmp_path))
    aug = tcache._augmented(run.train_set)
    assert aug.views == 3
    a, b = aug.view(5, 1), aug.view(5, 1)
    assert torch.equal(a["input"], b["input"])
    assert not all(torch.equal(aug.view(i, 0)["input"], aug.view(i, 1)["input"]) for i in range(8))
    picks = []
    for epoch in range(6):
        aug.set_epoch(epoch)
        s = run.train_set[5]
        assert torch.equal(s["input"], aug.view(5, int(s["view"]))["input"])  # the sample shows its view
        picks.append(int(s["view"]))
    assert set(picks) <= {0, 1, 2} and len(set(picks)) > 1
    aug.set_epoch(2)
    assert int(run.train_set[5]["view"]) == picks[2]  # deterministic


# ------------------------------------------------------------------------------ contents

def test_cached_tensors_equal_the_live_teacher_on_every_batch(tmp_path):
    """Through the loader, over several epochs: every batch's cached fields are what the teacher
    gives on that batch's input — never another view's."""
    cfg = _cfg(tmp_path)
    run, info = _attach(cfg)
    assert info["filled_samples"] == 48 and info["views"] == 3
    d = run.distiller.eval()
    for epoch in range(3):
        tcache._augmented(run.train_set).set_epoch(epoch)
        for batch in DataLoader(run.train_set, batch_size=16):
            live = d.teacher_features("default", batch["input"])
            for path in ("output", "layer2"):
                torch.testing.assert_close(batch[teacher_key("default", path)], live[path], rtol=1e-5, atol=1e-5)


def test_float16_and_topk_storage(tmp_path):
    run, info = _attach(_cfg(tmp_path, **{"teacher_cache.dtype": "float16", "teacher_cache.topk": 2}))
    spec = tcache._read_manifest(tmp_path / "run" / "teacher_cache")["tensors"]
    assert spec[teacher_key("default", "output")]["topk"] == 2 and spec[teacher_key("default", "layer2")]["topk"] is None
    d = run.distiller.eval()
    batch = next(iter(DataLoader(run.train_set, batch_size=8)))
    live = d.teacher_features("default", batch["input"])
    torch.testing.assert_close(batch[teacher_key("default", "layer2")], live["layer2"], rtol=2e-3, atol=2e-3)
    p_live = live["output"].softmax(1)
    p_cached = batch[teacher_key("default", "output")].softmax(1)
    top = p_live.topk(2, dim=1).indices
    # the two largest probabilities are kept, and the other two share the rest of the mass equally
    torch.testing.assert_close(p_cached.gather(1, top), p_live.gather(1, top), rtol=2e-3, atol=1e-4)
    rest = 1 - p_live.gather(1, top).sum(1)
    others = p_cached.scatter(1, top, 0.0)
    torch.testing.assert_close(others.sum(1), rest, rtol=2e-3, atol=1e-4)


def test_dense_from_topk_formula():
    logits = torch.tensor([3.0, 1.0, 0.0, -2.0, 0.5])
    top = logits.topk(2)
    rest = torch.logsumexp(logits[[2, 3, 4]], 0)
    dense = tcache.dense_from_topk(top.values, top.indices, float(rest), 5)
    assert dense[0] == 3.0 and dense[1] == 1.0
    fill = float(rest) - math.log(3)
    torch.testing.assert_close(dense[2:], torch.full((3,), fill))
    torch.testing.assert_close(dense.softmax(0)[:2], logits.softmax(0)[:2])


# ------------------------------------------------------------------------------ the manifest

@pytest.mark.parametrize("change,what", [
    ({"teachers.default.seed": 4}, "the teacher"),
    ({"data.options": {"num_classes": 4, "image_size": 16, "train_size": 48, "test_size": 16, "seed": 9}}, "the data set"),
    ({"data.augment": "none"}, "the augmentation"),
    ({"teacher_cache.seed": 1}, "the augmentation"),
    ({"teacher_cache.views": 2}, "the number of views"),
    ({"distill.terms": [{"method": "kd"}]}, "the stored teacher tensors"),
    ({"teacher_cache.dtype": "float16"}, "the stored teacher tensors"),
])
def test_a_cache_built_for_another_setup_is_refused_or_rebuilt(tmp_path, change, what):
    shared = str(tmp_path / "cache")
    _attach(_cfg(tmp_path, **{"teacher_cache.dir": shared}))
    manifest = (tmp_path / "cache" / "manifest.json").read_text()
    other = _cfg(tmp_path, **{"teacher_cache.dir": shared, **change})
    with pytest.raises(ConfigError, match=f"built for another setup: {what}.*teacher_cache.rebuild=true"):
        _attach(other)
    assert (tmp_path / "cache" / "manifest.json").read_text() == manifest  # refused: nothing touched
    run, info = _attach(_cfg(tmp_path, **{"teacher_cache.dir": shared, "teacher_cache.rebuild": True, **change}))
    assert info["filled_samples"] == 48  # rebuilt from scratch, for the new setup
    batch = next(iter(DataLoader(run.train_set, batch_size=8)))
    live = run.distiller.eval().teacher_features("default", batch["input"])
    torch.testing.assert_close(batch[teacher_key("default", "output")], live["output"], rtol=2e-3, atol=2e-3)


def test_the_same_setup_reuses_the_cache_and_a_killed_fill_resumes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, **{"teacher_cache.fill_batch_size": 8})
    calls = {"n": 0}
    real = tcache._teacher

    def dies(*args):
        calls["n"] += 1
        if calls["n"] > 1 + 3 * 3:  # the probe, then 3 chunks × 3 views
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(tcache, "_teacher", dies)
    with pytest.raises(KeyboardInterrupt):
        _attach(cfg)
    folder = tmp_path / "run" / "teacher_cache"
    assert not tcache._read_manifest(folder)["complete"]
    assert np.load(folder / "filled.npy").sum() == 24
    monkeypatch.setattr(tcache, "_teacher", real)
    run, info = _attach(cfg)
    assert info["filled_samples"] == 24 and tcache._read_manifest(folder)["complete"]
    _, again = _attach(cfg)
    assert again["filled_samples"] == 0  # warm: nothing to do
    fresh_cfg = _cfg(tmp_path / "fresh", **{"teacher_cache.fill_batch_size": 8})
    fresh, _ = _attach(fresh_cfg)
    for i in (0, 20, 47):
        for v in range(3):
            a, b = run.train_set.store.read(i, v), fresh.train_set.store.read(i, v)
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="teacher_cache needs a teacher"):
        _cfg(tmp_path, teachers={}, **{"distill.terms": []})
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no teacher cache manifest"):
        _attach(_cfg(tmp_path, **{"teacher_cache.dir": str(tmp_path / "junk"), "teacher_cache.rebuild": True}))
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="teacher_cache.views"):
        _cfg(tmp_path, **{"teacher_cache.views": 0})


def test_a_damaged_cache_file_is_one_clear_error(tmp_path):
    from crossdistill.errors import DataError

    run, _ = _attach(_cfg(tmp_path))
    target = tmp_path / "run" / "teacher_cache" / "teacher__default__output.npy"
    target.write_bytes(target.read_bytes()[:200])  # truncated
    run, _ = _attach(_cfg(tmp_path))  # the manifest still matches: nothing to fill
    with pytest.raises(DataError, match="cannot be read.*delete the folder"):
        run.train_set[0]


# ------------------------------------------------------------------------------ training

def _no_teacher(run):
    def refuse(*_):
        raise AssertionError("the teacher ran during training")

    return run.distiller.teachers["default"].register_forward_pre_hook(refuse)


@pytest.mark.parametrize("terms", [
    [{"method": "kd", "T": 4}, {"method": "fitnet", "student": "layer2", "teacher": "layer2"}],
    [{"method": "crd", "nce_k": 8}, {"method": "kd"}],
    [{"method": "ft", "init_epochs": 1}],
])
def test_training_with_a_warm_cache_never_runs_the_teacher(tmp_path, terms):
    cfg = _cfg(tmp_path, **{"distill.terms": terms})
    run = build_run(cfg)
    trainer = Trainer(run)  # fills the cache (the teacher runs here, once per view)
    handle = _no_teacher(run)
    summary = trainer.fit()
    handle.remove()
    assert summary["last"]["epoch"] == 2 and math.isfinite(summary["last"]["acc"])


def test_a_dense_task_with_the_cache(tmp_path):
    cfg = _cfg(tmp_path, task="segmentation", data={
        "name": "scenes", "batch_size": 8, "augment": "crop_flip",
        "options": {"image_size": 16, "train_size": 16, "test_size": 8}},
        student={"name": "dense_resnet_xs"},
        teachers={"default": {"model": "dense_resnet_xs", "num_classes": NUM_SEG_CLASSES, "random_init": True}},
        **{"distill.terms": [{"method": "fitnet", "student": "@encoder", "teacher": "@encoder", "projector": "inverted"},
                             {"method": "kd", "T": 2}], "train.epochs": 1})
    run = build_run(cfg)
    trainer = Trainer(run)  # the run is unchanged: the trainer's training set reads the cache
    batch = next(iter(DataLoader(trainer.ready.train_set, batch_size=4)))
    live = run.distiller.eval().teacher_features("default", batch["input"])
    assert batch[teacher_key("default", "output")].dim() == 4  # dense maps are cached whole
    for p, v in live.items():
        torch.testing.assert_close(batch[teacher_key("default", p)], v, rtol=1e-5, atol=1e-5)
    handle = _no_teacher(run)
    trainer.fit()
    handle.remove()


def test_resume_with_the_cache_matches_an_uninterrupted_run(tmp_path):
    from crossdistill.engine.checkpoint import load_checkpoint

    straight = _cfg(tmp_path / "a", **{"train.epochs": 2})
    Trainer(build_run(straight)).fit()
    first = _cfg(tmp_path / "b", **{"train.epochs": 2})
    t = Trainer(build_run(first))
    t.phases = [("main", 1)]  # stop after epoch 1, as a killed run would (its checkpoint is written)
    t.fit()
    (tmp_path / "b" / "run" / "student.pt").unlink()
    (tmp_path / "b" / "run" / "summary.json").unlink()
    resumed = Trainer(build_run(first), resume=True)
    assert resumed.cache_info["filled_samples"] == 0  # the cache is reused, not refilled
    resumed.fit()
    a = load_checkpoint(tmp_path / "a" / "run" / "student.pt")["student"]
    b = load_checkpoint(tmp_path / "b" / "run" / "student.pt")["student"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------ DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, tmp: str) -> None:
    import pathlib

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        cfg = _cfg(pathlib.Path(tmp), **{"teacher_cache.fill_batch_size": 8})
        run = build_run(cfg)
        trainer = Trainer(run)
        seen = []
        run.distiller.teachers["default"].register_forward_pre_hook(lambda *_: seen.append("teacher ran"))
        trainer.fit()
        state = {k: v.detach().clone() for k, v in run.distiller.student.state_dict().items()}
        torch.save({"info": trainer.cache_info, "teacher_calls": len(seen), "student": state,
                    "shard": sorted(set(trainer.sampler._indices()))}, f"{tmp}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_ranks_fill_their_shares_and_read_their_shards(tmp_path):
    mp.start_processes(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["info"]["filled_samples"] + r1["info"]["filled_samples"] == 48  # each rank filled its chunks
    assert r0["info"]["filled_samples"] > 0 and r1["info"]["filled_samples"] > 0
    assert r0["teacher_calls"] == 0 and r1["teacher_calls"] == 0  # training read the cache on both ranks
    assert set(r0["shard"]).isdisjoint(r1["shard"])
    for k in r0["student"]:  # DDP kept the ranks identical
        if r0["student"][k].is_floating_point() and "running" not in k:
            torch.testing.assert_close(r0["student"][k], r1["student"][k], rtol=0, atol=0)
    # the folder both ranks filled holds what one process computes
    single = _cfg(tmp_path / "single", **{"teacher_cache.fill_batch_size": 8})
    # in the layout the trainer filled it in (the measured default for this CPU: engine/defaults.py)
    run, _ = _attach(single, channels_last=pick_channels_last(None, torch.device("cpu"), None, training=True))
    from crossdistill.teacher_cache import _Store, _read_manifest

    shared = _Store(tmp_path / "run" / "teacher_cache", _read_manifest(tmp_path / "run" / "teacher_cache"))
    for i in (0, 9, 17, 47):
        for v in range(3):
            a, b = shared.read(i, v), run.train_set.store.read(i, v)
            assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ the reproduction

def test_reproduce_teacher_cache_at_toy_scale(tmp_path, monkeypatch):
    """`crossdistill reproduce teacher-cache` end to end on tiny IDX files written here (CI has no
    Fashion-MNIST): three columns over seeds, the cache shared by the seeds, its size reported."""
    import gzip
    import struct

    from crossdistill.cli import main
    from crossdistill.data import fashion_mnist
    from crossdistill.lab.reproduce import teacher_cache as exp

    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 16)):
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
                          (f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))):
            raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
            with gzip.open(folder / (stem + ".gz"), "wb") as fh:
                fh.write(raw)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "none")
    monkeypatch.setenv("CROSSDISTILL_DATA", str(tmp_path / "data"))
    monkeypatch.setitem(exp.SCALES, "quick", dict(subset=32, epochs=1, teacher_epochs=1, views=2, seeds=(0, 1)))
    assert main(["reproduce", "teacher-cache", "--quick", "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "results.md").read_text()
    for col in ("student alone", "KD, live teacher", "KD, cache (V = 2, float16)"):
        assert col in md
    assert "over 2 seeds" in md and "MiB per 10 000 images" in md
    manifest = json.loads((tmp_path / "out" / "teacher_cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["views"] == 2 and manifest["data"]["size"] == 32


def test_runs_sharing_a_cache_folder_fill_it_one_at_a_time(tmp_path):
    """Two runs on one teacher_cache.dir (seeds started side by side): a run waits while another holds
    the folder, then fills it; the next run finds it filled and fills nothing."""
    import threading

    from crossdistill.engine.run_folder import FolderLock

    shared = tmp_path / "shared_cache"
    held = FolderLock(shared, "teacher_cache.dir").acquire()  # another run, filling it (a new open(): its own lock)
    got = {}
    waiting = threading.Thread(target=lambda: got.update(_attach(_cfg(tmp_path / "a", **{"teacher_cache.dir": str(shared)}))[1]))
    waiting.start()
    waiting.join(timeout=2.0)
    assert waiting.is_alive() and not (shared / "manifest.json").exists()  # it waits, and has written nothing
    held.release()
    waiting.join(timeout=60)
    assert not waiting.is_alive() and got["filled_samples"] == 48
    assert _attach(_cfg(tmp_path / "b", **{"teacher_cache.dir": str(shared)}))[1]["filled_samples"] == 0
