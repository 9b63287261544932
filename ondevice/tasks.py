"""Tasks: what a model's outputs mean, what the losses see, how a model is evaluated and what "retention" is.

A recipe names its task (``task = "token_lm"`` or ``[task] name = "multi_output" ...``); the default is
``classification``, which is what every image recipe has always been. Registered tasks (``TASKS.names()``):

================  =====================================================================  ===========================
task              outputs and targets                                                    evaluated by
================  =====================================================================  ===========================
classification    logits (B, C); targets class ids (B,)                                  accuracy (top-1)
token_lm          logits (B, T, V); targets (B, T) next-token ids, ``ignore_index`` off  perplexity, top-1 next-token
                                                                                         agreement with the teacher
embedding         vectors (B, D); no labels (the teacher's vectors are the targets)      cosine to the teacher,
                                                                                         nearest-neighbour agreement@k
multi_output      a dict of heads, each with its own task and weight                     each head's metric, weighted
================  =====================================================================  ===========================

Each task turns (student output, teacher output, targets, inputs) into one or more :class:`~ondevice.losses.LossInputs`
*views* in which the class/vocabulary axis is the last axis of a 2-D tensor and padding is gone: a language model's
(B, T, V) logits become (N, V) over the N positions that count, so every logit loss (ce, kd, dkd) normalises over the
vocabulary, never over time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .registry import Registry
from .tree import Tree, call_model, tree_to

TASKS: Registry[type["Task"]] = Registry("task")

# Losses that read logits over classes (softmax over the last axis) vs losses that compare vectors.
LOGIT_LOSSES = frozenset({"ce", "kd", "dkd"})
VECTOR_LOSSES = frozenset({"embed_mse", "embed_cos"})
FEATURE_LOSSES = frozenset({"fitnets", "at", "hidden_mse", "hidden_cos", "minilm", "tinybert_attn"})


def model_output(out: Any, key: str | None = None) -> Any:
    """The prediction a model returned: a tensor as is; ``key`` (or ``logits``) of a dict / HF ModelOutput; the first
    element of a tuple. Multi-head dicts are returned whole when no key is given and there is no ``logits``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "keys"):
        if key is not None:
            return out[key]
        if "logits" in out:
            return out["logits"]
        return dict(out)
    if isinstance(out, (tuple, list)):
        return out[0]
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, tuple or dict of tensors")


@dataclass
class View:
    """One loss view: what the losses see for one head. ``logits`` (N, C) and ``targets`` (N,) hold only the
    positions that count; ``mask`` (B, T) marks the real (non-padding) positions of sequence features."""

    student: Tensor
    teacher: Tensor | None
    targets: Tensor | None
    weight: float = 1.0
    teacher_topk: tuple[Tensor, Tensor] | None = None  # (values (N, k), indices (N, k)) when the cache keeps top-k


