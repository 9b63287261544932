"""A NumPy reference evaluator for Core ML ML Programs (.mlpackage), for machines without a Core ML runtime.

Core ML's runtime (`MLModel.predict`) exists only on Apple platforms. On Linux the saved package can still be
checked: its spec is read back into a MIL `Program` (`coremltools.converters.mil.frontend.milproto.load`) and this
module walks `prog.functions["main"].operations` in order:

- `const`        -> its stored value;
- `constexpr_*`  -> `op.materialized_val_inference()` (dequantized / de-palettized / de-sparsified weights,
                    computed once when the evaluator is built);
- ops in `KERNELS` -> this module's own NumPy kernels (conv, pools, norms, activations, matmul, softmax, reduce_*,
                    attention, elementwise math, integer comparisons and select, casts between int32 / bool /
                    float (token-id and padding-mask inputs), gathers (embedding lookups), quantize/dequantize ...);
- other ops that coremltools can constant-fold (`value_inference`, mostly shape/layout ops such as reshape,
  transpose, slice_by_index, split, concat, gather, pad, tile) -> that `value_inference`, with the runtime values
  bound to the op's inputs for the duration of the call;
- anything else (control flow, lists, states, random ops, resampling, RNNs ...) -> `UnsupportedOpError` naming the
  op type and its name in the program, raised when the evaluator is built, before any sample is run.

Numerics: every op computes in float64 from its inputs and rounds its outputs to the dtype the program declares
for them (fp32 or fp16). An fp16 program therefore carries real fp16 storage error at every op boundary; it does
not model a device's lower-precision accumulation inside an op, so the fp16 error measured here is a lower bound
of what a Neural Engine may show. Every output is checked against the static shape the program declares.

Batches: Core ML exports declare a static batch of 1. Given N samples at once (inputs of the declared shape with N
in place of the leading 1), the evaluator first runs them one at a time *and* as one batch, with every declared
leading 1 read as N; when the two agree (`BATCH_RTOL`), later calls run as one batch (the per-op NumPy work
vectorises: about 8 times faster on the MNIST student, measured), otherwise, or when a batched op fails or changes a shape
(a reshape that folds the batch into another axis, a slice that keeps row 0), it stays one sample at a time and
`batching_why` says which op. The outputs of the first call are always the one-at-a-time ones.

This is a *reference* evaluator for checking numerics, not a runtime: it says nothing about on-device latency.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ondevice.errors import UnsupportedOpError

ISSUE_HINT = ("Check this package on macOS with `MLModel.predict` (the real Core ML runtime), or file an issue "
              "for ondevice's Core ML reference evaluator naming this op type so a NumPy kernel can be added")

# ops that have a coremltools value_inference that must NOT be used with runtime values
_NO_FALLBACK = {
    "cond", "while_loop", "list_length", "make_list", "list_read", "list_write", "list_gather", "list_scatter",
    "_const_symbolic", "read_state", "coreml_update_state",
    # reduce_* value inference crashes on numpy 2 (np.bool_ keep_dims); implemented natively below
    "reduce_argmax", "reduce_argmin", "reduce_l1_norm", "reduce_l2_norm", "reduce_log_sum", "reduce_log_sum_exp",
    "reduce_max", "reduce_mean", "reduce_min", "reduce_prod", "reduce_sum", "reduce_sum_square",
}


class _OpFailure(Exception):
    """A kernel cannot evaluate this op with these attributes; the message says which attribute."""


# ------------------------------------------------------------------------------------------------------------------
# bound inputs of one op
# ------------------------------------------------------------------------------------------------------------------
class Args:
    """The values of one op's inputs: runtime values from the environment, constants from the program."""

    __slots__ = ("op", "env", "inputs", "out_shape", "_defaults")

    def __init__(self, op, env: dict[str, Any], inputs: dict | None = None, out_shape: tuple | None = None):
        self.op = op
        self.env = env
        self.inputs = op.inputs if inputs is None else inputs  # {name: Var | tuple[Var]}
        self.out_shape = out_shape  # static declared shape of output 0, or None
        self._defaults = None

    def _var_value(self, var):
        if var.name in self.env:
            return self.env[var.name]
        v = var.val
        if v is None:
            raise _OpFailure(f"input {var.name!r} has no value (produced by an op that was not evaluated)")
        return v

    def __call__(self, name: str, default: Any = None) -> Any:
        """Raw value of input `name` (np.ndarray / scalar / str / tuple of those), its MIL default, or `default`."""
        var = self.inputs.get(name)
        if var is None:
            if self._defaults is None:
                try:
                    self._defaults = dict(self.op.default_inputs().items())
                except Exception:
                    self._defaults = {}
            v = self._defaults.get(name)
            return default if v is None else v
        if isinstance(var, (list, tuple)):
            return tuple(self._var_value(v) for v in var)
        return self._var_value(var)

    def f(self, name: str, default: Any = None) -> np.ndarray | None:
        """Input `name` as a float64 array (None when absent and no default)."""
        v = self(name, default)
        return None if v is None else np.asarray(v, dtype=np.float64)

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        v = self(name, default)
        return None if v is None else [int(i) for i in np.atleast_1d(np.asarray(v))]

    def scalar(self, name: str, default: Any = None) -> Any:
        v = self(name, default)
        if isinstance(v, np.ndarray):
            return v.item() if v.size == 1 else v
        if isinstance(v, np.generic):
            return v.item()
        return v

    @property
    def x(self) -> np.ndarray:
        return self.f("x")


