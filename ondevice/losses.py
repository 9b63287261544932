"""Distillation losses and the registry the trainer builds them from.

A recipe lists losses as specs, ``[{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 0.9, "temperature": 4}]``;
:func:`build_loss` validates every spec and returns a :class:`CombinedLoss` whose ``forward`` gives the weighted total
and each weighted component. Registered losses (``LOSSES.names()``):

========  ==============================================================================  ==============
name      paper                                                                           needs teacher
========  ==============================================================================  ==============
ce        hard-label cross-entropy                                                        no
kd        Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"     logits
dkd       Zhao et al. 2022, "Decoupled Knowledge Distillation"                            logits
fitnets   Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"                         one feature
at        Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"                feature pairs
========  ==============================================================================  ==============

Conventions shared by every loss:

* Teacher tensors are detached: no gradient ever flows into the teacher.
* Logit losses compute in float32 (softmax/KL under fp16/bf16 autocast lose the small soft-target terms).
* Feature shapes handed to :meth:`DistillLoss.build` are *per sample* (no batch dimension), e.g. ``(C, H, W)``.
* Config errors read ``losses[i].param: expected X, got Y`` so a recipe can be fixed from the message alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ondevice.errors import ConfigError
from ondevice.registry import Registry

__all__ = [
    "LOSSES",
    "LossInputs",
    "DistillLoss",
    "CombinedLoss",
    "Param",
    "build_loss",
    "CrossEntropyLoss",
    "KDLoss",
    "DKDLoss",
    "FitNetsLoss",
    "ATLoss",
    "kd_kl",
    "kd_kl_topk",
    "dkd_terms",
    "attention_map",
]

LOSSES: Registry[type["DistillLoss"]] = Registry("loss")

# The constant the DKD reference implementation (megvii-research/mdistiller, dkd.py) subtracts from the
# temperature-scaled ground-truth logit so that the NCKD softmax ignores the target class (e^-1000 == 0 in fp32).
DKD_GT_MASK_CONSTANT = 1000.0


# --------------------------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class LossInputs:
    """Everything a loss may look at for one batch (one *view*: see ``ondevice.tasks``).

    Logits are always 2-D with the class/vocabulary axis last: a language model's (B, T, V) logits arrive as (N, V)
    over the N positions that count, so softmax-based losses never normalise over time. Feature dicts map a module
    path (``"features.3"``, ``"encoder.layer.2"``) to its output: (B, C, H, W) maps, (B, D) vectors or (B, T, D)
    token states; ``mask`` (B, T) marks the real tokens of sequence features (None for images).
    """

    student_logits: Tensor  # (N, C) logits, or (N, D) vectors for the embedding task
    teacher_logits: Tensor | None  # (N, C); None for student-only training (or when only top-k is kept)
    targets: Tensor | None  # (N,) int64 class ids; None where the task has no labels
    student_features: dict[str, Tensor] = field(default_factory=dict)  # path -> (B, ...)
    teacher_features: dict[str, Tensor] = field(default_factory=dict)  # path -> (B, ...)
    mask: Tensor | None = None  # (B, T) bool: real (non-padding) positions of sequence features
    teacher_topk: tuple[Tensor, Tensor] | None = None  # (values (N, k), indices (N, k)): the teacher's k top logits


def _feature(inp: LossInputs, side: str, path: str, loss_name: str) -> Tensor:
    """Fetch ``inp.<side>_features[path]``; a missing path is named together with the paths that are present."""
    feats: dict[str, Tensor] = getattr(inp, f"{side}_features")
    if path not in feats:
        have = ", ".join(repr(k) for k in sorted(feats)) or "(none)"
        raise ConfigError(
            f"loss {loss_name!r} needs {side} feature {path!r}, but LossInputs.{side}_features has no such key "
            f"(present: {have}). The trainer must capture every path in loss.feature_layers(); check that "
            f"{path!r} is a module path of the {side} model (see model.named_modules())."
        )
    return feats[path]


def _teacher_logits(inp: LossInputs, loss_name: str) -> Tensor:
    """Teacher logits, detached, float32, with the same shape as the student's."""
    t = inp.teacher_logits
    if t is None:
        raise ConfigError(
            f"loss {loss_name!r} needs teacher logits but LossInputs.teacher_logits is None; "
            f"configure a teacher model or use only the 'ce' loss"
        )
    if t.shape != inp.student_logits.shape:
        raise ConfigError(
            f"loss {loss_name!r}: student logits {tuple(inp.student_logits.shape)} and teacher logits "
            f"{tuple(t.shape)} differ in shape; student and teacher must predict the same classes"
        )
    return t.detach().float()  # (B, C)


