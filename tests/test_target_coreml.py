"""Core ML target: export at every precision, verified through the NumPy reference evaluator of the saved package.

All data is real (scikit-learn digits, 8x8; bilinearly resized to 28x28 for the MNIST-shaped CNN). There is no
Core ML runtime on Linux, so `load`/`run` evaluate the saved ML Program op by op (targets/coreml/mil_eval.py);
the negative control shows that evaluation reads the package's actual bytes.
"""
from __future__ import annotations

import re
import math
import os
import shutil
import struct
import sys

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from ondevice.errors import ConfigError, ConversionError, UnsupportedOpError  # noqa: E402
from ondevice.export import export, run_target, torch_outputs  # noqa: E402
from ondevice.precision import PRECISIONS  # noqa: E402
from ondevice.target import artifact_target, get_spec, get_target  # noqa: E402
from ondevice.verify import compare  # noqa: E402

ALL = ("fp32", "fp16", "int8_weight_only", "int4_weight_only", "palettize4", "prune50")
TIGHT = {"rtol": 1e-5, "atol": 1e-5}  # fp32: the evaluator rounds every op to fp32, as the program declares
N_TRAIN = 1400


# ------------------------------------------------------------------------------------------------------------------
# real data and quickly trained models
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8) in [0, 1]
    return x, d.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits28(digits):
    x, y = digits
    x28 = F.interpolate(torch.from_numpy(x), size=(28, 28), mode="bilinear", align_corners=False)
    return x28.numpy(), y  # (1797, 1, 28, 28)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3) -> nn.Module:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr)
    xt, yt = torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN])
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def _held_out(data):
    x, y = data
    return x[N_TRAIN:], y[N_TRAIN:]  # 397 real samples never trained on


