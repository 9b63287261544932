"""The training loop shared by distillation, the hard-label baseline and an ondevice-trained teacher.

- A sample is a tree of tensors (an image, ``(ids, mask)``, ``{"input_ids", "attention_mask"}``); a batch is made by
  the split (indexing in-memory tensors, or collating lazily read samples) and cut to its longest real sequence.
  Each epoch's order is a permutation drawn from (seed, epoch), so a resumed run and a `torchrun` run see exactly the
  batches an uninterrupted single-process run sees. Under DDP every global batch is split into equal contiguous
  shards, one per rank, and gradients are averaged: the same update as one process on the whole global batch.
- The task (``ondevice.tasks``) turns model outputs into what the losses see and evaluates the model.
- ``device`` (cpu, cuda[:N], mps) and ``precision`` (fp32, bf16 or fp16 autocast, a GradScaler for fp16): models, the
  batches and the teacher cache live on the device; loss sums stay on it (no sync per step on a GPU).
- The teacher is frozen in eval mode. Its outputs (predictions, and features a feature loss needs) are computed once
  and reused across epochs when the inputs are deterministic (no augmentation) and fit the cache budget; otherwise
  they are computed live for each batch. The metrics record which.
- A checkpoint is written atomically after every epoch (model, loss parameters, optimizer, LR schedule, grad scaler,
  CPU/CUDA/augmentation RNG states, the best weights so far and the history); a run resumes from it. A NaN/inf loss
  stops the run with a clear message and leaves the last good checkpoint untouched.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .config import AugmentSpec, TrainSpec
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .io import atomic_write_bytes, atomic_write_text, dumps
from .progress import progress_bar, status
from .tree import Tree, call_model, tree_items, tree_map, tree_to

CHECKPOINT_FORMAT = "ondevice-checkpoint-v1"


# --- devices and precision -------------------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu. Asking for a device that is not there is a ConfigError."""
    name = (name or "auto").strip()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise ConfigError(f"train.device = {name!r} but no CUDA device is available (torch {torch.__version__}, "
                              f"{build}); set train.device = \"cpu\" or \"auto\"")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"train.device = {name!r} but MPS is not available here; set train.device = \"cpu\"")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"train.device: expected auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return dev


_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(device: torch.device, precision: str = "fp32") -> Callable[[], Any]:
    """A zero-argument context factory: ``torch.autocast`` at bf16/fp16, or a no-op for fp32."""
    if precision not in _AMP:
        raise ConfigError(f"train.precision: expected one of fp32, bf16, fp16, got {precision!r}")
    dtype = _AMP[precision]
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