Kernel = Callable[[Args], Any]
KERNELS: dict[str, Kernel] = {}


def kernel(*names: str):
    def deco(fn: Kernel) -> Kernel:
        for n in names:
            KERNELS[n] = fn
        return fn

    return deco


def _norm_axes(axes, rank: int) -> tuple[int, ...]:
    return tuple(sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.atleast_1d(axes)))


def _channel_shape(v: np.ndarray, rank: int) -> np.ndarray:
    """Per-channel (axis 1) parameter of shape (C,) -> broadcastable (1, C, 1, ...)."""
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0:
        return v
    return v.reshape((1, -1) + (1,) * (rank - 2))


# ------------------------------------------------------------------------------------------------------------------
# elementwise
# ------------------------------------------------------------------------------------------------------------------
def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x) if x.size else x


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # numerically stable for large |x|
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "exp": np.exp,
    "exp2": np.exp2,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "erf": _erf,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "atanh": np.arctanh,
    "square": np.square,
    "sign": np.sign,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,  # MIL round: half to even, like np.round
    "silu": lambda x: x * _sigmoid(x),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "softsign": lambda x: x / (1.0 + np.abs(x)),
    "identity": lambda x: x,
}


def _unary_kernel(fn):
    return lambda a: fn(a.x)


for _name, _fn in _UNARY.items():
    KERNELS[_name] = _unary_kernel(_fn)


@kernel("log")
def _log(a: Args):
    return np.log(a.x + float(a.scalar("epsilon", 1e-45)))


@kernel("rsqrt")
def _rsqrt(a: Args):
    return 1.0 / np.sqrt(a.x + float(a.scalar("epsilon", 1e-12)))


@kernel("inverse")
def _inverse(a: Args):
    return 1.0 / (a.x + float(a.scalar("epsilon", 1e-4)))


@kernel("gelu")
def _gelu(a: Args):
    x, mode = a.x, str(a.scalar("mode", "EXACT"))
    if mode == "EXACT":
        return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x * _sigmoid(1.702 * x)
    raise _OpFailure(f"gelu mode {mode!r} is not one of EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION")


@kernel("clip")
def _clip(a: Args):
    return np.minimum(np.maximum(a.x, float(a.scalar("alpha"))), float(a.scalar("beta")))


@kernel("sigmoid_hard")
def _sigmoid_hard(a: Args):
    return np.clip(float(a.scalar("alpha", 0.2)) * a.x + float(a.scalar("beta", 0.5)), 0.0, 1.0)


@kernel("thresholded_relu")
def _thresholded_relu(a: Args):
    x = a.x
    return np.where(x < float(a.scalar("alpha", 1.0)), 0.0, x)  # MIL: x if x >= alpha else 0


@kernel("leaky_relu")
def _leaky_relu(a: Args):
    x = a.x
    return np.where(x < 0, float(a.scalar("alpha", 0.01)) * x, x)


@kernel("elu")
def _elu(a: Args):
    x = a.x
    return np.where(x > 0, x, float(a.scalar("alpha", 1.0)) * np.expm1(np.minimum(x, 0.0)))


@kernel("linear_activation")
def _linear_activation(a: Args):
    return float(a.scalar("alpha")) * a.x + float(a.scalar("beta", 0.0))


@kernel("scaled_tanh")
def _scaled_tanh(a: Args):
    return float(a.scalar("alpha", 1.0)) * np.tanh(float(a.scalar("beta", 1.0)) * a.x)


@kernel("clamped_relu")
def _clamped_relu(a: Args):
    x, alpha, beta = a.x, float(a.scalar("alpha", 0.0)), float(a.scalar("beta", 6.0))
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


@kernel("prelu")
def _prelu(a: Args):
    x = a.x  # (N, C, *D)
    alpha = _channel_shape(a.f("alpha"), x.ndim)
    return np.where(x > 0, x, alpha * x)


@kernel("softplus_parametric")
def _softplus_parametric(a: Args):
    x = a.x  # (N, C, *D); alpha, beta (C,)
    alpha, beta = _channel_shape(a.f("alpha"), x.ndim), _channel_shape(a.f("beta"), x.ndim)
    return alpha * np.logaddexp(0.0, beta * x)


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.divide,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}


def _binary_operand(v) -> np.ndarray:
    arr = np.asarray(v)
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr  # keep int/bool operands exact


def _binary_kernel(fn):
    return lambda a: fn(_binary_operand(a("x")), _binary_operand(a("y")))


for _name, _fn in _BINARY.items():
    KERNELS[_name] = _binary_kernel(_fn)


@kernel("logical_not")
def _logical_not(a: Args):
    return np.logical_not(np.asarray(a("x")))


@kernel("select")
def _select(a: Args):
    return np.where(np.asarray(a("cond")).astype(bool), _binary_operand(a("a")), _binary_operand(a("b")))


