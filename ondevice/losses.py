"""Distillation losses and the registry the trainer builds them from.

A recipe lists losses as specs, ``[{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 0.9, "temperature": 4}]``;
:func:`build_loss` validates every spec and returns a :class:`CombinedLoss` whose ``forward`` gives the weighted total
and each weighted component. Registered losses (``LOSSES.names()``):

=============  ===========================================================================  ========================
name           paper                                                                        needs teacher
=============  ===========================================================================  ========================
ce             hard-label cross-entropy                                                     no
kd             Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"  logits (or their top-k)
dkd            Zhao et al. 2022, "Decoupled Knowledge Distillation"                         logits
fitnets        Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"                      one feature
at             Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"             feature pairs
hidden_mse     Jiao et al. 2020, "TinyBERT" (L_hidn = MSE(H^S W_h, H^T))                    token-state pairs
hidden_cos     Sanh et al. 2019, "DistilBERT" (L_cos, 1 - cos of hidden states)             token-state pairs
minilm         Wang et al. 2020, "MiniLM" (attention and value-relation KL)                 one attention's Q, K, V
tinybert_attn  Jiao et al. 2020, "TinyBERT" (L_attn = MSE of Q K^T / sqrt(d_k))             attentions' Q, K pairs
embed_mse      Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings ..."        (B, D) vectors
embed_cos      1 - cos of sentence vectors (the vector form of DistilBERT's L_cos)          (B, D) vectors
=============  ===========================================================================  ========================

Conventions shared by every loss:

* Teacher tensors are detached: no gradient ever flows into the teacher.
* Logit losses compute in float32 (softmax/KL under fp16/bf16 autocast lose the small soft-target terms).
* Feature shapes handed to :meth:`DistillLoss.build` are *per sample* (no batch dimension), e.g. ``(C, H, W)``, or
  ``(T, D)`` for token states.
* Token features (B, T, D) are averaged over the real tokens only (``LossInputs.mask``, (B, T), True = real): what
  sits at padded positions never changes a loss or receives a gradient. Losses over several layer pairs sum them.
* Layer pairs (``at``, ``hidden_mse``, ``hidden_cos``, ``tinybert_attn``) are given in one of three forms:
  ``pairs = [[student_path, teacher_path], ...]``; ``layer_map = [[i, j], ...]`` (student layer i <- teacher layer
  j) with ``student_template`` / ``teacher_template`` such as ``"encoder.layer.{}"``; or ``student_layer`` +
  ``teacher_layer``.
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
    "HiddenMSELoss",
    "HiddenCosLoss",
    "MiniLMLoss",
    "TinyBERTAttnLoss",
    "EmbedMSELoss",
    "EmbedCosLoss",
    "kd_kl",
    "kd_kl_topk",
    "dkd_terms",
    "attention_map",
    "masked_mean",
    "token_mse",
    "relation_scores",
    "relation_kl",
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


def _teacher_logits(inp: LossInputs, loss_name: str, what: str = "logits",
                    fix: str = "student and teacher must predict the same classes") -> Tensor:
    """Teacher logits (or the embedding task's vectors: ``what="vectors"``), detached, float32, with the same shape as
    the student's; ``fix`` ends the shape-mismatch message."""
    t = inp.teacher_logits
    if t is None:
        raise ConfigError(
            f"loss {loss_name!r} needs teacher {what} but LossInputs.teacher_logits is None; "
            f"configure a teacher model or use only the 'ce' loss"
        )
    if t.shape != inp.student_logits.shape:
        raise ConfigError(
            f"loss {loss_name!r}: student {what} {tuple(inp.student_logits.shape)} and teacher {what} "
            f"{tuple(t.shape)} differ in shape; {fix}"
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


def _pair_desc(sp: str, s: torch.Size | tuple, tp: str, t: torch.Size | tuple) -> str:
    """``student 'a' per-sample shape (…) vs teacher 'b' per-sample shape (…)``: how every shape error names a pair."""
    return f"student {sp!r} per-sample shape {tuple(s)} vs teacher {tp!r} per-sample shape {tuple(t)}"


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


def _is_index_pairs(v: Any) -> bool:
    def index(i: Any) -> bool:
        return isinstance(i, int) and not isinstance(i, bool) and i >= 0

    return (
        isinstance(v, (list, tuple))
        and len(v) > 0
        and all(isinstance(p, (list, tuple)) and len(p) == 2 and all(index(i) for i in p) for p in v)
    )


def _is_template(v: Any) -> bool:
    return isinstance(v, str) and v.count("{}") == 1 and v.count("{") == 1 and v.count("}") == 1


# Which (student_path, teacher_path) pairs a feature loss reads, in one of three forms (see _layer_pairs).
_LAYER_PARAMS = (
    Param("pairs", "a non-empty list of [student_path, teacher_path] string pairs", _is_pairs, None,
          lambda v: [(str(a), str(b)) for a, b in v]),
    Param("layer_map", "a non-empty list of [student_layer, teacher_layer] integer pairs (each >= 0), e.g. "
          "[[0, 2], [1, 5]]", _is_index_pairs, None, lambda v: [(int(a), int(b)) for a, b in v],
          "student layer i <- teacher layer j, paths made with student_template / teacher_template"),
    Param("student_template", "a module path with one '{}' for the layer index, e.g. 'encoder.layer.{}'",
          _is_template, None),
    Param("teacher_template", "a module path with one '{}' for the layer index, e.g. 'encoder.layer.{}'",
          _is_template, None),
    Param("student_layer", "a module path string of the student", _nonempty_str, None),
    Param("teacher_layer", "a module path string of the teacher", _nonempty_str, None),
)
_LAYER_FORMS = ("pairs=[[student_path, teacher_path], ...], layer_map=[[i, j], ...] (student layer i <- teacher "
                "layer j) with student_template and teacher_template such as 'encoder.layer.{}', or both "
                "student_layer and teacher_layer")


def _layer_pairs(kw: dict[str, Any], where: str, loss_name: str) -> list[tuple[str, str]]:
    """Pop the :data:`_LAYER_PARAMS` from parsed params ``kw`` and return the (student_path, teacher_path) pairs.

    Exactly one form: ``pairs``; ``layer_map`` + ``student_template`` + ``teacher_template`` (``[[1, 3]]`` with
    ``'encoder.layer.{}'`` on both sides gives ``[('encoder.layer.1', 'encoder.layer.3')]``); or ``student_layer`` +
    ``teacher_layer`` (one pair)."""
    got = {k: kw.pop(k) for k in ("pairs", "layer_map", "student_template", "teacher_template", "student_layer",
                                  "teacher_layer")}
    forms = {
        "pairs": got["pairs"] is not None,
        "layer_map": any(got[k] is not None for k in ("layer_map", "student_template", "teacher_template")),
        "student_layer/teacher_layer": got["student_layer"] is not None or got["teacher_layer"] is not None,
    }
    given = [f for f, on in forms.items() if on]

    def fail(key: str, why: str) -> ConfigError:
        shown = ", ".join(f"{k}={v!r}" for k, v in got.items() if v is not None) or "nothing"
        return ConfigError(f"{where}.{key}: expected either {_LAYER_FORMS} ({why}), got {shown}",
                           [(f"{where}.{key}", "invalid")])

    if len(given) > 1:
        raise fail("pairs", f"not both forms: {' and '.join(given)} given")
    if not given:
        raise fail("pairs", f"neither form is complete: loss {loss_name!r} needs its layers")
    if given == ["pairs"]:
        return list(got["pairs"])
    if given == ["student_layer/teacher_layer"]:
        if None in (got["student_layer"], got["teacher_layer"]):
            raise fail("pairs", "neither form is complete: student_layer and teacher_layer go together")
        return [(got["student_layer"], got["teacher_layer"])]
    for key in ("layer_map", "student_template", "teacher_template"):
        if got[key] is None:
            raise fail(key, "neither form is complete: layer_map needs both templates")
    return [(got["student_template"].format(i), got["teacher_template"].format(j)) for i, j in got["layer_map"]]


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
    # reads every sample's label, so it cannot learn from a transfer set's unlabelled samples (class id -100)
    labels_every_sample: ClassVar[bool] = False
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


class _LayerPairsLoss(DistillLoss):
    """A feature loss over (student_path, teacher_path) pairs named by one of the :data:`_LAYER_PARAMS` forms."""

    @classmethod
    def from_config(cls, params: dict[str, Any], where: str = "loss") -> "DistillLoss":
        kw = _parse_params(cls.PARAMS, params, where, cls.name)
        return cls(_layer_pairs(kw, where, cls.name), **kw)

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        super().__init__()
        self.pairs = [(str(s), str(t)) for s, t in pairs]
        if not self.pairs:
            raise ConfigError(f"{self.name}: expected at least one [student_path, teacher_path] pair")

    def feature_layers(self) -> list[tuple[str, str]]:
        return list(self.pairs)


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
            if m.feature_layers():
                term = w * m(views[0][1])  # () scalar
            elif len(views) == 1 and views[0][0] == 1.0:
                term = w * m(views[0][1])
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
    """Hard-label cross-entropy: ``L = -1/|L| sum_{b in L} log softmax(s_b)[y_b]`` over the labelled samples L of
    the batch (optionally label-smoothed); a sample whose class id is -100 (a transfer-set sample, a padded token) is
    not in L, and a batch with no labelled sample gives 0.

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
        # (B, C), (B,) -> (); summed and divided by the labelled count: the mean where any is labelled, no sync
        y = inp.targets
        total = F.cross_entropy(inp.student_logits.float(), y, ignore_index=-100, reduction="sum",
                                label_smoothing=self.label_smoothing)
        return total / (y != -100).sum().clamp(min=1)


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
    labels_every_sample = True  # the target-class split of TCKD / NCKD
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


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is True (same shape, e.g. (B, T) per-token terms); ().

    Masked-out entries never count, not even a NaN or inf there, and get zero gradient; an all-False mask gives 0."""
    m = mask.to(device=values.device, dtype=torch.bool)
    return values.masked_fill(~m, 0.0).sum() / m.sum().clamp_min(1)


def _token_mask(inp: LossInputs, x: Tensor, path: str, loss_name: str) -> Tensor:
    """The (B, T) bool mask of real tokens for a (B, T, ...) feature: ``inp.mask``, or all True when it is None."""
    if inp.mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, T)
    if tuple(inp.mask.shape) != tuple(x.shape[:2]):
        raise ConfigError(
            f"loss {loss_name!r}: feature {path!r} has shape {tuple(x.shape)} but the padding mask is "
            f"{tuple(inp.mask.shape)}; token features must be (B, T, ...) with the (B, T) of the attention mask"
        )
    return inp.mask.to(device=x.device, dtype=torch.bool)  # (B, T)


def _token_pair(inp: LossInputs, sp: str, tp: str, loss_name: str) -> tuple[Tensor, Tensor, Tensor]:
    """Student and (detached) teacher token states of one pair and their mask: (B, T, Ds), (B, T, Dt), (B, T).

    (B, D) vectors come back as (B, 1, D) with an all-True mask, so one code path serves both."""
    hs = _feature(inp, "student", sp, loss_name)  # (B, T, Ds) or (B, Ds)
    ht = _feature(inp, "teacher", tp, loss_name).detach()  # (B, T, Dt) or (B, Dt)
    if hs.dim() != ht.dim() or hs.dim() not in (2, 3) or hs.shape[:-1] != ht.shape[:-1]:
        raise ConfigError(f"loss {loss_name!r}: token states must be (B, T, D) (or (B, D)) with the same B and T on "
                          f"both sides; got student {sp!r} {tuple(hs.shape)} and teacher {tp!r} {tuple(ht.shape)}")
    if hs.dim() == 2:
        hs, ht = hs.unsqueeze(1), ht.unsqueeze(1)  # (B, 1, D)
        return hs, ht, torch.ones(hs.shape[:2], dtype=torch.bool, device=hs.device)
    return hs, ht, _token_mask(inp, hs, sp, loss_name)


def _check_token_shapes(loss_name: str, sp: str, s: torch.Size, tp: str, t: torch.Size) -> None:
    """Build-time check of one pair of token-state shapes: both (T, D) with the same T, or both (D,)."""
    if len(s) != len(t) or len(s) not in (1, 2) or s[:-1] != t[:-1]:
        raise ConfigError(
            f"{loss_name}: {_pair_desc(sp, s, tp, t)}; expected token states (T, D) with the same T on both sides "
            f"(the same tokenizer and sequence) or vectors (D,) on both sides"
        )


def token_mse(r: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """``sum_{real tokens} ||r_t - v_t||^2 / (N_real * D)``: MSE over the real tokens only. (B, T, D) x2, (B, T) -> ()."""
    return masked_mean((r.float() - v.float()).pow(2).mean(dim=-1), mask)  # per-token mean over D, then over tokens


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
    * 3-D token states (B, T, D) (a transformer block's output): ``regressor="linear"``, D_s -> D_t applied per token,
      and the mean is over the real tokens only (``LossInputs.mask``): ``L = sum_{b,t: mask} ||r(u_bt) - v_bt||^2 /
      (N_real * D_t)``. Student and teacher need the same T (the same tokenizer). For several layer pairs and a
      projection only where the widths differ, see ``hidden_mse``.

    Student and teacher features must have the same rank (a 4-D vs 2-D pair is a ConfigError raised by ``build``).
    The regressor's parameters belong to this module: build the loss before creating the optimizer and optimise
    ``loss.parameters()`` together with the student's.
    """

    name = "fitnets"
    _REGRESSORS = {3: "conv1x1", 2: "linear", 1: "linear"}  # per-sample rank -> regressor
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
        return _pair_desc(self.student_layer, s_shape, self.teacher_layer, t_shape)

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s = _shape(student_shapes, "student", self.student_layer, self.name)  # (Cs, H, W), (T, Ds) or (Cs,)
        t = _shape(teacher_shapes, "teacher", self.teacher_layer, self.name)  # (Ct, H, W), (T, Dt) or (Ct,)
        if len(s) != len(t):
            raise ConfigError(
                f"fitnets: rank mismatch, {self._describe(s, t)}; FitNets needs both layers to be conv maps "
                f"(C, H, W), both token states (T, D) or both vectors (C,). Pick a teacher layer of the same kind as "
                f"the student layer."
            )
        if len(s) not in self._REGRESSORS:
            raise ConfigError(
                f"fitnets: unsupported feature rank, {self._describe(s, t)}; supported per-sample shapes are "
                f"(C, H, W) with a 'conv1x1' regressor, and (T, D) token states or (C,) vectors with a 'linear' "
                f"regressor"
            )
        if len(s) == 2:
            _check_token_shapes(self.name, self.student_layer, s, self.teacher_layer, t)
        kind = self.regressor_kind or self._REGRESSORS[len(s)]
        if kind != self._REGRESSORS[len(s)]:
            raise ConfigError(
                f"fitnets: regressor {kind!r} does not fit {self._describe(s, t)}; use "
                f"regressor={self._REGRESSORS[len(s)]!r} (or omit it) for {len(s) + 1}-D features"
            )
        cs, ct = s[-1] if len(s) == 2 else s[0], t[-1] if len(t) == 2 else t[0]  # channels / token width
        self.regressor = nn.Conv2d(cs, ct, kernel_size=1) if kind == "conv1x1" else nn.Linear(cs, ct)

    def forward(self, inp: LossInputs) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("fitnets: regressor not built; call build(student_shapes, teacher_shapes) "
                               "(CombinedLoss.build) before forward and before creating the optimizer")
        u = _feature(inp, "student", self.student_layer, self.name)  # (B, Cs, Hs, Ws), (B, T, Ds) or (B, Cs)
        v = _feature(inp, "teacher", self.teacher_layer, self.name).detach()  # (B, Ct, Ht, Wt), (B, T, Dt), (B, Ct)
        if u.dim() != v.dim():
            raise ConfigError(f"fitnets: rank mismatch at run time, {self._describe(u.shape[1:], v.shape[1:])}")
        if u.dim() == 3:
            u, v, mask = _token_pair(inp, self.student_layer, self.teacher_layer, self.name)  # (B,T,Ds) (B,T,Dt) (B,T)
            return token_mse(self.regressor(u), v, mask)  # ()
        if u.dim() == 4:
            u, v = _pool_to_common(u, v)  # (B, Cs, H, W), (B, Ct, H, W) with H, W = min sizes
        r = self.regressor(u)  # (B, Ct, H, W) or (B, Ct)
        return F.mse_loss(r.float(), v.float())  # ()


def attention_map(a: Tensor, p: float = 2.0) -> Tensor:
    """Spatial attention map of Zagoruyko & Komodakis: ``Q = mean_c |A_c|^p``; (B, C, H, W) -> (B, H, W)."""
    return a.float().abs().pow(p).mean(dim=1)  # (B, H, W)


@LOSSES.register("at")
class ATLoss(_LayerPairsLoss):
    """Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR 2017, arXiv:1612.03928).

    For each (student j, teacher j) layer pair, ``Q^j = vec(mean_c |A^j_c|^p)`` (p = 2 by default), and

    ``L = 1/B * sum_b sum_j || Q_S^j,b / ||Q_S^j,b||_2  -  Q_T^j,b / ||Q_T^j,b||_2 ||_2``

    (the paper's attention-transfer term with its distance norm p = 2; the paper's beta/2 is this spec's ``weight``).
    Channel counts may differ between the two layers. If the spatial sizes differ, the larger attention map is
    adaptive-average-pooled to the smaller before normalisation, unless ``strict_shapes=true`` (then ``build`` raises
    ConfigError). Layers: ``pairs=[[student, teacher], ...]``, ``layer_map`` + templates, or ``student_layer`` +
    ``teacher_layer``.
    """

    name = "at"
    PARAMS = _LAYER_PARAMS + (
        Param("p", "a finite number > 0", _positive, 2.0, float, "exponent of |A| in the attention map"),
        Param("strict_shapes", "true or false", lambda v: isinstance(v, bool), False),
    )

    def __init__(self, pairs: Iterable[tuple[str, str]], p: float = 2.0, strict_shapes: bool = False):
        super().__init__(pairs)
        self.p, self.strict_shapes = p, strict_shapes

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for sp, tp in self.pairs:
            s = _shape(student_shapes, "student", sp, self.name)  # (Cs, Hs, Ws)
            t = _shape(teacher_shapes, "teacher", tp, self.name)  # (Ct, Ht, Wt)
            desc = _pair_desc(sp, s, tp, t)
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


# --------------------------------------------------------------------------------------------------------------------
# Transformer hidden-state and self-attention losses (token features (B, T, D), padding mask (B, T))
# --------------------------------------------------------------------------------------------------------------------
@LOSSES.register("hidden_mse")
class HiddenMSELoss(_LayerPairsLoss):
    """Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020,
    arXiv:1909.10351): the hidden-state loss

    ``L_hidn = MSE(H^S W_h, H^T)``,  H^S (l, d') student and H^T (l, d) teacher block outputs, W_h (d', d) learned,

    summed over the layer pairs, each MSE averaged over the real tokens only (``LossInputs.mask``) and the d teacher
    dimensions: ``sum_pairs sum_{b,t: mask} ||h^S_bt W_h - h^T_bt||^2 / (N_real * d)``. ``project = "auto"``
    (default) learns W_h (no bias, as in the formula) only where d' != d; ``true`` always learns one; ``false`` never
    does (then d' must equal d). TinyBERT's embedding-layer loss L_embd = MSE(E^S W_e, E^T) is the same loss on the
    embeddings' output (path ``embeddings``). Its uniform layer map g(m) = 3m for a 4-layer student of a 12-layer
    teacher is ``layer_map = [[0, 2], [1, 5], [2, 8], [3, 11]]`` with ``'encoder.layer.{}'`` templates.
    Token states (T, D) (or vectors (D,)) per sample; both sides need the same T.
    """

    name = "hidden_mse"
    PARAMS = _LAYER_PARAMS + (
        Param("project", "'auto', true or false", lambda v: v == "auto" or isinstance(v, bool), "auto",
              help="learn W_h: where widths differ (auto), always (true), never (false)"),
    )

    def __init__(self, pairs: Iterable[tuple[str, str]], project: str | bool = "auto"):
        super().__init__(pairs)
        self.project = project
        self.proj: nn.ModuleList | None = None  # per pair: nn.Linear(d', d, bias=False) or nn.Identity

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        projs: list[nn.Module] = []
        for sp, tp in self.pairs:
            s = _shape(student_shapes, "student", sp, self.name)  # (T, d') or (d',)
            t = _shape(teacher_shapes, "teacher", tp, self.name)  # (T, d) or (d,)
            _check_token_shapes(self.name, sp, s, tp, t)
            learn = s[-1] != t[-1] if self.project == "auto" else self.project
            if not learn and s[-1] != t[-1]:
                raise ConfigError(f"hidden_mse: project=false but the widths differ, {_pair_desc(sp, s, tp, t)}; "
                                  f"set project='auto' to learn W_h ({s[-1]} -> {t[-1]})")
            projs.append(nn.Linear(s[-1], t[-1], bias=False) if learn else nn.Identity())
        self.proj = nn.ModuleList(projs)

    def forward(self, inp: LossInputs) -> Tensor:
        if self.proj is None:
            raise RuntimeError("hidden_mse: W_h not built; call build(student_shapes, teacher_shapes) "
                               "(CombinedLoss.build) before forward and before creating the optimizer")
        total = inp.student_logits.new_zeros((), dtype=torch.float32)  # ()
        for (sp, tp), w_h in zip(self.pairs, self.proj):
            hs, ht, mask = _token_pair(inp, sp, tp, self.name)  # (B, T, d'), (B, T, d), (B, T)
            total = total + token_mse(w_h(hs), ht, mask)  # H^S W_h: (B, T, d)
        return total


@LOSSES.register("hidden_cos")
class HiddenCosLoss(_LayerPairsLoss):
    """Sanh, Debut, Chaumond & Wolf 2019, "DistilBERT, a distilled version of BERT: smaller, faster, cheaper and
    lighter" (arXiv:1910.01108): the cosine embedding loss L_cos, which aligns the directions of the student and
    teacher hidden-state vectors:

    ``L_cos = sum_pairs 1/N_real * sum_{b,t: mask} (1 - cos(h^S_bt, h^T_bt))``

    over the real tokens only (the reference code, huggingface ``distiller.py``, applies ``CosineEmbeddingLoss`` with
    target 1 to the last hidden states of the non-padding tokens). No projection: the student must have the teacher's
    width (DistilBERT keeps it and drops every other layer), a different width is a ConfigError that points to
    ``hidden_mse``. Token states (T, D) (or vectors (D,)) per sample, the same T on both sides.
    """

    name = "hidden_cos"
    PARAMS = _LAYER_PARAMS

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for sp, tp in self.pairs:
            s = _shape(student_shapes, "student", sp, self.name)  # (T, D) or (D,)
            t = _shape(teacher_shapes, "teacher", tp, self.name)  # (T, D) or (D,)
            _check_token_shapes(self.name, sp, s, tp, t)
            if s[-1] != t[-1]:
                raise ConfigError(
                    f"hidden_cos: the widths differ, {_pair_desc(sp, s, tp, t)}; the cosine loss compares directions "
                    f"in one space and needs D_s == D_t. Use 'hidden_mse', which learns a projection W_h "
                    f"({s[-1]} -> {t[-1]})"
                )

    def forward(self, inp: LossInputs) -> Tensor:
        total = inp.student_logits.new_zeros((), dtype=torch.float32)  # ()
        for sp, tp in self.pairs:
            hs, ht, mask = _token_pair(inp, sp, tp, self.name)  # (B, T, D), (B, T, D), (B, T)
            if hs.shape != ht.shape:
                raise ConfigError(f"hidden_cos: student {sp!r} {tuple(hs.shape)} and teacher {tp!r} "
                                  f"{tuple(ht.shape)} differ in width; use 'hidden_mse'")
            cos = F.cosine_similarity(hs.float(), ht.float(), dim=-1)  # (B, T)
            total = total + masked_mean(1.0 - cos, mask)
        return total


def relation_scores(x: Tensor, y: Tensor, heads: int) -> Tensor:
    """Per-head scaled dot products ``x_a y_a^T / sqrt(d_k)``, d_k = D / heads: (B, T, D) x2 -> (B, heads, T, T).

    With x = Q, y = K these are the attention scores; with x = y = V the value relations of MiniLM."""
    b, t, d = x.shape
    dk = d // heads
    xh = x.float().reshape(b, t, heads, dk).transpose(1, 2)  # (B, h, T, d_k)
    yh = y.float().reshape(b, y.shape[1], heads, dk).transpose(1, 2)  # (B, h, T, d_k)
    return xh @ yh.transpose(-1, -2) / math.sqrt(dk)  # (B, h, T, T)


def relation_kl(student_scores: Tensor, teacher_scores: Tensor, mask: Tensor) -> Tensor:
    """``KL(softmax(teacher) || softmax(student))`` over the key axis, averaged over heads and real query positions.

    Scores (B, h, T, T) (query, key); ``mask`` (B, T) bool. Padded keys are set to -inf before the softmax (so they
    get probability 0 on both sides) and padded query rows are left out of the mean; () out."""
    keys = (mask | ~mask.any(dim=1, keepdim=True))[:, None, None, :]  # (B, 1, 1, T); an all-padding row keeps its keys
    log_ps = F.log_softmax(student_scores.float().masked_fill(~keys, float("-inf")), dim=-1)  # (B, h, T, T)
    log_pt = F.log_softmax(teacher_scores.detach().float().masked_fill(~keys, float("-inf")), dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~keys, 0.0).sum(dim=-1)  # (B, h, T): per head and query
    return masked_mean(kl.mean(dim=1), mask)  # mean over heads, then over the real queries


def _is_qkv(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 3 and all(_nonempty_str(x) for x in v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


_QKV = Param("qkv", "a list of the 3 query, key, value module names under the attention prefix, e.g. "
             "['query', 'key', 'value'] (BERT) or ['q_proj', 'k_proj', 'v_proj'] (Llama)", _is_qkv,
             ("query", "key", "value"), lambda v: tuple(str(x) for x in v))
_HEADS = Param("heads", "an integer >= 1 dividing the query/key/value widths of both models", _is_count,
               help="relation heads both sides are split into")


def _check_attention_shapes(loss_name: str, side: str, prefix: str, paths: list[str], shapes: dict[str, torch.Size],
                            heads: int) -> list[torch.Size]:
    """Build-time check of one side's Q, K(, V) Linear outputs: each (T, D) with D divisible by ``heads``, Q and K of
    the same width. Returns their shapes."""
    got = [_shape(shapes, side, p, loss_name) for p in paths]  # (T, D) each
    desc = ", ".join(f"{p!r} {tuple(s)}" for p, s in zip(paths, got))
    if any(len(s) != 2 for s in got):
        raise ConfigError(f"{loss_name}: {side} attention {prefix!r}: expected the (T, D) outputs of the query, key "
                          f"and value projections, got {desc}; check the prefix and qkv names")
    if got[0][-1] != got[1][-1]:
        raise ConfigError(f"{loss_name}: {side} attention {prefix!r}: query and key widths differ ({desc}), as in "
                          f"grouped-query attention; relation losses need Q and K of one width")
    bad = [f"{p!r} width {s[-1]}" for p, s in zip(paths, got) if s[-1] % heads]
    if bad:
        raise ConfigError(f"{loss_name}: heads={heads} does not divide the {side} {', '.join(bad)}; choose heads "
                          f"dividing every query/key/value width of both models")
    return got


def _check_same_length(loss_name: str, s_prefix: str, s: torch.Size, t_prefix: str, t: torch.Size) -> None:
    if s[0] != t[0]:
        raise ConfigError(f"{loss_name}: student {s_prefix!r} has {s[0]} positions but teacher {t_prefix!r} has "
                          f"{t[0]}; attention relations need the same tokens on both sides (the same tokenizer)")


@LOSSES.register("minilm")
class MiniLMLoss(DistillLoss):
    """Wang, Wei, Dong, Bao, Yang & Zhou 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers" (NeurIPS 2020, arXiv:2002.10957): self-attention distribution transfer
    and value-relation transfer from one teacher attention layer to one student attention layer,

    ``A_a = softmax(Q_a K_a^T / sqrt(d_k))``,  ``L_AT = 1/(A_h |x|) sum_a sum_t KL(A^T_{a,t} || A^S_{a,t})``
    ``VR_a = softmax(V_a V_a^T / sqrt(d_k))``,  ``L_VR = 1/(A_h |x|) sum_a sum_t KL(VR^T_{a,t} || VR^S_{a,t})``
    ``L = attention_weight * L_AT + value_weight * L_VR``  (the paper: 1 and 1)

    for heads a = 1..A_h and query positions t; here |x| counts the real query positions of the batch, and padded key
    positions are masked to -inf before each softmax. Q, K, V are the per-token outputs (T, D) of the attention
    module's projections ``<layer>.<qkv[i]>``. Both sides are split into ``heads`` relation heads with d_k = D/heads
    of their own width, as in MiniLMv2 (Wang, Bao, Huang, Dong & Wei 2021, "MiniLMv2: Multi-Head Self-Attention
    Relation Distillation", arXiv:2012.15828), so teacher and student may differ in head count and width; with
    heads = the models' own head count this is MiniLM's per-head attention. Relations use the projections as they are
    (no rotary position embedding, no causal mask). Q and K must have one width (no grouped-query attention).
    """

    name = "minilm"
    PARAMS = (
        Param("student_layer", "the student's attention module path prefix, e.g. 'encoder.layer.2.attention.self'",
              _nonempty_str),
        Param("teacher_layer", "the teacher's attention module path prefix, e.g. 'encoder.layer.5.attention.self'",
              _nonempty_str),
        _QKV,
        _HEADS,
        Param("attention_weight", "a finite number >= 0", _nonneg, 1.0, float, "weight of L_AT"),
        Param("value_weight", "a finite number >= 0", _nonneg, 1.0, float, "weight of L_VR"),
    )

    def __init__(self, student_layer: str, teacher_layer: str, heads: int,
                 qkv: tuple[str, str, str] = ("query", "key", "value"), attention_weight: float = 1.0,
                 value_weight: float = 1.0):
        super().__init__()
        self.student_layer, self.teacher_layer, self.heads, self.qkv = student_layer, teacher_layer, heads, tuple(qkv)
        self.attention_weight, self.value_weight = attention_weight, value_weight

    def feature_layers(self) -> list[tuple[str, str]]:
        return [(f"{self.student_layer}.{n}", f"{self.teacher_layer}.{n}") for n in self.qkv]  # Q, K, V pairs

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        s_paths, t_paths = zip(*self.feature_layers())
        s = _check_attention_shapes(self.name, "student", self.student_layer, list(s_paths), student_shapes, self.heads)
        t = _check_attention_shapes(self.name, "teacher", self.teacher_layer, list(t_paths), teacher_shapes, self.heads)
        _check_same_length(self.name, self.student_layer, s[0], self.teacher_layer, t[0])

    def forward(self, inp: LossInputs) -> Tensor:
        q_s, k_s, v_s = (_feature(inp, "student", p, self.name) for p, _ in self.feature_layers())  # (B, T, Ds) each
        q_t, k_t, v_t = (_feature(inp, "teacher", p, self.name).detach() for _, p in self.feature_layers())  # Dt
        mask = _token_mask(inp, q_s, self.feature_layers()[0][0], self.name)  # (B, T)
        total = q_s.new_zeros((), dtype=torch.float32)  # ()
        if self.attention_weight:
            l_at = relation_kl(relation_scores(q_s, k_s, self.heads), relation_scores(q_t, k_t, self.heads), mask)
            total = total + self.attention_weight * l_at
        if self.value_weight:
            l_vr = relation_kl(relation_scores(v_s, v_s, self.heads), relation_scores(v_t, v_t, self.heads), mask)
            total = total + self.value_weight * l_vr
        return total


@LOSSES.register("tinybert_attn")
class TinyBERTAttnLoss(_LayerPairsLoss):
    """Jiao et al. 2020, "TinyBERT: Distilling BERT for Natural Language Understanding" (Findings of EMNLP 2020,
    arXiv:1909.10351): the attention-based distillation loss on the *unnormalised* attention scores,

    ``A_i = Q_i K_i^T / sqrt(d_k)`` per head i (no softmax: the paper found it converges faster),
    ``L_attn = 1/h sum_i MSE(A^S_i, A^T_i)``, summed over the layer pairs,

    each MSE averaged over the heads and the real (query, key) position pairs (``LossInputs.mask``; TinyBERT's code
    zeroes the masked scores instead, which would count the padding). Layer pairs name attention-module prefixes
    (``pairs=[['encoder.layer.0.attention.self', 'encoder.layer.2.attention.self']]`` or ``layer_map`` with templates
    like ``'encoder.layer.{}.attention.self'``); the scores come from the ``<prefix>.<qkv[0]>`` and ``<prefix>.
    <qkv[1]>`` outputs (the value projection is not read). Both sides are split into the same ``heads`` (the paper's
    student keeps the teacher's head count), each with d_k = its own width / heads.
    """

    name = "tinybert_attn"
    PARAMS = _LAYER_PARAMS + (_QKV, _HEADS)

    def __init__(self, pairs: Iterable[tuple[str, str]], heads: int,
                 qkv: tuple[str, str, str] = ("query", "key", "value")):
        super().__init__(pairs)
        self.heads, self.qkv = heads, tuple(qkv)

    def _qk(self, prefix: str) -> list[str]:
        return [f"{prefix}.{n}" for n in self.qkv[:2]]  # query, key paths

    def feature_layers(self) -> list[tuple[str, str]]:
        return [pair for sp, tp in self.pairs for pair in zip(self._qk(sp), self._qk(tp))]

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        for sp, tp in self.pairs:
            s = _check_attention_shapes(self.name, "student", sp, self._qk(sp), student_shapes, self.heads)
            t = _check_attention_shapes(self.name, "teacher", tp, self._qk(tp), teacher_shapes, self.heads)
            _check_same_length(self.name, sp, s[0], tp, t[0])

    def forward(self, inp: LossInputs) -> Tensor:
        total = inp.student_logits.new_zeros((), dtype=torch.float32)  # ()
        for sp, tp in self.pairs:
            q_s, k_s = (_feature(inp, "student", p, self.name) for p in self._qk(sp))  # (B, T, Ds)
            q_t, k_t = (_feature(inp, "teacher", p, self.name).detach() for p in self._qk(tp))  # (B, T, Dt)
            mask = _token_mask(inp, q_s, self._qk(sp)[0], self.name)  # (B, T)
            a_s, a_t = relation_scores(q_s, k_s, self.heads), relation_scores(q_t, k_t, self.heads)  # (B, h, T, T)
            pair_mask = mask[:, :, None] & mask[:, None, :]  # (B, T, T): real query and real key
            total = total + masked_mean((a_s - a_t).pow(2).mean(dim=1), pair_mask)  # heads, then real pairs
        return total


# --------------------------------------------------------------------------------------------------------------------
# Embedding losses (task "embedding": student_logits / teacher_logits are (B, D) vectors)
# --------------------------------------------------------------------------------------------------------------------
def _vectors(inp: LossInputs, loss_name: str) -> tuple[Tensor, Tensor]:
    """Student (B, D) and detached float32 teacher (B, D) vectors; a width mismatch names both shapes."""
    s = inp.student_logits
    t = _teacher_logits(inp, loss_name, "vectors",
                        "the student's vectors need the teacher's width: add a final projection to the student")
    if s.dim() != 2:
        raise ConfigError(f"loss {loss_name!r}: expected (B, D) vectors, got student {tuple(s.shape)} and teacher "
                          f"{tuple(t.shape)}; pool token states first (task 'embedding')")
    return s.float(), t  # (B, D), (B, D)


@LOSSES.register("embed_mse")
class EmbedMSELoss(DistillLoss):
    """Reimers & Gurevych 2020, "Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"
    (EMNLP 2020, arXiv:2004.09813): the student's sentence vector is regressed onto the teacher's,

    ``L = 1/(B D) sum_b || s_b - t_b ||^2``  (s, t the (B, D) student and teacher vectors)

    the mean over all B*D elements, as the reference implementation's ``nn.MSELoss`` (the paper's batch sums
    ``(M(s_j) - M^(s_j))^2`` over source and translated sentences; each is one batch here).
    """

    name = "embed_mse"

    def forward(self, inp: LossInputs) -> Tensor:
        s, t = _vectors(inp, self.name)  # (B, D), (B, D)
        return F.mse_loss(s, t)  # ()


@LOSSES.register("embed_cos")
class EmbedCosLoss(DistillLoss):
    """Cosine distillation of sentence vectors: ``L = 1/B sum_b (1 - cos(s_b, t_b))`` for (B, D) student and teacher
    vectors, the direction-only counterpart of ``embed_mse`` (Reimers & Gurevych 2020) and the vector form of
    DistilBERT's L_cos (Sanh et al. 2019). Invariant to the scale of either side.
    """

    name = "embed_cos"

    def forward(self, inp: LossInputs) -> Tensor:
        s, t = _vectors(inp, self.name)  # (B, D), (B, D)
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()  # ()