class Encoder(nn.Module):
    """Transformer encoder block over the 8 rows of a digit (8 tokens x 8 pixels)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.emb = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(8, d))
        self.block = nn.TransformerEncoderLayer(d, 4, 2 * d, dropout=0.0, batch_first=True, activation="gelu")
        self.head = nn.Linear(d, 10)

    def forward(self, x):  # x (N, 1, 8, 8)
        h = self.emb(x.reshape(x.shape[0], 8, 8)) + self.pos  # (N, 8 tokens, d)
        return self.head(self.block(h).mean(1))  # (N, 10)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


ARCHS = {  # the shapes the cross-target conformance suite uses
    "conv_bn": lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)),
    "depthwise_separable": lambda: nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(),
        nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10)),
    "transformer": Encoder,
    "mnist_cnn": lambda: nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 10)),
}


@pytest.fixture(scope="module")
def trained_mlp(digits):
    return _train(mlp(), *digits, epochs=10)


@pytest.fixture(scope="module")
def trained_cnn(digits):
    return _train(small_cnn(), *digits, epochs=8)


@pytest.fixture(scope="module")
def trained_archs(digits, digits28):
    out = {}
    for name, make in ARCHS.items():
        torch.manual_seed(0)
        data = digits28 if name == "mnist_cnn" else digits
        out[name] = (_train(make(), *data, epochs=8), data)
    return out


@pytest.fixture(scope="module")
def target():
    return get_target("coreml")


@pytest.fixture(scope="module")
def mlp_art(trained_mlp, digits, tmp_path_factory):
    """Exports of the trained MLP, one per precision, made once and shared by the tests that only read them."""
    cache, root = {}, tmp_path_factory.mktemp("coreml_mlp")

    def get(precision):
        if precision not in cache:
            kw = {"thresholds": TIGHT} if precision == "fp32" else {}
            cache[precision] = _export(trained_mlp, precision, digits, root / f"mlp_{precision}.mlpackage", **kw)
        return cache[precision]

    return get


def _export(model, precision, data, out, **kw):
    return export(model, "coreml", precision, out=out, verify_data=_held_out(data), raise_on_failure=False, **kw)


def _check(art, precision):
    """The artifact verified, with every statistic in the failure message."""
    v = art.verification
    assert art.status == "verified", f"{precision}: {art.error}"
    assert v["top1_agreement"] >= PRECISIONS[precision].thresholds.min_top1_agreement
    if precision == "fp32":
        assert v["allclose"] is True and v["max_abs_err"] <= 1e-4, v
    else:
        assert v["sqnr_db"] >= PRECISIONS[precision].thresholds.min_sqnr_db, v
        # quantized/fp16 programs really carry their error (the evaluator does not silently run fp32)
        assert v["max_abs_err"] > 1e-5, v
    print(f"measured on digits held-out (n={v['n']}), reference evaluator: {art.precision}: SQNR {v['sqnr_db']:.1f} dB,"
          f" max|err| {v['max_abs_err']:.3g}, top-1 agreement {v['top1_agreement']:.3f}, size {art.size_bytes} B")


# ------------------------------------------------------------------------------------------------------------------
# spec, discovery, runtime kind
# ------------------------------------------------------------------------------------------------------------------
def test_spec_discovery_and_runtime_kind(target):
    spec = get_spec("coreml")
    assert spec.suffix == ".mlpackage" and spec.extra == "coreml" and spec.requires == ("coremltools",)
    assert set(spec.precisions) == set(ALL)
    assert "deployment_target" in spec.options
    assert artifact_target("model.mlpackage/") == "coreml"
    if sys.platform != "darwin":
        assert target.runtime_kind() == "reference-evaluator"
        assert target.latency_measurable is False
        assert "not measurable" in target.latency_note and "reference evaluator" in target.latency_note


# ------------------------------------------------------------------------------------------------------------------
# every precision on a trained MLP and a trained small CNN
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ALL)
def test_mlp_every_precision(precision, mlp_art):
    art = mlp_art(precision)
    _check(art, precision)
    ins = art.inspect
    assert ins["runtime"] in ("reference-evaluator", "coreml")
    assert ins["inputs"][0]["shape"] == [1, 1, 8, 8] and ins["outputs"][0]["shape"] == [1, 10]
    assert ins["ops"]["linear"] == 2 and "unsupported" not in ins["evaluator_ops"].values()
    expected_constexpr = {"int8_weight_only": "constexpr_affine_dequantize",
                          "int4_weight_only": "constexpr_blockwise_shift_scale",
                          "palettize4": "constexpr_lut_to_dense", "prune50": "constexpr_sparse_to_dense"}
    if precision in expected_constexpr:
        assert ins["compression"] == {expected_constexpr[precision]: 1}  # the 128x64 weight (10x128 is < 2048)
    else:
        assert ins["compression"] == {}
    want_dtype = {"fp16": "float16", "int8_weight_only": "int8", "int4_weight_only": "int4"}.get(precision)
    if want_dtype:
        assert ins["weight_dtypes"].get(want_dtype, 0) > 0, ins["weight_dtypes"]
    assert ins["compute_precision"] == ("fp16" if precision == "fp16" else "fp32")


@pytest.mark.parametrize("precision", ALL)
def test_cnn_every_precision(precision, trained_cnn, digits, tmp_path):
    kw = {"thresholds": TIGHT} if precision == "fp32" else {}
    art = _export(trained_cnn, precision, digits, tmp_path / f"cnn_{precision}.mlpackage", **kw)
    _check(art, precision)
    assert art.inspect["ops"]["conv"] == 2 and "batch_norm" not in art.inspect["ops"]  # BN folded into conv
    if precision not in ("fp32", "fp16"):
        assert sum(art.inspect["compression"].values()) == 2  # conv2 (32x16x3x3) and the 10x512 linear


# ------------------------------------------------------------------------------------------------------------------
# the conformance suite's model shapes: every op they emit is evaluated
# ------------------------------------------------------------------------------------------------------------------
FAST_ARCH_CASES = [(a, "fp32") for a in ARCHS] + [("transformer", "fp16"), ("transformer", "int4_weight_only")]
SLOW_ARCH_CASES = [(a, p) for a in ARCHS for p in ALL[1:] if (a, p) not in FAST_ARCH_CASES]
# measured SQNR floors for the conformance shapes (small models trained for seconds; prune50 is not fine-tuned,
# and magnitude pruning of BatchNorm-folded conv weights is lossy: conv_bn measured ~6 dB)
SLOW_SQNR_FLOOR = {"fp16": 35.0, "int8_weight_only": 30.0, "int4_weight_only": 12.0, "palettize4": 12.0, "prune50": 3.0}


def _arch_export(arch, precision, trained_archs, tmp_path):
    model, data = trained_archs[arch]
    kw = {"thresholds": TIGHT} if precision == "fp32" else {}
    art = _export(model, precision, data, tmp_path / f"{arch}_{precision}.mlpackage", **kw)
    assert set(art.inspect["evaluator_ops"].values()) <= {"numpy", "value_inference"}, art.inspect["evaluator_ops"]
    if precision not in ("fp32", "fp16"):
        assert sum(art.inspect["compression"].values()) >= 1
    return art


@pytest.mark.parametrize("arch,precision", FAST_ARCH_CASES)
def test_architectures_ops_covered(arch, precision, trained_archs, tmp_path):
    """Every conformance shape at fp32 (iOS17); the transformer also at fp16 and int4 (iOS18, where attention
    becomes one scaled_dot_product_attention op)."""
    art = _arch_export(arch, precision, trained_archs, tmp_path)
    _check(art, precision)
    if arch == "transformer":
        ops = art.inspect["ops"]
        assert {"layer_norm", "gelu", "linear"} <= set(ops)
        if precision == "int4_weight_only":
            assert art.inspect["deployment_target"] == "iOS18" and "scaled_dot_product_attention" in ops
        else:
            assert {"softmax", "matmul"} <= set(ops)


@pytest.mark.slow
@pytest.mark.parametrize("arch,precision", SLOW_ARCH_CASES)
def test_architectures_other_precisions(arch, precision, trained_archs, tmp_path):
    """The remaining precisions on the conformance shapes: every op evaluated, error judged by SQNR."""
    art = _arch_export(arch, precision, trained_archs, tmp_path)
    v = art.verification
    print(f"measured on digits held-out: {arch}/{precision}: SQNR {v['sqnr_db']:.1f} dB, "
          f"top-1 agreement {v['top1_agreement']:.3f}, status {art.status}")
    assert math.isfinite(v["sqnr_db"]) and v["sqnr_db"] >= SLOW_SQNR_FLOOR[precision], v


# ------------------------------------------------------------------------------------------------------------------
# kernels with their less common attributes, against eager PyTorch (fp32, tight)
# ------------------------------------------------------------------------------------------------------------------
class Branches(nn.Module):
    """Several branches on the same input, outputs flattened and concatenated: one package tests many kernels."""

    def __init__(self, fns, mods=None):
        super().__init__()
        self.fns = fns
        self.mods = nn.ModuleDict(mods or {})

    def forward(self, x):  # x (N, 1, 8, 8)
        return torch.cat([f(self.mods, x).flatten(1) for f in self.fns], 1)


def _scaled(x):
    return x * 4.0 - 2.0  # digits in [-2, 2] so that negative branches of activations are exercised


KERNEL_MODELS = {
    "pools": (lambda: Branches([
        lambda m, x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda m, x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=True),
        lambda m, x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
        lambda m, x: F.max_pool2d(F.pad(x, (0, 1, 0, 1)), 2, stride=1),
        lambda m, x: F.avg_pool1d(x.reshape(x.shape[0], 8, 8), 3, stride=2, padding=1, count_include_pad=True),
        lambda m, x: F.adaptive_avg_pool2d(x, 1),
    ])),
    "convs": (lambda: Branches([
        lambda m, x: m["dil"](F.interpolate(x, scale_factor=2, mode="nearest")),
        lambda m, x: m["same_groups"](x.repeat(1, 8, 1, 1) * torch.linspace(0.5, 1.5, 8).reshape(1, 8, 1, 1)),
        lambda m, x: m["c1d"](x.reshape(x.shape[0], 8, 8)),
    ], {"dil": nn.Conv2d(1, 8, 3, stride=2, padding=2, dilation=2),
        "same_groups": nn.Conv2d(8, 8, 3, padding="same", groups=2),
        "c1d": nn.Conv1d(8, 6, 2, stride=2)})),
    "norms": (lambda: Branches([
        lambda m, x: m["bn"](_scaled(x)),  # BatchNorm on the input: not foldable into a conv
        lambda m, x: m["inorm"](x.repeat(1, 4, 1, 1) * torch.linspace(0.5, 2.0, 4).reshape(1, 4, 1, 1)),
        lambda m, x: m["ln"](x.reshape(x.shape[0], 8, 8)),
        lambda m, x: m["prelu"](_scaled(x).repeat(1, 4, 1, 1)),
    ], {"bn": nn.BatchNorm2d(1), "inorm": nn.InstanceNorm2d(4, affine=True), "ln": nn.LayerNorm(8),
        "prelu": nn.PReLU(4, init=0.2)})),
    "activations": (lambda: Branches([
        lambda m, x: F.leaky_relu(_scaled(x), 0.1), lambda m, x: F.elu(_scaled(x)),
        lambda m, x: F.hardswish(_scaled(x)), lambda m, x: F.hardsigmoid(_scaled(x)), lambda m, x: F.gelu(_scaled(x)),
        lambda m, x: F.softplus(_scaled(x)), lambda m, x: torch.sigmoid(_scaled(x)) * torch.tanh(_scaled(x)),
        lambda m, x: F.silu(_scaled(x)), lambda m, x: F.relu6(_scaled(x) * 4), lambda m, x: F.log_softmax(x, -1),
        lambda m, x: torch.clamp(_scaled(x), -0.5, 0.5), lambda m, x: torch.erf(_scaled(x)),
        lambda m, x: torch.rsqrt(x.abs() + 1), lambda m, x: torch.cat([x, x.flip(2)], 2)[:, :, ::2],
        lambda m, x: x - x.amax(-1, keepdim=True) + x.sum(-1, keepdim=True).sqrt() + torch.exp(-x.pow(2)) / (1 + x),
        lambda m, x: x.mean((2, 3)) * x.amin((2, 3)) + x.std((2, 3)),
    ])),
}


@pytest.mark.parametrize("name", list(KERNEL_MODELS))
def test_kernels_match_pytorch(name, digits, tmp_path):
    torch.manual_seed(0)
    model = KERNEL_MODELS[name]().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.fill_(0.3), mod.running_var.fill_(0.2), mod.weight.fill_(1.5), mod.bias.fill_(-0.1)
    x = digits[0][:200]
    art = export(model, "coreml", "fp32", out=tmp_path / f"{name}.mlpackage", verify_data=(x, None),
                 thresholds=TIGHT, raise_on_failure=False)
    v = art.verification
    assert v["allclose"] is True and v["max_abs_err"] < 1e-5, (art.inspect["ops"], v)
    assert set(art.inspect["evaluator_ops"].values()) <= {"numpy", "value_inference"}
    print(f"measured on 200 digits: {name}: ops {sorted(art.inspect['ops'])}, max|err| {v['max_abs_err']:.3g}")


# ------------------------------------------------------------------------------------------------------------------
# MIL programs built directly: kernels without a torch route, the value_inference fallback, unsupported ops
# ------------------------------------------------------------------------------------------------------------------
def _save_program(prog, path, target_os="iOS17"):
    import coremltools as ct

    from ondevice.targets.coreml.target import _quiet

    with _quiet():
        ml = ct.convert(prog, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
                        minimum_deployment_target=getattr(ct.target, target_os), pass_pipeline=ct.PassPipeline.EMPTY)
        ml.save(str(path))
    return path


def test_mil_kernels_and_value_inference_fallback(target, tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3, 4))], opset_version=ct.target.iOS18)
    def prog(x):
        g = mb.gelu(x=x, mode="TANH_APPROXIMATION")  # torch's approximate="tanh" (the converter emits EXACT)
        s = mb.gelu(x=x, mode="SIGMOID_APPROXIMATION")
        att = mb.scaled_dot_product_attention(query=x, key=x, value=g)  # (2, 3, 4)
        rs = mb.reduce_log_sum_exp(x=x, axes=[-1], keep_dims=True)  # (2, 3, 1)
        am = mb.cast(x=mb.reduce_argmax(x=x, axis=1, keep_dims=False), dtype="fp32")  # (2, 4)
        # value_inference fallback: tile, concat, slice_by_index, gather, pad, transpose
        t = mb.tile(x=rs, reps=[1, 1, 4])  # (2, 3, 4)
        c = mb.concat(values=[att, t, s], axis=1)  # (2, 9, 4)
        sl = mb.slice_by_index(x=c, begin=[0, 1, 0], end=[2, 9, 4], stride=[1, 2, 1])  # (2, 4, 4)
        ga = mb.gather(x=sl, indices=np.array([3, 0], np.int32), axis=1)  # (2, 2, 4)
        p = mb.pad(x=ga, pad=np.array([0, 0, 1, 1, 0, 0], np.int32), mode="reflect")  # (2, 4, 4)
        out = mb.concat(values=[mb.transpose(x=p, perm=[0, 2, 1]), mb.expand_dims(x=am, axes=[1])], axis=1)
        # more native kernels: prelu (per channel), split, quantize -> dequantize (int8, zero point 3)
        pr = mb.prelu(x=mb.expand_dims(x=x, axes=[-1]), alpha=np.array([0.1, 0.2, 0.3], np.float32))  # (2, 3, 4, 1)
        pr = mb.squeeze(x=pr, axes=[-1])  # (2, 3, 4)
        s1, s2 = mb.split(x=pr, split_sizes=[1, 2], axis=1)  # (2, 1, 4), (2, 2, 4)
        q = mb.quantize(input=s2, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8")
        dq = mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.int8(3))  # (2, 2, 4)
        out = mb.concat(values=[out, s1, dq], axis=1)  # (2, 8, 4)
        return mb.reshape(x=out, shape=[2, 32], name="out")

    path = _save_program(prog, tmp_path / "mil_ops.mlpackage", "iOS18")
    runner = target.load(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = run_target(target, runner, x)

    # the same computation in float64 NumPy
    x64 = x.astype(np.float64)
    g = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    s = x64 / (1 + np.exp(-1.702 * x64))
    sc = x64 @ x64.transpose(0, 2, 1) / 2.0
    w = np.exp(sc - sc.max(-1, keepdims=True))
    att = (w / w.sum(-1, keepdims=True)) @ g
    rs = np.log(np.exp(x64).sum(-1, keepdims=True))
    am = x64.argmax(1).astype(np.float64)
    c = np.concatenate([att, np.tile(rs, (1, 1, 4)), s], 1)[:, 1:9:2]
    p = np.pad(c[:, [3, 0]], [(0, 0), (1, 1), (0, 0)], mode="reflect")
    pr = np.where(x64 > 0, x64, x64 * np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1))
    dq = (np.clip(np.round(pr[:, 1:] / 0.05) + 3, -128, 127) - 3) * 0.05
    want = np.concatenate([p.transpose(0, 2, 1), am[:, None], pr[:, :1], dq], 1).reshape(2, 32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    how = target.inspect(path)["evaluator_ops"]
    assert {how[k] for k in ("scaled_dot_product_attention", "reduce_log_sum_exp", "reduce_argmax", "gelu", "concat",
                             "slice_by_index", "transpose", "reshape", "prelu", "split", "quantize",
                             "dequantize", "gather")} == {"numpy"}
    assert {how[k] for k in ("tile", "pad")} == {"value_inference"}  # coremltools' own, values bound


def test_unsupported_op_raises_with_op_name(target, tmp_path):
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 4, 4))], opset_version=ct.target.iOS17)
    def prog(x):
        y = mb.relu(x=x)
        return mb.space_to_depth(x=y, block_size=2, name="s2d_made_by_test")

    path = _save_program(prog, tmp_path / "unsupported.mlpackage")
    with pytest.raises(UnsupportedOpError, match=r"op type 'space_to_depth' \(MIL op 's2d_made_by_test' in .*"
                                                 r"unsupported\.mlpackage\).*macOS.*file an issue"):
        target.load(path)


# ------------------------------------------------------------------------------------------------------------------
# sizes: the weights dominate a package with enough of them
# ------------------------------------------------------------------------------------------------------------------
def test_sizes_int8_and_palettized(digits, tmp_path):
    torch.manual_seed(0)
    big = _train(nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                               nn.Linear(512, 10)), *digits, epochs=3)  # 301,578 parameters
    sizes, arts = {}, {}
    for p in ("fp32", "int8_weight_only", "palettize4", "int4_weight_only"):
        arts[p] = _export(big, p, digits, tmp_path / f"big_{p}.mlpackage", **({"thresholds": TIGHT} if p == "fp32" else {}))
        _check(arts[p], p)
        sizes[p] = arts[p].size_bytes
    ratio = {p: sizes[p] / sizes["fp32"] for p in sizes}
    print("measured package sizes (bytes, MLP 64-512-512-10):", sizes, {p: round(r, 3) for p, r in ratio.items()})
    assert sizes["fp32"] > 4 * 301_578  # fp32 weights are all there
    assert ratio["int8_weight_only"] <= 0.3
    assert ratio["palettize4"] <= 0.2
    assert ratio["int4_weight_only"] <= 0.2


# ------------------------------------------------------------------------------------------------------------------
# negative control: the evaluator reads the package's bytes
# ------------------------------------------------------------------------------------------------------------------
def _perturb_const(pkg, const_name: str, rel: float) -> tuple[int, float, float]:
    """Scale the largest-magnitude element of an fp32 const stored in weight.bin by (1 + rel), in place."""
    from ondevice.targets.coreml.mil_eval import load_spec

    spec = load_spec(pkg)
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    op = next(o for o in block.operations if o.type == "const" and o.outputs[0].name == const_name)
    blob = op.attributes["val"].blobFileValue
    wfile = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(wfile.read_bytes())
    sentinel, _dtype, nbytes, data_off = struct.unpack_from("<IIQQ", raw, blob.offset)  # blob header
    assert sentinel == 0xDEADBEEF
    w = np.frombuffer(bytes(raw[data_off:data_off + nbytes]), np.float32).copy()
    i = int(np.argmax(np.abs(w)))
    old = float(w[i])
    w[i] = np.float32(old * (1 + rel))
    raw[data_off:data_off + nbytes] = w.tobytes()
    wfile.write_bytes(bytes(raw))
    return i, old, float(w[i])


def test_negative_control_perturbed_weight_fails_verification(trained_mlp, mlp_art, digits, target, tmp_path):
    from ondevice.precision import Thresholds
    from ondevice.targets.coreml.mil_eval import load_program

    art = mlp_art("fp32")
    _check(art, "fp32")
    x, y = _held_out(digits)
    ref = torch_outputs(trained_mlp, x)
    bad = tmp_path / "perturbed.mlpackage"
    shutil.copytree(art.path, bad)
    last = [op for op in load_program(bad).functions["main"].operations if op.op_type == "linear"][-1]
    i, old, new = _perturb_const(bad, last.weight.name, 0.01)
    assert new == pytest.approx(old * 1.01, rel=1e-6)

    th = Thresholds(**TIGHT, min_top1_agreement=0.999)
    good = compare(ref, run_target(target, target.load(art.path), x), y, th)
    moved = compare(ref, run_target(target, target.load(bad), x), y, th)
    print(f"measured on {len(x)} digits: untouched max|err| {good.max_abs_err:.3g}; weight {last.weight.name}[{i}] "
          f"{old:.5f} -> {new:.5f} (+1%): max|err| {moved.max_abs_err:.3g}")
    assert good.passed, good.failures
    assert not moved.passed and "not within rtol" in moved.failures[0]
    assert moved.max_abs_err > 100 * good.max_abs_err


# ------------------------------------------------------------------------------------------------------------------
# options, deployment target, errors
# ------------------------------------------------------------------------------------------------------------------
def test_int4_selects_ios18_and_records_it(trained_mlp, mlp_art, digits, tmp_path):
    ins = mlp_art("int4_weight_only").inspect
    assert ins["deployment_target"] == "iOS18" and ins["spec_version"] == 9
    assert ins["deployment_target_reason"].startswith("selected automatically")
    assert ins["metadata"]["ondevice.deployment_target"] == "iOS18"
    fp32 = mlp_art("fp32")
    assert fp32.inspect["deployment_target"] == "iOS17" and fp32.inspect["spec_version"] == 8
    ios18 = _export(trained_mlp, "fp32", digits, tmp_path / "f18.mlpackage", thresholds=TIGHT, deployment_target="iOS18")
    assert ios18.inspect["deployment_target"] == "iOS18" and ios18.inspect["deployment_target_reason"] == "requested"
    bad = _export(trained_mlp, "int4_weight_only", digits, tmp_path / "x.mlpackage", deployment_target="iOS17")
    assert bad.status == "error" and re.search(r"int4_weight_only.*cannot target iOS17.*iOS18", bad.error), bad.error
    bad = _export(trained_mlp, "fp32", digits, tmp_path / "y.mlpackage", deployment_target="iOS9")
    assert bad.status == "error" and "deployment_target='iOS9' is not one of iOS17, iOS18" in bad.error, bad.error


def test_int4_block_size_fits_every_weight(trained_archs, tmp_path):
    """A 10x400 linear layer (400 not a multiple of 32) still gets int4 blocks instead of staying fp32."""
    from ondevice.targets.coreml.target import int4_block_size

    assert [int4_block_size(d) for d in (64, 400, 16, 37, 1)] == [32, 25, 16, 37, 1]
    art = _arch_export("mnist_cnn", "int4_weight_only", trained_archs, tmp_path)
    _check(art, "int4_weight_only")
    assert art.inspect["compression"] == {"constexpr_blockwise_shift_scale": 1}  # the only weight >= 2048
    assert art.inspect["compressed_weights"][0]["shape"] == [10, 400]
    assert "=25" in art.inspect["metadata"]["ondevice.int4_block_overrides"]


def test_any_batch_size_and_static_batch(trained_mlp, digits, target, tmp_path):
    x = digits[0][:7]
    ex = (torch.from_numpy(digits[0][:3]),)  # package with a static batch of 3
    art = export(trained_mlp, "coreml", "fp32", out=tmp_path / "b3.mlpackage", example_inputs=ex,
                 verify_data=(digits[0][N_TRAIN:], None), thresholds=TIGHT)
    assert art.inspect["inputs"][0]["shape"] == [3, 1, 8, 8]
    runner = target.load(art.path)
    ref = torch_outputs(trained_mlp, x)
    for n in (1, 3, 7):
        out = run_target(target, runner, x[:n])
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, ref[:n], rtol=1e-5, atol=1e-5)
    assert run_target(target, runner, x[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match=r"input x \(float32 \[3, 1, 8, 8\]\) needs size 8 on axis 3, got shape "
                                         r"\(2, 1, 8, 9\)"):
        run_target(target, runner, np.zeros((2, 1, 8, 9), np.float32))


def test_export_is_deterministic(trained_mlp, mlp_art, digits, tmp_path):
    from ondevice.io import sha256_file

    a = mlp_art("palettize4")
    b = _export(trained_mlp, "palettize4", digits, tmp_path / "b.mlpackage")
    weights = "Data/com.apple.CoreML/weights/weight.bin"
    assert sha256_file(f"{a.path}/{weights}") == sha256_file(f"{b.path}/{weights}")
    assert a.verification["sqnr_db"] == b.verification["sqnr_db"]


def test_unconvertible_op_raises_conversion_error(digits, tmp_path):
    class Det(nn.Module):
        def forward(self, x):  # x (N, 1, 8, 8) -> (N, 1)
            return torch.linalg.det(x.reshape(x.shape[0], 8, 8)).unsqueeze(1)

    with pytest.raises(ConversionError, match=r"could not convert torch op '_linalg_det' \(from module 'model' "
                                              r"\(Det\).*precision 'fp32'.*another target"):
        export(Det(), "coreml", "fp32", out=tmp_path / "det.mlpackage", verify_data=(digits[0][:4], None))


class _MixesSamples(nn.Module):
    """A running sum over the batch: exported with a batch of 1 it is the identity, and every shape stays as declared
    when the leading 1 is read as N, so only the values show that samples were mixed (the evaluator must notice and
    stay one sample at a time)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):  # x (N, 1, 8, 8) -> (N, 10)
        return self.net(x).cumsum(0)  # (N, 10); with N = 1: the net's outputs


