"""Multi-process training, checked: hooks through DDP, and real ``torchrun`` runs (2 processes, gloo,
on CPU) compared rank against rank, against a 1-process run with the same global batch, against
``crossdistill eval``, and against themselves after a SIGKILL and ``--resume``.

One ``torchrun`` launch (tests/ddp_worker.py) runs three trainings and an evaluation in one process
group, because each launch costs seconds:

- ``eq``: KD + FitNet (linear inverted projector) on ``test_plainnet``, a student without BatchNorm —
  BatchNorm normalises each rank's shard with its own statistics, the one thing that legitimately
  makes a W-process run differ from a 1-process run with the same global batch;
- ``crd``: CRD (nce_k 8, memory banks) + KD: the method with state;
- ``rng``: KD + ``random_hint`` (draws from each rank's global RNG every step) + CRD, checkpointed every
  2 steps: the reference for the kill-and-resume test.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from helpers import register_test_models  # noqa: E402

from slow_save import SLOW_SAVE_ENV  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")

TORCHRUN = Path(sys.executable).parent / "torchrun"
WORKER = Path(__file__).parent / "ddp_worker.py"
TRAIN, TEST, PER_RANK = 64, 33, 8  # 33 test samples: not divisible by 2 processes

CFG = """
name: {name}
seed: 3
output_dir: {out}
data: {{name: shapes, batch_size: {batch}, options: {{num_classes: 4, image_size: 16, train_size: {train}, test_size: {test}}}}}
student: {{name: test_plainnet}}
teachers: {{default: {{model: resnet8, num_classes: 4, random_init: true, seed: 1}}}}
distill: {{terms: {terms}}}
train: {{epochs: 2, device: cpu, precision: fp32, threads: 1, progress: false, log_every: 1, checkpoint_every_steps: 2,
         schedule: {{name: cosine}}}}
"""
TERMS = {
    "eq": '[{method: kd, T: 4}, {method: fitnet, student: "@stage:1", teacher: "@stage:1", projector: inverted, '
          'projector_kind: linear}]',
    "crd": "[{method: crd, nce_k: 8}, {method: kd}]",
    "rng": "[{method: kd}, {method: random_hint, weight: 0.1}, {method: crd, nce_k: 8}]",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(folder: Path, name: str, out: Path, batch: int = PER_RANK) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(CFG.format(name=name, out=out, batch=batch, train=TRAIN, test=TEST, terms=TERMS[name]))
    return path


def _env(dump: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", CROSSDISTILL_TEST_DUMP=str(dump))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    return env


def _torchrun(*argv: str) -> list:
    return [str(TORCHRUN), "--standalone", "--nproc_per_node=2", str(WORKER), *argv]


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "dump").mkdir()
    cfgs = {n: _config(d, n, d / n) for n in TERMS}
    argv = []
    for n in TERMS:
        argv += ["train", str(cfgs[n]), ":::"]
    argv += ["eval", str(d / "rng" / "student.pt"), "--json"]
    proc = subprocess.run(_torchrun(*argv), capture_output=True, text=True, env=_env(d / "dump"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, proc


def _dump(d: Path, name: str, rank: int) -> dict:
    return torch.load(d / "dump" / f"{name}.rank{rank}.pt", weights_only=True)


def _records(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_one_log_one_done_line_no_warnings(launch):
    d, proc = launch
    assert proc.stdout.count("done:") == 3, proc.stdout  # rank 0 alone reports, once per run
    assert not proc.stderr.strip(), proc.stderr[-2000:]  # no DDP warning, no duplicate line
    steps = [r["step"] for r in _records(d / "eq") if "phase" in r]
    assert steps == list(range(1, 9))  # 64 samples / (2 ranks × 8) = 4 steps per epoch, one record each
    assert [r["epoch"] for r in _records(d / "eq") if "phase" in r][:4] == [0.25, 0.5, 0.75, 1.0]


def test_parameters_and_method_state_stay_identical_across_ranks(launch):
    d, _ = launch
    for name in TERMS:
        r0, r1 = _dump(d, name, 0), _dump(d, name, 1)
        assert r0.keys() == r1.keys()
        differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
        assert not differ, f"{name}: {differ[:5]} differ between ranks"
    assert any(k.endswith("bank_s") for k in _dump(d, "crd", 0))  # CRD's banks are part of the comparison


def test_two_processes_match_one_process_with_the_same_global_batch(launch, tmp_path):
    """Each step of the 2-process run sees the samples of the same step of a 1-process run with twice the
    batch (EpochSampler), and DDP averages the two shards' gradients: without BatchNorm, the weights
    agree up to float rounding (measured: max |Δ| 6e-6 after 8 steps). CRD draws its negatives at
    random, and two processes draw other ones than one process does: its weights agree only up to the
    noise of those draws (measured: |Δ| / |update| ≈ 0.1), which the bound below leaves room for while
    still catching a wrong learning rate or a doubled gradient (ratio ≥ 1)."""
    register_test_models()
    d, _ = launch
    one = {n: _train_in_process(_config(tmp_path, n, tmp_path / n, batch=2 * PER_RANK)) for n in ("eq", "crd")}
    two = _dump(d, "eq", 0)
    worst = max(float((one["eq"][k] - two[k]).abs().max()) for k in two if two[k].is_floating_point())
    assert worst < 1e-4, f"2 processes differ from 1 by {worst}"

    init = _initial_student(_config(tmp_path, "crd", tmp_path / "crd-init", batch=2 * PER_RANK))
    one, two = one["crd"], _dump(d, "crd", 0)
    keys = list(init)
    update = sum(float((one["student." + k] - init[k]).norm() ** 2) for k in keys) ** 0.5
    apart = sum(float((one["student." + k] - two["student." + k]).norm() ** 2) for k in keys) ** 0.5
    assert update > 0 and apart / update < 0.5, f"CRD: 2 vs 1 process {apart:.4g}, update {update:.4g}"


def _train_in_process(cfg: Path) -> dict:
    from crossdistill.build import build_run
    from crossdistill.config import load_config
    from crossdistill.engine.trainer import Trainer

    trainer = Trainer(build_run(load_config(cfg)))
    trainer.fit()
    return trainer.distiller.state_dict()


def _descendants(pid: int) -> list:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it, then wait until they are gone."""
    victims = [pid] + _descendants(pid)
    for p in victims:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in victims[1:]):
        assert time.monotonic() < deadline, "workers survived SIGKILL"
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def _initial_student(cfg: Path) -> dict:
    from crossdistill.build import build_run
    from crossdistill.config import load_config

    return {k: v.clone() for k, v in build_run(load_config(cfg)).distiller.student.state_dict().items()
            if v.is_floating_point()}


