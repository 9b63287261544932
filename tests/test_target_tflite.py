"""The TFLite (LiteRT) target on real data: every precision exports, loads in ai_edge_litert and verifies.

Models are trained for a few seconds on scikit-learn's 8x8 digits (through ondevice.data); artifacts are exported
once per module (`_export` caches them) and shared across tests. Each litert-torch conversion takes ~2-10 s here.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from ondevice.errors import ConversionError, UnsupportedPrecisionError
from ondevice.export import export, run_target
from ondevice.precision import get_precision
from ondevice.target import get_target

PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8_static", "int8_weight_only")
SEED = 0


# --------------------------------------------------------------------------------------------- models and data
class SmallCNN(nn.Module):
    def __init__(self, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # (N, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),               # (N, 32, 4, 4)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, C, 8, 8) -> (N, 10)
        return self.classifier(self.features(x))


class WideMLP(nn.Module):
    """~85k weights, so the int8 file size is dominated by weights (the <= 0.3x size check)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                                 nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        return self.net(x)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 12) -> nn.Module:
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _with_gradients(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) digits -> (N, 3, H, W): intensity, horizontal and vertical gradient (three distinct channels)."""
    dx = torch.zeros_like(x)
    dy = torch.zeros_like(x)
    dx[..., :, 1:] = x[..., :, 1:] - x[..., :, :-1]
    dy[..., 1:, :] = x[..., 1:, :] - x[..., :-1, :]
    return torch.cat([x, dx, dy], dim=1)


@pytest.fixture(scope="module")
def digits():
    from ondevice.data import load_dataset

    torch.set_num_threads(1)
    return load_dataset("digits", seed=SEED, val_fraction=0.0)


@pytest.fixture(scope="module")
def models(digits):
    """name -> (trained model, calibration (256, C, 8, 8), test x (N, C, 8, 8), test labels (N,)).

    The CNN sees three channels (digit, d/dx, d/dy) so that an NCHW/NHWC mix-up cannot go unnoticed."""
    y = digits.train.y
    out = {}
    for name, build, prep in (("cnn", lambda: SmallCNN(3), _with_gradients), ("mlp", WideMLP, lambda t: t)):
        torch.manual_seed(SEED)
        xin = prep(digits.train.x)
        m = _train(build(), xin, y)
        test_x = prep(digits.test.x)
        acc = float((m(test_x).argmax(1) == digits.test.y).float().mean())
        assert acc > 0.85, f"{name} trained to only {acc:.3f} test accuracy on digits"
        out[name] = (m, xin[:256].numpy(), test_x.numpy(), digits.test.y.numpy())
    return out


@pytest.fixture(scope="module")
def artifacts(models, tmp_path_factory):
    """Lazily export (model, precision, nhwc) once per module; returns a getter."""
    root = tmp_path_factory.mktemp("tflite")
    cache = {}

    def get(model: str, precision: str, nhwc: bool = False):
        key = (model, precision, nhwc)
        if key not in cache:
            m, cal, xt, yt = models[model]
            out = root / f"{model}_{precision}{'_nhwc' if nhwc else ''}.tflite"
            cache[key] = export(m, "tflite", precision, out=out, calibration=cal, verify_data=(xt, yt), nhwc=nhwc)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def tflite():
    return get_target("tflite")


# ---------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_every_precision_exports_loads_and_verifies(artifacts, models, model, precision):
    from ai_edge_litert.interpreter import Interpreter

    art = artifacts(model, precision)
    v = art.verification
    assert art.status == "verified", art.error
    th = get_precision(precision).thresholds
    assert v["n"] == len(models[model][3]) and v["passed"]
    if th.min_sqnr_db is not None:
        assert v["sqnr_db"] >= th.min_sqnr_db, v
    if th.atol is not None:
        assert v["allclose"] and v["max_abs_err"] < 1e-4, v
    assert v["top1_agreement"] >= th.min_top1_agreement, v
    assert abs(v["accuracy"] - v["reference_accuracy"]) <= 0.02, v
    # The file is a real LiteRT flatbuffer: the interpreter itself loads it and finds the default signature.
    it = Interpreter(model_path=art.path)
    it.allocate_tensors()
    assert list(it.get_signature_list()) == ["serving_default"]
    # The weights carry the precision's dtype.
    wd = art.inspect["weight_dtypes"]
    expected = {"fp32": "float32", "fp16": "float16"}.get(precision, "int8")
    assert expected in wd, wd
    if precision == "fp32":
        assert "int8" not in wd and "float16" not in wd, wd
    if precision in ("fp16", "int8_weight_only"):
        assert art.inspect["ops"].get("DEQUANTIZE", 0) >= 3, art.inspect["ops"]  # weights widened at run time
    assert art.record_path().exists()


def test_int8_static_is_full_integer_and_small(artifacts):
    for model in ("cnn", "mlp"):
        info = artifacts(model, "int8_static").inspect
        assert info["integer_io"]
        for t in info["inputs"] + info["outputs"]:
            assert t["dtype"] == "int8", t
            assert t["quantization"]["scale"] > 0 and -128 <= t["quantization"]["zero_point"] <= 127, t
        assert "int8" in info["weight_dtypes"] and "float32" not in info["weight_dtypes"], info["weight_dtypes"]
        assert "DEQUANTIZE" not in info["ops"], info["ops"]  # no float island in these models
    fp32, int8 = artifacts("mlp", "fp32"), artifacts("mlp", "int8_static")
    assert int8.inspect["weight_params"] > 80_000
    # the weights shrink 4x; the file a little less, for the scales and the input spec + preprocessing metadata
    # (a few hundred bytes) both files carry
    weights = sum(int8.inspect["weight_bytes"].values()) / sum(fp32.inspect["weight_bytes"].values())
    assert weights <= 0.27, (int8.inspect["weight_bytes"], fp32.inspect["weight_bytes"])
    ratio = int8.size_bytes / fp32.size_bytes
    assert ratio <= 0.31, f"int8_static {int8.size_bytes} B vs fp32 {fp32.size_bytes} B: ratio {ratio:.3f}"


def test_int8_io_is_quantized_with_the_tensors_own_parameters(artifacts, models, tflite):
    """run() feeds int8 and returns float32 on the output tensor's grid: (y / scale + zero_point) is integral."""
    art = artifacts("cnn", "int8_static")
    out_q = art.inspect["outputs"][0]["quantization"]
    _, _, xt, _ = models["cnn"]
    y = run_target(tflite, tflite.load(art.path), xt[:40])
    assert y.dtype == np.float32 and y.shape == (40, 10)
    levels = y / out_q["scale"] + out_q["zero_point"]
    assert np.allclose(levels, np.round(levels), atol=1e-3)
    assert levels.min() >= -128 - 1e-3 and levels.max() <= 127 + 1e-3


