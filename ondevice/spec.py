"""The input spec: what a model takes and returns, declared once and read by every stage.

A :class:`TensorSpec` names one tensor: its dtype, its shape with named dynamic axes (``"batch"``, ``"seq"``) or
fixed sizes, and its role (``input`` or ``state``; a state input names the output that feeds it back). An
:class:`InputSpec` is the ordered inputs and outputs of a model, how the inputs are passed (one tensor, positional
tuple, keyword dict), plus the preprocessing a deployer must apply before the first layer (layout, scaling, mean/std,
tokenizer and its files, max length). The trainer, the teacher cache, the exporters and the bench all read it.

It is declared by a model adapter (Hugging Face models know their inputs) or inferred from the first batch of data
(:func:`infer_spec`), and written into ``results.json``, every artifact's sidecar and, where the format has room,
the artifact's own metadata.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from .errors import ConfigError
from .tree import Tree, tree_from_leaves, tree_items, tree_structure

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
          "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


def dtype_name(dtype: Any) -> str:
    """Canonical name of a torch or NumPy dtype ("float32", "int64", ...)."""
    s = str(dtype).replace("torch.", "")
    aliases = {"float": "float32", "long": "int64", "int": "int32", "half": "float16", "bool_": "bool"}
    s = aliases.get(s, s)
    if s not in DTYPES:
        raise ConfigError(f"unsupported dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    return s


def torch_dtype(name: str) -> torch.dtype:
    return _TORCH[dtype_name(name)]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. ``shape`` holds ints (fixed) or axis names (dynamic), batch axis first."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    role: str = "input"  # "input" | "state"
    feeds_from: str | None = None  # for a state input: the output whose value is fed back on the next call
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(self.dtype))
        object.__setattr__(self, "shape", tuple(self.shape))
        if self.role not in ("input", "state", "output"):
            raise ConfigError(f"tensor {self.name!r}: role must be input, state or output, got {self.role!r}")
        if self.role == "state" and not self.feeds_from:
            raise ConfigError(f"state tensor {self.name!r} must name the output that feeds it back (feeds_from)")

    @property
    def is_integer(self) -> bool:
        return self.dtype in ("int64", "int32", "int8", "uint8", "bool")

    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def concrete(self, **sizes: int) -> tuple[int, ...]:
        """The shape with each named axis replaced by `sizes[name]`; an unnamed dynamic axis raises."""
        out = []
        for d in self.shape:
            if isinstance(d, str):
                if d not in sizes:
                    raise ConfigError(f"tensor {self.name!r} has dynamic axis {d!r}; give its size ({d}=N)")
                out.append(int(sizes[d]))
            else:
                out.append(int(d))
        return tuple(out)

    def check(self, value: Any, where: str = "input") -> None:
        """Raise a ConfigError naming this input when `value` (tensor or array) has the wrong dtype or rank/size."""
        got_dtype = dtype_name(value.dtype)
        if got_dtype != self.dtype and not (self.is_integer and got_dtype in ("int64", "int32")
                                            and self.dtype in ("int64", "int32")):
            raise ConfigError(f"{where} {self.name!r}: expected dtype {self.dtype}, got {got_dtype}; "
                              f"convert it (e.g. x.astype('{self.dtype}')) before passing it")
        shape = tuple(value.shape)
        if len(shape) != len(self.shape):
            raise ConfigError(f"{where} {self.name!r}: expected {len(self.shape)} dimensions {self.shape}, got shape "
                              f"{shape}")
        for i, (want, got) in enumerate(zip(self.shape, shape)):
            if isinstance(want, int) and want != got:
                raise ConfigError(f"{where} {self.name!r}: axis {i} must be {want} (fixed when exported), got {got}"
                                  + ("; the sequence is longer than the exported length: truncate it or export with "
                                     "a larger max length" if i == 1 and got > want else ""))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class InputSpec:
    """Ordered inputs and outputs of a model, how its inputs are passed, and the deployer's preprocessing."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()
    structure: Any = "tensor"  # tree_structure of the inputs: "tensor" | ["tuple", [...]] | ["dict", {...}]
    preprocessing: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ConfigError(f"input names must be unique, got {names}")
        outs = {t.name for t in self.outputs}
        for t in self.inputs:
            if t.role == "state" and self.outputs and t.feeds_from not in outs:
                raise ConfigError(f"state input {t.name!r} feeds from {t.feeds_from!r}, which is not an output "
                                  f"({', '.join(sorted(outs))})")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise ConfigError(f"no input named {name!r}; the model's inputs are {', '.join(self.names)}")

    @property
    def state_inputs(self) -> list[TensorSpec]:
        return [t for t in self.inputs if t.role == "state"]

    def with_preprocessing(self, **pre: Any) -> "InputSpec":
        return replace(self, preprocessing={**self.preprocessing, **{k: v for k, v in pre.items() if v is not None}})

    def fixed(self, **sizes: int) -> "InputSpec":
        """A copy with the named dynamic axes fixed (e.g. ``seq=32`` for a runtime without dynamic sequence length)."""
        def fix(t: TensorSpec) -> TensorSpec:
            return replace(t, shape=tuple(sizes.get(d, d) if isinstance(d, str) else d for d in t.shape))

        return replace(self, inputs=tuple(fix(t) for t in self.inputs), outputs=tuple(fix(t) for t in self.outputs))

    # -- trees <-> named arrays ----------------------------------------------------------------------------------
    def flatten(self, inputs: Tree) -> dict[str, Any]:
        """A batch tree -> {name: tensor} in spec order."""
        items = dict(tree_items(inputs))
        missing = [n for n in self.names if n not in items]
        extra = [n for n in items if n not in self.names]
        if missing or extra:
            raise ConfigError(f"inputs do not match the model's input spec ({', '.join(self.names)}): "
                              + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                      f"not in the spec {extra}" if extra else "") if p))
        return {n: items[n] for n in self.names}

    def unflatten(self, named: dict[str, Any]) -> Tree:
        """{name: tensor} -> the tree form the model is called with; missing or extra names raise with the fix."""
        missing = [n for n in self.names if n not in named]
        extra = [n for n in named if n not in self.names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            if extra:
                parts.append(f"unexpected input(s) {', '.join(map(repr, extra))}")
            raise ConfigError("; ".join(parts) + f". The model takes exactly: "
                              + ", ".join(f"{t.name} ({t.dtype} {list(t.shape)})" for t in self.inputs))
        return tree_from_leaves(self.structure, [named[n] for n in self.names])  # spec order == leaf order

    def check(self, named: dict[str, Any], where: str = "input") -> None:
        self.unflatten(named)  # names
        for t in self.inputs:
            t.check(named[t.name], where)

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "structure": self.structure, "preprocessing": dict(self.preprocessing)}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
                   outputs=tuple(TensorSpec.from_dict(t) for t in d.get("outputs", [])),
                   structure=d.get("structure", "tensor"), preprocessing=dict(d.get("preprocessing", {})))

    def describe(self) -> str:
        ins = ", ".join(f"{t.name}: {t.dtype}[{', '.join(map(str, t.shape))}]" + (f" (state <- {t.feeds_from})"
                                                                                  if t.role == "state" else "")
                        for t in self.inputs)
        outs = ", ".join(f"{t.name}: {t.dtype}[{', '.join(map(str, t.shape))}]" for t in self.outputs)
        return f"inputs {ins}" + (f" -> outputs {outs}" if outs else "")


