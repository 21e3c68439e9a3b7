"""Metric logs: JSONL (one object per line, always) and TensorBoard (when installed)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Optional


class MetricLog:
    def __init__(self, folder: Path, enabled: bool = True, tensorboard: bool = True,
                 purge_step: Optional[int] = None):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self._tb = None
        # the TensorBoard writer is opened at the first record, so a run that writes nothing
        # (an error before step 1, resuming a finished run) leaves no event file behind; its module is
        # imported now, not mid-training, where a Ctrl-C landing inside an import can be swallowed
        self._tb_args = (str(folder / "tensorboard"), purge_step) if enabled and tensorboard else None
        if self._tb_args is not None:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb_args = None

    def _writer(self):
        if self._tb is None and self._tb_args is not None:
            log_dir, purge_step = self._tb_args
            self._tb_args = None
            try:
                from torch.utils.tensorboard import SummaryWriter

                # purge_step: on resume, TensorBoard hides events at or after it (written after the checkpoint)
                self._tb = SummaryWriter(log_dir, purge_step=purge_step)
            except Exception:  # tensorboard missing or broken: JSONL still has everything
                self._tb = None
        return self._tb

    def truncate_after(self, step: int) -> None:
        """On resume: drop records newer than the checkpoint, so the log reads as one run."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line.rstrip("\n") for line in lines if line.strip() and _step_of(line) <= step]
        if len(keep) == len(lines) and all(line.endswith("\n") for line in lines):
            return  # nothing newer than the checkpoint, no torn last line
        tmp = self.path.with_name(".metrics.jsonl.truncate.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, record: Dict[str, Any], prefix: Optional[str] = None) -> None:
        if not self.enabled:
            return
        # NaN/Inf (a skipped step) are written as null: the file stays strict JSON
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer() is not None:
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
