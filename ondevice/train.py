"""The training loop shared by distillation, the hard-label baseline and an ondevice-trained teacher.

- Data live in memory as tensors; each epoch's order is a permutation drawn from (seed, epoch), so a resumed run and a
  `torchrun` run see exactly the batches an uninterrupted single-process run sees. Under DDP every global batch is split
  into equal contiguous shards, one per rank, and gradients are averaged: the same update as one process on the whole
  global batch.
- The teacher is frozen in eval mode. Its outputs (logits, and features a feature loss needs) are computed once and
  reused across epochs when the inputs are deterministic (no augmentation) and fit the cache budget; otherwise they are
  computed live for each batch. The metrics record which.
- A checkpoint is written atomically after every epoch (model, loss parameters, optimizer, LR schedule, RNG states, the
  best weights so far and the history); a run resumes from it. A NaN/inf loss stops the run with a clear message and
  leaves the last good checkpoint untouched.
"""
from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from .config import AugmentSpec, TrainSpec
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .io import atomic_write_bytes, atomic_write_text, dumps
from .progress import progress_bar, status

CHECKPOINT_FORMAT = "ondevice-checkpoint-v1"


# --- distributed ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1); gloo backend on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def barrier(di: DistInfo) -> None:
    if di.enabled:
        dist.barrier()