class Task:
    """Base class. Subclasses set ``name``, ``valid_losses``, ``primary`` and implement the hooks below."""

    name: ClassVar[str] = ""
    valid_losses: ClassVar[frozenset[str]] = frozenset()
    primary: ClassVar[str] = "acc"  # the validation metric that selects the best epoch (higher is better)
    has_labels: ClassVar[bool] = True  # False: no hard-label baseline can be trained
    eval_with_teacher: ClassVar[bool] = False  # True: evaluation compares with the teacher (agreement, cosine)

    def __init__(self, **params: Any):
        self.params = params

    # -- config ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, params: dict[str, Any]) -> "Task":
        return cls(**params)

    def check_losses(self, names: list[str], where: str = "distill.losses") -> None:
        for i, n in enumerate(names):
            if n not in self.valid_losses:
                raise ConfigError(f"{where}[{i}].name: loss {n!r} does not apply to task {self.name!r}; valid losses "
                                  f"for it: {', '.join(sorted(self.valid_losses))}")

    def mask_of(self, inputs: Tree) -> Tensor | None:
        """The (B, T) padding mask of sequence inputs (an ``attention_mask`` input), else None."""
        key = self.params.get("mask_input", "attention_mask")
        if isinstance(inputs, dict) and key in inputs:
            return inputs[key].bool()
        return None

    # -- what the losses see --------------------------------------------------------------------------------------
    def prediction(self, out: Any) -> Any:
        return model_output(out)

    def views(self, s_pred: Any, t_pred: Any, targets: Any, inputs: Tree,
              t_topk: Any = None) -> list[View]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------------------------
    def new_stats(self) -> dict[str, float]:
        return {}

    def update_stats(self, st: dict[str, float], s_pred: Any, t_pred: Any, targets: Any, inputs: Tree) -> None:
        raise NotImplementedError  # pragma: no cover

    def finish_stats(self, st: dict[str, float]) -> dict[str, float]:
        return st

    def evaluate(self, model: nn.Module, split, *, batch_size: int = 1000, teacher: "nn.Module | list | None" = None,
                 device: torch.device | str = "cpu", autocast=None) -> dict[str, float]:
        """Metrics of `model` on `split` (and agreement with `teacher` where the task defines one). `teacher` is a
        model, or its predictions per batch from :meth:`teacher_predictions` (the same split and batch size)."""
        was = model.training
        model.eval()
        st = self.new_stats()
        with torch.no_grad():
            for b, idx in enumerate(torch.arange(len(split)).split(batch_size)):
                inputs, targets = split.batch(idx)
                inputs, targets = tree_to(inputs, device), _to(targets, device)
                with autocast() if autocast else _null():
                    s = self.prediction(call_model(model, inputs))
                    if isinstance(teacher, list):
                        t = teacher[b]
                    else:
                        t = self.prediction(call_model(teacher, inputs)) if teacher is not None else None
                self.update_stats(st, _f32(s), _f32(t), targets, inputs)
        model.train(was)
        return self.finish_stats(st)

    def teacher_predictions(self, teacher: nn.Module, split, *, batch_size: int = 1000,
                            device: torch.device | str = "cpu", autocast=None) -> list:
        """The teacher's predictions on `split`, one entry per evaluation batch (computed once, reused each epoch)."""
        out = []
        with torch.no_grad():
            for idx in torch.arange(len(split)).split(batch_size):
                inputs, _ = split.batch(idx)
                with autocast() if autocast else _null():
                    out.append(_f32(self.prediction(call_model(teacher.eval(), tree_to(inputs, device)))))
        return out

    def retention(self, student: dict[str, float], teacher: dict[str, float]) -> float | None:
        """Student quality as a fraction of the teacher's (what the report and the gates call retention)."""
        s, t = student.get(self.primary), teacher.get(self.primary)
        return None if s is None or not t else s / t

    # -- verification of an exported artifact (NumPy outputs; see ondevice.verify) ----------------------------------
    def primary_output(self, outputs: dict) -> str | None:
        """The output the task judges: "output" (a single-output model), else the first one."""
        if not outputs:
            return None
        return "output" if "output" in outputs else next(iter(outputs))

    def verify_criteria(self, ref: dict, act: dict, inputs: dict | None) -> list:
        """Criteria (ondevice.verify.Criterion) on the primary output that can fail for its shape; [] otherwise."""
        return []

    def verify_notes(self, ref: dict) -> list[str]:
        """Why a criterion this task would use was left out for these outputs (e.g. top-1 on a (B, 1) output)."""
        return []

    def describe(self) -> dict:
        return {"name": self.name, **self.params}


def _to(tree: Any, device) -> Any:
    return None if tree is None else tree_to(tree, device)


def _f32(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: v.float() for k, v in x.items()}
    return x.float()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _check_params(task: str, params: dict, allowed: dict[str, str]) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"task.{unknown[0]}: unknown parameter for task {task!r}; valid parameters: "
                          f"{', '.join(f'{k} ({v})' for k, v in allowed.items()) or '(none)'}")


