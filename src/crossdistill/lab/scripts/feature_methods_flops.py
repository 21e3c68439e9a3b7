"""What ReviewKD, SRD and VkD add to a training step, in multiply-adds: one step (forward + backward)
of student + teacher + cross-entropy with and without each term (its defaults), counted by
``torch.utils.flop_counter.FlopCounterMode``, and ReviewKD's review chain block by block.

    python -m crossdistill.lab.scripts.feature_methods_flops

Machine-independent (a count, not a timing); the numbers are in docs/speed.md (*ReviewKD*).
"""
import torch
from torch.utils.flop_counter import FlopCounterMode

from crossdistill.distiller import Distiller
from crossdistill.methods import build_method
from crossdistill.models import create_model
from crossdistill.tasks import create_task

B = 64  # the bench's batch: the orthogonal parametrisation's cost is per step, not per sample


def step_macs(teacher: str, student: str, methods, x, y) -> float:
    """Multiply-adds per sample of one step of the Distiller (task loss included)."""
    torch.manual_seed(0)
    s, t = create_model(student, num_classes=100), create_model(teacher, num_classes=100)
    d = Distiller(s, t, [build_method(m) for m in methods], task=create_task("classification", 100),
                  example_input=x[:2]).train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = d({"input": x, "label": y})
        loss.backward()
    per_module = {name: sum(ops.values()) / 2 / x.shape[0] for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops() / 2 / x.shape[0], per_module


def main() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(B, 3, 32, 32), torch.randint(0, 100, (B,))
    for teacher, student in (("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2")):
        base, _ = step_macs(teacher, student, ["kd"], x, y)  # KD adds no multiply-adds: the networks' own
        print(f"{teacher} → {student}: student step + teacher forward {base / 1e6:.0f} MMAC/sample")
        for method in ("reviewkd", "srd", "vkd"):
            total, per_module = step_macs(teacher, student, [method], x, y)
            print(f"  {method}: +{(total - base) / 1e6:.1f} MMAC/sample ({total / base:.3f}× the networks')")
            for name, macs in per_module.items():  # the review chain's blocks, shallow to deep
                if name.rsplit(".", 1)[0].endswith("chain.blocks"):
                    print(f"    {name.split('.', 1)[1]}: {macs / 1e6:.1f} MMAC/sample")


if __name__ == "__main__":
    main()