def test_batch_1_programs_run_many_samples_per_call_when_that_matches_one_at_a_time(trained_cnn, digits, target,
                                                                                    tmp_path):
    """A batch-1 package is evaluated 64 samples per call once the first call showed batched and one-at-a-time
    outputs agree; a program whose ops mix samples is caught by that check and keeps one sample per call."""
    from targets.coreml.target import REFERENCE_CHUNK

    x = _held_out(digits)[0][:150]  # (150, 1, 8, 8): 3 chunks, the last one padded
    one_sample = (torch.from_numpy(x[:1]),)  # a package with a static batch of 1, as every Core ML export by default
    ok = export(trained_cnn, "coreml", "fp16", out=tmp_path / "cnn.mlpackage", example_inputs=one_sample)
    runner = target.load(ok.path)
    assert target.chunk(runner, target.signature(runner)) == REFERENCE_CHUNK
    assert runner.evaluator.batching == "unchecked"
    out = run_target(target, runner, x)
    assert runner.evaluator.batching == "batched", runner.evaluator.batching_why
    one = np.concatenate([run_target(target, runner, x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(out, one)  # fp16 program: batched evaluation rounds exactly as one at a time

    mixed = _MixesSamples(trained_cnn).eval()
    bad = export(mixed, "coreml", "fp32", out=tmp_path / "mix.mlpackage", example_inputs=one_sample)
    runner = target.load(bad.path)
    out = run_target(target, runner, x)
    assert runner.evaluator.batching == "one at a time"
    assert re.search(r"output '.+' differs by [0-9.e+-]+ \(largest magnitude", runner.evaluator.batching_why)
    ref = np.concatenate([torch_outputs(mixed, x[i:i + 1]) for i in range(len(x))])  # what the program computes
    np.testing.assert_allclose(out, ref, **TIGHT)


class _PositionAdd(nn.Module):
    """x + a learned (1, T, D) table (as BERT adds position embeddings), then a linear head: the converter folds the
    table into a (1, 16, 256) const, whose per-channel axis (0) has length 1."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(0.05 * torch.randn(1, 16, 256))
        with torch.no_grad():
            self.pos[0, :, 0] = 8.0  # one large channel, as BERT's embeddings have
        self.head = nn.Linear(256, 10)

    def forward(self, x):  # x (N, 16, 256) -> (N, 10)
        return self.head(x + self.pos).mean(dim=1)


def test_int8_weight_only_keeps_a_single_channel_const_float(tmp_path):
    """Per channel along a length-1 axis is one scale for the whole tensor: the (1, 16, 256) table stays float (and
    is named in the metadata), the head's weight is int8 per output channel, and the program verifies. Measured on
    these samples: 51.9 dB SQNR; with the table at one int8 scale, 42.8 dB."""
    torch.manual_seed(0)
    model, x = _PositionAdd().eval(), torch.randn(160, 16, 256).numpy()
    art = export(model, "coreml", "int8_weight_only", out=tmp_path / "p.mlpackage", verify_data=(x, None),
                 raise_on_failure=False)
    assert art.status == "verified", art.error
    note = art.inspect["metadata"]["ondevice.float_consts"]
    assert note.startswith("1 const(s) whose per-channel axis has length 1 kept float"), note
    assert [w["shape"] for w in art.inspect["compressed_weights"]] == [[10, 256]]
    assert art.verification["sqnr_db"] > 47.0, art.verification