# --- features --------------------------------------------------------------------------------------------------
class FeatureTap:
    """Captures the outputs of named submodules (module paths like "features.3") with forward hooks."""

    def __init__(self, model: nn.Module, paths: list[str], role: str):
        self.features: dict[str, torch.Tensor] = {}
        self._handles = []
        modules = dict(model.named_modules())
        for p in paths:
            if p not in modules:
                names = [n for n in modules if n]
                raise ConfigError(f"{role} has no module {p!r} to take features from; its modules: "
                                  f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}")
            self._handles.append(modules[p].register_forward_hook(self._hook(p)))

    def _hook(self, path: str):
        def fn(_m, _inp, out):
            self.features[path] = out[0] if isinstance(out, (tuple, list)) else out

        return fn

    def pop(self) -> dict[str, torch.Tensor]:
        f, self.features = self.features, {}
        return f

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --- teacher outputs ---------------------------------------------------------------------------------------------
class TeacherOutputs:
    """Teacher logits/features per batch: from a cache indexed by sample id, or computed live."""

    def __init__(self, teacher: nn.Module, layers: list[str], x: torch.Tensor, *, cache: bool, budget_mb: int,
                 batch_size: int = 1000):
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.layers = layers
        self.tap = FeatureTap(self.teacher, layers, "teacher") if layers else None
        self.mode = "live"
        self.reason = "inputs are augmented at random" if not cache else ""
        self.logits: torch.Tensor | None = None
        self.feats: dict[str, torch.Tensor] = {}
        if cache:
            self._build_cache(x, budget_mb, batch_size)

    def _build_cache(self, x: torch.Tensor, budget_mb: int, batch_size: int) -> None:
        with torch.no_grad():
            probe_logits, probe_feats = self._forward(x[:1])
        per_sample = probe_logits[0].numel() + sum(f[0].numel() for f in probe_feats.values())
        need_mb = per_sample * 4 * len(x) / 2**20
        if need_mb > budget_mb:
            self.reason = f"cache would need {need_mb:.0f} MB > distill.cache_budget_mb={budget_mb}"
            return
        outs, feats = [], {k: [] for k in self.layers}
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                lo, fe = self._forward(x[i:i + batch_size])
                outs.append(lo)
                for k in self.layers:
                    feats[k].append(fe[k])
        self.logits = torch.cat(outs)  # (N, C)
        self.feats = {k: torch.cat(v) for k, v in feats.items()}  # path -> (N, ...)
        self.mode = "cached"
        self.reason = f"inputs are deterministic; {need_mb:.1f} MB cached once"

    def _forward(self, xb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.teacher(xb)
        return logits, (self.tap.pop() if self.tap else {})

    def get(self, idx: torch.Tensor, xb: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.mode == "cached":
            return self.logits[idx], {k: v[idx] for k, v in self.feats.items()}
        with torch.no_grad():
            return self._forward(xb)


# --- the objective (what DDP wraps: student + loss parameters such as FitNets regressors) -----------------------
class Objective(nn.Module):
    def __init__(self, student: nn.Module, loss: nn.Module, student_layers: list[str]):
        super().__init__()
        self.student = student
        self.loss = loss
        self.tap = FeatureTap(student, student_layers, "student") if student_layers else None

    def forward(self, xb, yb, t_logits, t_feats):
        from .losses import LossInputs

        logits = self.student(xb)  # (B, C)
        feats = self.tap.pop() if self.tap else {}
        total, parts = self.loss(LossInputs(student_logits=logits, teacher_logits=t_logits, targets=yb,
                                            student_features=feats, teacher_features=t_feats))
        return total, parts


def feature_shapes(model: nn.Module, layers: list[str], x1: torch.Tensor, role: str) -> dict[str, torch.Size]:
    """Per-sample shapes (no batch dim) of the named layers' outputs, from one forward pass."""
    if not layers:
        return {}
    tap = FeatureTap(model, layers, role)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(x1)
    model.train(was_training)
    feats = tap.pop()
    tap.remove()
    return {k: v.shape[1:] for k, v in feats.items()}


# --- optimisation ---------------------------------------------------------------------------------------------
def make_optimizer(params, spec: TrainSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_schedule(opt: torch.optim.Optimizer, spec: TrainSpec, steps_per_epoch: int):
    total = spec.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if spec.warmup_steps and step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        if spec.schedule == "constant":
            return 1.0
        if spec.schedule == "step":
            return 0.1 ** ((step // steps_per_epoch) // spec.step_size)
        if spec.schedule == "onecycle":
            up = max(1, int(0.3 * total))
            if step < up:
                return 0.04 + 0.96 * step / up
            t = (step - up) / max(1, total - up)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        t = (step - spec.warmup_steps) / max(1, total - spec.warmup_steps)  # cosine
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# --- evaluation -------------------------------------------------------------------------------------------------
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Accuracy, error count and mean cross-entropy of `model` on (x, y)."""
    was = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            logits = model(x[i:i + batch_size])  # (b, C)
            yb = y[i:i + batch_size]
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
    model.train(was)
    n = len(x)
    return {"acc": correct / n, "errors": n - correct, "loss": loss_sum / n, "n": n}


# --- checkpoints ---------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, expect_hash: str | None = None) -> dict:
    """Load an ondevice checkpoint; a truncated/corrupted/foreign file raises CheckpointError saying what to do."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupted or truncated ({type(e).__name__}: {str(e)[:200]}). Delete it to start "
            f"this phase over (or run with --fresh); the other outputs in {path.parent.parent} are kept.") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an ondevice checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r}); "
                              f"delete it or point output_dir elsewhere")
    if expect_hash is not None and state.get("recipe_hash") != expect_hash:
        raise CheckpointError(
            f"checkpoint {path} was written by a different recipe (hash {state.get('recipe_hash')} != {expect_hash}); "
            f"run with --fresh to start over, or use another output_dir")
    return state


# --- one training phase ----------------------------------------------------------------------------------------
@dataclass
class PhaseResult:
    phase: str
    model: nn.Module  # best weights loaded
    best_epoch: int
    best_val_acc: float
    history: list[dict] = field(default_factory=list)
    teacher_outputs: str = "none"
    teacher_outputs_reason: str = ""
    seconds_per_epoch: list[float] = field(default_factory=list)


def _rng_state(aug_gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()}


def _set_rng_state(s: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    aug_gen.set_state(s["aug"])


def train_phase(
    phase: str,
    model: nn.Module,
    loss: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    spec: TrainSpec,
    *,
    seed: int,
    ckpt_dir: Path | None,
    recipe_hash: str = "",
    teacher: TeacherOutputs | None = None,
    student_layers: list[str] | None = None,
    augment: AugmentSpec | None = None,
    resume: bool = True,
    di: DistInfo = DistInfo(),
    on_epoch_end: Callable[[dict], None] | None = None,
) -> PhaseResult:
    """Train `model` with `loss` for spec.epochs; returns the best-validation weights loaded into `model`."""
    from .data import augment_batch

    n = len(train_x)
    gb = spec.batch_size
    if gb % di.world_size:
        raise ConfigError(f"train.batch_size: expected a multiple of the {di.world_size} torchrun processes, got {gb}")
    gb = min(gb, n - n % di.world_size) if n >= di.world_size else n
    steps = max(1, n // gb)
    local = gb // di.world_size

    objective = Objective(model, loss, student_layers or [])
    trainable = [p for p in objective.parameters() if p.requires_grad]
    opt = make_optimizer(trainable, spec)
    sched = make_schedule(opt, spec, steps)
    wrapped: nn.Module = objective
    if di.enabled:
        wrapped = nn.parallel.DistributedDataParallel(objective)
    aug_gen = torch.Generator().manual_seed(seed * 7919 + 17 + di.rank)

    start_epoch, best_acc, best_epoch, history = 0, -1.0, 0, []
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = ckpt_dir / f"{phase}.pt" if ckpt_dir else None
    if ckpt is not None and resume and ckpt.exists():
        st = load_checkpoint(ckpt, recipe_hash)
        objective.load_state_dict(st["objective"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        _set_rng_state(st["rng"], aug_gen)
        start_epoch, best_acc, best_epoch = st["epoch"], st["best_val_acc"], st["best_epoch"]
        history, best_state = list(st["history"]), st["best_model"]
        if start_epoch < spec.epochs:
            status(f"[{phase}] resuming from {ckpt} after epoch {start_epoch}/{spec.epochs}")

    secs: list[float] = []
    for epoch in range(start_epoch, spec.epochs):
        t0 = time.perf_counter()
        wrapped.train()
        if teacher is not None:
            teacher.teacher.eval()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        sums: dict[str, float] = {}
        loss_sum = 0.0
        with progress_bar(steps, f"{phase} epoch {epoch + 1}/{spec.epochs}") as bar:
            for s in range(steps):
                idx = perm[s * gb + di.rank * local: s * gb + (di.rank + 1) * local]  # this rank's shard
                xb, yb = train_x[idx], train_y[idx]  # (b, ...), (b,)
                if augment is not None and augment.active:
                    xb = augment_batch(xb, augment.shift, augment.hflip, aug_gen)
                t_logits, t_feats = teacher.get(idx, xb) if teacher is not None else (None, {})
                total, parts = wrapped(xb, yb, t_logits, t_feats)
                if not torch.isfinite(total):
                    last = f"epoch {start_epoch if not history else history[-1]['epoch']}"
                    kept = (f"the last good checkpoint ({last}) is kept at {ckpt}" if ckpt and ckpt.exists()
                            else "no checkpoint had been written yet")
                    raise TrainingDivergedError(
                        f"[{phase}] loss became {float(total.detach())} at epoch {epoch + 1}, step {s + 1}/{steps} "
                        f"(components: {', '.join(f'{k}={v:.4g}' for k, v in parts.items())}); {kept}. "
                        f"Lower train.lr (now {spec.lr:g}), set train.grad_clip, or check the inputs for NaN.")
                opt.zero_grad(set_to_none=True)
                total.backward()
                if spec.grad_clip:
                    nn.utils.clip_grad_norm_(trainable, spec.grad_clip)
                opt.step()
                sched.step()
                lv = float(total.detach())
                loss_sum += lv
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                bar.advance(1, loss=lv)
        elapsed = time.perf_counter() - t0
        secs.append(elapsed)
        val = evaluate(model, val_x, val_y, spec.eval_batch_size)
        rec = {
            "phase": phase, "epoch": epoch + 1, "train_loss": loss_sum / steps,
            "loss_parts": {k: v / steps for k, v in sums.items()}, "val_acc": val["acc"], "val_loss": val["loss"],
            "lr": opt.param_groups[0]["lr"], "seconds": elapsed, "steps": steps, "global_batch": gb,
            "world_size": di.world_size,
            "teacher_outputs": teacher.mode if teacher is not None else "none",
        }
        if val["acc"] > best_acc:
            best_acc, best_epoch = val["acc"], epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rec["best_epoch"] = best_epoch
        history.append(rec)
        if ckpt is not None and di.is_main:
            save_checkpoint(ckpt, {
                "format": CHECKPOINT_FORMAT, "phase": phase, "recipe_hash": recipe_hash, "epoch": epoch + 1,
                "objective": objective.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "rng": _rng_state(aug_gen), "best_val_acc": best_acc, "best_epoch": best_epoch,
                "best_model": best_state, "history": history,
            })
        status(f"[{phase}] epoch {epoch + 1}/{spec.epochs}: loss {rec['train_loss']:.4f}, val acc {val['acc']:.4f} "
               f"({elapsed:.1f}s, teacher outputs {rec['teacher_outputs']})")
        if on_epoch_end is not None:
            on_epoch_end(rec)
        _maybe_simulated_kill(phase, epoch + 1)
        barrier(di)
    model.load_state_dict(best_state)
    if objective.tap is not None:
        objective.tap.remove()
    return PhaseResult(phase, model, best_epoch, best_acc, history,
                       teacher.mode if teacher is not None else "none", teacher.reason if teacher is not None else "",
                       secs)


def _maybe_simulated_kill(phase: str, epoch: int) -> None:
    """Test hook: ONDEVICE_KILL_AFTER=phase:epoch makes the process die abruptly (like SIGKILL) after that
    epoch's checkpoint is written, so tests can prove resume gives the same weights as an uninterrupted run."""
    spec = os.environ.get("ONDEVICE_KILL_AFTER")
    if spec and spec == f"{phase}:{epoch}":
        os._exit(137)


def write_metrics(path: Path, histories: list[list[dict]]) -> None:
    """metrics.jsonl: one JSON object per epoch per phase, rewritten atomically from the checkpoints' history."""
    lines = [dumps(rec, indent=None) for h in histories for rec in h]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
