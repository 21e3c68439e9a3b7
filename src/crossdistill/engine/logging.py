"""Metric logs: JSONL (one object per line, always) and TensorBoard (when installed)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional


class MetricLog:
    def __init__(self, folder: Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(folder / "tensorboard"))
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint, so the log reads as one run."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _step_of(line) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, record: Dict[str, Any], prefix: Optional[str] = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{k}" if prefix else k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62