@pytest.mark.parametrize("precision", ["fp32", "int8_static"])
def test_run_accepts_any_batch_size(artifacts, models, tflite, precision):
    art = artifacts("cnn", precision)
    assert art.inspect["inputs"][0]["shape"][0] == 1  # the artifact has a static batch of 1
    runner = tflite.load(art.path)
    _, _, xt, _ = models["cnn"]
    one_by_one = np.concatenate([run_target(tflite, runner, xt[i:i + 1]) for i in range(67)])
    for n in (1, 5, 67):
        np.testing.assert_array_equal(run_target(tflite, runner, xt[:n]), one_by_one[:n])
    assert run_target(tflite, runner, xt[:0]).shape == (0, 10)


def test_set_threads_applies_to_new_loads(artifacts, models, tflite):
    art = artifacts("mlp", "fp32")
    _, _, xt, _ = models["mlp"]
    try:
        tflite.set_threads(2)
        y2 = run_target(tflite, tflite.load(art.path), xt[:32])
        tflite.set_threads(1)
        y1 = run_target(tflite, tflite.load(art.path), xt[:32])
    finally:
        tflite.set_threads(0)  # back to the runtime's default
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6)


def _check_nhwc(artifacts, models, tflite, precision: str) -> None:
    nchw, nhwc = artifacts("cnn", precision), artifacts("cnn", precision, nhwc=True)
    assert nchw.status == nhwc.status == "verified"
    assert nchw.inspect["inputs"][0]["shape"] == [1, 3, 8, 8]
    assert nhwc.inspect["inputs"][0]["shape"] == [1, 8, 8, 3]
    assert nhwc.inspect["input_layout"] == "NHWC"
    _, _, xt, _ = models["cnn"]  # (N, 3, 8, 8) NCHW
    y_nchw = run_target(tflite, tflite.load(nchw.path), xt)
    y_nhwc = run_target(tflite, tflite.load(nhwc.path), xt)  # run() transposes NCHW -> NHWC for the artifact
    if precision == "fp32":
        np.testing.assert_allclose(y_nhwc, y_nchw, rtol=1e-4, atol=1e-5)
    else:  # same calibration, same quantized graph up to layout: at most one output step apart
        step = nchw.inspect["outputs"][0]["quantization"]["scale"]
        np.testing.assert_allclose(y_nhwc, y_nchw, atol=1.01 * step)


