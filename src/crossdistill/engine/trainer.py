"""The built-in training loop. It knows no method by name.

Phases declared by the methods (e.g. AB/FT/FSP initialisation) run first, then ``main``; each
phase gets its own optimiser over ``distiller.trainable_parameters(phase)``. Everything that
decides the next step — weights, optimiser, AMP scaler, every rank's RNG, phase/epoch/step
position, metric history — goes into an atomic checkpoint, so a killed run resumes to the same
final weights. The pieces live beside it: device and precision (``device.py``), data order
(``sampler.py``), random streams (``rng.py``), what a resume must match (``resume.py``), the run
folder and its lock (``run_folder.py``), the evaluation loop (``evaluate.py``) and the export
(``export.py``).
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader

from ..build import Run
from ..config import dump_config
from ..distiller import MAIN
from ..errors import CheckpointError, ConfigError, Interrupted
from .checkpoint import FORMAT, VERSION, atomic_save, atomic_write_text
from .device import Precision, pick_channels_last, pick_precision, to_device
from .distributed import wrap_ddp
from .evaluate import eval_loader, evaluate
from .export import export_student
from .logging import MetricLog
from .nonfinite import NonFiniteGuard
from .resume import check_same_config, check_same_data, check_same_world, data_identity
from .rng import rng_states_of_all_ranks, seed_everything, set_rng_state
from .run_folder import (CHECKPOINT, PREVIOUS, STUDENT, SUMMARY, FolderLock, check_new_run,
                         load_resume_checkpoint, prepare, write_config)
from .sampler import EpochSampler, set_data_epoch
from .schedule import lr_factor


@dataclass
class Position:
    phase: int = 0     # index into the list of phases
    epoch: int = 0     # epoch within the phase
    step: int = 0      # batches done within the epoch
    global_step: int = 0


class Trainer:
    def __init__(self, run: Run, output_dir: Optional[str] = None, resume: bool = False):
        self.run, self.cfg = run, run.cfg
        self.tc = self.cfg.train
        self.out = Path(output_dir or self.cfg.output_dir)
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.is_main = self.rank == 0
        self.precision = Precision.pick(self.tc.device, self.tc.precision, self.tc.channels_last)
        self.device = self.precision.device
        eval_dtype = pick_precision(self.tc.eval_precision, self.device)
        self.eval_precision = Precision(self.device, eval_dtype, pick_channels_last(None, self.device, eval_dtype))
        self.distiller = run.distiller.to(self.device)
        if self.precision.channels_last:
            self.distiller.student.to(memory_format=torch.channels_last)
        if self.tc.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
        if self.tc.compile:
            self.distiller.student.compile()
        self.phases = self.distiller.phases() + [(MAIN, self.tc.epochs)]
        self.pos = Position()
        self.history: List[Dict[str, Any]] = []
        self.saved_step: Optional[int] = None  # global step of the last checkpoint written
        self.guard = NonFiniteGuard(self.tc.nonfinite, self.world, self.device, self._kept)
        self.data_identity = data_identity(run.train_set, run.eval_set)
        # one run per folder, and every check that can fail before anything is written to it
        self.lock = FolderLock(self.out)
        if self.is_main:
            self.lock.acquire()
        try:
            if self.is_main and not resume:
                check_new_run(self.out)
            self._resume_state = self._load_resume() if resume else None
            if self.is_main:
                prepare(self.out)
        except BaseException:
            self.lock.release()
            raise
        if self._resume_state is not None:
            self.saved_step = int(self._resume_state["position"]["global_step"])
        # TensorBoard hides events from the first step this process will (re)write
        start = self.saved_step + 1 if self.saved_step is not None else 0
        self.log = MetricLog(self.out, enabled=self.is_main, purge_step=start)
        # the teacher cache (if configured) is opened or filled now, and then feeds the loader
        from ..teacher_cache import attach

        self.cache_info = attach(run, self.device, self.precision.dtype, self.precision.channels_last, self.rank, self.world, self.out,
                                 log=(lambda m: print(m, file=sys.stderr, flush=True)) if self.is_main and self.tc.progress else None)
        self.sampler = EpochSampler(len(run.train_set), self.cfg.seed, True, self.rank, self.world)
        # the loaders draw their worker base seed from their own generator, never from the global RNG
        # (a fresh iterator per epoch, or after a resume, must not shift the global random stream)
        self._loader_gen = torch.Generator()
        self.train_loader = DataLoader(run.train_set, batch_size=self.cfg.data.batch_size, sampler=self.sampler,
                                       num_workers=self.cfg.data.num_workers, drop_last=False,
                                       persistent_workers=False, pin_memory=self.device.type == "cuda",
                                       generator=self._loader_gen)
        self.eval_loader = eval_loader(run.eval_set, self.cfg.data.eval_batch_size or self.cfg.data.batch_size,
                                       self.cfg.data.num_workers, self.rank, self.world)
        self.optimizer = self._optimizer(self.phases[0][0])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.dtype == torch.float16)

    # -- resume ---------------------------------------------------------------------------------
    def _load_resume(self) -> Optional[Dict[str, Any]]:
        ckpt = load_resume_checkpoint(self.out)
        if ckpt is not None:
            path = self.out / CHECKPOINT
            check_same_config(ckpt, self.cfg, path)
            check_same_world(ckpt, self.world, path)
            check_same_data(ckpt, self.data_identity, path)
        return ckpt

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        where = self.out / CHECKPOINT
        try:
            self.distiller.load_state_dict(ckpt["distiller"])
            self.pos = Position(**ckpt["position"])
            self.optimizer = self._optimizer(self.phases[self.pos.phase][0])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            by_rank = ckpt.get("rng_by_rank")
            set_rng_state(by_rank[self.rank] if by_rank else ckpt["rng"])
        except CheckpointError:
            raise
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError) as e:
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"the training state in '{where}' does not fit this config ({msg}); "
                                  "resume with the config that wrote it") from None
        self.history = list(ckpt.get("history", []))
        self.guard.load(ckpt)
        threads = ckpt.get("threads")
        if threads and threads != torch.get_num_threads() and self.is_main:
            print(f"note: this run was saved with {threads} intra-op thread(s) and resumes with "
                  f"{torch.get_num_threads()}; the result may differ in the last bits (set train.threads)",
                  file=sys.stderr)
        self.log.truncate_after(self.pos.global_step)

    def _checkpoint(self) -> None:
        self._check_finite()  # nothing after a non-finite step is ever saved
        rng = rng_states_of_all_ranks(self.world)  # a collective: every rank takes part
        if self.is_main:
            state = {
                "format": FORMAT, "version": VERSION, "kind": "train",
                "config": self.cfg.model_dump(mode="json"),
                "model_spec": self.run.model_spec,
                "distiller": self.distiller.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng[0],
                "rng_by_rank": rng,
                "position": vars(self.pos).copy(),
                "history": self.history,
                **self.guard.state(),
                "world": self.world,
                "threads": torch.get_num_threads(),
                "data_identity": self.data_identity,
            }
            atomic_save(state, self.out / CHECKPOINT, keep_previous=self.out / PREVIOUS)
        self.saved_step = self.pos.global_step
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
        except KeyboardInterrupt:
            # the folder, not saved_step: Ctrl-C may land between a save's rename and its bookkeeping
            kept = (f"the last checkpoint in '{self.out / CHECKPOINT}' is intact: resume with --resume"
                    if (self.out / CHECKPOINT).exists() else
                    "no checkpoint had been written yet: run the same command again to start afresh")
            raise Interrupted(f"stopped at step {self.pos.global_step}; {kept}") from None
        finally:
            torch.set_num_threads(threads_before)
            self.lock.release()

    def _fit(self) -> Dict[str, Any]:
        if self._resume_state is not None:
            self._restore(self._resume_state)
            self._resume_state = None
            done = self._finished_summary()
            if done is not None:  # resuming a finished run changes nothing
                self.log.close()
                return done
        else:
            # each rank its own random streams (dropout masks, a method's random draws); rank 0's are a
            # 1-process run's. The networks were built before, from cfg.seed alone: identical on every rank.
            seed_everything(self.cfg.seed + self.rank)
            self.log.truncate_after(-1)  # a run that never saved a checkpoint starts its log afresh
        if self.is_main:
            write_config(self.out, dump_config(self.cfg))
        if self.world > 1:
            self._ddp = wrap_ddp(self.distiller, self.device)
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
        # no terminal to draw a bar on (a pipe, a log file): one plain line per epoch instead (below)
        plain = self.is_main and self.tc.progress and not sys.stderr.isatty()
        last_loss, t0 = None, time.time()
        if self.is_main and self.tc.progress and not plain:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, initial=self.pos.step, desc=f"{phase} {self.pos.epoch + 1}/{epochs}",
                       leave=False, dynamic_ncols=True, disable=None)
        try:
            for batch in self.train_loader:
                if self.pos.step >= n_batches:
                    break
                lr = self._set_lr(phase, epochs, self.pos.epoch + self.pos.step / max(n_batches, 1))
                parts = self._step(to_device(batch, self.device, self.precision.channels_last), phase)
                self.pos.step += 1
                self.pos.global_step += 1
                if bar is not None:
                    bar.update(1)
                if self.pos.global_step % self.tc.log_every == 0 or self.pos.step == n_batches:
                    # the only place loss values leave the device: on logging steps, not every step
                    self._check_finite()
                    record = self._logged(parts)
                    last_loss = record["loss"]
                    if bar is not None:
                        bar.set_postfix(loss=f"{record['loss']:.4f}")
                    self.log.write({"step": self.pos.global_step, "phase": phase, "lr": lr,
                                    "epoch": self.pos.epoch + self.pos.step / n_batches, **record}, "train")
                every = self.tc.checkpoint_every_steps
                if every and self.pos.global_step % every == 0 and self.pos.step < n_batches:
                    self._checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self._check_finite()
        if plain:
            loss = "" if last_loss is None else f" loss {last_loss:.4f}"
            print(f"{phase} epoch {self.pos.epoch + 1}/{epochs}:{loss} ({time.time() - t0:.1f}s)", flush=True)

    def _step(self, batch: Dict[str, Any], phase: str) -> Dict[str, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            loss, parts = self._module()(batch)
        parts = {"loss": loss.detach(), **parts}
        if not self.guard.admit(self.pos.global_step + 1, phase, self.pos.epoch, parts):
            self.guard.check_weights(self.distiller.state_dict(), self.pos.global_step + 1)
            return self.guard.skipped_record()
        self.scaler.scale(loss).backward()
        if self.tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.distiller.trainable_parameters(phase), self.tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return parts

    def _logged(self, parts: Dict[str, Tensor]) -> Dict[str, float]:
        """Loss parts as floats, averaged over the ranks (each rank's loss is its shard's mean)."""
        values = torch.stack([v.detach().float().reshape(()) for v in parts.values()])
        if self.world > 1:
            dist.all_reduce(values)
            values /= self.world
        return dict(zip(parts, values.tolist()))

    def _check_finite(self) -> None:
        self.guard.check(self.distiller.state_dict(), self.pos.global_step)

    def _kept(self) -> str:
        return (f"the last good checkpoint is kept in '{self.out / CHECKPOINT}'" if self.saved_step is not None
                else "no checkpoint had been written yet")

    def _evaluate_epoch(self) -> None:
        result, _ = evaluate(self.distiller, self.eval_loader, self.run.task, self.eval_precision)
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
        evaluation = {**self.eval_precision.describe(), "processes": self.world, "split": self.run.eval_split,
                      "samples": len(self.run.eval_set),  # each scored once over the ranks (ShardSampler)
                      "batch_size": self.cfg.data.eval_batch_size or self.cfg.data.batch_size}
        summary = {"name": self.cfg.name, "task": task.name, "primary_metric": task.primary_metric,
                   "eval_split": self.run.eval_split,  # which split "best"/"last" were measured on
                   "best": best, "last": last, "skipped_steps": self.guard.skipped, "evaluation": evaluation,
                   "student": str(self.out / STUDENT)}
        if self.is_main:
            # student first, summary last: a summary.json means the run is complete
            export_student(self.out / STUDENT, self.distiller.student, self.run.model_spec, last, evaluation)
            atomic_write_text(json.dumps(summary, indent=2), self.out / SUMMARY)
        if self.world > 1:
            dist.barrier()  # fit() returns on every rank once the run's files exist
        return summary
