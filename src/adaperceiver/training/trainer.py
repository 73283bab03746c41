"""The training engine: joint (once-for-all) or static training with exact, resumable checkpoints.

One :class:`Trainer` runs any task (a :class:`TaskSpec`; named ones in :mod:`adaperceiver.tasks`) with the
:class:`~adaperceiver.training.objective.JointObjective`: AdamW, linear warm-up then cosine decay, gradient
clipping, an EMA of the weights, fp32 / bf16 / fp16 mixed precision (``cfg.precision``), a progress bar and ``metrics.csv``.

Determinism, which is what makes ``--resume`` exact: the data order of epoch ``e`` is a pure
function of ``(seed, e)`` (:func:`adaperceiver.training.distributed.epoch_permutation`), and everything
random inside a step (augmentation, per-sample widths) draws from a generator seeded by
``(seed, step)``. A checkpoint at step ``s`` therefore resumes at batch ``s mod steps_per_epoch``
of epoch ``s // steps_per_epoch`` with nothing lost or repeated.

Run directory layout (``out_dir/name``)::

    config.json           model config + run metadata (from_pretrained reads it)
    model.safetensors     inference weights: the EMA weights (or raw ones with ema_decay=0)
    metrics.csv           one row per logged step and per evaluation
    checkpoints/last.json points at the newest complete checkpoint
    checkpoints/step_XXXXXXXX/{model,ema,objective}.safetensors + trainer_state.pt

Only the main process writes (:meth:`Trainer.is_writer`); the data order and seeding live in
small functions so a torchrun/DDP launch (one process per rank) can reuse them.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..checkpoint import (
    CONFIG_NAME,
    atomic_write,
    load_strict,
    read_state_dict,
    remove_temporaries,
    run_lock,
    save_pretrained,
    save_state_dict,
)
from ..data.items import ItemErrors
from ..errors import UserError, first_line
from ..evaluation.precision import autocast, grad_scaler, resolve_precision
from . import distributed, rundir
from .config import TaskData, TaskSpec, TrainConfig
from .objective import Batch, ExtraLoss, JointObjective, StepModule
from .rundir import LAST_POINTER, METRICS_NAME, STATE_NAME, MetricsLog, last_checkpoint, read_run_json
from .schedule import EpochBatchSampler, ModelEma, default_num_workers, param_groups, step_generator, warmup_cosine

# fields a resumed run must share with the run it continues (they fix data order and schedule)
RESUME_KEYS = ("task", "model", "model_overrides", "static", "dataset", "image_size", "train_subset", "epochs",
               "batch_size", "lr", "min_lr", "weight_decay", "warmup_steps", "seed", "objective", "ema_decay",
               "recipe", "rrc_scale", "rand_augment", "random_erasing", "mixup_alpha", "cutmix_alpha", "mix_prob", "precision")


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/inf loss or gradient; the last good checkpoint is left untouched."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    finished: bool  # False when stopped early by max_steps
    train_seconds: float
    metrics: dict[str, float]  # the last evaluation
    model: nn.Module  # the exported weights (EMA or raw), in eval mode


# --------------------------------------------------------------------------------------------------
class Trainer:
    """Train one model on one task; ``Trainer(cfg, task).fit(resume=...)`` returns a :class:`TrainResult`.

    ``task`` is the :class:`TaskSpec` to run (``adaperceiver.tasks.get_task(cfg.task)`` for a named one).
    ``teacher`` (optional) maps images to logits, or to an object with ``.logits`` / ``.features``
    (e.g. :class:`adaperceiver.training.teachers.Teacher`); ``extra_losses`` are passed to the objective.
    ``data`` / ``model`` may be given to bypass the task's builders (tests, notebooks).
    """

    def __init__(self, cfg: TrainConfig, task: TaskSpec, *, teacher: Callable[[Tensor], Any] | None = None,
                 extra_losses: Sequence[ExtraLoss] = (), data: TaskData | None = None,
                 model: nn.Module | None = None, dist_info: distributed.DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or distributed.DistInfo()
        self.device = distributed.device_for(self.dist, cfg.device)
        self.cfg = cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, self.device))
        blocker = next((p for p in (cfg.run_dir, *cfg.run_dir.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise UserError(f"cannot write the run directory {cfg.run_dir}: {blocker} is a file, not a directory")
        self.task = task
        self.data = data or self.task.build_data(cfg)
        if len(self.data.train) < cfg.batch_size:
            raise ValueError(f"the training set has {len(self.data.train)} items, fewer than batch_size {cfg.batch_size}")
        torch.manual_seed(cfg.seed)  # model initialisation
        self.model = (model or self.task.build_model(cfg, self.data)).to(self.device)
        if cfg.freeze_backbone:
            for p in self.model.backbone_parameters():
                p.requires_grad_(False)
        self.objective = JointObjective(cfg.objective, self.task.make_loss(cfg), extra_losses).to(self.device)
        self.objective.check(self.model, has_teacher=teacher is not None)  # before any training
        self.step_module: nn.Module = StepModule(self.model, self.objective)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.step_module, device_ids=ids)
        if cfg.batch_size % (self.dist.world_size * cfg.accum_steps):
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by processes x accum_steps "
                             f"({self.dist.world_size} x {cfg.accum_steps})")
        self.teacher = teacher
        self.augment = self.task.make_augment(cfg, self.data) if cfg.augment and self.task.make_augment else None
        self.scaler = grad_scaler(cfg.precision, self.device)  # fp16-mixed only
        self.num_workers = default_num_workers(self.data.train) if cfg.num_workers is None else cfg.num_workers
        named = list(self.model.named_parameters()) + [(f"objective.{n}", p) for n, p in self.objective.named_parameters()]
        self.params = [p for _, p in named if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        no_decay = getattr(self.model, "no_weight_decay", set)()  # the model names its learned tokens/positions
        self.optimizer = torch.optim.AdamW(param_groups(named, cfg.weight_decay, no_decay), lr=cfg.lr, betas=(0.9, 0.999))
        self.steps_per_epoch = len(self.data.train) // cfg.batch_size
        self.total_steps = cfg.epochs * self.steps_per_epoch
        warmup = min(cfg.warmup_steps, self.total_steps // 2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.total_steps, warmup, cfg.min_lr / cfg.lr))
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step = 0
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self.metrics = MetricsLog(cfg.run_dir / METRICS_NAME, enabled=self.is_writer(), tensorboard=cfg.logger == "tensorboard")

    # ----------------------------------------------------------------------------------------------
    def is_writer(self) -> bool:
        """Only the main process writes files."""
        return self.dist.is_main

    @property
    def export_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None and self.cfg.exported == "ema" else self.model

    def train_loader(self, epoch: int, start_batch: int) -> DataLoader:
        sampler = EpochBatchSampler(len(self.data.train), self.cfg.batch_size, self.cfg.seed, epoch, start_batch,
                                    self.dist)
        # a seeded generator makes the workers' own seeds a function of (seed, epoch) too
        return DataLoader(ItemErrors(self.data.train, "train"), batch_sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", generator=step_generator(self.cfg.seed, epoch, rank=-2))

    def val_loader(self) -> DataLoader | None:
        if self.data.val is None:
            return None
        return DataLoader(ItemErrors(self.data.val, "val"), batch_size=self.cfg.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers)

    # ----------------------------------------------------------------------------------------------
    def make_batch(self, images: Tensor, targets: Tensor, gen: torch.Generator) -> Batch:
        images = images.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        if self.augment is not None:
            images, targets = self.augment(images, targets, gen)
        batch = Batch(images, targets)
        if self.teacher is not None:
            with torch.no_grad(), autocast(self.cfg.precision, self.device):
                t = self.teacher(images)
            if isinstance(t, Tensor):
                batch.teacher_logits = t.float()
            else:
                batch.teacher_logits = getattr(t, "logits", None)
                batch.teacher_features = getattr(t, "features", None)
        return batch

    def global_widths(self) -> Tensor | None:
        """This process's share of the per-sample widths drawn for the whole global batch.

        Drawn from a rank-independent generator, so N processes train exactly the widths one
        process with the same global batch would, while each rank's samples get their own widths.
        """
        gen = step_generator(self.cfg.seed, self.step, rank=-1)
        widths = self.objective.sample_widths(self.model, self.cfg.batch_size, gen)
        if widths is None:
            return None
        return distributed.rank_batch(widths, self.dist)

    def train_step(self, images: Tensor, targets: Tensor) -> dict[str, Tensor]:
        """One optimizer step at global step ``self.step``; raises :class:`NonFiniteLossError` on NaN/inf.

        Returns the step's metrics as scalar tensors on the device (no host synchronisation); the one
        value read on the host is whether loss and gradient norm are finite, before the weights change.
        """
        gen = step_generator(self.cfg.seed, self.step, self.dist.rank)
        batch = self.make_batch(images, targets, gen)
        widths = self.global_widths()
        self.optimizer.zero_grad(set_to_none=True)
        chunks = self.cfg.accum_steps
        sums: dict[str, Tensor] = {}
        for i, idx in enumerate(torch.arange(images.shape[0]).chunk(chunks)):
            idx = idx.to(self.device)
            part = Batch(batch.images[idx], batch.targets[idx],
                         None if batch.teacher_logits is None else batch.teacher_logits[idx],
                         None if batch.teacher_features is None else batch.teacher_features[idx],
                         {**batch.extras, "widths": None if widths is None else widths[idx.cpu()]})
            sync = i == chunks - 1 or not self.dist.enabled
            with (nullcontext() if sync else self.step_module.no_sync()), autocast(self.cfg.precision, self.device):
                loss, metrics = self.step_module(part, gen)
            self.scaler.scale(loss / chunks).backward()
            for k, v in metrics.items():
                sums[k] = sums[k] + v / chunks if k in sums else v / chunks
        self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        bad = ~torch.isfinite(sums["loss"])
        if not self.scaler.is_enabled():  # fp16: the scaler skips a step with inf/nan gradients, lowers the scale
            bad = bad | ~torch.isfinite(norm)
        if bool(bad):  # the step's one host read
            what, value = ("loss", sums["loss"]) if not torch.isfinite(sums["loss"]) else ("gradient norm", norm)
            raise NonFiniteLossError(self._stop_message(f"{what} is {float(value)}"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        sums["grad_norm"] = norm.detach()
        return sums

    def _stop_message(self, what: str) -> str:
        last = last_checkpoint(self.cfg.run_dir) if self.is_writer() else None
        kept = f"the last good checkpoint ({last}) is kept" if last else "no checkpoint was written yet"
        start = f", optionally starting from its last good weights (init_from={str(self.cfg.run_dir)!r})" if last else ""
        return (f"stopped at step {self.step} (epoch {self.step // self.steps_per_epoch}): {what}. "
                f"Nothing was saved for this step; {kept}. Resuming would repeat the same steps with the same "
                f"settings and stop here again: start a new run (another name) with a lower lr, more warmup_steps "
                f"or a smaller grad_clip{start}; or check the data.")

    def evaluate(self) -> dict[str, float]:
        """Validation metrics, computed on the main process and shared with every rank."""
        res = self._evaluate() if self.is_writer() else {}
        return distributed.broadcast_object(res, self.dist)

    def _evaluate(self) -> dict[str, float]:
        loader = self.val_loader()
        if loader is None:
            return {}
        with autocast(self.cfg.precision, self.device):
            res = {f"val_{k}": v for k, v in self.task.evaluate(self.export_model, loader, self.device).items()}
            if self.ema is not None:
                raw = self.task.evaluate(self.model, loader, self.device)
                res.update({f"val_{k}_{'raw' if self.cfg.exported == 'ema' else 'ema'}": v for k, v in raw.items()})
        return res

    # ----------------------------------------------------------------------------------------------
    def run_meta(self) -> dict[str, Any]:
        return {"weights": self.cfg.exported, "task": self.task.name, "class_names": list(self.data.class_names),
                "step": self.step, "epochs_done": self.step / self.steps_per_epoch, "metrics": self.last_eval,
                "train_seconds": round(self.train_seconds, 2), "train": self.cfg.to_dict(), **self.data.meta}

    def save_checkpoint(self) -> Path | None:
        """Write a complete checkpoint directory, then point ``last.json`` at it (the atomic switch)."""
        if not self.is_writer():
            return None
        path = rundir.fresh_checkpoint_dir(self.cfg.run_dir, self.step)
        ckpt_root = path.parent
        save_state_dict(path / "model.safetensors", self.model.state_dict())
        if self.ema is not None:
            save_state_dict(path / "ema.safetensors", self.ema.module.state_dict())
        obj_state = self.objective.state_dict()
        if obj_state:
            save_state_dict(path / "objective.safetensors", obj_state)
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "torch_rng": torch.get_rng_state(), "train_seconds": self.train_seconds,
                 "last_eval": dict(self.last_eval), "scaler": self.scaler.state_dict()}
        atomic_write(path / STATE_NAME, lambda tmp: torch.save(state, tmp))
        # inference export first, then the pointer: a crash in between leaves the old pointer valid
        save_pretrained(self.export_model, self.cfg.run_dir, extra=self.run_meta())
        atomic_write(ckpt_root / LAST_POINTER,
                     lambda tmp: Path(tmp).write_text(json.dumps({"dir": path.name, "step": self.step}) + "\n"))
        rundir.rotate_checkpoints(self.cfg.run_dir, keep=path, count=self.cfg.keep_checkpoints)
        return path

    def load_checkpoint(self, path: Path, expected_step: int | None = None) -> None:
        """Load a checkpoint directory; every file must be there, intact (sha256) and of this run's shapes."""
        load_strict(self.model, read_state_dict(path / "model.safetensors"), source=str(path / "model.safetensors"))
        if self.ema is not None:
            ema_path = path / "ema.safetensors"
            if not ema_path.is_file():
                raise UserError(f"{ema_path} is missing (the run keeps an EMA, ema_decay={self.cfg.ema_decay}); "
                                f"restore it, or resume from an older checkpoints/step_* by pointing last.json at it")
            load_strict(self.ema.module, read_state_dict(ema_path), source=str(ema_path))
        obj_path = path / "objective.safetensors"
        if obj_path.is_file():
            load_strict(self.objective, read_state_dict(obj_path), source=str(obj_path))
        elif self.objective.state_dict():
            raise UserError(f"{obj_path} is missing (this run's objective has trained parameters)")
        try:
            with warnings.catch_warnings():  # a damaged pickle's warnings would only add noise to the error
                warnings.simplefilter("ignore")
                state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged pickle raises many types
            raise UserError(f"{path / STATE_NAME} is not a readable trainer state "
                            f"({type(e).__name__}: {first_line(e)})") from None
        if expected_step is not None and int(state["step"]) != expected_step:
            raise UserError(f"{path.parent / LAST_POINTER} says step {expected_step} but {path / STATE_NAME} holds "
                            f"step {int(state['step'])}; the checkpoint is inconsistent: fix last.json by hand")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.last_eval = dict(state.get("last_eval", {}))

    def check_resumable(self) -> None:
        """Refuse to resume a run whose saved settings differ in what fixes data order and schedule."""
        path = self.cfg.run_dir / CONFIG_NAME
        if not path.is_file():
            return
        saved = rundir.migrate_train_section(read_run_json(path))
        mine = json.loads(json.dumps(self.cfg.to_dict()))  # tuples -> lists, as saved
        diff = [k for k in RESUME_KEYS if k in saved and saved[k] != mine[k]]
        if diff:
            raise UserError(f"cannot resume {self.cfg.run_dir}: settings {diff} differ from the saved run "
                            f"(saved: {[saved[k] for k in diff]}); resume with the saved config or give the run "
                            f"another name")

    # ----------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or continue, with ``resume``) while holding the run directory's lock."""
        if not self.is_writer():
            return self._fit(resume)
        with run_lock(self.cfg.run_dir), self.metrics:  # one writer per directory (others refused); the log closes its event files
            remove_temporaries(self.cfg.run_dir)  # left by a killed writer; safe under the lock
            remove_temporaries(rundir.checkpoint_root(self.cfg.run_dir), recursive=True)  # refuses a link outside
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        cfg = self.cfg
        last = last_checkpoint(cfg.run_dir)
        if last is not None and not resume:
            raise UserError(f"{cfg.run_dir} already holds a checkpoint ({last.name}); resume it (resume=True) "
                            f"or give the run another name")
        if resume and last is not None:
            self.check_resumable()
            self.load_checkpoint(last, expected_step=read_run_json(last.parent / LAST_POINTER).get("step"))
            if self.is_writer():
                print(f"resumed {cfg.run_dir} from {last.name} (step {self.step})", flush=True)
        if self.is_writer():
            print(f"{cfg.run_dir}: precision {cfg.precision} on {self.device.type}, {self.num_workers} loader workers", flush=True)
        if resume:
            dropped = self.metrics.load(keep_until_step=self.step)
            if dropped and self.is_writer():
                print(f"{self.metrics.path}: dropped {dropped} rows logged after step {self.step} (the checkpoint "
                      f"resumed from); they are redone", flush=True)
        if self.is_writer():
            cfg.run_dir.mkdir(parents=True, exist_ok=True)
        stop_at = min(self.total_steps, cfg.max_steps or self.total_steps)
        progress = self._progress_bar(stop_at)
        saved_at = self.step if (resume and last is not None) else -1
        window: dict[str, Tensor] = {}
        n_window, t_window, img_window = 0, time.perf_counter(), 0
        try:
            while self.step < stop_at:
                epoch, start_batch = divmod(self.step, self.steps_per_epoch)
                t_epoch = time.perf_counter()
                for images, targets in self.train_loader(epoch, start_batch):
                    m = self.train_step(images, targets)
                    img_window += images.shape[0] * self.dist.world_size
                    n_window += 1
                    for k, v in m.items():  # summed on the device; read on the host only when logged
                        window[k] = window[k] + v if k in window else v
                    if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                        row = self._log_train(window, n_window, img_window, time.perf_counter() - t_window)
                        progress.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_s']:.0f}", refresh=False)
                        window, n_window, t_window, img_window = {}, 0, time.perf_counter(), 0
                    progress.update(1)
                    epoch_end = self.step % self.steps_per_epoch == 0
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not epoch_end:
                        self.train_seconds += time.perf_counter() - t_epoch
                        t_epoch = time.perf_counter()
                        saved_at = self._checkpoint(saved_at)
                    if self.step >= stop_at:
                        break
                self.train_seconds += time.perf_counter() - t_epoch
                if self.step % self.steps_per_epoch == 0:  # an epoch just finished
                    done_epochs = self.step // self.steps_per_epoch
                    if (cfg.eval_every and done_epochs % cfg.eval_every == 0) or self.step == self.total_steps:
                        self.last_eval = self.evaluate()
                        if self.last_eval:
                            self.metrics.append({"step": self.step, "epoch": float(done_epochs), "split": "val",
                                                 **self.last_eval})
                            if cfg.progress and self.is_writer():
                                progress.write(f"epoch {done_epochs}: " + ", ".join(
                                    f"{k} {v:.4f}" for k, v in self.last_eval.items()))
                    saved_at = self._checkpoint(saved_at)
            saved_at = self._checkpoint(saved_at)
        finally:
            progress.close()
        return TrainResult(cfg.run_dir, self.step, self.step >= self.total_steps, self.train_seconds,
                           dict(self.last_eval), self.export_model.eval())

    def _log_train(self, window: dict[str, Tensor], steps: int, images: int, seconds: float) -> dict[str, float]:
        """Append the mean of ``window`` (sums over ``steps`` steps) to metrics.csv: one host read for all."""
        values = torch.stack([v.float() for v in window.values()]).div(steps).tolist()
        row = dict(zip(window, values))
        if self.dist.enabled:  # average over ranks (grad_norm is already global)
            row = {k: v / self.dist.world_size for k, v in distributed.all_reduce_sums(row, self.dist, self.device).items()}
        row.update(img_s=images / max(seconds, 1e-9), lr=self.scheduler.get_last_lr()[0])
        self.metrics.append({"step": self.step, "epoch": self.step / self.steps_per_epoch, "split": "train", **row})
        return row

    def _checkpoint(self, saved_at: int) -> int:
        if saved_at != self.step:
            self.save_checkpoint()
            distributed.barrier(self.dist)  # no rank runs ahead of (or resumes from) a half-written checkpoint
        return self.step

    def _progress_bar(self, stop_at: int):
        from tqdm.auto import tqdm

        return tqdm(total=stop_at, initial=self.step, unit="step", dynamic_ncols=True,
                    disable=not (self.cfg.progress and self.is_writer()), desc=self.cfg.name)


def train(cfg: TrainConfig, task: TaskSpec, resume: bool = False, **kwargs: Any) -> TrainResult:
    """``Trainer(cfg, task, **kwargs).fit(resume)``."""
    return Trainer(cfg, task, **kwargs).fit(resume=resume)


__all__ = ["NonFiniteLossError", "RESUME_KEYS", "StepModule", "TrainResult", "Trainer", "train"]