@kernel("cast")
def _cast(a: Args):
    return np.asarray(a("x"))  # the declared output dtype is applied by the evaluator


# ------------------------------------------------------------------------------------------------------------------
# linear algebra, attention, softmax
# ------------------------------------------------------------------------------------------------------------------
@kernel("linear")
def _linear(a: Args):
    x, w = a.x, a.f("weight")  # x (..., D_in); w (D_out, D_in)
    y = x @ w.T  # (..., D_out)
    b = a.f("bias")
    return y if b is None else y + b


@kernel("matmul")
def _matmul(a: Args):
    x, y = a.x, a.f("y")
    if bool(a.scalar("transpose_x", False)) and x.ndim >= 2:
        x = np.swapaxes(x, -1, -2)
    if bool(a.scalar("transpose_y", False)) and y.ndim >= 2:
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)  # numpy broadcasting rules == MIL's (rank-1 operands promoted then squeezed)


@kernel("einsum")
def _einsum(a: Args):
    values = [np.asarray(v, np.float64) for v in a("values")]
    return np.einsum(str(a.scalar("equation")), *values)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


@kernel("softmax")
def _softmax_kernel(a: Args):
    return _softmax(a.x, int(a.scalar("axis", -1)))


@kernel("scaled_dot_product_attention")
def _sdpa(a: Args):
    q, k, v = a.f("query"), a.f("key"), a.f("value")  # q (..., L, E); k (..., S, E); v (..., S, Ev)
    scores = (q @ np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])  # (..., L, S)
    mask = a("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask.astype(np.float64)
    return _softmax(scores, -1) @ v  # (..., L, Ev)


# ------------------------------------------------------------------------------------------------------------------
# normalization
# ------------------------------------------------------------------------------------------------------------------
@kernel("batch_norm")
def _batch_norm(a: Args):
    x = a.x  # (N, C, *D)
    r = x.ndim
    mean, var = _channel_shape(a.f("mean"), r), _channel_shape(a.f("variance"), r)
    y = (x - mean) / np.sqrt(var + float(a.scalar("epsilon", 1e-5)))
    g, b = a.f("gamma"), a.f("beta")
    if g is not None:
        y = y * _channel_shape(g, r)
    if b is not None:
        y = y + _channel_shape(b, r)
    return y


@kernel("instance_norm")
def _instance_norm(a: Args):
    x = a.x  # (N, C, *D): normalize each (n, c) over *D
    axes = tuple(range(2, x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + float(a.scalar("epsilon", 1e-5)))
    g, b = a.f("gamma"), a.f("beta")
    if g is not None:
        y = y * _channel_shape(g, x.ndim)
    if b is not None:
        y = y + _channel_shape(b, x.ndim)
    return y


@kernel("layer_norm")
def _layer_norm(a: Args):
    x = a.x
    axes_v = a("axes")
    axes = tuple(range(x.ndim)) if axes_v is None else _norm_axes(axes_v, x.ndim)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mu) / np.sqrt(var + float(a.scalar("epsilon", 1e-5)))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]  # gamma/beta have shape x.shape[axes]
    g, b = a.f("gamma"), a.f("beta")
    if g is not None:
        y = y * g.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


@kernel("l2_norm")
def _l2_norm(a: Args):
    x = a.x  # normalize over the last 3 dims (rank >= 3), each leading index separately
    axes = tuple(range(max(x.ndim - 3, 0), x.ndim))
    return x / np.sqrt(np.sum(x * x, axis=axes, keepdims=True) + float(a.scalar("epsilon", 1e-6)))


# ------------------------------------------------------------------------------------------------------------------
# reductions (coremltools' reduce_* value_inference crashes on numpy 2)
# ------------------------------------------------------------------------------------------------------------------
_REDUCE: dict[str, Callable[..., np.ndarray]] = {
    "reduce_mean": lambda x, ax, kd: np.mean(x, axis=ax, keepdims=kd),
    "reduce_sum": lambda x, ax, kd: np.sum(x, axis=ax, keepdims=kd),
    "reduce_max": lambda x, ax, kd: np.max(x, axis=ax, keepdims=kd),
    "reduce_min": lambda x, ax, kd: np.min(x, axis=ax, keepdims=kd),
    "reduce_prod": lambda x, ax, kd: np.prod(x, axis=ax, keepdims=kd),
    "reduce_l1_norm": lambda x, ax, kd: np.sum(np.abs(x), axis=ax, keepdims=kd),
    "reduce_l2_norm": lambda x, ax, kd: np.sqrt(np.sum(x * x, axis=ax, keepdims=kd)),
    "reduce_sum_square": lambda x, ax, kd: np.sum(x * x, axis=ax, keepdims=kd),
    "reduce_log_sum": lambda x, ax, kd: np.log(np.sum(x, axis=ax, keepdims=kd)),
    "reduce_log_sum_exp": lambda x, ax, kd: _logsumexp(x, ax, kd),
}


def _logsumexp(x: np.ndarray, axis, keepdims: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis if axis is not None else tuple(range(x.ndim)))


def _reduce_kernel(fn):
    def run(a: Args):
        x = a.x
        axes_v = a("axes")
        axes = None if axes_v is None else _norm_axes(axes_v, x.ndim)
        return fn(x, axes, bool(a.scalar("keep_dims", False)))

    return run