# --- distributed ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device | None = None) -> DistInfo:
    """Join the process group when launched by `torchrun` (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


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


# --- batches -----------------------------------------------------------------------------------------------------
def get_batch(split, idx: torch.Tensor, device: torch.device | str = "cpu") -> tuple[Tree, Tree | None]:
    """Rows `idx` of `split` as (inputs, targets) on `device`, cut to the longest real sequence of the batch."""
    from .data import trim_padding

    inputs, targets = trim_padding(*split.batch(idx))
    if torch.device(device).type != "cpu":
        inputs = tree_to(inputs, device, non_blocking=True)
        targets = None if targets is None else tree_to(targets, device, non_blocking=True)
    return inputs, targets


def _seq_len(inputs: Tree) -> int | None:
    if isinstance(inputs, dict) and "attention_mask" in inputs:
        return int(inputs["attention_mask"].shape[1])
    return None


# --- teacher outputs ---------------------------------------------------------------------------------------------
class TeacherOutputs:
    """Teacher predictions/features per batch: from a cache indexed by sample id, or computed live.

    The cache holds what the losses read: the teacher's prediction tree (logits (N, C), (N, T, V) language-model
    logits, or only their top-k values and indices when a loss asks for top_k), and the captured features. Sequences
    are cached at the split's full padded length and cut to each batch's length when read.
    """

    def __init__(self, teacher: nn.Module, layers: list[str], split, *, task=None, cache: bool, budget_mb: int,
                 batch_size: int = 1000, device: torch.device | str = "cpu", autocast=None,
                 top_k: int | None = None):
        from .tasks import build_task

        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.task = task or build_task("classification")
        self.layers = layers
        self.device = torch.device(device)
        self.autocast = autocast or contextlib.nullcontext
        self.top_k = top_k
        self.tap = FeatureTap(self.teacher, layers, "teacher") if layers else None
        self.mode = "live"
        self.reason = "inputs are augmented at random" if not cache else ""
        self.pred: Any = None  # cached prediction tree (N, ...)
        self.topk: Any = None  # or only its top-k: (values (N, ..., k), indices (N, ..., k))
        self.feats: dict[str, torch.Tensor] = {}
        self.seq_len: int | None = None
        if cache:
            self._build_cache(split, budget_mb, batch_size)

    @property
    def logits(self) -> torch.Tensor | None:
        """The cached (N, C) predictions when they are one tensor (classification), else None."""
        return self.pred if isinstance(self.pred, torch.Tensor) else None

    def _forward(self, inputs: Tree) -> tuple[Any, dict[str, torch.Tensor], Any]:
        """(prediction, features, top-k) of the teacher on one batch; top-k replaces the prediction when asked."""
        with self.autocast():
            pred = self.task.prediction(call_model(self.teacher, inputs))
        feats = self.tap.pop() if self.tap else {}
        if self.top_k and isinstance(pred, torch.Tensor):
            vals, idx = pred.float().topk(min(self.top_k, pred.shape[-1]), dim=-1)  # (..., k) each
            return None, feats, (vals, idx.to(torch.int32))
        return pred, feats, None

    def _build_cache(self, split, budget_mb: int, batch_size: int) -> None:
        n = len(split)
        with torch.no_grad():  # one sample at the split's full (uncut) length sizes the cache
            probe_in = tree_to(split.batch(torch.arange(min(1, n)))[0], self.device)
            pred, feats, topk = self._forward(probe_in)
        per_sample = sum(t[0].numel() * t.element_size() for t in _leaves((pred, topk, feats)))
        need_mb = per_sample * n / 2**20
        if need_mb > budget_mb:
            self.reason = f"cache would need {need_mb:.0f} MB > distill.cache_budget_mb={budget_mb}"
            return
        preds, tks, fts, widths = [], [], {k: [] for k in self.layers}, []
        chunks = torch.arange(n).split(batch_size)
        # minutes for a transformer teacher on many samples: progress lines in logs too (ondevice.progress)
        with torch.no_grad(), progress_bar(len(chunks), f"teacher outputs for {n} training samples") as bar:
            for idx in chunks:
                inputs, _ = get_batch(split, idx, self.device)
                widths.append(_seq_len(inputs))
                p, f, tk = self._forward(inputs)
                preds.append(p)
                tks.append(tk)
                for k in self.layers:
                    fts[k].append(f[k])
                bar.advance(1)
        self.seq_len = max((w for w in widths if w), default=None)
        self.pred = _cat_padded(preds, widths, self.seq_len) if preds[0] is not None else None
        self.topk = _cat_padded(tks, widths, self.seq_len) if tks[0] is not None else None
        self.feats = {k: _cat_padded(v, widths, self.seq_len) for k, v in fts.items()}  # path -> (N, ...)
        self.mode = "cached"
        self.reason = f"inputs are deterministic; {need_mb:.1f} MB cached once"

    def get(self, idx: torch.Tensor, inputs: Tree) -> tuple[Any, dict[str, torch.Tensor], Any]:
        """(prediction, features, top-k) for the sample ids `idx` whose (possibly cut) inputs are `inputs`."""
        if self.mode == "cached":
            t = _seq_len(inputs)
            cut = (lambda x: _cut(x, self.seq_len, t)) if self.seq_len and t and t < self.seq_len else (lambda x: x)
            pick = lambda tree: None if tree is None else tree_map(lambda v: cut(v[idx]), tree)  # noqa: E731
            return pick(self.pred), {k: cut(v[idx]) for k, v in self.feats.items()}, pick(self.topk)
        with torch.no_grad():
            return self._forward(inputs)



def _leaves(tree) -> list[torch.Tensor]:
    if tree is None:
        return []
    if isinstance(tree, torch.Tensor):
        return [tree]
    vals = tree.values() if isinstance(tree, dict) else tree
    return [t for v in vals for t in _leaves(v)]


def _is_seq(t: torch.Tensor, width: int) -> bool:
    """Sequence tensors are (B, T, ...) with ndim >= 3: LM logits (B, T, V), token states (B, T, D), top-k (B, T, k)."""
    return t.ndim >= 3 and t.shape[1] == width


def _cut(t: torch.Tensor, full: int, keep: int) -> torch.Tensor:
    """Sequence tensors (B, full, ...) -> (B, keep, ...); anything else unchanged."""
    return t[:, :keep] if _is_seq(t, full) else t


def _cat_padded(parts: list, widths: list[int | None], width: int | None):
    """Concatenate per-batch trees along dim 0; each batch's sequence tensors (cut to that batch's width) are
    right-padded with zeros to the common `width` first."""
    def pad(t: torch.Tensor, w: int | None) -> torch.Tensor:
        if not width or not w or w >= width or not _is_seq(t, w):
            return t
        out = t.new_zeros((t.shape[0], width, *t.shape[2:]))
        out[:, :w] = t
        return out

    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([pad(p, w) for p, w in zip(parts, widths)])
    if isinstance(first, dict):
        return {k: _cat_padded([p[k] for p in parts], widths, width) for k in first}
    return type(first)(_cat_padded([p[i] for p in parts], widths, width) for i in range(len(first)))


# --- the objective (what DDP wraps: student + loss parameters such as FitNets regressors) -----------------------
class Objective(nn.Module):
    def __init__(self, student: nn.Module, loss: nn.Module, student_layers: list[str], task=None):
        super().__init__()
        from .tasks import build_task

        self.student = student
        self.loss = loss
        self.task = task or build_task("classification")
        self.tap = FeatureTap(student, student_layers, "student") if student_layers else None

    def forward(self, inputs, targets, t_pred, t_feats, t_topk=None, as_tensors: bool = False):
        from .losses import LossInputs

        s_pred = self.task.prediction(call_model(self.student, inputs))  # e.g. (B, C) or (B, T, V)
        feats = self.tap.pop() if self.tap else {}
        mask = self.task.mask_of(inputs)  # (B, T) or None
        views = self.task.views(s_pred, t_pred, targets, inputs, t_topk)
        li = [(v.weight, LossInputs(student_logits=v.student, teacher_logits=v.teacher, targets=v.targets,
                                    student_features=feats, teacher_features=t_feats, mask=mask,
                                    teacher_topk=v.teacher_topk)) for v in views]
        return self.loss(li[0][1] if len(li) == 1 and li[0][0] == 1.0 else li, as_tensors=as_tensors)


def feature_shapes(model: nn.Module, layers: list[str], inputs1: Tree, role: str) -> dict[str, torch.Size]:
    """Per-sample shapes (no batch dim) of the named layers' outputs, from one forward pass on one sample batch."""
    if not layers:
        return {}
    tap = FeatureTap(model, layers, role)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        call_model(model, inputs1)
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
def evaluate(model: nn.Module, split, batch_size: int = 1000, *, task=None, teacher: nn.Module | None = None,
             device: torch.device | str = "cpu", autocast=None) -> dict[str, float]:
    """The task's metrics of `model` on `split` (classification: acc, errors, loss, n)."""
    from .tasks import build_task

    task = task or build_task("classification")
    return task.evaluate(model, _Trimmed(split), batch_size=batch_size, teacher=teacher, device=device,
                         autocast=autocast)


