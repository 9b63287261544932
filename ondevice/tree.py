"""Structured samples: a *pytree* of tensors (a tensor, a tuple/list of pytrees, or a dict of pytrees).

A model input is one such tree: an image tensor ``x``, a tuple ``(ids, mask)``, or a dict ``{"input_ids": ...,
"attention_mask": ...}``. These helpers map, index, move, stack and pad trees without caring which form they take,
and :func:`call_model` calls a model the way the tree's form says (``model(x)``, ``model(*t)``, ``model(**d)``).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

Tree = Any  # torch.Tensor | tuple[Tree, ...] | list[Tree] | dict[str, Tree]


def tree_map(fn: Callable[[torch.Tensor], Any], tree: Tree) -> Tree:
    """Apply `fn` to every tensor leaf; containers keep their form (tuple stays tuple, dict keeps key order)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, v) for v in tree)
    raise TypeError(f"expected a tensor, or a tuple/list/dict of tensors, got {type(tree).__name__}")


def tree_leaves(tree: Tree) -> list[torch.Tensor]:
    """The tensor leaves in a fixed order (dict insertion order, then position)."""
    return [t for _, t in tree_items(tree)]


def tree_items(tree: Tree, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each leaf. Names: the dict key, ``input_<i>`` for tuple positions, ``x`` for a bare tensor;
    nested containers join names with a dot (``"enc.input_ids"``)."""
    if isinstance(tree, torch.Tensor):
        yield (prefix or "x"), tree
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from tree_items(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (tuple, list)):
        for i, v in enumerate(tree):
            yield from tree_items(v, f"{prefix}.input_{i}" if prefix else f"input_{i}")
    else:
        raise TypeError(f"expected a tensor, or a tuple/list/dict of tensors, got {type(tree).__name__}")


def tree_index(tree: Tree, idx: torch.Tensor | slice) -> Tree:
    """Rows `idx` of every leaf (all leaves share their leading N)."""
    return tree_map(lambda t: t[idx], tree)


def tree_to(tree: Tree, device: torch.device | str, non_blocking: bool = False) -> Tree:
    return tree_map(lambda t: t.to(device, non_blocking=non_blocking), tree)


def tree_len(tree: Tree) -> int:
    """The shared leading dimension N of every leaf; raises when leaves disagree."""
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in tree_leaves(tree)}
    if len(sizes) != 1 or -1 in sizes:
        shapes = {n: tuple(t.shape) for n, t in tree_items(tree)}
        raise ValueError(f"every input must have the same leading (sample) dimension; got shapes {shapes}")
    return sizes.pop()


def tree_cat(trees: list[Tree]) -> Tree:
    """Concatenate a list of same-form trees along dim 0."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(trees)
    if isinstance(first, dict):
        return {k: tree_cat([t[k] for t in trees]) for k in first}
    return type(first)(tree_cat([t[i] for t in trees]) for i in range(len(first)))


def tree_structure(tree: Tree) -> Any:
    """A JSON-able description of the form (no tensors): "tensor", ["tuple", [...]], ["dict", {key: ...}]."""
    if isinstance(tree, torch.Tensor):
        return "tensor"
    if isinstance(tree, dict):
        return ["dict", {k: tree_structure(v) for k, v in tree.items()}]
    return ["tuple", [tree_structure(v) for v in tree]]


def tree_from_leaves(structure: Any, leaves: list) -> Tree:
    """Inverse of :func:`tree_leaves` for a :func:`tree_structure` description."""
    it = iter(leaves)

    def build(s):
        if s == "tensor":
            return next(it)
        kind, inner = s
        if kind == "dict":
            return {k: build(v) for k, v in inner.items()}
        return tuple(build(v) for v in inner)

    return build(structure)


def call_model(model: torch.nn.Module, inputs: Tree):
    """``model(x)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def stack_samples(samples: list[Tree]) -> Tree:
    """Stack per-sample trees of equal shapes into a batch tree (adds dim 0)."""
    first = samples[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(samples)
    if isinstance(first, dict):
        return {k: stack_samples([s[k] for s in samples]) for k in first}
    return type(first)(stack_samples([s[i] for s in samples]) for i in range(len(first)))


def pad_stack(tensors: list[torch.Tensor], pad_value: float | int = 0) -> torch.Tensor:
    """Stack 1-D+ tensors whose first dim differs, right-padding each to the longest: [(T_i, ...)] -> (B, T_max, ...)."""
    t_max = max(int(t.shape[0]) for t in tensors)
    out = tensors[0].new_full((len(tensors), t_max, *tensors[0].shape[1:]), pad_value)
    for i, t in enumerate(tensors):
        out[i, : t.shape[0]] = t
    return out