def _shape(shapes: dict[str, torch.Size], side: str, path: str, loss_name: str) -> torch.Size:
    if path not in shapes:
        have = ", ".join(repr(k) for k in sorted(shapes)) or "(none)"
        raise ConfigError(
            f"loss {loss_name!r}: no {side} feature shape for {path!r} (shapes were given for: {have}); "
            f"check the layer path against the {side} model's named_modules()"
        )
    return torch.Size(shapes[path])


# --------------------------------------------------------------------------------------------------------------------
# Parameter validation (shared by every loss)
# --------------------------------------------------------------------------------------------------------------------
_REQUIRED = object()


@dataclass(frozen=True)
class Param:
    """One config parameter of a loss: ``expected`` is the human description used in error messages."""

    name: str
    expected: str
    check: Callable[[Any], bool]
    default: Any = _REQUIRED
    convert: Callable[[Any], Any] = lambda v: v
    help: str = ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _is_number(v) and v > 0


def _nonneg(v: Any) -> bool:
    return _is_number(v) and v >= 0


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _is_pairs(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_nonempty_str(s) for s in p) for p in v)
    )


def _fmt(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _parse_params(params: tuple[Param, ...], raw: dict[str, Any], where: str, loss_name: str) -> dict[str, Any]:
    """Validate ``raw`` against ``params``; returns converted kwargs. ``where`` is e.g. ``"losses[2]"``."""
    known = {p.name for p in params}
    unknown = sorted(set(raw) - known)
    if unknown:
        valid = ", ".join(sorted(known | {"name", "weight"}))
        raise ConfigError(
            f"{where}.{unknown[0]}: unknown parameter for loss {loss_name!r}; valid parameters: {valid}",
            [(f"{where}.{k}", "unknown parameter") for k in unknown],
        )
    out: dict[str, Any] = {}
    for p in params:
        if p.name not in raw:
            if p.default is _REQUIRED:
                raise ConfigError(
                    f"{where}.{p.name}: expected {p.expected}, got nothing (required by loss {loss_name!r})",
                    [(f"{where}.{p.name}", "missing")],
                )
            out[p.name] = p.default
            continue
        v = raw[p.name]
        if not p.check(v):
            key = f"{where}.{p.name}"
            raise ConfigError(f"{key}: expected {p.expected}, got {_fmt(v)}", [(key, "invalid")])
        out[p.name] = p.convert(v)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------------------------------
class DistillLoss(nn.Module):
    """Base class. Subclasses set ``name``, ``needs_teacher`` and ``PARAMS`` and implement ``forward``.

    Life cycle used by the trainer: construct (``from_config``) -> ``feature_layers()`` tells which module outputs to
    capture -> ``build(student_shapes, teacher_shapes)`` once, before the optimizer is made (creates learnable
    parameters and validates shapes) -> ``forward(LossInputs)`` every step, returning a scalar.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    PARAMS: ClassVar[tuple[Param, ...]] = ()

    @classmethod
    def from_config(cls, params: dict[str, Any], where: str = "loss") -> "DistillLoss":
        return cls(**_parse_params(cls.PARAMS, params, where, cls.name))

    def feature_layers(self) -> list[tuple[str, str]]:
        """(student_path, teacher_path) pairs whose activations this loss reads; [] for logit losses."""
        return []

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        """Validate per-sample feature shapes and create learnable parameters. Logit losses need nothing."""

    def forward(self, inp: LossInputs) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class CombinedLoss(nn.Module):
    """Weighted sum of registered losses: ``total = sum_i w_i * L_i``.

    ``forward`` returns ``(total, parts)``; ``parts[key]`` is the weighted component ``w_i * L_i`` as a Python float
    (key = the loss name, or ``name[i]`` when the same loss appears more than once, i = its index in the spec list).
    """

    def __init__(self, losses: list[DistillLoss], weights: list[float], keys: list[str] | None = None):
        super().__init__()
        if len(losses) != len(weights):
            raise ValueError(f"{len(losses)} losses but {len(weights)} weights")
        if not losses:
            raise ConfigError(_EMPTY)
        self.members = nn.ModuleList(losses)
        self.weights = [float(w) for w in weights]
        self.keys = keys if keys is not None else _part_keys([m.name for m in losses])

    @property
    def needs_teacher(self) -> bool:
        return any(m.needs_teacher for m in self.members)

    def feature_layers(self) -> list[tuple[str, str]]:
        """Ordered union of the members' (student_path, teacher_path) pairs."""
        seen: dict[tuple[str, str], None] = {}
        for m in self.members:
            for pair in m.feature_layers():
                seen.setdefault(tuple(pair), None)
        return list(seen)

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for m in self.members:
            m.build(student_shapes, teacher_shapes)

    def teacher_top_k(self) -> int | None:
        """The smallest top-k any member asks the teacher cache to keep (None: keep full logits)."""
        ks = [m.top_k for m in self.members if getattr(m, "top_k", None)]
        return min(ks) if ks else None

    def forward(self, inp: LossInputs | list[tuple[float, LossInputs]],
                as_tensors: bool = False) -> tuple[Tensor, dict[str, Any]]:
        """Weighted total and parts. `inp` is one LossInputs or weighted views ``[(head_weight, LossInputs), ...]``
        (a multi-head model): logit losses sum over the views, feature losses (which read module outputs shared by
        every head) are computed once on the first. Parts are floats, or detached 0-d tensors with `as_tensors`
        (no device sync: what the trainer uses on GPUs)."""
        views = [(1.0, inp)] if isinstance(inp, LossInputs) else list(inp)
        total: Tensor | None = None
        parts: dict[str, Any] = {}
        for key, w, m in zip(self.keys, self.weights, self.members):
            if m.feature_layers() or len(views) == 1:
                term = w * m(views[0][1])  # () scalar
            else:
                term = w * sum(hw * m(v) for hw, v in views)  # () scalar
            parts[key] = term.detach() if as_tensors else float(term.detach())
            total = term if total is None else total + term
        assert total is not None
        return total, parts


_EMPTY = "losses: expected at least one loss, got an empty list; e.g. [{'name': 'ce', 'weight': 1.0}]"


def _part_keys(names: list[str]) -> list[str]:
    return [n if names.count(n) == 1 else f"{n}[{i}]" for i, n in enumerate(names)]


def build_loss(specs: list[dict]) -> CombinedLoss:
    """Build a :class:`CombinedLoss` from ``[{"name": str, "weight": float, **params}, ...]``.

    ``weight`` defaults to 1.0. Raises :class:`ConfigError` naming ``losses[i].<key>`` for an unknown loss name (the
    message lists the valid ones), an unknown parameter, or a parameter of the wrong type/range.
    """
    if not isinstance(specs, (list, tuple)):
        raise ConfigError(f"losses: expected a list of loss specs like [{{'name': 'kd', 'weight': 1.0}}], "
                          f"got {_fmt(specs)}")
    if not specs:
        raise ConfigError(_EMPTY)
    members: list[DistillLoss] = []
    weights: list[float] = []
    for i, spec in enumerate(specs):
        where = f"losses[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {_fmt(spec)}")
        name = spec.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected one of {', '.join(LOSSES.names())}, got {_fmt(name)}")
        if name not in LOSSES:
            raise ConfigError(f"{where}.name: {LOSSES.unknown_message(name)}", [(f"{where}.name", "unknown loss")])
        weight = spec.get("weight", 1.0)
        if not _nonneg(weight):
            raise ConfigError(f"{where}.weight: expected a finite number >= 0, got {_fmt(weight)}")
        params = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        members.append(LOSSES.get(name).from_config(params, where))
        weights.append(float(weight))
    return CombinedLoss(members, weights, _part_keys([str(s["name"]) for s in specs]))