def _axis_names(t: torch.Tensor, name: str, seq_axes: bool) -> tuple[int | str, ...]:
    """batch first; the second axis of an integer (B, T) tensor (token ids, masks) is the dynamic "seq" axis."""
    shape: list[int | str] = ["batch", *[int(d) for d in t.shape[1:]]]
    if seq_axes and t.ndim >= 2 and not t.is_floating_point():
        shape[1] = "seq"
    return tuple(shape)


def infer_spec(inputs: Tree, outputs: Any | None = None, *, seq_axes: bool = True,
               states: dict[str, str] | None = None, preprocessing: dict | None = None) -> InputSpec:
    """An InputSpec from one batch of inputs (and optionally the model's outputs on it).

    Integer 2-D+ inputs get a dynamic ``seq`` axis (token ids and masks); float inputs keep their sizes. `states`
    maps a state input's name to the output that feeds it back.
    """
    states = states or {}
    ins = []
    for name, t in tree_items(inputs):
        role = "state" if name in states else "input"
        ins.append(TensorSpec(name, dtype_name(t.dtype), _axis_names(t, name, seq_axes), role=role,
                              feeds_from=states.get(name)))
    outs = []
    if outputs is not None:
        for name, t in output_items(outputs):
            outs.append(TensorSpec(name, dtype_name(t.dtype) if t.dtype != torch.bfloat16 else "float32",
                                   _out_axes(t, ins), role="output"))
    return InputSpec(tuple(ins), tuple(outs), tree_structure(inputs), dict(preprocessing or {}))


def _out_axes(t: torch.Tensor, ins: list[TensorSpec]) -> tuple[int | str, ...]:
    seq = any("seq" in i.shape for i in ins)
    shape: list[int | str] = ["batch", *[int(d) for d in t.shape[1:]]]
    if seq and t.ndim >= 3:
        shape[1] = "seq"  # (B, T, V) language-model logits, (B, T, D) hidden states
    return tuple(shape)


def output_items(out: Any) -> list[tuple[str, torch.Tensor]]:
    """Name the tensors a model returned: a tensor is "output"; tuples "output_<i>"; dicts and HF ModelOutputs by key."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, dict) or hasattr(out, "items"):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [(f"output_{i}", v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise TypeError(f"model returned {type(out).__name__}; expected a tensor, a tuple of tensors or a dict of tensors")


def sizes_of(spec: InputSpec, named: dict[str, Any]) -> dict[str, int]:
    """The sizes of the named axes in one batch: {"batch": B, "seq": T}."""
    sizes: dict[str, int] = {}
    for t in spec.inputs:
        if t.name in named:
            for i, d in t.dynamic_axes().items():
                sizes.setdefault(d, int(named[t.name].shape[i]))
    return sizes
