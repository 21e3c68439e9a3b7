"""What ``precision: auto`` and ``channels_last: null`` pick for training, per kind of device, and the
measurements behind each choice.

One row per (device kind, precision). The kind of a CPU is its best vector unit as torch reports it
(``torch.backends.cpu.get_cpu_capability()``: AMX, AVX512 or AVX2); a GPU is ``cuda``. A new
measurement (``crossdistill bench amp``, ``crossdistill bench peer``) goes into the table with the
machine it ran on. Explicit settings (``train.precision``, ``train.channels_last``) always win.
Evaluation keeps the canonical layout for fp32 (``crossdistill eval`` then measures exactly what
training reported); see :func:`crossdistill.engine.device.pick_channels_last`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch


@dataclass(frozen=True)
class Measured:
    """A default and where it comes from."""

    channels_last: bool
    evidence: str


#: (device kind, precision name) -> training memory format; ``precision`` rows say what ``auto`` picks
CHANNELS_LAST: Dict[Tuple[str, str], Measured] = {
    ("cpu:avx2", "fp32"): Measured(True, "AMD EPYC, AVX2 only, 2 cores: KD resnet32x4->resnet8x4 step 3.01 vs "
                                         "3.40 s (1.13x, issue 23); teacher forward alone 1.13-1.21x "
                                         "(teacher_runtime measurement, docs/speed.md)"),
    ("cpu:avx2", "bf16"): Measured(True, "same layout rule as the bf16 CPUs (bf16 itself is ~7x slower here)"),
    ("cpu:amx", "fp32"): Measured(True, "Xeon with AMX: bench amp resnet8x4 fp32 + channels_last 1.20x "
                                        "(docs/results.md, Benchmarks)"),
    ("cpu:amx", "bf16"): Measured(True, "Xeon with AMX: bench amp bf16 2.00x, bf16 + channels_last 2.28x vs fp32"),
    ("cpu:avx512", "fp32"): Measured(True, "not measured on an AVX-512-only CPU: follows the AVX2 and AMX "
                                           "measurements, which both gain"),
    ("cpu:avx512", "bf16"): Measured(True, "as AMX (bf16 + channels_last the fastest there)"),
    ("cuda", "fp32"): Measured(False, "not measured: fp32 convolutions gain little from NHWC without tensor cores"),
    ("cuda", "bf16"): Measured(True, "not measured by this project yet (no GPU lent): cuDNN's tensor-core "
                                     "convolutions run natively in NHWC; check with `bench amp device=cuda`"),
    ("cuda", "fp16"): Measured(True, "as bf16"),
}

#: CPU kind -> (what ``precision: auto`` picks there, why)
CPU_PRECISION: Dict[str, Tuple[str, str]] = {
    "cpu:amx": ("bf16", "bench amp 2.00x over fp32 on a Xeon with AMX (docs/results.md)"),
    "cpu:avx512": ("bf16", "AVX-512 BF16 kernels (follows the AMX measurement)"),
    "cpu:avx2": ("fp32", "bf16 autocast is ~7x slower than fp32 on the AVX2-only EPYC (issue 23)"),
}


def cpu_precision(device: torch.device) -> Optional[torch.dtype]:
    """What ``precision: auto`` picks on this CPU (None = fp32; fp32 for a kind not in the table)."""
    row = CPU_PRECISION.get(device_kind(device))
    return torch.bfloat16 if row and row[0] == "bf16" else None


def device_kind(device: torch.device) -> str:
    """``cuda``, or ``cpu:<best vector unit>`` (``cpu:amx``, ``cpu:avx512``, ``cpu:avx2``, ``cpu:other``)."""
    if device.type != "cpu":
        return device.type
    cap = torch.backends.cpu.get_cpu_capability().upper()
    for unit in ("AMX", "AVX512", "AVX2"):
        if unit in cap:
            return f"cpu:{unit.lower()}"
    return "cpu:other"


def precision_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def training_channels_last(device: torch.device, dtype: Optional[torch.dtype]) -> bool:
    """The measured training layout for this device and precision (False for a kind not in the table)."""
    row = CHANNELS_LAST.get((device_kind(device), precision_name(dtype)))
    return bool(row and row.channels_last)