def test_every_test_sample_once_and_eval_reproduces_the_summary(launch):
    """33 test samples on 2 ranks: 17 + 16, none padded; `crossdistill eval` on 2 processes (in the
    launch) and on 1 (here) gives the metrics of summary.json exactly."""
    from crossdistill.commands.evaluate import evaluate_checkpoint

    register_test_models()
    d, proc = launch
    summary = json.loads((d / "rng" / "summary.json").read_text())
    assert summary["evaluation"] == {"precision": "fp32", "channels_last": False, "device": "cpu", "processes": 2,
                                     "split": "test", "samples": TEST, "batch_size": PER_RANK}
    last = {k: v for k, v in summary["last"].items() if k not in ("step", "epoch")}
    assert round(last["acc"] * TEST, 6) == round(last["acc"] * TEST)  # a count out of 33, not 34
    two = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert two == last
    assert evaluate_checkpoint(str(d / "rng" / "student.pt")) == last


def test_killed_two_process_run_resumes_to_the_same_result(launch, tmp_path):
    """SIGKILL torchrun and its workers mid-run, then --resume: every rank continues from its own RNG
    state (random_hint and CRD draw from it), so the weights, both ranks' states and the log equal the
    uninterrupted run's bit for bit."""
    d, _ = launch
    out = tmp_path / "rng"
    cfg = _config(tmp_path, "rng", out)
    (tmp_path / "dump").mkdir()
    # every save pauses before its rename: the kill lands inside the save of step 4 (checkpoint.pt: step 2)
    env = dict(_env(tmp_path / "dump"), **{SLOW_SAVE_ENV: "1"})
    proc = subprocess.Popen(_torchrun("train", str(cfg)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            steps = [r["step"] for r in _records(out) if "phase" in r] if (out / "metrics.jsonl").exists() else []
            if steps and max(steps) >= 4 and list(out.glob(".checkpoint.pt.*.tmp")):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.01)
        _kill_tree(proc.pid)  # torchrun starts each worker in a session of its own: kill them all at once
    finally:
        proc.kill()
        proc.wait()
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["position"]["global_step"] == 2 and len(ckpt["rng_by_rank"]) == 2
    assert not torch.equal(ckpt["rng_by_rank"][0]["torch"], ckpt["rng_by_rank"][1]["torch"])

    res = subprocess.run(_torchrun("train", str(cfg), "--resume"), capture_output=True, text=True,
                         env=_env(tmp_path / "dump"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = torch.load(d / "rng" / "student.pt", weights_only=True)["student"]
    got = torch.load(out / "student.pt", weights_only=True)["student"]
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []
    for rank in (0, 1):
        a, b = _dump(d, "rng", rank), torch.load(tmp_path / "dump" / f"rng.rank{rank}.pt", weights_only=True)
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], f"rank {rank}"
    assert _records(out) == _records(d / "rng")


# -- hooks through DDP, in one process group without torchrun ------------------------------------
def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        from crossdistill.distiller import Distiller
        from crossdistill.methods import build_method
        from crossdistill.tasks import create_task
        from helpers import TinyNet, toy_batch

        torch.manual_seed(0)  # same init on both ranks
        student, teacher = TinyNet(width=4), TinyNet(width=8)
        ddp_student = torch.nn.parallel.DistributedDataParallel(student)
        d = Distiller(ddp_student, teacher, [build_method("fitnet", student="layer2", teacher="layer2")],
                      task=create_task("classification", 5), example_input=toy_batch()["input"])
        batch = toy_batch(seed=rank)  # different data per rank
        loss, parts = d(batch)
        loss.backward()
        grad = student.layer1[0].weight.grad.clone()
        torch.save({"parts": {k: v.item() for k, v in parts.items()}, "grad": grad,
                    "paths": [plan.student_paths for plan in d.plans]}, f"{out}/rank{rank}.pt")
        dist.barrier()  # leave together: gloo can abort a rank whose peer tears down first
    finally:
        dist.destroy_process_group()


def test_hooks_capture_through_ddp_and_gradients_are_synchronised(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["paths"] == [["layer2"]]
    assert r0["parts"]["fitnet"] > 0 and r1["parts"]["fitnet"] > 0
    assert r0["parts"]["fitnet"] != r1["parts"]["fitnet"]  # each rank saw its own batch
    assert torch.equal(r0["grad"], r1["grad"])  # DDP all-reduced the student's gradients
