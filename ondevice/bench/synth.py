"""Synthetic inputs for `ondevice bench` without data: one array per input of the artifact's own signature.

The signature comes from the first artifact: its record's input spec (names, dtypes, dynamic axes), else the file
itself, loaded in its runtime (so a .tflite's own layout, e.g. NHWC, is what gets synthesised). Values, per input:

  float inputs              standard normal (seeded)
  state inputs (--state)    zeros: the first call's state; later calls get the output fed back
  integer/bool masks        ones (every position real): names containing "mask"
  token type ids            zeros: names containing "token_type" or "segment"
  other integer inputs      token ids uniform in [0, vocab): --vocab (or the record's preprocessing vocab_size);
                            never negative, never out of the vocabulary
Dynamic dimensions other than the batch need a size: --input-shape NAME=1,32 (batch first). Everything synthesised
is labelled as such in the report (`data.synthetic`, `data.origin`), and accuracy is not computed on it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ondevice.errors import InputMismatchError

POOL = 256  # distinct synthetic samples cycled through during timing


def _from_record(item) -> list[tuple[str, str, tuple]] | None:
    spec = (item.sidecar or {}).get("input_spec")
    if not spec:
        return None
    return [(t["name"], t["dtype"], tuple(t["shape"])) for t in spec["inputs"]]


def _from_file(item) -> list[tuple[str, str, tuple]]:
    from ondevice.target import get_target

    tgt = get_target(item.target)
    sig = tgt.signature(tgt.load(item.path))
    return [(t.name, "float32" if t.quantization else t.dtype, t.shape) for t in sig.inputs]


def signature_inputs(items: Sequence[Any]) -> tuple[list[tuple[str, str, tuple]], str] | None:
    """[(name, dtype, shape)] of the first artifact's inputs and where they were read, None without artifacts."""
    art = next((it for it in items if it.kind == "artifact"), None)
    if art is None:
        return None
    rec = _from_record(art)
    if rec is not None:
        return rec, f"the input spec in {art.label}'s record"
    return _from_file(art), f"the file {art.path} itself"


def _shape(name: str, shape: tuple, given: dict, legacy: tuple | None, single: bool, where: str) -> tuple:
    """The per-sample shape (batch dim dropped) of one input: the signature's fixed sizes, the dynamic ones from
    --input-shape; a given shape that contradicts the file's fixed sizes is refused, naming the file's shape."""
    want = given.get(name) or (legacy if single else None)
    dims = list(shape[1:])
    if want is not None:
        want = tuple(want)
        if len(want) != len(shape) or any(isinstance(d, int) and d > 0 and d != w for d, w in zip(dims, want[1:])):
            shown = [d if isinstance(d, int) and d > 0 else "?" for d in shape]
            raise InputMismatchError(
                f"input {name!r} takes shape {shown} (read from {where}, in the artifact's own layout, e.g. NHWC for "
                f"a channels-last file); --input-shape {','.join(map(str, want))} does not match it. Leave "
                f"--input-shape out for fixed sizes, or give only the dynamic ones (? above)")
        return tuple(int(w) for w in want[1:])
    missing = [i + 1 for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
    if missing:
        raise InputMismatchError(
            f"input {name!r} has dynamic dimension(s) {missing} (shape {list(shape)} from {where}); give their sizes "
            f"with --input-shape {name}=1,{','.join('32' if i in missing else str(d) for i, d in enumerate(dims, 1))}"
            f" (batch first), or pass real samples with --inputs file.npz")
    return tuple(int(d) for d in dims)


def _values(name: str, dtype: str, shape: tuple, rng, vocab: int | None, state: bool) -> tuple[np.ndarray, str]:
    lname = name.lower()
    full = (POOL, *shape)
    if dtype.startswith("float") or dtype == "bfloat16":
        if state:
            return np.zeros(full, np.float32), "zeros (initial state; later calls get the fed-back output)"
        return rng.standard_normal(full).astype(dtype if dtype != "bfloat16" else "float32"), "standard normal"
    if dtype == "bool" or "mask" in lname:
        return np.ones(full, dtype), "ones (every position real)"
    if state or "token_type" in lname or "segment" in lname:
        return np.zeros(full, dtype), "zeros"
    if vocab is None:
        raise InputMismatchError(
            f"input {name!r} is {dtype} (token ids?): pass --vocab N (the tokenizer's vocabulary size) so synthetic "
            f"ids stay within the embedding table, or pass real samples with --inputs file.npz")
    hi = min(int(vocab), int(np.iinfo(np.dtype(dtype)).max) + 1)
    return rng.integers(0, hi, size=full).astype(dtype), f"token ids uniform in [0, {hi})"


def synthesize(items: Sequence[Any], config: Any, *, input_shape: Sequence[int] | None = None,
               input_dtype: str = "float32", seed: int = 0):
    """Data for every input of the first artifact's signature (see the module docstring)."""
    from .config import Data

    given = dict(getattr(config, "input_shapes", {}) or {})
    state = dict(getattr(config, "state", {}) or {})
    found = signature_inputs(items)
    if found is None:  # eager models only: one float input of --input-shape
        if not input_shape:
            raise ValueError("no data given and the input shape is unknown: pass data (--data mnist, --inputs a "
                             ".npz of named inputs) or an input shape (--input-shape 1,1,28,28)")
        found = ([("x", input_dtype, tuple(input_shape))], "--input-shape")
    inputs, where = found
    vocab = getattr(config, "vocab", None) or _record_vocab(items)
    rng = np.random.default_rng(seed)
    named, origin = {}, {}
    for name, dtype, shape in inputs:
        per = _shape(name, shape, given, tuple(input_shape) if input_shape else None, len(inputs) == 1, where)
        named[name], how = _values(name, dtype, per, rng, vocab, name in state)
        origin[name] = f"synthetic: {how}, shape {list(per)} per sample (seed {seed})"
    unknown = sorted(set(state) - set(named))
    if unknown:
        raise InputMismatchError(f"--state names {unknown}, which are not inputs of the artifact "
                                 f"({', '.join(named)})")
    desc = "; ".join(f"{k}: {v}" for k, v in origin.items())
    return Data(named, None, f"synthetic inputs from {where} ({desc})", synthetic=True, origin=origin,
                structure="tensor" if len(named) == 1 else ["dict", {k: "tensor" for k in named}])


def _record_vocab(items: Sequence[Any]) -> int | None:
    for it in items:
        pre = (((it.sidecar or {}).get("input_spec") or {}).get("preprocessing") or {})
        v = pre.get("vocab_size")
        if isinstance(v, int) and v > 0:
            return v
    return None