class _Trimmed:
    """A split whose batches are cut to their longest real sequence (what the trainer sees)."""

    def __init__(self, split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def batch(self, idx):
        return get_batch(self.split, idx)


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
    best_val_acc: float  # the best value of the task's primary validation metric (accuracy for classification)
    history: list[dict] = field(default_factory=list)
    teacher_outputs: str = "none"
    teacher_outputs_reason: str = ""
    seconds_per_epoch: list[float] = field(default_factory=list)


def _rng_state(aug_gen: torch.Generator) -> dict:
    s = {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict, aug_gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"])
    aug_gen.set_state(s["aug"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


@dataclass
class PhaseSetup:
    """Everything one training phase is run with, besides the model and the data."""

    spec: TrainSpec
    seed: int
    task: Any = None
    ckpt_dir: Path | None = None
    recipe_hash: str = ""
    teacher: TeacherOutputs | None = None
    student_layers: list[str] = field(default_factory=list)
    augment: AugmentSpec | None = None
    resume: bool = True
    di: DistInfo = DistInfo()
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    on_epoch_end: Callable[[dict], None] | None = None


class _Loop:
    """The state of one phase: objective, optimizer, schedule, scaler, RNG, best weights, history."""

    def __init__(self, phase: str, model: nn.Module, loss: nn.Module, n: int, st: PhaseSetup):
        from .tasks import build_task

        self.phase, self.model, self.st = phase, model, st
        self.task = st.task or build_task("classification")
        di = st.di
        gb = st.spec.batch_size
        if gb % di.world_size:
            raise ConfigError(f"train.batch_size: expected a multiple of the {di.world_size} torchrun processes, "
                              f"got {gb}")
        self.gb = min(gb, n - n % di.world_size) if n >= di.world_size else n
        self.steps = max(1, n // self.gb)
        self.local = self.gb // di.world_size
        self.n = n
        self.objective = Objective(model, loss, st.student_layers, self.task).to(st.device)
        self.trainable = [p for p in self.objective.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.trainable, st.spec)
        self.sched = make_schedule(self.opt, st.spec, self.steps)
        self.scaler = torch.amp.GradScaler(st.device.type, enabled=st.precision == "fp16")
        self.autocast = autocast_factory(st.device, st.precision)
        self.wrapped: nn.Module = self.objective
        if di.enabled:
            ids = [st.device.index] if st.device.type == "cuda" else None
            self.wrapped = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids)
        self.aug_gen = torch.Generator().manual_seed(st.seed * 7919 + 17 + di.rank)
        self.start_epoch, self.best, self.best_epoch, self.history = 0, -math.inf, 0, []
        self.best_loss: float | None = None  # the validation loss of the best epoch (breaks ties of the metric)
        self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.ckpt = st.ckpt_dir / f"{phase}.pt" if st.ckpt_dir else None

    def resume(self) -> None:
        if self.ckpt is None or not self.st.resume or not self.ckpt.exists():
            return
        s = load_checkpoint(self.ckpt, self.st.recipe_hash)
        self.objective.load_state_dict(s["objective"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        if "scaler" in s:
            self.scaler.load_state_dict(s["scaler"])
        _set_rng_state(s["rng"], self.aug_gen)
        self.start_epoch, self.best, self.best_epoch = s["epoch"], s["best_val_acc"], s["best_epoch"]
        self.best_loss = s.get("best_val_loss")  # absent from checkpoints written before ties were broken
        self.history, self.best_state = list(s["history"]), s["best_model"]
        if self.start_epoch < self.st.spec.epochs:
            status(f"[{self.phase}] resuming from {self.ckpt} after epoch {self.start_epoch}/{self.st.spec.epochs}")

    def checkpoint(self, epoch: int) -> None:
        if self.ckpt is None or not self.st.di.is_main:
            return
        save_checkpoint(self.ckpt, {
            "format": CHECKPOINT_FORMAT, "phase": self.phase, "recipe_hash": self.st.recipe_hash, "epoch": epoch,
            "objective": self.objective.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": _rng_state(self.aug_gen),
            "best_val_acc": self.best, "best_val_loss": self.best_loss, "best_epoch": self.best_epoch,
            "best_model": self.best_state,
            "history": self.history,
        })

    def diverged(self, total: torch.Tensor, parts: dict, epoch: int, step: int) -> TrainingDivergedError:
        last = f"epoch {self.start_epoch if not self.history else self.history[-1]['epoch']}"
        kept = (f"the last good checkpoint ({last}) is kept at {self.ckpt}" if self.ckpt and self.ckpt.exists()
                else "no checkpoint had been written yet")
        comps = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
        return TrainingDivergedError(
            f"[{self.phase}] loss became {float(total.detach())} at epoch {epoch + 1}, step {step + 1}/{self.steps} "
            f"(components: {comps}); {kept}. Lower train.lr (now {self.st.spec.lr:g}), set train.grad_clip, or "
            "check the inputs for NaN.")

    def batch(self, perm: torch.Tensor, step: int):
        di, st = self.st.di, self.st
        idx = perm[step * self.gb + di.rank * self.local: step * self.gb + (di.rank + 1) * self.local]  # shard
        inputs, targets = get_batch(self._split, idx, st.device)
        if st.augment is not None and st.augment.active:
            inputs = _augment(inputs, st.augment, self.aug_gen)
        t_pred, t_feats, t_topk = st.teacher.get(idx, inputs) if st.teacher is not None else (None, {}, None)
        return inputs, targets, t_pred, t_feats, t_topk

    def step(self, batch) -> tuple[torch.Tensor, dict]:
        with self.autocast():
            total, parts = self.wrapped(*batch, as_tensors=True)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.st.spec.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.trainable, self.st.spec.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.st.spec.max_norm:
            max_norm_(self.model, self.st.spec.max_norm)
        return total, parts

    def epoch(self, epoch: int, train) -> dict:
        st = self.st
        self._split = train
        t0 = time.perf_counter()
        self.wrapped.train()
        if st.teacher is not None:
            st.teacher.teacher.eval()
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(st.seed * 1_000_003 + epoch))
        on_cpu = st.device.type == "cpu"
        loss_sum = torch.zeros((), dtype=torch.float64, device=st.device)
        sums: dict[str, torch.Tensor] = {}
        with progress_bar(self.steps, f"{self.phase} epoch {epoch + 1}/{st.spec.epochs}") as bar:
            for s in range(self.steps):
                total, parts = self.step(self.batch(perm, s))
                # a NaN check syncs with the device: every step on the CPU, every 50 steps (and the last) elsewhere
                if (on_cpu or s % 50 == 49 or s == self.steps - 1) and not torch.isfinite(total):
                    raise self.diverged(total, parts, epoch, s)
                loss_sum += total.detach().double()
                for k, v in parts.items():
                    sums[k] = sums[k] + v.double() if k in sums else v.double()
                bar.advance(1, **({"loss": float(total.detach())} if on_cpu and bar.active else {}))
        elapsed = time.perf_counter() - t0
        return {"train_loss": float(loss_sum) / self.steps,
                "loss_parts": {k: float(v) / self.steps for k, v in sums.items()}, "seconds": elapsed}


@torch.no_grad()
def max_norm_(model: nn.Module, c: float) -> None:
    """Max-norm constraint (Srivastava et al. 2014): every unit's incoming weight vector w (a row of a Linear weight,
    a filter of a conv) is rescaled to ||w||_2 <= c, in place. Embeddings and norms are left alone."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            w = m.weight.view(m.weight.shape[0], -1)  # (units, fan_in)
            norms = w.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (units, 1)
            w.mul_((c / norms).clamp(max=1.0))


def _augment(inputs: Tree, aug: AugmentSpec, gen: torch.Generator) -> Tree:
    from .data import augment_batch

    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 4:
        shapes = {n: tuple(t.shape) for n, t in tree_items(inputs)}
        raise ConfigError(f"data.augment (shift/hflip) applies to image batches (B, C, H, W); these inputs are "
                          f"{shapes}. Remove [data.augment] for this dataset")
    return augment_batch(inputs, aug.shift, aug.hflip, gen)


def _validate(loop: _Loop, model: nn.Module, val, judge, epoch: int) -> tuple[float, dict]:
    """(selection score, validation metrics). Without a validation split (val_fraction = 0: every training sample is
    used, as in Hinton et al.'s 60,000-image runs) the score is the epoch number, so the last epoch is kept."""
    if len(val) == 0:
        return float(epoch), {}
    st = loop.st
    m = loop.task.evaluate(model, _Trimmed(val), batch_size=st.spec.eval_batch_size, device=st.device,
                           autocast=loop.autocast, teacher=judge)
    return m[loop.task.primary], m


def _epoch_record(phase: str, epoch: int, rec: dict, score: float, val_m: dict, loop: _Loop) -> dict:
    st, p = loop.st, loop.task.primary
    return {"phase": phase, "epoch": epoch + 1, "train_loss": rec["train_loss"], "loss_parts": rec["loss_parts"],
            "val_acc": val_m.get("acc", score if val_m else None), "val_loss": val_m.get("loss"),
            **({"val_" + p: score} if p != "acc" and val_m else {}),
            "lr": loop.opt.param_groups[0]["lr"], "seconds": rec["seconds"], "steps": loop.steps,
            "global_batch": loop.gb, "world_size": st.di.world_size, "device": str(st.device),
            "precision": st.precision, "teacher_outputs": st.teacher.mode if st.teacher is not None else "none"}


def _better(score: float, val_loss: float | None, loop: "_Loop") -> bool:
    """A higher primary validation metric wins; a tie (accuracy on 1,000 validation samples moves in steps of 0.001,
    and a run can sit on its best value for many epochs) goes to the lower validation loss, so the epoch kept is not
    simply the first to reach that value (measured on the MNIST example: a distilled student held 0.979 from epoch 5
    to 20 while its validation loss fell from 0.089 to 0.062; epoch 5 made 283 test errors)."""
    if score != loop.best:
        return score > loop.best
    return val_loss is not None and loop.best_loss is not None and val_loss < loop.best_loss


def train_phase(phase: str, model: nn.Module, loss: nn.Module, train, val, setup: PhaseSetup) -> PhaseResult:
    """Train `model` with `loss` on the `train` split for setup.spec.epochs; returns the weights of the best epoch by
    the task's primary validation metric, loaded into `model`."""
    st = setup
    model.to(st.device)
    loop = _Loop(phase, model, loss, len(train), st)
    loop.resume()
    secs: list[float] = []
    judge = None  # the teacher's validation predictions, for tasks judged against the teacher: computed once
    if st.teacher is not None and loop.task.eval_with_teacher and len(val):
        judge = loop.task.teacher_predictions(st.teacher.teacher, _Trimmed(val), batch_size=st.spec.eval_batch_size,
                                              device=st.device, autocast=loop.autocast)
    for epoch in range(loop.start_epoch, st.spec.epochs):
        rec = loop.epoch(epoch, train)
        secs.append(rec["seconds"])
        score, val_m = _validate(loop, model, val, judge, epoch)
        rec = _epoch_record(phase, epoch, rec, score, val_m, loop)
        if _better(score, rec.get("val_loss"), loop):
            loop.best, loop.best_epoch, loop.best_loss = score, epoch + 1, rec.get("val_loss")
            loop.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rec["best_epoch"] = loop.best_epoch
        loop.history.append(rec)
        loop.checkpoint(epoch + 1)
        shown = f"val {loop.task.primary} {score:.4f}" if val_m else "no validation split: the last epoch is kept"
        status(f"[{phase}] epoch {epoch + 1}/{st.spec.epochs}: loss {rec['train_loss']:.4f}, {shown} "
               f"({rec['seconds']:.1f}s, teacher outputs {rec['teacher_outputs']})")
        if st.on_epoch_end is not None:
            st.on_epoch_end(rec)
        _maybe_simulated_kill(phase, epoch + 1)
        barrier(st.di)
    model.load_state_dict(loop.best_state)
    if loop.objective.tap is not None:
        loop.objective.tap.remove()
    t = st.teacher
    return PhaseResult(phase, model, loop.best_epoch, loop.best, loop.history, t.mode if t is not None else "none",
                       t.reason if t is not None else "", secs)


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