# --------------------------------------------------------------------------------------------------------------------
# Logit losses
# --------------------------------------------------------------------------------------------------------------------
_TEMPERATURE = Param("temperature", "a finite number > 0", _positive, 4.0, float, "softmax temperature T")


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits: ``(z - mean_c z) / std_c z`` (Sun et al. 2024, eq. 6). (B, C) -> (B, C)."""
    z = z.float()
    return (z - z.mean(dim=1, keepdim=True)) / (z.std(dim=1, keepdim=True) + eps)


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float, standardize: bool = False) -> Tensor:
    """Per-sample ``KL(softmax(t/T) || softmax(s/T))``, shape (B,), *without* the T^2 factor.

    With ``standardize`` both logit vectors are z-scored per sample first (logit standardization)."""
    if standardize:
        student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=1)  # (B, C)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, dim=1)  # (B, C)
    # sum_c p_t (log p_t - log p_s); exactly 0 when s == t
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B,)


@LOSSES.register("ce")
class CrossEntropyLoss(DistillLoss):
    """Hard-label cross-entropy: ``L = -1/B sum_b log softmax(s_b)[y_b]`` (optionally label-smoothed).

    With ``label_smoothing = e`` the target is ``(1 - e) * onehot(y) + e / C``, as in
    ``torch.nn.functional.cross_entropy``.
    """

    name = "ce"
    needs_teacher = False
    PARAMS = (Param("label_smoothing", "a number in [0, 1)", lambda v: _nonneg(v) and v < 1, 0.0, float),)

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, inp: LossInputs) -> Tensor:
        # (B, C), (B,) -> ()
        return F.cross_entropy(inp.student_logits.float(), inp.targets, label_smoothing=self.label_smoothing)


@LOSSES.register("kd")
class KDLoss(DistillLoss):
    """Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" (arXiv:1503.02531).

    ``L = T^2 * 1/B * sum_b KL( softmax(t_b / T) || softmax(s_b / T) )``  (KL "batchmean"; s student, t teacher logits).

    Why T^2: ``dKL/ds_i = (p_s,i - p_t,i) / T``, and for T large against the logits ``p_s - p_t ~ (s - t) / (C T)``,
    so the unscaled gradient shrinks like 1/T^2. Multiplying by T^2 keeps the soft-target gradient magnitude roughly
    independent of T, so changing T does not silently re-weight KD against CE.

    ``standardize = true``: logit standardization, Sun et al. 2024, "Logit Standardization in Knowledge Distillation"
    (CVPR): ``z -> (z - mean(z)) / std(z)`` per sample for teacher and student before the temperature softmax, so the
    student matches the *shape* of the teacher's logits rather than their scale. It matters for over-confident
    teachers: the ccexam MNIST CNN's logits have a per-sample spread of ~36, so even at T = 4 its soft targets are
    99.7% one-hot and plain KD asks a tiny student to grow logits of that size.

    ``top_k = k`` (language models, whose V = 49k logits per token would not fit a cache): the teacher cache keeps only
    each position's k largest teacher logits, and the teacher distribution is renormalised over them:
    ``p_t = softmax(t_topk / T)`` over the k kept classes, ``L = T^2 * mean_n sum_{j in topk} p_t,j (log p_t,j -
    log softmax(s_n / T)_j)`` (the student's softmax is over the full vocabulary). The same sparse KD as
    "sparse logit" practice for LLM distillation; with k = V it equals the full loss.
    """

    name = "kd"
    PARAMS = (_TEMPERATURE, Param("standardize", "true or false", lambda v: isinstance(v, bool), False, bool,
                                  "z-score logits before the softmax (Sun et al. 2024)"),
              Param("top_k", "an integer >= 1 (or omit it for the full distribution)",
                    lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), None,
                    help="keep only the teacher's k largest logits per position (cache size for large vocabularies)"))

    def __init__(self, temperature: float = 4.0, standardize: bool = False, top_k: int | None = None):
        super().__init__()
        if standardize and top_k:
            raise ConfigError("kd: standardize = true needs the teacher's full logits; drop top_k or standardize")
        self.temperature = temperature
        self.standardize = standardize
        self.top_k = top_k

    def forward(self, inp: LossInputs) -> Tensor:
        if inp.teacher_topk is not None and inp.teacher_logits is None:
            vals, idx = inp.teacher_topk  # (N, k), (N, k)
            kl = kd_kl_topk(inp.student_logits, vals, idx, self.temperature)  # (N,)
        else:
            t = _teacher_logits(inp, self.name)  # (B, C)
            if self.top_k:
                vals, idx = t.topk(min(self.top_k, t.shape[-1]), dim=-1)  # the live teacher, cut the same way
                kl = kd_kl_topk(inp.student_logits, vals, idx, self.temperature)
            else:
                kl = kd_kl(inp.student_logits, t, self.temperature, self.standardize)  # (B,)
        return self.temperature**2 * kl.mean()  # ()


def kd_kl_topk(student_logits: Tensor, teacher_values: Tensor, teacher_indices: Tensor,
               temperature: float) -> Tensor:
    """Per-row KL of the teacher renormalised over its top-k classes against the student's full softmax, (N,).

    student_logits (N, V); teacher_values, teacher_indices (N, k)."""
    log_pt = F.log_softmax(teacher_values.detach().float() / temperature, dim=-1)  # (N, k)
    log_ps = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (N, V)
    log_ps_k = log_ps.gather(-1, teacher_indices.long())  # (N, k)
    return (log_pt.exp() * (log_pt - log_ps_k)).sum(dim=-1)  # (N,)


def dkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """Per-sample (TCKD, NCKD) of Decoupled KD, each (B,), *without* the T^2 factor.

    With p = softmax(z / T) (student s or teacher t) and g the ground-truth class:
      b = [p_g, 1 - p_g]                       binary target / non-target probabilities
      TCKD = KL(b^t || b^s)
      p^ = softmax over the non-target classes
           (computed as softmax(z/T - 1000 * onehot(g)), as the reference code does)
      NCKD = KL(p^t || p^s)
    Identity (Zhao et al. 2022, eq. 1-4):  KL(p^t || p^s) = TCKD + (1 - p^t_g) * NCKD.
    """
    T = temperature
    s = student_logits.float() / T  # (B, C)
    t = teacher_logits.detach().float() / T  # (B, C)
    gt = F.one_hot(targets, s.shape[1]).bool()  # (B, C)
    idx = targets.unsqueeze(1)  # (B, 1)

    def binary_log_probs(z: Tensor) -> Tensor:  # (B, C) -> (B, 2): [log p_g, log(1 - p_g)], computed stably
        logp = F.log_softmax(z, dim=1)  # (B, C)
        log_gt = logp.gather(1, idx)  # (B, 1)
        log_other = torch.logsumexp(logp.masked_fill(gt, float("-inf")), dim=1, keepdim=True)  # (B, 1)
        return torch.cat([log_gt, log_other], dim=1)  # (B, 2)

    log_bs, log_bt = binary_log_probs(s), binary_log_probs(t)  # (B, 2)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(dim=1)  # (B,)

    log_ps_nt = F.log_softmax(s - DKD_GT_MASK_CONSTANT * gt, dim=1)  # (B, C); gt entry ~ -1000
    log_pt_nt = F.log_softmax(t - DKD_GT_MASK_CONSTANT * gt, dim=1)  # (B, C)
    nckd = (log_pt_nt.exp() * (log_pt_nt - log_ps_nt)).sum(dim=1)  # (B,)
    return tckd, nckd


@LOSSES.register("dkd")
class DKDLoss(DistillLoss):
    """Zhao, Cui, Song, Qiu & Liang 2022, "Decoupled Knowledge Distillation" (CVPR 2022, arXiv:2203.08679).

    ``L = T^2 * 1/B * sum_b ( alpha * TCKD_b + beta * NCKD_b )`` with TCKD/NCKD as in :func:`dkd_terms`
    (target-class KD on the binary [p_g, 1 - p_g] split; non-target-class KD on the softmax over the other classes).
    Classical KD is the special case ``alpha = 1, beta = 1 - p^t_g`` per sample. Defaults alpha=1, beta=8, T=4
    (the paper's CIFAR-100 setting). The reference code's linear warm-up of the loss over the first epochs is the
    trainer's schedule, not part of this loss.
    """

    name = "dkd"
    PARAMS = (
        Param("alpha", "a finite number >= 0", _nonneg, 1.0, float, "TCKD weight"),
        Param("beta", "a finite number >= 0", _nonneg, 8.0, float, "NCKD weight"),
        _TEMPERATURE,
    )

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0):
        super().__init__()
        self.alpha, self.beta, self.temperature = alpha, beta, temperature

    def forward(self, inp: LossInputs) -> Tensor:
        t = _teacher_logits(inp, self.name)  # (B, C)
        tckd, nckd = dkd_terms(inp.student_logits, t, inp.targets, self.temperature)  # (B,), (B,)
        return self.temperature**2 * (self.alpha * tckd + self.beta * nckd).mean()  # ()


# --------------------------------------------------------------------------------------------------------------------
# Feature losses
# --------------------------------------------------------------------------------------------------------------------
def _pool_to_common(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the trailing two (spatial) dims of ``a`` and ``b`` to (min H, min W). No-op when equal.

    ``a``: (B, Ca, Ha, Wa) or (B, Ha, Wa); ``b`` likewise. Pooling the larger map to the smaller keeps every value a
    mean of real activations (no invented detail, unlike upsampling the smaller one); when Ha is not a multiple of Hb
    the pooling windows overlap by at most one row/column (torch's adaptive pooling).
    """
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


@LOSSES.register("fitnets")
class FitNetsLoss(DistillLoss):
    """Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for Thin Deep Nets" (ICLR 2015).

    Hint loss between a student ("guided") layer u and a teacher ("hint") layer v:
    ``L = 1/N * || r(u) - v ||_2^2``, the mean squared error over all N = B*C_t*H*W elements, where r is a learned
    regressor mapping student channels to teacher channels:

    * 4-D features (B, C, H, W): ``regressor="conv1x1"`` (default), a 1x1 convolution C_s -> C_t with bias.
      If the spatial sizes differ, the larger map is adaptive-average-pooled to the smaller (per dimension) before the
      loss; a 1x1 conv commutes with spatial averaging, so the student side is pooled before the regressor.
      (The paper instead sized a convolutional regressor's kernel to match the spatial sizes.)
    * 2-D features (B, C): ``regressor="linear"`` (default for 2-D), a fully connected C_s -> C_t layer.

    Student and teacher features must have the same rank (a 4-D vs 2-D pair is a ConfigError raised by ``build``).
    The regressor's parameters belong to this module: build the loss before creating the optimizer and optimise
    ``loss.parameters()`` together with the student's.
    """

    name = "fitnets"
    _REGRESSORS = {3: "conv1x1", 1: "linear"}  # per-sample rank -> regressor
    PARAMS = (
        Param("student_layer", "a module path string of the student, e.g. 'features.3'", _nonempty_str),
        Param("teacher_layer", "a module path string of the teacher, e.g. 'layer2'", _nonempty_str),
        Param("regressor", "one of 'conv1x1', 'linear' (or omit it to pick by feature rank)",
              lambda v: v is None or v in ("conv1x1", "linear"), None),
    )

    def __init__(self, student_layer: str, teacher_layer: str, regressor: str | None = None):
        super().__init__()
        self.student_layer, self.teacher_layer, self.regressor_kind = student_layer, teacher_layer, regressor
        self.regressor: nn.Module | None = None

    def feature_layers(self) -> list[tuple[str, str]]:
        return [(self.student_layer, self.teacher_layer)]

    def _describe(self, s_shape: torch.Size, t_shape: torch.Size) -> str:
        return (f"student {self.student_layer!r} per-sample shape {tuple(s_shape)} vs teacher {self.teacher_layer!r} "
                f"per-sample shape {tuple(t_shape)}")

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s = _shape(student_shapes, "student", self.student_layer, self.name)  # (Cs, H, W) or (Cs,)
        t = _shape(teacher_shapes, "teacher", self.teacher_layer, self.name)  # (Ct, H, W) or (Ct,)
        if len(s) != len(t):
            raise ConfigError(
                f"fitnets: rank mismatch, {self._describe(s, t)}; FitNets needs both layers to be conv maps "
                f"(C, H, W) or both vectors (C,). Pick a teacher layer of the same kind as the student layer."
            )
        if len(s) not in self._REGRESSORS:
            raise ConfigError(
                f"fitnets: unsupported feature rank, {self._describe(s, t)}; supported per-sample shapes are "
                f"(C, H, W) with a 'conv1x1' regressor and (C,) with a 'linear' regressor"
            )
        kind = self.regressor_kind or self._REGRESSORS[len(s)]
        if kind != self._REGRESSORS[len(s)]:
            raise ConfigError(
                f"fitnets: regressor {kind!r} does not fit {self._describe(s, t)}; use "
                f"regressor={self._REGRESSORS[len(s)]!r} (or omit it) for {len(s) + 1}-D features"
            )
        cs, ct = s[0], t[0]
        self.regressor = nn.Conv2d(cs, ct, kernel_size=1) if kind == "conv1x1" else nn.Linear(cs, ct)

    def forward(self, inp: LossInputs) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("fitnets: regressor not built; call build(student_shapes, teacher_shapes) "
                               "(CombinedLoss.build) before forward and before creating the optimizer")
        u = _feature(inp, "student", self.student_layer, self.name)  # (B, Cs, Hs, Ws) or (B, Cs)
        v = _feature(inp, "teacher", self.teacher_layer, self.name).detach()  # (B, Ct, Ht, Wt) or (B, Ct)
        if u.dim() != v.dim():
            raise ConfigError(f"fitnets: rank mismatch at run time, {self._describe(u.shape[1:], v.shape[1:])}")
        if u.dim() == 4:
            u, v = _pool_to_common(u, v)  # (B, Cs, H, W), (B, Ct, H, W) with H, W = min sizes
        r = self.regressor(u)  # (B, Ct, H, W) or (B, Ct)
        return F.mse_loss(r.float(), v.float())  # ()


def attention_map(a: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: ``Q = mean_c |A_c|^p``; (B, C, H, W) -> (B, H, W)."""
    return a.float().abs().pow(p).mean(dim=1)  # (B, H, W)


@LOSSES.register("at")
class ATLoss(DistillLoss):
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR 2017, arXiv:1612.03928).

    For each (student j, teacher j) layer pair, ``Q^j = vec(mean_c |A^j_c|^p)`` (p = 2 by default), and

    ``L = 1/B * sum_b sum_j || Q_S^j,b / ||Q_S^j,b||_2  -  Q_T^j,b / ||Q_T^j,b||_2 ||_2``

    (the paper's attention-transfer term with its distance norm p = 2; the paper's beta/2 is this spec's ``weight``).
    Channel counts may differ between the two layers. If the spatial sizes differ, the larger attention map is
    adaptive-average-pooled to the smaller before normalisation, unless ``strict_shapes=true`` (then ``build`` raises
    ConfigError). Layers: ``pairs=[[student, teacher], ...]`` or ``student_layer`` + ``teacher_layer``.
    """

    name = "at"
    PARAMS = (
        Param("pairs", "a non-empty list of [student_path, teacher_path] string pairs", _is_pairs, None,
              lambda v: [(str(a), str(b)) for a, b in v]),
        Param("student_layer", "a module path string of the student", _nonempty_str, None),
        Param("teacher_layer", "a module path string of the teacher", _nonempty_str, None),
        Param("p", "a finite number > 0", _positive, 2.0, float, "exponent of |A| in the attention map"),
        Param("strict_shapes", "true or false", lambda v: isinstance(v, bool), False),
    )

    @classmethod
    def from_config(cls, params: dict[str, Any], where: str = "loss") -> "ATLoss":
        kw = _parse_params(cls.PARAMS, params, where, cls.name)
        single = (kw.pop("student_layer"), kw.pop("teacher_layer"))
        both_forms = kw["pairs"] is not None and single != (None, None)
        incomplete = kw["pairs"] is None and None in single
        if both_forms or incomplete:
            raise ConfigError(
                f"{where}.pairs: expected either pairs=[[student_path, teacher_path], ...] or both student_layer and "
                f"teacher_layer ({'not both forms' if both_forms else 'neither form is complete'}), got "
                f"pairs={kw['pairs']!r}, student_layer={single[0]!r}, teacher_layer={single[1]!r}"
            )
        if kw["pairs"] is None:
            kw["pairs"] = [single]
        return cls(**kw)

    def __init__(self, pairs: Iterable[tuple[str, str]], p: float = 2.0, strict_shapes: bool = False):
        super().__init__()
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        if not self.pairs:
            raise ConfigError("at: expected at least one [student_path, teacher_path] pair")
        self.p, self.strict_shapes = p, strict_shapes

    def feature_layers(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for sp, tp in self.pairs:
            s = _shape(student_shapes, "student", sp, self.name)  # (Cs, Hs, Ws)
            t = _shape(teacher_shapes, "teacher", tp, self.name)  # (Ct, Ht, Wt)
            desc = f"student {sp!r} per-sample shape {tuple(s)} vs teacher {tp!r} per-sample shape {tuple(t)}"
            if len(s) != 3 or len(t) != 3:
                raise ConfigError(f"at: attention transfer needs conv feature maps (C, H, W) on both sides; got {desc}")
            if self.strict_shapes and s[1:] != t[1:]:
                raise ConfigError(
                    f"at: spatial sizes differ with strict_shapes=true: {desc}; choose layers with equal H x W or set "
                    f"strict_shapes=false to adaptive-average-pool the larger attention map to the smaller"
                )

    def forward(self, inp: LossInputs) -> Tensor:
        total = inp.student_logits.new_zeros((), dtype=torch.float32)  # ()
        for sp, tp in self.pairs:
            a_s = _feature(inp, "student", sp, self.name)  # (B, Cs, Hs, Ws)
            a_t = _feature(inp, "teacher", tp, self.name).detach()  # (B, Ct, Ht, Wt)
            if a_s.dim() != 4 or a_t.dim() != 4:
                raise ConfigError(f"at: attention transfer needs 4-D (B, C, H, W) features; got student {sp!r} "
                                  f"{tuple(a_s.shape)} and teacher {tp!r} {tuple(a_t.shape)}")
            if self.strict_shapes and a_s.shape[-2:] != a_t.shape[-2:]:
                raise ConfigError(f"at: spatial sizes differ with strict_shapes=true: student {sp!r} "
                                  f"{tuple(a_s.shape)} vs teacher {tp!r} {tuple(a_t.shape)}")
            q_s, q_t = _pool_to_common(attention_map(a_s, self.p), attention_map(a_t, self.p))  # (B, H, W) each
            q_s = F.normalize(q_s.flatten(1), dim=1)  # (B, H*W), unit L2 norm per sample (eps guards all-zero maps)
            q_t = F.normalize(q_t.flatten(1), dim=1)  # (B, H*W)
            total = total + (q_s - q_t).norm(p=2, dim=1).mean()  # () batch-mean of per-sample L2 distances
        return total
