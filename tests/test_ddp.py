"""Hooks and training through DistributedDataParallel: 2 processes, gloo, on CPU."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
                    "paths": d._s_paths}, f"{out}/rank{rank}.pt")
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


@pytest.mark.slow
def test_torchrun_trains_with_two_processes(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"""
output_dir: {tmp_path / 'run'}
data: {{name: shapes, batch_size: 16, options: {{num_classes: 4, image_size: 16, train_size: 64, test_size: 32}}}}
student: {{name: resnet8}}
teachers: {{default: {{model: resnet8, num_classes: 4, random_init: true}}}}
distill: {{terms: [{{method: kd}}, {{method: fitnet}}]}}
train: {{epochs: 1, precision: fp32, progress: false, log_every: 1}}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "crossdistill.cli", "train", str(cfg)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "student.pt").exists() and (tmp_path / "run" / "summary.json").exists()
    # rank 0 alone writes: one log line per step, not two
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"phase"' in line]) == 2  # 64 samples / 2 ranks / 16 = 2 steps
