"""The built-in training loop. It knows no method by name.

Phases declared by the methods (e.g. AB/FT/FSP initialisation) run first, then ``main``; each
phase gets its own optimiser over ``distiller.trainable_parameters(phase)``. Everything that
decides the next step — weights, optimiser, AMP scaler, RNG, phase/epoch/step position, metric
history — goes into an atomic checkpoint, so a killed run resumes to the same final weights.
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from pydantic import ValidationError
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from ..build import Run
from ..distiller import MAIN
from ..errors import CheckpointError, ConfigError, NonFiniteLossError
from .checkpoint import (
    FORMAT,
    VERSION,
    atomic_save,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temps,
)
from .logging import MetricLog
from .schedule import lr_factor

CHECKPOINT = "checkpoint.pt"
STUDENT = "student.pt"
SUMMARY = "summary.json"
LOG = "metrics.jsonl"

#: Config keys a resumed run may change: they do not touch the weights or the metrics.
RESUME_MAY_CHANGE = ("output_dir", "data.num_workers", "train.progress", "train.log_every",
                     "train.checkpoint_every", "train.checkpoint_every_steps", "train.nonfinite", "train.device",
                     "train.threads", "train.deterministic")
#: ``train.nonfinite=skip`` gives up after this many non-finite steps in a row (the weights are gone).
MAX_CONSECUTIVE_SKIPS = 100


# -- device / precision -------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    cap = torch.backends.cpu.get_cpu_capability()
    return "AMX" in cap.upper() or "AVX512" in cap.upper()


def pick_precision(name: str, device: torch.device) -> Optional[torch.dtype]:
    """None = fp32. ``auto``: bf16 where the hardware has it fast (measured: `crossdistill bench amp`)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


# -- data order ---------------------------------------------------------------------------------
class EpochSampler(Sampler[int]):
    """Shuffled order from (seed, epoch), sharded by rank, able to start mid-epoch.

    A pure function of its arguments: the basis of exact resume and of DDP sharding (each rank
    takes every ``world``-th index of the same permutation, padded to equal length).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = math.ceil(self.n / self.world)
        order += order[: per_rank * self.world - self.n]
        return order[self.rank::self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return max(math.ceil(self.n / self.world) - self.start, 0)


def set_data_epoch(ds, epoch: int) -> None:
    while ds is not None:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        ds = getattr(ds, "dataset", None)


def to_device(batch: Dict[str, Any], device: torch.device, channels_last: bool) -> Dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            v = v.to(device, non_blocking=True)
            if k == "input" and channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


@dataclass
class Position:
    phase: int = 0     # index into the list of phases
    epoch: int = 0     # epoch within the phase
    step: int = 0      # batches done within the epoch
    global_step: int = 0


def rng_state() -> Dict[str, Any]:
    """Every global RNG a step may draw from, as tensors and plain values (weights_only-loadable)."""
    np_state = None
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        np_state = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np_state}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass


def flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": [1]}}`` → ``{"a.b.0": 1}``; an empty dict or list is a leaf."""
    if isinstance(d, dict) and d:
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d:
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