# ---------------------------------------------------------------------------------------------- classification
@TASKS.register("classification")
class Classification(Task):
    """Class logits (B, C) against class ids (B,); accuracy. Images or sequences alike."""

    name = "classification"
    valid_losses = LOGIT_LOSSES | FEATURE_LOSSES
    primary = "acc"
    PARAMS = {"mask_input": "name of the (B, T) padding-mask input for sequence features (default attention_mask)",
              "num_classes": "number of classes (checked against the labels and the model's output)"}

    def __init__(self, **params: Any):
        _check_params(self.name, params, self.PARAMS)
        super().__init__(**params)

    def views(self, s_pred, t_pred, targets, inputs, t_topk=None) -> list[View]:
        if s_pred.ndim != 2:
            raise ConfigError(f"task 'classification' expects (B, C) logits from the model, got shape "
                              f"{tuple(s_pred.shape)}; for per-token logits (B, T, V) use task = 'token_lm'")
        return [View(s_pred, t_pred, targets)]  # (B, C), (B, C), (B,)

    def new_stats(self) -> dict[str, float]:
        return {"correct": 0.0, "loss_sum": 0.0, "n": 0.0, "agree": 0.0}

    def update_stats(self, st, s_pred, t_pred, targets, inputs) -> None:
        st["correct"] += float((s_pred.argmax(1) == targets).sum())  # s_pred (b, C)
        st["loss_sum"] += float(F.cross_entropy(s_pred, targets, reduction="sum"))
        st["n"] += len(targets)
        if t_pred is not None:
            st["agree"] += float((s_pred.argmax(1) == t_pred.argmax(1)).sum())

    def verify_criteria(self, ref, act, inputs):
        from .verify import Criterion, top1_agreement

        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is None or r.ndim != 2 or r.shape[1] < 2:
            return []
        return [Criterion("top1_agreement", out, top1_agreement(r, act[out]), "min_top1_agreement")]

    def verify_notes(self, ref):
        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is not None and (r.ndim != 2 or r.shape[1] < 2):
            return [f"top-1 agreement not used: output {out!r} has shape {tuple(r.shape[1:])} per sample, where the "
                    f"arg-max cannot disagree (or is not a class); judged by SQNR / allclose"]
        return []

    def finish_stats(self, st) -> dict[str, float]:
        n = max(st["n"], 1.0)
        out = {"acc": st["correct"] / n, "errors": int(st["n"] - st["correct"]), "loss": st["loss_sum"] / n,
               "n": int(st["n"])}
        if st["agree"]:
            out["teacher_agreement"] = st["agree"] / n
        return out


# ---------------------------------------------------------------------------------------------- token_lm
@TASKS.register("token_lm")
class TokenLM(Task):
    """Causal language modelling: logits (B, T, V), targets (B, T) = the next token at each position (the dataset
    shifts them), ``ignore_index`` (default -100) where no token is to be predicted (padding, the last position).

    Losses see (N, V) logits over the N counted positions (padding masked), so KD is per token over the vocabulary.
    Metrics: perplexity exp(mean CE), top-1 next-token accuracy, and top-1 agreement with the teacher's next token.
    """

    name = "token_lm"
    eval_with_teacher = True
    valid_losses = LOGIT_LOSSES | FEATURE_LOSSES
    primary = "neg_ppl"
    PARAMS = {"ignore_index": "target value of positions that are not predicted (default -100)",
              "mask_input": "name of the (B, T) padding-mask input (default attention_mask)"}

    def __init__(self, **params: Any):
        _check_params(self.name, params, self.PARAMS)
        super().__init__(**params)
        self.ignore_index = int(params.get("ignore_index", -100))

    def _keep(self, targets: Tensor) -> Tensor:
        return targets != self.ignore_index  # (B, T) bool

    def views(self, s_pred, t_pred, targets, inputs, t_topk=None) -> list[View]:
        if s_pred.ndim != 3:
            raise ConfigError(f"task 'token_lm' expects (B, T, V) logits from the model, got shape "
                              f"{tuple(s_pred.shape)}")
        if targets.shape != s_pred.shape[:2]:
            raise ConfigError(f"task 'token_lm': targets {tuple(targets.shape)} must match the logits' (B, T) "
                              f"{tuple(s_pred.shape[:2])}")
        keep = self._keep(targets)  # (B, T)
        topk = None if t_topk is None else (t_topk[0][keep], t_topk[1][keep])  # (N, k) each
        return [View(s_pred[keep], None if t_pred is None else t_pred[keep], targets[keep], teacher_topk=topk,
                     weight=_global_token_weight(keep))]

    def new_stats(self) -> dict[str, float]:
        return {"nll": 0.0, "n": 0.0, "correct": 0.0, "agree": 0.0, "has_teacher": 0.0}

    def update_stats(self, st, s_pred, t_pred, targets, inputs) -> None:
        keep = self._keep(targets)  # (B, T)
        s = s_pred[keep]  # (N, V)
        y = targets[keep]  # (N,)
        st["nll"] += float(F.cross_entropy(s, y, reduction="sum"))
        st["n"] += len(y)
        st["correct"] += float((s.argmax(-1) == y).sum())
        if t_pred is not None:
            st["agree"] += float((s.argmax(-1) == t_pred[keep].argmax(-1)).sum())
            st["has_teacher"] = 1.0

    def finish_stats(self, st) -> dict[str, float]:
        n = max(st["n"], 1.0)
        loss = st["nll"] / n
        out = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "neg_ppl": -math.exp(min(loss, 700.0)),
               "token_acc": st["correct"] / n, "n": int(st["n"])}
        if st["has_teacher"]:
            out["teacher_agreement"] = st["agree"] / n
        return out

    def verify_criteria(self, ref, act, inputs):
        from .verify import Criterion, mean_kl, top1_agreement

        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is None or r.ndim != 3 or r.shape[-1] < 2:
            return []
        mask = (inputs or {}).get(self.params.get("mask_input", "attention_mask"))
        keep = None if mask is None or tuple(mask.shape) != r.shape[:2] else mask.astype(bool)  # (B, T)
        return [Criterion("next_token_agreement", out, top1_agreement(r, act[out], keep),
                          "min_next_token_agreement"),
                Criterion("kl", out, mean_kl(r, act[out], keep), "max_kl", higher_is_better=False)]

    def verify_notes(self, ref):
        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is not None and (r.ndim != 3 or r.shape[-1] < 2):
            return [f"next-token agreement not used: output {out!r} is not (B, T, V) logits"]
        return []

    def retention(self, student, teacher) -> float | None:
        """Teacher perplexity / student perplexity (1.0 = as good as the teacher)."""
        return None if not student.get("ppl") else teacher["ppl"] / student["ppl"]