def test_nhwc_artifact_takes_nhwc_and_matches_the_nchw_export(artifacts, models, tflite):
    from ai_edge_litert.interpreter import Interpreter

    _check_nhwc(artifacts, models, tflite, "fp32")
    nhwc, nchw = artifacts("cnn", "fp32", nhwc=True), artifacts("cnn", "fp32")
    _, _, xt, _ = models["cnn"]
    # The artifact itself (no ondevice code in the loop) takes an NHWC tensor, as a camera pipeline hands it.
    it = Interpreter(model_path=nhwc.path)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], np.ascontiguousarray(xt[:1].transpose(0, 2, 3, 1)))  # (1, 8, 8, 3)
    it.invoke()
    y_ref = run_target(tflite, tflite.load(nchw.path), xt[:1])
    np.testing.assert_allclose(it.get_tensor(out["index"]), y_ref, rtol=1e-4, atol=1e-5)
    # run() takes the model's NCHW layout (the file's metadata maps it to the NHWC tensor); NHWC data is refused
    with pytest.raises(ValueError, match=r"input x \(float32 \[\d+, 3, 8, 8\]\) needs size 3 on axis 1, got shape "
                                         r"\(2, 8, 8, 3\) \(the artifact's own layout"):
        run_target(tflite, tflite.load(nhwc.path), xt[:2].transpose(0, 2, 3, 1))  # run() wants NCHW


@pytest.mark.slow
def test_nhwc_int8_static_matches_the_nchw_int8_static_export(artifacts, models, tflite):
    _check_nhwc(artifacts, models, tflite, "int8_static")


def test_export_is_deterministic_and_quiet(artifacts, models, tmp_path, capfd):
    first = artifacts("mlp", "int8_static")
    m, cal, xt, yt = models["mlp"]
    capfd.readouterr()
    again = export(m, "tflite", "int8_static", out=tmp_path / "again.tflite", calibration=cal, verify_data=(xt, yt))
    out, err = capfd.readouterr()
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (first.path, again.path)]
    assert digest[0] == digest[1]
    for noise in ("[START]", "[ DONE]", "flatbuffer_export", "I0000", "Quantization Ratio", "XNNPACK delegate",
                  "LeafSpec", "training mode"):
        assert noise not in out + err, f"converter noise {noise!r} reached the user:\n{out}{err}"


def test_unsupported_precision_lists_the_valid_ones(models, tflite):
    with pytest.raises(UnsupportedPrecisionError,
                       match=r"'tflite' cannot produce precision 'palettize4'; it can do: fp32, fp16, int8_dynamic, "
                             r"int8_static, int8_weight_only"):
        tflite.precision("palettize4")
    m, cal, xt, yt = models["mlp"]
    with pytest.raises(UnsupportedPrecisionError, match=r"int4_weight_only.*it can do: fp32, fp16"):
        export(m, "tflite", "int4_weight_only", calibration=cal, verify_data=(xt, yt))


class _Bessel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.i0(x)  # no TFLite lowering in litert-torch 0.10


class _UsesBessel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = _Bessel()
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        return self.head(self.act(self.conv(x)).flatten(1))


def test_conversion_error_names_op_module_precision_and_fix(models, tmp_path):
    _, _, xt, yt = models["mlp"]  # (N, 1, 8, 8)
    torch.manual_seed(SEED)
    out = tmp_path / "bessel.tflite"
    with pytest.raises(ConversionError, match=r"precision 'fp32'.*PyTorch op aten\.i0\.default \(from module "
                                              r"'act' \(_Bessel\).*Fix: rewrite .*'onnxruntime'") as ei:
        export(_UsesBessel().eval(), "tflite", "fp32", out=out, verify_data=(xt, yt))
    assert "test_target_tflite.py" in str(ei.value)  # the source line of the op
    assert not out.exists()  # nothing half-written is left behind
    record = out.with_name(out.name + ".json")
    assert record.exists() and "aten.i0" in record.read_text()


def test_inspect_reports_ops_weights_and_io(artifacts):
    info = artifacts("cnn", "fp32").inspect
    assert info["ops"]["CONV_2D"] == 2
    assert info["ops"]["FULLY_CONNECTED"] == 2 and info["ops"]["MAX_POOL_2D"] == 1
    assert info["num_ops"] == sum(info["ops"].values())
    # conv 3->16, conv 16->32, fc 512->64, fc 64->10 (BatchNorm folded into the first conv)
    expected = (16 * 27 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)
    assert info["weight_bytes"]["float32"] == 4 * expected
    (inp,) = info["inputs"]
    assert inp["name"] == "serving_default_x" and inp["shape"] == [1, 3, 8, 8] and inp["dtype"] == "float32"
    assert inp["quantization"] is None and info["input_layout"].startswith("as traced")
    assert info["outputs"][0]["dtype"] == "float32" and info["outputs"][0]["shape"] == [1, 10]
    assert not info["integer_io"] and math.isclose(info["weight_params"], expected, rel_tol=0.01)