for _name, _fn in _REDUCE.items():
    KERNELS[_name] = _reduce_kernel(_fn)


@kernel("reduce_argmax", "reduce_argmin")
def _reduce_arg(a: Args):
    x = a.x
    axis = int(a.scalar("axis", -1))
    axis = axis + x.ndim if axis < 0 else axis
    idx = (np.argmax if a.op.op_type == "reduce_argmax" else np.argmin)(x, axis=axis)
    return np.expand_dims(idx, axis) if bool(a.scalar("keep_dims", False)) else idx


# ------------------------------------------------------------------------------------------------------------------
# convolution and pooling (1-D, 2-D, 3-D), via strided windows
# ------------------------------------------------------------------------------------------------------------------
def _pads(a: Args, in_sizes, k_eff, strides, out_sizes) -> tuple[list[int], list[int]]:
    """Begin/end padding per spatial dim, from pad_type/pad and the declared output size (covers ceil_mode)."""
    nd = len(in_sizes)
    pad_type = str(a.scalar("pad_type", "valid")).lower()
    if pad_type == "valid":
        pb, pe = [0] * nd, [0] * nd
    elif pad_type == "custom":
        pad = a.ints("pad", [0] * 2 * nd)
        pb, pe = pad[0::2], pad[1::2]
    elif pad_type in ("same", "same_lower"):
        pb, pe = [], []
        for i in range(nd):
            total = max((out_sizes[i] - 1) * strides[i] + k_eff[i] - in_sizes[i], 0)
            small, big = total // 2, total - total // 2
            pb.append(small if pad_type == "same" else big)
            pe.append(big if pad_type == "same" else small)
    else:
        raise _OpFailure(f"pad_type {pad_type!r} is not one of valid, custom, same, same_lower")
    return list(pb), list(pe)


def _windows(xp: np.ndarray, k_eff, strides, dilations, kernel) -> np.ndarray:
    """xp (N, C, *S) padded -> strided view (N, C, *Out, *K)."""
    nd = len(k_eff)
    w = np.lib.stride_tricks.sliding_window_view(xp, tuple(k_eff), axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
        slice(None, (k - 1) * d + 1, d) for k, d in zip(kernel, dilations))
    return w[sl]


