"""The model as every exporter sees it: the input spec's tensors as named positional arguments, in spec order, and
the outputs as a tuple in the spec's output order (a single output as the tensor itself).

A model may take one tensor, a tuple or a dict (``model(**{"input_ids": ..., "attention_mask": ...})``) and return a
tensor, a tuple or a dict of heads; exporters want a flat signature. :func:`flat_model` builds a module whose
``forward`` has one parameter per spec input, named after it, so the exported artifact's inputs carry the spec's
names where the format keeps argument names (torch.export placeholders, Core ML inputs, TFLite signatures).
"""
from __future__ import annotations

import keyword
import re

import torch
from torch import nn

from .spec import InputSpec, output_items
from .tree import call_model, tree_from_leaves


class _Flat(nn.Module):
    def __init__(self, model: nn.Module, spec: InputSpec):
        super().__init__()
        self.model = model
        self._structure = spec.structure
        self._outputs = spec.output_names

    def _call(self, *args: torch.Tensor):
        out = call_model(self.model, tree_from_leaves(self._structure, list(args)))
        items = dict(output_items(out))
        ys = tuple(items[n] for n in self._outputs) if self._outputs else tuple(items.values())
        return ys[0] if len(ys) == 1 else ys


def identifier(name: str, taken: set[str]) -> str:
    """A Python identifier for an input name ("enc.input_ids" -> "enc_input_ids"), unique among `taken`."""
    ident = re.sub(r"\W", "_", name) or "input"
    if ident[0].isdigit() or keyword.iskeyword(ident) or ident in ("self",):
        ident = f"in_{ident}"
    base, i = ident, 2
    while ident in taken:
        ident, i = f"{base}_{i}", i + 1
    taken.add(ident)
    return ident


def flat_model(model: nn.Module, spec: InputSpec) -> nn.Module:
    """`model` behind a forward(<one parameter per spec input>) -> output | tuple of outputs (spec order)."""
    taken: set[str] = set()
    params = ", ".join(identifier(n, taken) for n in spec.names)
    ns: dict = {}
    exec(f"def forward(self, {params}):\n    return self._call({params})\n", ns)  # noqa: S102 - names sanitised
    cls = type(f"Flat{type(model).__name__}", (_Flat,), {"forward": ns["forward"]})
    return cls(model, spec).eval()