def _global_token_weight(keep: Tensor) -> float:
    """Under torchrun, each process averages its losses over its own tokens and DDP then averages the processes; with
    uneven token counts that is not the mean over all tokens of the global batch. Weighting the view by
    n_local * world / n_global makes it exactly that (what one process on the whole batch computes). 1.0 otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1.0
    n = keep.sum().to(torch.float64).reshape(1)  # (1,) this process's counted tokens
    total = n.clone()
    dist.all_reduce(total)
    return float(n * dist.get_world_size() / total.clamp_min(1.0))


# ---------------------------------------------------------------------------------------------- embedding
@TASKS.register("embedding")
class Embedding(Task):
    """Sentence / vector outputs (B, D): the student learns to reproduce the teacher's vectors.

    Metrics (against the teacher on the same inputs): mean cosine similarity, and nearest-neighbour agreement@k --
    for each query, the fraction of the teacher's k nearest neighbours (cosine, within the evaluated set, the query
    itself excluded) that are also among the student's k nearest.
    """

    name = "embedding"
    valid_losses = VECTOR_LOSSES | FEATURE_LOSSES
    primary = "cosine"
    has_labels = False
    eval_with_teacher = True
    PARAMS = {"k": "neighbours for nearest-neighbour agreement (list, default [1, 10])",
              "mask_input": "name of the (B, T) padding-mask input (default attention_mask)"}

    def __init__(self, **params: Any):
        _check_params(self.name, params, self.PARAMS)
        super().__init__(**params)
        self.ks = [int(k) for k in params.get("k", [1, 10])]

    def views(self, s_pred, t_pred, targets, inputs, t_topk=None) -> list[View]:
        if s_pred.ndim != 2:
            raise ConfigError(f"task 'embedding' expects (B, D) vectors from the model, got shape "
                              f"{tuple(s_pred.shape)}; pool the token states first (e.g. mean over the mask)")
        if t_pred is not None and t_pred.shape != s_pred.shape:
            raise ConfigError(f"task 'embedding': student vectors {tuple(s_pred.shape[1:])} and teacher vectors "
                              f"{tuple(t_pred.shape[1:])} differ in size; add a projection to the student")
        return [View(s_pred, t_pred, targets)]

    def new_stats(self) -> dict[str, Any]:
        return {"s": [], "t": []}

    def update_stats(self, st, s_pred, t_pred, targets, inputs) -> None:
        if t_pred is None:
            raise ConfigError("task 'embedding' is evaluated against the teacher's vectors; pass teacher=")
        st["s"].append(F.normalize(s_pred, dim=-1).cpu())
        st["t"].append(F.normalize(t_pred, dim=-1).cpu())

    def finish_stats(self, st) -> dict[str, float]:
        s, t = torch.cat(st["s"]), torch.cat(st["t"])  # (N, D) unit vectors each
        out = {"cosine": float((s * t).sum(-1).mean()), "n": len(s)}
        out.update(nn_agreement(s, t, self.ks))
        return out

    def retention(self, student, teacher) -> float | None:
        return student.get("cosine")  # the teacher's own cosine to itself is 1

    def verify_criteria(self, ref, act, inputs):
        from .verify import Criterion, cosine_mean

        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is None or r.ndim != 2 or r.shape[1] < 2:
            return []
        crits = [Criterion("cosine", out, cosine_mean(r, act[out]), "min_cosine")]
        if len(r) >= 3:
            s = F.normalize(torch.from_numpy(act[out]).double(), dim=-1)  # (N, D)
            t = F.normalize(torch.from_numpy(r).double(), dim=-1)
            crits.append(Criterion("nn_agreement@1", out, nn_agreement(s, t, [1])["nn_agreement@1"],
                                   "min_nn_agreement"))
        return crits

    def verify_notes(self, ref):
        out = self.primary_output(ref)
        r = ref.get(out) if out else None
        if r is not None and r.ndim == 2 and len(r) < 3:
            return ["nearest-neighbour agreement not used: fewer than 3 samples"]
        if r is not None and (r.ndim != 2 or r.shape[1] < 2):
            return [f"cosine not used: output {out!r} is not (B, D) vectors"]
        return []


def nn_agreement(s: Tensor, t: Tensor, ks: list[int], chunk: int = 2048) -> dict[str, float]:
    """Nearest-neighbour agreement@k between two embeddings of the same N items (rows unit-normalised).

    For item i, N_k^s(i) and N_k^t(i) are its k nearest other items by cosine; agreement@k = mean_i |N^s ∩ N^t| / k.
    """
    n = len(s)
    kmax = min(max(ks), n - 1)
    if kmax < 1:
        return {f"nn_agreement@{k}": float("nan") for k in ks}
    hits = {k: 0.0 for k in ks}
    for lo in range(0, n, chunk):
        rows = torch.arange(lo, min(lo + chunk, n))
        ss = s[rows] @ s.T  # (c, N)
        tt = t[rows] @ t.T  # (c, N)
        ss[torch.arange(len(rows)), rows] = -math.inf  # exclude the query itself
        tt[torch.arange(len(rows)), rows] = -math.inf
        s_nn = ss.topk(kmax, dim=1).indices  # (c, kmax)
        t_nn = tt.topk(kmax, dim=1).indices
        for k in ks:
            kk = min(k, kmax)
            a = s_nn[:, :kk].unsqueeze(2) == t_nn[:, :kk].unsqueeze(1)  # (c, kk, kk)
            hits[k] += float(a.any(2).sum()) / kk
    return {f"nn_agreement@{k}": hits[k] / n for k in ks}


# ---------------------------------------------------------------------------------------------- multi_output
@TASKS.register("multi_output")
class MultiOutput(Task):
    """A model returning a dict of heads; each head has its own task and weight:

        [task]
        name = "multi_output"
        heads = { supersense = { task = "classification", weight = 1.0 }, pos = { task = "classification" } }

    Targets are a dict with the same keys. Logit losses are applied to every head (weighted by the head's weight);
    feature losses once. The primary metric is the weight-averaged primary metric of the heads.
    """

    name = "multi_output"
    primary = "score"
    PARAMS = {"heads": "table of head name -> {task = ..., weight = ...}",
              "mask_input": "name of the (B, T) padding-mask input (default attention_mask)"}

    def __init__(self, **params: Any):
        _check_params(self.name, params, self.PARAMS)
        super().__init__(**params)
        heads = params.get("heads")
        if not isinstance(heads, dict) or not heads:
            raise ConfigError("task.heads: expected a table of head name -> {task = ..., weight = ...}, got "
                              f"{heads!r}")
        self.heads: dict[str, tuple[Task, float]] = {}
        for h, cfg in heads.items():
            if not isinstance(cfg, dict) or "task" not in cfg:
                raise ConfigError(f"task.heads.{h}: expected {{task = ..., weight = ...}}, got {cfg!r}")
            sub = {k: v for k, v in cfg.items() if k not in ("task", "weight")}
            if cfg["task"] == "multi_output":
                raise ConfigError(f"task.heads.{h}.task: heads cannot nest multi_output")
            weight = cfg.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(f"task.heads.{h}.weight: expected a number >= 0, got {weight!r}")
            self.heads[h] = (build_task(cfg["task"], sub, where=f"task.heads.{h}"), float(weight))
        self.valid_losses = frozenset.intersection(*(t.valid_losses for t, _ in self.heads.values()))

    @property
    def has_labels(self) -> bool:  # type: ignore[override]
        return all(t.has_labels for t, _ in self.heads.values())

    @property
    def eval_with_teacher(self) -> bool:  # type: ignore[override]
        return any(t.eval_with_teacher for t, _ in self.heads.values())

    def _dict(self, x: Any, what: str) -> dict:
        if not isinstance(x, dict) or set(x) != set(self.heads):
            got = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ConfigError(f"task 'multi_output': the {what} must be a dict with the heads {sorted(self.heads)}, "
                              f"got {got}")
        return x

    def views(self, s_pred, t_pred, targets, inputs, t_topk=None) -> list[View]:
        s = self._dict(s_pred, "model output")
        t = None if t_pred is None else self._dict(t_pred, "teacher output")
        y = self._dict(targets, "targets") if targets is not None else {h: None for h in self.heads}
        out = []
        for h, (task, w) in self.heads.items():
            for v in task.views(s[h], None if t is None else t[h], y[h], inputs):
                v.weight *= w
                out.append(v)
        return out

    def new_stats(self) -> dict[str, Any]:
        return {h: task.new_stats() for h, (task, _) in self.heads.items()}

    def update_stats(self, st, s_pred, t_pred, targets, inputs) -> None:
        for h, (task, _) in self.heads.items():
            task.update_stats(st[h], s_pred[h], None if t_pred is None else t_pred[h], targets[h], inputs)

    def finish_stats(self, st) -> dict[str, float]:
        out: dict[str, float] = {}
        score, wsum = 0.0, 0.0
        for h, (task, w) in self.heads.items():
            m = task.finish_stats(st[h])
            out.update({f"{h}.{k}": v for k, v in m.items()})
            score += w * m[task.primary]
            wsum += w
        out["score"] = score / wsum if wsum else float("nan")
        return out

    def primary_output(self, outputs: dict) -> str | None:
        return next((h for h in self.heads if h in outputs), super().primary_output(outputs))

    def verify_criteria(self, ref, act, inputs):
        crits = []
        for h, (task, _) in self.heads.items():
            if h in ref:
                for c in task.verify_criteria({"output": ref[h]}, {"output": act[h]}, inputs):
                    c.output = h
                    crits.append(c)
        return crits

    def verify_notes(self, ref):
        return [f"head {h!r}: {n}" for h, (task, _) in self.heads.items() if h in ref
                for n in task.verify_notes({"output": ref[h]})]

    def retention(self, student, teacher) -> float | None:
        rs = []
        for h, (task, w) in self.heads.items():
            r = task.retention({k[len(h) + 1:]: v for k, v in student.items() if k.startswith(h + ".")},
                               {k[len(h) + 1:]: v for k, v in teacher.items() if k.startswith(h + ".")})
            if r is not None:
                rs.append(r)
        return min(rs) if rs else None


def default_task(outputs: dict) -> Task | None:
    """The task to verify an artifact by when none is given: classification for one (N, C) output (the models
    ondevice exported before tasks existed), else None (every output by SQNR / allclose only)."""
    if len(outputs) == 1 and next(iter(outputs.values())).ndim == 2:
        return Classification()
    return None


def build_task(name: str, params: dict | None = None, where: str = "task") -> Task:
    """Build a registered task; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ConfigError(f"{where}.name: {TASKS.unknown_message(name)}")
    try:
        return TASKS.get(name).from_config(dict(params or {}))
    except ConfigError as e:
        raise ConfigError(str(e).replace("task.", f"{where}.", 1) if where != "task" else str(e)) from None