def _spatial(a: Args, x: np.ndarray, kernel_sizes, dilations):
    nd = x.ndim - 2
    strides = a.ints("strides", [1] * nd) or [1] * nd
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel_sizes, dilations)]
    out_shape = tuple(a.op.outputs[0].shape)
    out_sizes = [int(s) for s in out_shape[2:]] if len(out_shape) == x.ndim and all(
        isinstance(s, (int, np.integer)) for s in out_shape[2:]) else None
    in_sizes = list(x.shape[2:])
    if out_sizes is None:  # no static output shape: floor mode
        pb, pe = _pads(a, in_sizes, k_eff, strides, [-(-i // s) for i, s in zip(in_sizes, strides)])
        out_sizes = [(i + b + e - k) // s + 1 for i, b, e, k, s in zip(in_sizes, pb, pe, k_eff, strides)]
    else:
        pb, pe = _pads(a, in_sizes, k_eff, strides, out_sizes)
    # extra end padding (ceil_mode) so that exactly out_sizes windows fit; never counted as real input
    extra = [max((o - 1) * s + k - (i + b + e), 0) for o, s, k, i, b, e in zip(out_sizes, strides, k_eff, in_sizes, pb, pe)]
    return strides, k_eff, pb, pe, extra, out_sizes


def _pad_spatial(x: np.ndarray, before, after, value: float) -> np.ndarray:
    return np.pad(x, [(0, 0), (0, 0)] + list(zip(before, after)), mode="constant", constant_values=value)


@kernel("conv")
def _conv(a: Args):
    x, w = a.x, a.f("weight")  # x (N, C_in, *D_in); w (C_out, C_in/groups, *K)
    nd = x.ndim - 2
    groups = int(a.scalar("groups", 1))
    dil = a.ints("dilations", [1] * nd) or [1] * nd
    kernel_sizes = list(w.shape[2:])
    strides, k_eff, pb, pe, extra, out_sizes = _spatial(a, x, kernel_sizes, dil)
    xp = _pad_spatial(x, pb, [e + x_ for e, x_ in zip(pe, extra)], 0.0)
    win = _windows(xp, k_eff, strides, dil, kernel_sizes)[(slice(None), slice(None)) + tuple(
        slice(0, o) for o in out_sizes)]  # (N, C_in, *O, *K)
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    n_out, n_k = int(np.prod(out_sizes)), int(np.prod(kernel_sizes))
    if groups == 1:  # im2col + one matmul
        cols = np.moveaxis(win, 1, 1 + nd).reshape(n * n_out, c_in * n_k)  # (N*O, C_in*K)
        y = (cols @ w.reshape(c_out, -1).T).reshape((n,) + tuple(out_sizes) + (c_out,))  # (N, *O, C_out)
        y = np.moveaxis(y, -1, 1)  # (N, C_out, *O)
    else:
        o_axes = "".join("hwd"[i] for i in range(nd))
        k_axes = "".join("ijk"[i] for i in range(nd))
        win = win.reshape((n, groups, c_in // groups) + win.shape[2:])  # (N, G, C_in/G, *O, *K)
        wg = w.reshape((groups, c_out // groups) + w.shape[1:])  # (G, C_out/G, C_in/G, *K)
        y = np.einsum(f"ngc{o_axes}{k_axes},goc{k_axes}->ngo{o_axes}", win, wg)
        y = y.reshape((n, c_out) + tuple(out_sizes))  # (N, C_out, *O)
    b = a.f("bias")
    return y if b is None else y + _channel_shape(b, y.ndim)


def _pool(a: Args, reduce: str):
    x = a.x  # (N, C, *D_in)
    nd = x.ndim - 2
    kernel_sizes = a.ints("kernel_sizes")
    strides, k_eff, pb, pe, extra, out_sizes = _spatial(a, x, kernel_sizes, [1] * nd)
    crop = (slice(None), slice(None)) + tuple(slice(0, o) for o in out_sizes)
    ends = [e + x_ for e, x_ in zip(pe, extra)]
    k_axes = tuple(range(2 + nd, 2 + 2 * nd))
    if reduce == "max":
        xp = _pad_spatial(x, pb, ends, -np.inf)
        return _windows(xp, k_eff, strides, [1] * nd, kernel_sizes)[crop].max(axis=k_axes)
    xp = _pad_spatial(x, pb, ends, 0.0)
    if reduce == "l2":
        return np.sqrt((_windows(xp * xp, k_eff, strides, [1] * nd, kernel_sizes)[crop]).sum(axis=k_axes))
    total = _windows(xp, k_eff, strides, [1] * nd, kernel_sizes)[crop].sum(axis=k_axes)  # (N, C, *O)
    # divisor: real input cells, plus explicit padding unless exclude_padding_from_average; ceil overflow never
    ones = np.ones((1, 1) + x.shape[2:])
    if not bool(a.scalar("exclude_padding_from_average", False)):
        ones = _pad_spatial(ones, pb, pe, 1.0)
        mask = _pad_spatial(ones, [0] * nd, extra, 0.0)
    else:
        mask = _pad_spatial(ones, pb, ends, 0.0)
    count = _windows(mask, k_eff, strides, [1] * nd, kernel_sizes)[crop].sum(axis=k_axes)  # (1, 1, *O)
    return total / count


@kernel("max_pool")
def _max_pool(a: Args):
    return _pool(a, "max")


@kernel("avg_pool")
def _avg_pool(a: Args):
    return _pool(a, "avg")


@kernel("l2_pool")
def _l2_pool(a: Args):
    return _pool(a, "l2")


@kernel("upsample_nearest_neighbor")
def _upsample_nn(a: Args):
    x = a.x  # (..., H, W)
    sh, sw = float(a.scalar("scale_factor_height", 1)), float(a.scalar("scale_factor_width", 1))
    if sh != int(sh) or sw != int(sw):
        raise _OpFailure(f"non-integer scale factors ({sh}, {sw}) are not implemented")
    return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)


# ------------------------------------------------------------------------------------------------------------------
# layout ops (pure data movement, so exact in any dtype)
# ------------------------------------------------------------------------------------------------------------------
def _raw(a: Args, name: str = "x") -> np.ndarray:
    return np.asarray(a(name))


@kernel("reshape", "expand_dims", "squeeze")
def _reshape_like_declared(a: Args):
    x = _raw(a)
    if a.out_shape is not None:  # these ops only re-label dims: the declared static shape says how
        return x.reshape(a.out_shape)
    t = a.op.op_type
    if t == "reshape":
        return x.reshape([int(s) for s in np.asarray(a("shape")).ravel()])
    if t == "expand_dims":
        return np.expand_dims(x, tuple(a.ints("axes")))
    axes = a("axes")
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(a.ints("axes")))


@kernel("transpose")
def _transpose(a: Args):
    return np.transpose(_raw(a), a.ints("perm"))


@kernel("concat")
def _concat(a: Args):
    if bool(a.scalar("interleave", False)):
        raise _OpFailure("interleave=True is not implemented")
    return np.concatenate([np.asarray(v) for v in a("values")], axis=int(a.scalar("axis")))


@kernel("split")
def _split(a: Args):
    x = _raw(a)
    axis = int(a.scalar("axis"))
    sizes = a("split_sizes")
    if sizes is not None:
        idx = np.cumsum([int(s) for s in np.atleast_1d(sizes)])[:-1]
    else:
        idx = int(a.scalar("num_splits"))
    return tuple(np.split(x, idx, axis=axis))


@kernel("slice_by_index")
def _slice_by_index(a: Args):
    x = _raw(a)
    r = x.ndim
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride", [1] * r) or [1] * r
    bm = [bool(v) for v in np.atleast_1d(a("begin_mask", [False] * r))]
    em = [bool(v) for v in np.atleast_1d(a("end_mask", [False] * r))]
    sq = [bool(v) for v in np.atleast_1d(a("squeeze_mask", [False] * r))]
    sl = []
    for i in range(r):
        if sq[i]:
            sl.append(begin[i])
            continue
        b = None if bm[i] else begin[i]
        e = None if em[i] else end[i]
        sl.append(slice(b, e, stride[i]))
    return x[tuple(sl)]


# ------------------------------------------------------------------------------------------------------------------
# gathers (embedding lookups, token positions): integer indices, exact in any dtype
# ------------------------------------------------------------------------------------------------------------------
def _indices(a: Args, size: int) -> np.ndarray:
    """The op's indices as int64, negative ones counted from the end (MIL semantics); out of range is an error."""
    idx = np.asarray(a("indices")).astype(np.int64)
    idx = np.where(idx < 0, idx + size, idx)
    if idx.size and (idx.min() < 0 or idx.max() >= size):
        raise _OpFailure(f"indices {int(idx.min())}..{int(idx.max())} out of range for an axis of size {size} "
                         f"(token ids outside the embedding table?)")
    return idx


@kernel("gather")
def _gather(a: Args):
    x = _raw(a)
    axis = int(a.scalar("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    batch_dims = int(a.scalar("batch_dims", 0))
    idx = _indices(a, x.shape[axis])
    if batch_dims == 0:
        return np.take(x, idx, axis=axis)
    # batch_dims > 0: the leading batch_dims axes of x and indices are paired
    lead = x.shape[:batch_dims]
    out = [np.take(x[b], idx[b], axis=axis - batch_dims) for b in np.ndindex(*lead)]
    return np.stack(out).reshape(*lead, *out[0].shape)


@kernel("gather_along_axis")
def _gather_along_axis(a: Args):
    x = _raw(a)
    axis = int(a.scalar("axis", 0))
    axis = axis + x.ndim if axis < 0 else axis
    return np.take_along_axis(x, _indices(a, x.shape[axis]), axis=axis)


@kernel("gather_nd")
def _gather_nd(a: Args):
    x = _raw(a)
    batch_dims = int(a.scalar("batch_dims", 0))
    idx = np.asarray(a("indices")).astype(np.int64)  # (..., k): the last axis indexes the first k axes of x
    if batch_dims:
        raise _OpFailure("batch_dims > 0 is not implemented")
    k = idx.shape[-1]
    idx = np.where(idx < 0, idx + np.array(x.shape[:k]), idx)
    return x[tuple(np.moveaxis(idx, -1, 0))]


@kernel("fill")
def _fill(a: Args):
    return np.full([int(s) for s in np.atleast_1d(np.asarray(a("shape")))], a.scalar("value", 0.0))


@kernel("fill_like")
def _fill_like(a: Args):
    return np.full(np.shape(a("ref_tensor")), a.scalar("value", 0.0))


@kernel("range_1d")
def _range_1d(a: Args):
    return np.arange(a.scalar("start"), a.scalar("end"), a.scalar("step"))


# ------------------------------------------------------------------------------------------------------------------
# activation quantization ops (iOS17)
# ------------------------------------------------------------------------------------------------------------------
def _per_axis(v, x: np.ndarray, axis) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0 or axis is None:
        return v
    axis = int(axis) + x.ndim if int(axis) < 0 else int(axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    return v.reshape(shape)


@kernel("dequantize")
def _dequantize(a: Args):
    x = np.asarray(a("input"), dtype=np.float64)
    axis = a.scalar("axis")
    zp = a("zero_point")
    zp = 0.0 if zp is None else _per_axis(zp, x, axis)
    return (x - zp) * _per_axis(a("scale"), x, axis)


@kernel("quantize")
def _quantize(a: Args):
    x = a.f("input")
    axis = a.scalar("axis")
    zp = a("zero_point")
    zp = 0.0 if zp is None else _per_axis(zp, x, axis)
    dt = np.dtype(str(a.scalar("output_dtype")))
    info = np.iinfo(dt)
    return np.clip(np.round(x / _per_axis(a("scale"), x, axis)) + zp, info.min, info.max)


# ------------------------------------------------------------------------------------------------------------------
# the evaluator
# ------------------------------------------------------------------------------------------------------------------
# Batched vs one-at-a-time outputs of the checking call: float64 arithmetic in another order (a matrix product over
# N rows instead of one) may move a result by one unit in the last place of the declared dtype, and an fp16 program
# carries that rounding on through later ops; reading one sample's data into another's row moves it by O(1).
BATCH_RTOL = 1e-3


def _batched(shape: tuple | None, n: int) -> tuple | None:
    """A declared static shape with its leading 1 read as `n` samples (any other shape as declared)."""
    return (n, *shape[1:]) if shape and shape[0] == 1 and n != 1 else shape


def _agree(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str | None:
    """None when the batched outputs match the one-at-a-time ones within BATCH_RTOL (of each output's largest
    magnitude; integer outputs exactly), else what differs."""
    for name, r in ref.items():
        g = np.asarray(got.get(name))
        if g.shape != r.shape:
            return f"output {name!r} has shape {g.shape} batched, {r.shape} one at a time"
        if r.dtype.kind in "iub":
            if not np.array_equal(g, r):
                return f"output {name!r} differs (integer outputs)"
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        scale = float(np.max(np.abs(r64))) if r64.size else 0.0
        diff = float(np.max(np.abs(g64 - r64))) if r64.size else 0.0
        if not diff <= BATCH_RTOL * max(scale, 1e-12):
            return f"output {name!r} differs by {diff:.3g} (largest magnitude {scale:.3g})"
    return None


def _has_value_inference(op) -> bool:
    from coremltools.converters.mil.mil.operation import Operation

    return type(op).value_inference is not Operation.value_inference


def _np_dtype(var) -> np.dtype:
    from coremltools.converters.mil.mil import types

    return np.dtype(types.nptype_from_builtin(var.dtype))


def _out_meta(var) -> tuple[str, np.dtype | None, tuple | None]:
    """(name, numpy dtype or None for non-tensors, static shape or None when symbolic)."""
    from coremltools.converters.mil.mil import types

    if not (types.is_tensor(var.sym_type) or types.is_scalar(var.sym_type)):
        return var.name, None, None
    shape = tuple(var.shape)
    static = all(isinstance(s, (int, np.integer)) for s in shape)
    return var.name, _np_dtype(var), tuple(int(s) for s in shape) if static else None


class _Step:
    """One non-constant op, with everything about it that does not change between runs."""

    __slots__ = ("op", "fn", "how", "inputs", "outs", "out_shape", "unbound")

    def __init__(self, op, fn, how: str):
        self.op, self.fn, self.how = op, fn, how
        self.inputs = op.inputs  # {name: Var | tuple[Var]}
        self.outs = [_out_meta(v) for v in op.outputs]
        self.out_shape = self.outs[0][2]
        # vars whose value exists only at run time (for value_inference binding)
        self.unbound = [v for v in op.get_flattened_inputs() if v.val is None]


def _unsupported(op, where: str, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(
        f"Core ML reference evaluator: op type {op.op_type!r} (MIL op {op.name!r} in {where}) {why}. "
        f"{ISSUE_HINT}.")


class MILEvaluator:
    """Evaluate one function of a MIL Program with NumPy. Build once, call `run` per input batch.

    program:  a coremltools MIL `Program` (see `load_program`)
    source:   where the program came from (shown in error messages), e.g. the .mlpackage path
    """

    def __init__(self, program, function: str = "main", source: str = "<program>"):
        if function not in program.functions:
            raise KeyError(f"function {function!r} not in program; it has: {', '.join(program.functions)}")
        fn = program.functions[function]
        self.source = source
        self.where = f"function {function!r} of {source}"
        self.inputs: list[tuple[str, tuple, np.dtype]] = [
            (name, tuple(var.shape), _np_dtype(var)) for name, var in fn.inputs.items()]
        self.outputs: list[str] = [v.name for v in fn.outputs]
        # "unchecked" until a call with several samples; then "batched" or "one at a time" (see the module docstring)
        self.batching, self.batching_why = "unchecked", ""
        self._consts: dict[str, Any] = {}
        self._plan: list[_Step] = []
        self.op_counts: dict[str, int] = {}
        for op in fn.operations:
            self.op_counts[op.op_type] = self.op_counts.get(op.op_type, 0) + 1
            if op.blocks:
                raise _unsupported(op, self.where, "has nested blocks (control flow), which this evaluator "
                                   "does not run")
            if op.op_type == "const":
                self._consts[op.outputs[0].name] = op.outputs[0].val
            elif op.op_type.startswith("constexpr_"):
                self._materialize(op)
            elif op.op_type in KERNELS:
                self._plan.append(_Step(op, KERNELS[op.op_type], "numpy"))
            elif op.op_type not in _NO_FALLBACK and _has_value_inference(op):
                self._plan.append(_Step(op, self._value_inference, "value_inference"))
            else:
                raise _unsupported(op, self.where, "has no NumPy kernel and no usable coremltools "
                                   "value_inference")

    def _materialize(self, op) -> None:
        env = self._consts
        bound = self._bind(op, env, [v for v in op.get_flattened_inputs() if v.val is None])
        try:
            vals = op.materialized_val_inference()
        except Exception as e:
            raise _unsupported(op, self.where, f"could not be decompressed ({type(e).__name__}: {e})") from e
        finally:
            self._unbind(bound)
        vals = vals if isinstance(vals, (tuple, list)) and len(op.outputs) > 1 else (vals,)
        for var, v in zip(op.outputs, vals):
            env[var.name] = self._conform(op, _out_meta(var), v)

    # -- value_inference with runtime values bound --------------------------------------------------------------
    @staticmethod
    def _bind(op, env: dict[str, Any], unbound) -> list[tuple[Any, Any]]:
        """Give the vars in `unbound` (runtime values, decompressed weights) their values from `env`."""
        saved = []
        for var in unbound:
            if var.name in env:
                inst = var.sym_type()
                inst.val = np.array(env[var.name], copy=True)  # some value_inference mutate their input
                saved.append((var, var._sym_val))
                var._sym_val = inst
        return saved

    @staticmethod
    def _unbind(saved: list[tuple[Any, Any]]) -> None:
        for var, old in saved:
            var._sym_val = old

    def _value_inference(self, a: Args, unbound):
        saved = self._bind(a.op, a.env, unbound)
        try:
            return a.op.value_inference()
        finally:
            self._unbind(saved)

    # -- running -----------------------------------------------------------------------------------------------
    def _conform(self, op, meta: tuple, value, n: int = 1) -> Any:
        """Round `value` to the dtype its var declares and check it has the declared static shape (its leading 1 read
        as `n` samples)."""
        name, dt, shape = meta
        shape = _batched(shape, n)
        if dt is None:  # not a tensor/scalar (lists, strings): pass through
            return value
        arr = np.asarray(value)
        if arr.dtype != dt:
            arr = arr.astype(dt)
        if shape is not None and arr.shape != shape:
            if arr.size == int(np.prod(shape)) and (arr.ndim == 0 or len(shape) == 0):
                arr = arr.reshape(shape)
            else:
                raise _unsupported(op, self.where, f"produced shape {arr.shape} but the program declares "
                                   f"{shape} for {name!r} (evaluator fault)")
        return arr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feeds: {input name: array of the declared static shape, or of it with N samples in place of a leading 1}.
        Returns {output name: array}, N samples each."""
        n = self._samples(feeds)
        if n == 1 or self.batching == "batched":
            return self._run(feeds, n)
        one_at_a_time = self._one_at_a_time(feeds, n)
        if self.batching == "unchecked":
            try:
                self.batching_why = _agree(self._run(feeds, n), one_at_a_time) or ""
            except UnsupportedOpError as e:
                self.batching_why = str(e)
            self.batching = "one at a time" if self.batching_why else "batched"
        return one_at_a_time

    def _samples(self, feeds: dict[str, np.ndarray]) -> int:
        """How many samples `feeds` holds (1 for the declared shapes); wrong names and shapes raise."""
        counts = set()
        for name, shape, _ in self.inputs:
            if name not in feeds:
                raise KeyError(f"missing input {name!r}; the program's inputs: {[i[0] for i in self.inputs]}")
            got = tuple(np.shape(feeds[name]))
            if got == shape:
                counts.add(1)
            elif shape and shape[0] == 1 and len(got) == len(shape) and got[1:] == shape[1:] and got[0] > 0:
                counts.add(got[0])
            else:
                raise ValueError(f"input {name!r} has shape {got}; the program declares {shape}")
        if len(counts) > 1:
            raise ValueError(f"the inputs hold different numbers of samples ({sorted(counts)}); give each input "
                             f"the same number")
        return counts.pop() if counts else 1

    def _one_at_a_time(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        parts = [self._run({k: np.asarray(v)[i:i + 1] for k, v in feeds.items()}, 1) for i in range(n)]
        return {name: np.concatenate([p[name] for p in parts]) for name in self.outputs}

    def _run(self, feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Every op of the plan over `n` samples (n > 1: declared leading 1s read as n)."""
        env = dict(self._consts)
        for name, _, dt in self.inputs:
            env[name] = np.asarray(feeds[name]).astype(dt)
        for step in self._plan:
            op = step.op
            a = Args(op, env, step.inputs, _batched(step.out_shape, n))
            try:
                res = step.fn(a) if step.how == "numpy" else step.fn(a, step.unbound)
            except UnsupportedOpError:
                raise
            except _OpFailure as e:
                raise _unsupported(op, self.where, f"cannot be evaluated: {e}") from e
            except Exception as e:
                raise _unsupported(op, self.where, f"failed in its {step.how} implementation "
                                   f"({type(e).__name__}: {e})") from e
            outs = res if len(step.outs) > 1 else (res,)
            if len(outs) != len(step.outs):
                raise _unsupported(op, self.where, f"returned {len(outs)} outputs; the program declares "
                                   f"{len(step.outs)}")
            for meta, val in zip(step.outs, outs):
                env[meta[0]] = self._conform(op, meta, val, n)
        return {name: env[name] for name in self.outputs}

    def supported(self) -> dict[str, str]:
        """How each non-constant op type of this program is evaluated: "numpy" or "value_inference"."""
        return {step.op.op_type: step.how for step in self._plan}


def load_program(path: str | Path):
    """Read a saved .mlpackage back into a MIL Program (weights from Data/com.apple.CoreML/weights)."""
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    spec = load_spec(path)
    if spec.WhichOneof("Type") != "mlProgram":
        raise UnsupportedOpError(f"{path} holds a {spec.WhichOneof('Type')!r} model, not an ML Program; the "
                                 f"reference evaluator only runs ML Programs (convert with convert_to='mlprogram')")
    weights = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=str(weights))


def load_spec(path: str | Path):
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def evaluator_coverage() -> dict[str, list[str]]:
    """Op types this module evaluates: by its own NumPy kernels, by coremltools' value_inference with runtime
    values bound, and the weight-decompression (constexpr_*) ops materialized when the evaluator is built."""
    from coremltools.converters.mil.mil.operation import Operation
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    fallback, constexpr = [], []
    for name, versions in SSAOpRegistry.core_ops.items():
        if name.startswith("constexpr_"):
            constexpr.append(name)
        elif name in KERNELS or name in _NO_FALLBACK or name == "const":
            continue
        elif any(cls.value_inference is not Operation.value_inference for cls in versions.values()):
            fallback.append(name)
    return {"numpy": sorted(KERNELS), "value_inference": sorted(fallback), "constexpr": sorted(constexpr)}
