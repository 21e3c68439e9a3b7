"""The built-in training loop. It knows no method by name.

Phases declared by the methods (e.g. AB/FT/FSP initialisation) run first, then ``main``; each
phase gets its own optimiser over ``distiller.trainable_parameters(phase)``. Everything that
decides the next step — weights, optimiser, AMP scaler, every rank's RNG, phase/epoch/step
position, metric history — goes into an atomic checkpoint, so a killed run resumes to the same
final weights. It builds nothing and never changes the run it is given: the builder
(:func:`crossdistill.build.start_run`) hands it a :class:`~crossdistill.engine.run.TrainingRun` with
the folder locked, the resume decision taken, the teacher cache attached, the loaders and the
optimiser factory. The pieces live beside it: device and precision (``device.py``), data order
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
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import dump_config
from ..phases import MAIN
from ..errors import CheckpointError, Interrupted
from .checkpoint import FORMAT, VERSION, atomic_save, atomic_write_text
from .device import to_device
from .distributed import wrap_ddp
from .evaluate import evaluate
from .export import export_student
from .logging import MetricLog
from .nonfinite import NonFiniteGuard
from .rng import rng_states_of_all_ranks, seed_everything, set_rng_state
from .run import TrainingRun
from .run_folder import CHECKPOINT, PREVIOUS, STUDENT, SUMMARY, write_config
from .sampler import set_data_epoch
from .schedule import lr_factor


@dataclass
class Position:
    phase: int = 0     # index into the list of phases
    epoch: int = 0     # epoch within the phase
    step: int = 0      # batches done within the epoch
    global_step: int = 0


class Trainer:
    """The loop over a :class:`TrainingRun` (:func:`crossdistill.build.start_run`); given a
    :class:`crossdistill.build.Run` instead, it asks the run to start itself (``run.start``)."""

    def __init__(self, run, output_dir: Optional[str] = None, resume: bool = False):
        ready: TrainingRun = run if isinstance(run, TrainingRun) else run.start(output_dir, resume)
        self.ready, self.run, self.cfg = ready, ready.run, ready.cfg
        self.tc = self.cfg.train
        self.out, self.world, self.rank = ready.out, ready.world, ready.rank
        self.is_main = self.rank == 0
        self.precision, self.eval_precision = ready.precision, ready.eval_precision
        self.device = self.precision.device
        self.distiller = ready.run.distiller
        self.phases = self.distiller.phases() + [(MAIN, self.tc.epochs)]
        self.pos = Position()
        self.history: List[Dict[str, Any]] = []
        self.saved_step: Optional[int] = None  # global step of the last checkpoint written
        self.guard = NonFiniteGuard(self.tc.nonfinite, self.world, self.device, self._kept)
        self.lock, self.data_identity, self.cache_info = ready.lock, ready.data_identity, ready.cache_info
        self._resume_state = ready.resume_state
        if self._resume_state is not None:
            self.saved_step = int(self._resume_state["position"]["global_step"])
        # TensorBoard hides events from the first step this process will (re)write
        start = self.saved_step + 1 if self.saved_step is not None else 0
        self.log = MetricLog(self.out, enabled=self.is_main, purge_step=start)
        self.sampler, self._loader_gen = ready.sampler, ready.loader_generator
        self.train_loader, self.eval_loader = ready.train_loader, ready.eval_loader
        self.optimizer = self._optimizer(self.phases[0][0])
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.dtype == torch.float16)

    # -- resume ---------------------------------------------------------------------------------
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
        return self.ready.make_optimizer(phase)

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
        set_data_epoch(self.ready.train_set, self.pos.epoch)
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
