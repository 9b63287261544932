"""Students initialised from their teacher (DistilBERT: "we initialize the student from the teacher by taking one
layer out of two", Sanh et al. 2019): keep a subset of the teacher's layers, optionally narrow the feed-forward
width, keep embeddings and heads. Works on Hugging Face encoder stacks (``encoder.layer``), decoder stacks
(``model.layers``), ondevice's own text models (``layers``) and ``nn.Sequential``-style CNNs (``features``).

    [student]
    model = "from_teacher"
    kwargs = { layers = "every_other" }          # or [0, 2, 4], or a count such as 2 (spread evenly), ffn = 768

The returned student records what it kept in ``student.ondevice_layer_map``: ``{"stack": path, "map": [[i, j], ...]}``
(student layer i was initialised from teacher layer j), which feature losses can use as their layer map.
"""
from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from .errors import ConfigError

STACK_NAMES = ("encoder.layer", "model.layers", "transformer.h", "layers", "layer", "blocks", "h", "features")


def find_layer_stack(model: nn.Module, path: str | None = None) -> tuple[str, nn.Module]:
    """(path, module) of the model's stack of layers: a ModuleList/Sequential at a known path (or `path`)."""
    modules = dict(model.named_modules())
    if path is not None:
        if path not in modules or not isinstance(modules[path], (nn.ModuleList, nn.Sequential)):
            lists = [n for n, m in modules.items() if isinstance(m, (nn.ModuleList, nn.Sequential)) and n]
            raise ConfigError(f"student.kwargs.stack: {path!r} is not a ModuleList/Sequential of the teacher; "
                              f"candidates: {', '.join(lists[:20]) or '(none)'}")
        return path, modules[path]
    for name, m in modules.items():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and any(name == s or name.endswith("." + s)
                                                                 for s in STACK_NAMES) and len(m) > 1:
            return name, m
    raise ConfigError(f"cannot find a stack of layers in {type(model).__name__} (looked for "
                      f"{', '.join(STACK_NAMES)}); give student.kwargs.stack = '<module path>'")


def pick_layers(n: int, layers: str | int | Sequence[int]) -> list[int]:
    """Teacher layer indices to keep: "every_other" (0, 2, 4, ...), a count k (spread evenly, last kept) or a list."""
    if layers == "every_other":
        return list(range(0, n, 2))
    if isinstance(layers, bool):
        raise ConfigError(f"student.kwargs.layers: expected 'every_other', a count or a list, got {layers!r}")
    if isinstance(layers, int):
        if not 1 <= layers <= n:
            raise ConfigError(f"student.kwargs.layers: expected 1..{n} layers, got {layers}")
        return sorted({round(i * (n - 1) / max(1, layers - 1)) for i in range(layers)}) if layers > 1 else [n - 1]
    keep = [int(i) for i in layers]
    bad = [i for i in keep if not 0 <= i < n]
    if bad or len(set(keep)) != len(keep) or not keep:
        raise ConfigError(f"student.kwargs.layers: indices must be distinct and in 0..{n - 1}, got {list(layers)}")
    return keep


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, value)


def _update_config(model: nn.Module, blocks: nn.Module) -> None:
    n_layers = len(blocks)
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = n_layers
            if getattr(cfg, "layer_types", None):
                cfg.layer_types = cfg.layer_types[:n_layers]
    for i, block in enumerate(blocks):
        for sub in block.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = i  # decoder attention indexes its KV cache by layer


def _ffn_pairs(block: nn.Module) -> list[tuple[list[nn.Linear], nn.Linear]]:
    """(expanding linears, contracting linear) of a block's feed-forward network, by the common naming schemes."""
    mods = dict(block.named_modules())
    schemes = [(["intermediate.dense"], "output.dense"),  # BERT
               (["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj"),  # Llama
               (["ffn.0"], "ffn.2"),  # ondevice text models
               (["mlp.c_fc"], "mlp.c_proj")]  # GPT-2 (Conv1D, transposed: not supported below)
    for ups, down in schemes:
        if all(u in mods for u in ups) and down in mods and all(isinstance(mods[u], nn.Linear) for u in ups):
            return [([mods[u] for u in ups], mods[down])]
    return []


def _narrow(up: list[nn.Linear], down: nn.Linear, width: int) -> None:
    """Keep the `width` hidden units with the largest |w_up| * |w_down| product (importance), in place."""
    score = sum(u.weight.norm(dim=1) for u in up) * down.weight.norm(dim=0)  # (I,)
    keep = score.topk(width).indices.sort().values  # (width,)
    for u in up:
        u.weight = nn.Parameter(u.weight.data[keep].clone())
        if u.bias is not None:
            u.bias = nn.Parameter(u.bias.data[keep].clone())
        u.out_features = width
    down.weight = nn.Parameter(down.weight.data[:, keep].clone())
    down.in_features = width


def student_from_teacher(teacher: nn.Module, layers: str | int | Sequence[int] = "every_other", ffn: int | None = None,
                         stack: str | None = None) -> nn.Module:
    """A copy of `teacher` keeping only `layers` of its layer stack (and `ffn` feed-forward units per layer)."""
    student = copy.deepcopy(teacher)
    path, blocks = find_layer_stack(student, stack)
    keep = pick_layers(len(blocks), layers)
    kept = type(blocks)(*[blocks[i] for i in keep]) if isinstance(blocks, nn.Sequential) \
        else nn.ModuleList([blocks[i] for i in keep])
    _set(student, path, kept)
    _update_config(student, kept)
    if ffn is not None:
        for block in kept:
            pairs = _ffn_pairs(block)
            if not pairs:
                raise ConfigError(f"student.kwargs.ffn: cannot find the feed-forward layers of {type(block).__name__}"
                                  " (BERT intermediate/output, Llama gate/up/down_proj, or ffn.0/ffn.2)")
            for up, down in pairs:
                if not 1 <= int(ffn) <= down.in_features:
                    raise ConfigError(f"student.kwargs.ffn: expected 1..{down.in_features}, got {ffn}")
                _narrow(up, down, int(ffn))
        for m in student.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and hasattr(cfg, "intermediate_size"):
                cfg.intermediate_size = int(ffn)
    for p in student.parameters():
        p.requires_grad_(True)  # a frozen teacher (trained head only) still gives a fully trainable student
    for m in student.modules():  # ... that runs its own layers (a frozen adapter memoizes its pooled vectors)
        if callable(getattr(m, "thaw", None)):
            m.thaw()
    student.ondevice_layer_map = {"stack": path, "map": [[i, j] for i, j in enumerate(keep)]}
    return student


def layer_map(student: nn.Module) -> dict | None:
    return getattr(student, "ondevice_layer_map", None)


__all__ = ["student_from_teacher", "find_layer_stack", "pick_layers", "layer_map"]
