"""DPK's extra work in FLOPs: one training step (forward + backward) of student + teacher + KD, and the
same with the ``dpk`` term (its defaults), counted by ``torch.utils.flop_counter.FlopCounterMode``.

    python -m crossdistill.lab.scripts.dpk_flops

Machine-independent (a count, not a timing); the table is in docs/dpk.md (*Cost*).
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from crossdistill.distiller import Distiller
from crossdistill.methods import build_method
from crossdistill.models import create_model
from crossdistill.tasks import create_task

PAIRS = [("resnet32x4", "resnet8x4", 32, 3), ("wrn_40_2", "wrn_16_2", 32, 3),
         ("resnet110", "resnet8", 28, 1), ("resnet14", "resnet8", 28, 1)]


def step_flops(teacher: str, student: str, method: str, x: torch.Tensor, y: torch.Tensor) -> int:
    torch.manual_seed(0)
    s = create_model(student, num_classes=10, in_channels=x.shape[1])
    t = create_model(teacher, num_classes=10, in_channels=x.shape[1])
    d = Distiller(s, t, [build_method(method)], task=create_task("classification", 10), example_input=x).train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = d({"input": x, "label": y})
        loss.backward()
    return counter.get_total_flops()


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| teacher → student | networks + KD | + DPK (defaults) |\n|---|---|---|")
    for teacher, student, size, channels in PAIRS:
        x, y = torch.randn(64, channels, size, size), torch.randint(0, 10, (64,))
        kd, dpk = step_flops(teacher, student, "kd", x, y), step_flops(teacher, student, "dpk", x, y)
        print(f"| {teacher} → {student}, {size} px | {kd / 1e9:.1f} GFLOP | {dpk / 1e9:.1f} GFLOP (×{dpk / kd:.2f}) |")