class Trainer:
    def __init__(self, run: Run, output_dir: Optional[str] = None, resume: bool = False):
        self.run, self.cfg = run, run.cfg
        self.tc = self.cfg.train
        self.out = Path(output_dir or self.cfg.output_dir)
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.is_main = self.rank == 0
        self.device = pick_device(self.tc.device)
        self.amp_dtype = pick_precision(self.tc.precision, self.device)
        self.channels_last = self.tc.channels_last if self.tc.channels_last is not None else \
            (self.device.type == "cpu" and self.amp_dtype is not None)
        self.distiller = run.distiller.to(self.device)
        if self.channels_last:
            self.distiller.student.to(memory_format=torch.channels_last)
        if self.tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
        if self.tc.compile:
            self.distiller.student.compile()
        self.phases = self.distiller.phases() + [(MAIN, self.tc.epochs)]
        self.pos = Position()
        self.history: List[Dict[str, Any]] = []
        self.skipped = 0
        self.skipped_in_a_row = 0
        self.saved_any = False
        # every check that can fail comes before anything is written to output_dir
        self._check_output(resume)
        self._resume_state = self._load_resume() if resume else None
        self._prepare_output()
        if self._resume_state is not None:
            self.saved_any = True
        # TensorBoard hides events from the first step this process will (re)write
        start = int(self._resume_state["position"]["global_step"]) + 1 if self._resume_state else 0
        self.log = MetricLog(self.out, enabled=self.is_main, purge_step=start)
        self.sampler = EpochSampler(len(run.train_set), self.cfg.seed, True, self.rank, self.world)
        # the loaders draw their worker base seed from their own generator, never from the global RNG
        # (a fresh iterator per epoch, or after a resume, must not shift the global random stream)
        self._loader_gen = torch.Generator()
        self.train_loader = DataLoader(run.train_set, batch_size=self.cfg.data.batch_size, sampler=self.sampler,
                                       num_workers=self.cfg.data.num_workers, drop_last=False,
                                       persistent_workers=False, pin_memory=self.device.type == "cuda",
                                       generator=self._loader_gen)
        eval_sampler = EpochSampler(len(run.eval_set), self.cfg.seed, False, self.rank, self.world)
        self.eval_loader = DataLoader(run.eval_set, batch_size=self.cfg.data.eval_batch_size or self.cfg.data.batch_size,
                                      sampler=eval_sampler, num_workers=self.cfg.data.num_workers,
                                      generator=torch.Generator().manual_seed(self.cfg.seed))
        self.optimizer = self._optimizer(self.phases[0][0])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    # -- output folder / resume ----------------------------------------------------------------
    def _check_output(self, resume: bool) -> None:
        if self.is_main and not resume:
            held = [n for n in (CHECKPOINT, STUDENT, SUMMARY) if (self.out / n).exists()]
            if held:
                raise ConfigError(f"'{self.out}' already holds a run ({held[0]}); pass --resume to continue it, "
                                  "or choose another output_dir=... (nothing was overwritten)")

    def _prepare_output(self) -> None:
        if not self.is_main:
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"output_dir '{self.out}' is not writable ({e.strerror or e}); "
                              "choose another output_dir=...") from None
        # a save killed half-way leaves a temporary file; it is never read, and goes now
        for name in (CHECKPOINT, STUDENT, SUMMARY, LOG):
            remove_stale_temps(self.out / name)

    def _load_resume(self) -> Optional[Dict[str, Any]]:
        path = self.out / CHECKPOINT
        if not path.exists():
            done = [n for n in (STUDENT, SUMMARY) if (self.out / n).exists()]
            if done:
                raise CheckpointError(f"'{self.out}' holds {done[0]} but no {CHECKPOINT} to resume from; "
                                      "choose another output_dir=... for a new run (nothing was overwritten)")
            return None  # killed before its first checkpoint: start again from the beginning
        ckpt = load_checkpoint(path)
        if ckpt.get("kind") != "train":
            raise CheckpointError(f"'{path}' is an exported student, not a training checkpoint; it cannot be resumed")
        self._check_same_config(ckpt, path)
        saved_world = int(ckpt.get("world", 1))
        if saved_world != self.world:
            raise CheckpointError(f"'{path}' was written by a run on {saved_world} process(es), this one has "
                                  f"{self.world}; resume with the same number of processes")
        return ckpt

    def _check_same_config(self, ckpt: Dict[str, Any], path: Path) -> None:
        """Resuming under another config would silently mix two runs: refuse, naming the keys."""
        saved = ckpt.get("config") or {}
        try:  # keys added to the schema since the checkpoint was written compare at their defaults
            saved = type(self.cfg).model_validate(saved).model_dump(mode="json")
        except ValidationError:
            pass
        old = flatten(saved)
        new = flatten(self.cfg.model_dump(mode="json"))
        may = RESUME_MAY_CHANGE

        def free(key: str) -> bool:
            return any(key == m or key.startswith(m + ".") for m in may)

        diff = [k for k in sorted(set(old) | set(new)) if not free(k) and old.get(k, "<unset>") != new.get(k, "<unset>")]
        if diff:
            k = diff[0]
            more = f" (and {len(diff) - 1} more key(s))" if len(diff) > 1 else ""
            raise CheckpointError(f"'{path}' was written by another config: {k} is {old.get(k, '<unset>')!r} there "
                                  f"but {new.get(k, '<unset>')!r} now{more}; resume with the config that wrote it, "
                                  "or start a new run with another output_dir=...")

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        where = self.out / CHECKPOINT
        try:
            self.distiller.load_state_dict(ckpt["distiller"])
            self.pos = Position(**ckpt["position"])
            self.optimizer = self._optimizer(self.phases[self.pos.phase][0])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
        except CheckpointError:
            raise
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"the training state in '{where}' does not fit this config ({msg}); "
                                  "resume with the config that wrote it") from None
        self.history = list(ckpt.get("history", []))
        self.skipped = int(ckpt.get("skipped", 0))
        self.skipped_in_a_row = int(ckpt.get("skipped_in_a_row", 0))
        threads = ckpt.get("threads")
        if threads and threads != torch.get_num_threads() and self.is_main:
            print(f"note: this run was saved with {threads} intra-op thread(s) and resumes with "
                  f"{torch.get_num_threads()}; the result may differ in the last bits (set train.threads)",
                  file=sys.stderr)
        self.log.truncate_after(self.pos.global_step)

    def _checkpoint(self) -> None:
        if self.is_main:
            state = {
                "format": FORMAT, "version": VERSION, "kind": "train",
                "config": self.cfg.model_dump(mode="json"),
                "model_spec": self.run.model_spec,
                "distiller": self.distiller.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(),
                "position": vars(self.pos).copy(),
                "history": self.history,
                "skipped": self.skipped,
                "skipped_in_a_row": self.skipped_in_a_row,
                "world": self.world,
                "threads": torch.get_num_threads(),
            }
            atomic_save(state, self.out / CHECKPOINT)
        self.saved_any = True
        if self.world > 1:
            dist.barrier()

    # -- optimisation --------------------------------------------------------------------------
    def _optimizer(self, phase: str) -> torch.optim.Optimizer:
        o = self.tc.optimizer
        # parameter groups: a parameter with its own weight-decay hint (a projector option) gets its own
        params = self.distiller.parameter_groups(phase, o.weight_decay)
        if not params:
            raise ConfigError(f"phase '{phase}' has no trainable parameters")
        if o.name == "sgd":
            return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.nesterov)
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)

    def _set_lr(self, phase: str, epochs: int, progress: float) -> float:
        if phase == MAIN:
            lr = self.tc.optimizer.lr * lr_factor(self.tc.schedule, progress, epochs)
        else:  # extra phases run at a constant rate
            lr = self.tc.phase_lr.get(phase, self.tc.optimizer.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _module(self):
        return self._ddp if self.world > 1 else self.distiller

    def _finished(self) -> bool:
        phase, epoch = self.pos.phase, self.pos.epoch
        while phase < len(self.phases) and epoch >= self.phases[phase][1]:
            phase, epoch = phase + 1, 0
        return phase >= len(self.phases)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        threads_before = torch.get_num_threads()
        if self.tc.threads:
            torch.set_num_threads(self.tc.threads)
        try:
            return self._fit()
        finally:
            torch.set_num_threads(threads_before)

    def _fit(self) -> Dict[str, Any]:
        if self._resume_state is not None:
            self._restore(self._resume_state)
            self._resume_state = None
            done = self._finished_summary()
            if done is not None:  # resuming a finished run changes nothing
                self.log.close()
                return done
        else:
            seed_everything(self.cfg.seed)
            self.log.truncate_after(-1)  # a run that never saved a checkpoint starts its log afresh
        if self.world > 1:
            self._ddp = torch.nn.parallel.DistributedDataParallel(
                self.distiller, broadcast_buffers=False, find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        try:
            while self.pos.phase < len(self.phases):
                phase, epochs = self.phases[self.pos.phase]
                self.distiller.phase = phase
                if self.pos.epoch >= epochs:  # phase done (also: resumed from its last checkpoint)
                    self.pos.phase += 1
                    self.pos.epoch = 0
                    if self.pos.phase < len(self.phases):
                        self.optimizer = self._optimizer(self.phases[self.pos.phase][0])
                    continue
                self._train_epoch(phase, epochs)
                self.pos.epoch += 1
                self.pos.step = 0
                if phase == MAIN and (self.pos.epoch % self.tc.eval_every == 0 or self.pos.epoch == epochs):
                    self._evaluate_epoch()
                if self.pos.epoch % self.tc.checkpoint_every == 0 or self.pos.epoch == epochs:
                    self._checkpoint()
            summary = self._finish()
        finally:
            self.log.close()
        return summary

    def _finished_summary(self) -> Optional[Dict[str, Any]]:
        """The summary of a run that had already finished (its student and summary are written)."""
        if not self._finished() or not (self.out / STUDENT).is_file():
            return None
        try:
            summary = json.loads((self.out / SUMMARY).read_text())
        except (OSError, ValueError):
            return None  # killed while finishing: finish again
        return summary if isinstance(summary, dict) and "last" in summary else None

    def _train_epoch(self, phase: str, epochs: int) -> None:
        self.distiller.train()
        if phase == MAIN:
            self.distiller.on_epoch_start(self.pos.epoch, epochs)
        set_data_epoch(self.run.train_set, self.pos.epoch)
        bs = self.cfg.data.batch_size
        self.sampler.set_epoch(self.pos.epoch, start=self.pos.step * bs)
        self._loader_gen.manual_seed(self.cfg.seed * 100_003 + self.pos.epoch)
        n_batches = math.ceil(math.ceil(self.sampler.n / self.world) / bs)
        if self.tc.max_steps_per_epoch:
            n_batches = min(n_batches, self.tc.max_steps_per_epoch)
        bar = None
        if self.is_main and self.tc.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, initial=self.pos.step, desc=f"{phase} {self.pos.epoch + 1}/{epochs}",
                       leave=False, dynamic_ncols=True, disable=None)
        try:
            for batch in self.train_loader:
                if self.pos.step >= n_batches:
                    break
                progress = self.pos.epoch + self.pos.step / max(n_batches, 1)
                lr = self._set_lr(phase, epochs, progress)
                parts = self._step(to_device(batch, self.device, self.channels_last), phase)
                self.pos.step += 1
                self.pos.global_step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}")
                if self.pos.global_step % self.tc.log_every == 0 or self.pos.step == n_batches:
                    self.log.write({"step": self.pos.global_step, "epoch": progress, "phase": phase, "lr": lr, **parts},
                                   "train")
                every = self.tc.checkpoint_every_steps
                if every and self.pos.global_step % every == 0 and self.pos.step < n_batches:
                    self._checkpoint()
        finally:
            if bar is not None:
                bar.close()

    def _step(self, batch: Dict[str, Any], phase: str) -> Dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss, parts = self._module()(batch)
        if not torch.isfinite(loss):
            bad = [k for k, v in parts.items() if not torch.isfinite(v).all()] or ["total"]
            value = float(parts[bad[0]]) if bad[0] in parts else float(loss)
            step = self.pos.global_step + 1
            kept = f"the last good checkpoint is kept in '{self.out / CHECKPOINT}'" if self.saved_any else \
                "no checkpoint had been written yet"
            if self.tc.nonfinite == "stop":
                raise NonFiniteLossError(
                    f"loss part '{bad[0]}' became {value} at step {step} (phase {phase}, epoch {self.pos.epoch + 1}); "
                    f"{kept}; lower the learning rate or the term's weight, or set train.nonfinite=skip")
            self.skipped += 1
            self.skipped_in_a_row += 1
            if self.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPS:
                raise NonFiniteLossError(
                    f"loss part '{bad[0]}' was non-finite for {self.skipped_in_a_row} steps in a row (last: step {step}); "
                    f"the weights themselves are probably NaN, skipping cannot recover; {kept}; lower the learning rate")
            return {"loss": float("nan"), "skipped": float(self.skipped)}
        self.skipped_in_a_row = 0
        self.scaler.scale(loss).backward()
        if self.tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.distiller.trainable_parameters(phase), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        task = self.run.task
        metrics = task.metrics().to(self.device)
        self.distiller.eval()
        with self._autocast():
            for batch in self.eval_loader:
                batch = to_device(batch, self.device, self.channels_last)
                out = self.distiller.predict(batch["input"])
                task.update_metrics(metrics, out.float(), batch)
        return task.compute_metrics(metrics)

    def _evaluate_epoch(self) -> None:
        result = self.evaluate()
        record = {"step": self.pos.global_step, "epoch": self.pos.epoch, **result}
        self.history.append(record)
        self.log.write(record, "eval")
        if self.is_main and self.tc.progress:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
            print(f"epoch {self.pos.epoch}/{self.tc.epochs}: {shown}", flush=True)

    def _finish(self) -> Dict[str, Any]:
        task = self.run.task
        last = self.history[-1] if self.history else {}
        pick = max if task.higher_is_better else min
        best = pick(self.history, key=lambda r: r[task.primary_metric]) if self.history else {}
        summary = {"name": self.cfg.name, "task": task.name, "primary_metric": task.primary_metric,
                   "eval_split": self.run.eval_split,  # which split "best"/"last" were measured on
                   "best": best, "last": last, "skipped_steps": self.skipped,
                   "student": str(self.out / STUDENT)}
        if self.is_main:
            # student first, summary last: a summary.json means the run is complete
            export_student(self.out / STUDENT, self.distiller.student, self.run.model_spec, last)
            atomic_write_text(json.dumps(summary, indent=2), self.out / SUMMARY)
        return summary


def export_student(path: Path, student: torch.nn.Module, spec: Dict[str, Any], metrics: Dict[str, Any]) -> None:
    """The student alone: weights + how to rebuild it. No teacher, projector or optimiser."""
    from ..taps import unwrap

    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(student).state_dict().items()}
    atomic_save({"format": FORMAT, "version": VERSION, "kind": "student", "model_spec": spec,
                 "student": state, "metrics": metrics}, path)
