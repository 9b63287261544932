"""ONNX Runtime target: real torch.onnx exports of a digits MLP trained on real data, run in onnxruntime."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import onnx
from onnx import numpy_helper

from conformance_models import digits_case
from helpers import export_case
from ondevice.errors import ConversionError
from ondevice.export import export, run_target, torch_outputs
from ondevice.precision import PRECISIONS
from ondevice.target import get_spec, get_target

TARGET = "onnxruntime"


@pytest.fixture(scope="module")
def mlp():
    return digits_case("mlp")


def _initializers(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_fp32_has_symbolic_batch_and_matches_torch(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp32", tmp_path)
    assert art.status == "verified", art.error
    info = art.inspect
    assert info["dynamic_batch"] is True
    assert info["inputs"][0]["shape"][0] == "batch" and info["inputs"][0]["shape"][1:] == [1, 8, 8]
    assert info["ops"].get("Gemm", 0) + info["ops"].get("MatMul", 0) == 2  # the two Linear layers
    assert info["weight_dtypes"]["float32"] == 4  # 2 weights + 2 biases
    tgt = get_target(TARGET)
    runner = tgt.load(art.path)
    for n in (1, 7):  # one call per batch, any size
        x = mlp.x_verify[:n]
        np.testing.assert_allclose(run_target(tgt, runner, x), torch_outputs(mlp.model, x), rtol=1e-4, atol=1e-5)


def test_static_batch_option_runs_any_batch(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp32", tmp_path, dynamic_batch=False)
    assert art.inspect["dynamic_batch"] is False and art.inspect["inputs"][0]["shape"] == [1, 1, 8, 8]
    tgt = get_target(TARGET)
    x = mlp.x_verify[:5]  # looped one sample at a time inside run()
    np.testing.assert_allclose(run_target(tgt, tgt.load(art.path), x), torch_outputs(mlp.model, x), rtol=1e-4, atol=1e-5)


def test_fp16_has_half_weights_and_float_io(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp16", tmp_path)
    assert art.status == "verified", art.error
    assert set(art.inspect["weight_dtypes"]) - {"int64"} == {"float16"}
    assert art.inspect["inputs"][0]["dtype"] == "float32" and art.inspect["outputs"][0]["dtype"] == "float32"
    assert art.inspect["ops"]["Cast"] == 2  # keep_io_types: one Cast in, one Cast out
    assert art.verification["sqnr_db"] >= 35.0


def test_int8_static_is_per_channel_qdq(mlp, tmp_path):
    art = export_case(mlp, TARGET, "int8_static", tmp_path)
    assert art.status == "verified", art.error
    ops = art.inspect["ops"]
    assert ops["QuantizeLinear"] >= 2 and ops["DequantizeLinear"] >= ops["QuantizeLinear"]
    inits = _initializers(art.path)
    weights = [v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2]
    assert sorted(w.shape for w in weights) == [(10, 64), (64, 64)] or sorted(w.shape for w in weights) == [
        (64, 10), (64, 64)]
    graph = onnx.load(art.path).graph
    weight_scales = [inits[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2]
    assert sorted(s.size for s in weight_scales) == [10, 64]  # one scale per output channel
    assert art.verification["sqnr_db"] >= 20.0 and art.verification["top1_agreement"] >= 0.98


def test_int8_static_scales_come_from_the_calibration_samples(mlp, tmp_path):
    """The first activation scale (of the flattened input) is what the calibration data implies (MinMax, int8)."""
    a = export_case(mlp, TARGET, "int8_static", tmp_path / "a")
    cal2 = mlp.calibration * 3.0  # same real samples, three times the range
    b = export(mlp.model, TARGET, "int8_static", out=tmp_path / "b" / "m", calibration=cal2,
               verify_data=(mlp.x_verify, None), thresholds={"min_sqnr_db": 0.0, "min_top1_agreement": 0.0})

    def input_scale(path) -> float:
        m = onnx.load(str(path))
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
        return float(inits[q.input[1]])  # nodes are in topological order: this one quantizes the input

    lo, hi = float(mlp.calibration.min()), float(mlp.calibration.max())
    expected = (max(hi, 0.0) - min(lo, 0.0)) / 255.0  # asymmetric int8 MinMax over the real samples
    assert input_scale(a.path) == pytest.approx(expected, rel=1e-5)
    assert input_scale(b.path) == pytest.approx(3.0 * input_scale(a.path), rel=1e-5)


def test_int8_dynamic_quantizes_activations_at_run_time(mlp, tmp_path):
    art = export_case(mlp, TARGET, "int8_dynamic", tmp_path)
    assert art.status == "verified", art.error
    ops = art.inspect["ops"]
    assert ops["DynamicQuantizeLinear"] == 2 and ops["MatMulInteger"] == 2
    assert art.inspect["weight_dtypes"]["int8"] >= 2


def test_export_is_deterministic(mlp, tmp_path):
    paths = [export_case(mlp, TARGET, "int8_static", tmp_path / str(i)).path for i in range(2)]
    digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    assert digests[0] == digests[1]


def test_set_threads_reaches_the_session_options(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp32", tmp_path)
    tgt = type(get_target(TARGET))(get_spec(TARGET))  # a private instance: the cached one keeps its defaults
    tgt.set_threads(1)
    runner = tgt.load(art.path)
    assert runner.session.get_session_options().intra_op_num_threads == 1
    assert run_target(tgt, runner, mlp.x_verify[:3]).shape == (3, 10)


class _Eig(nn.Module):
    def forward(self, x):  # x (N, 1, 8, 8) -> (N, 8): no ONNX function exists for linalg_eig
        return torch.linalg.eigvals(x.reshape(-1, 8, 8)).real


def test_unsupported_op_names_the_op_and_what_to_try(tmp_path):
    x = digits_case("mlp").x_verify[:4]
    with pytest.raises(ConversionError, match=r"onnxruntime target, precision fp32: export step failed on op "
                                              r"'aten\.linalg_eig'.*Try: "):
        export(_Eig(), TARGET, "fp32", out=tmp_path / "eig", verify_data=(x, None))
    assert not (tmp_path / "eig.onnx").exists()  # nothing half-written


def test_option_values_are_checked(mlp, tmp_path):
    with pytest.raises(ValueError, match=r"activations='fp8': valid values are 'int8' and 'uint8'"):
        export_case(mlp, TARGET, "int8_static", tmp_path, activations="fp8")
    with pytest.raises(ValueError, match=r"has no option\(s\) \['nhwc'\]; its options: opset"):
        export_case(mlp, TARGET, "fp32", tmp_path, nhwc=True)


@pytest.mark.parametrize("precision", ["int8_dynamic", "int8_static"])
def test_int8_export_to_a_relative_path(mlp, tmp_path, monkeypatch, precision):
    """The quantization tools run in a scratch directory; an output path relative to the user's directory (the main
    example's runs/mnist/artifacts/...) was resolved inside the scratch directory and every int8 export of the README's
    main command failed with FileNotFoundError."""
    monkeypatch.chdir(tmp_path)
    art = export(mlp.model, TARGET, precision, out=f"runs/x/{precision}", calibration=mlp.calibration,
                 verify_data=(mlp.x_verify, mlp.y_verify))
    assert art.status == "verified", art.error
    written = Path(art.path).resolve()
    assert written.exists() and written.parent == (tmp_path / "runs" / "x").resolve()


class _OutlierNet(nn.Module):
    """One of 256 channels of the second MatMul's input is 100x the others (a transformer's FFN down-projection
    input looks like this), and its weight column is 100x smaller, so the output owes no more to that channel than
    to the others (as in a trained transformer). Tokens x features inputs, as in a transformer, export as MatMul."""

    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Linear(16, 256), nn.LayerNorm(256), nn.Linear(256, 4)
        with torch.no_grad():
            self.b.weight[:, 0] /= 100.0

    def forward(self, x):  # x (N, T, 16) -> (N, T, 4)
        return self.b(_Scale()(self.norm(self.a(x))))  # (N, T, 256) in the middle


@pytest.fixture(scope="module")
def outlier_case():
    torch.manual_seed(0)
    return _OutlierNet().eval(), torch.randn(96, 4, 16).numpy()  # (N, tokens, features)


LOOSE = {"min_sqnr_db": 0.0, "min_top1_agreement": 0.0}


@pytest.mark.parametrize("precision", ["int8_dynamic", "int8_static"])
def test_int8_gives_an_outlier_input_block_wise_scales(outlier_case, tmp_path, precision):
    """ondevice.outliers on ONNX Runtime: the MatMul whose input has the outlier channel becomes MatMulNBits (int8
    weights and input per block of 32), the other one keeps the precision's scheme (dynamic: DynamicQuantizeLinear ->
    MatMulInteger; static: QDQ), LayerNormalization keeps float scale and bias, and the artifact's metadata names the
    node. Only the block holding the outlier channel loses precision; one scale for the whole input (int8_dynamic
    without calibration samples, where they are optional) loses every channel's: measured here 21.7 dB against 6.5.
    (1,000x: 10.5 dB against 0.0; 30x: 31.6 against 17.2.)"""
    model, x = outlier_case
    art = export(model, TARGET, precision, out=tmp_path / "m", calibration=x[:64], verify_data=(x[64:], None),
                 thresholds=LOOSE)
    assert art.status == "verified", art.error
    ops = art.inspect["ops"]
    assert ops["com.microsoft.MatMulNBits"] == 1
    if precision == "int8_dynamic":
        assert ops["MatMulInteger"] == 1 and ops.get("MatMul", 0) == 0
    else:  # the other MatMul between DequantizeLinear / QuantizeLinear pairs
        assert ops["MatMul"] == 1 and ops["QuantizeLinear"] >= 1
    graph = onnx.load(str(art.path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    norm = next(n for n in graph.node if n.op_type == "LayerNormalization")
    assert norm.input[1] not in producer and norm.input[2] not in producer  # float initializers, no DequantizeLinear
    notes = graph_metadata(art.path)
    assert notes["ondevice.outlier_nodes"].startswith(
        "1 weight MatMul/Gemm node(s) whose calibrated input has outliers")
    assert art.verification["sqnr_db"] > 18.0
    if precision == "int8_dynamic":
        plain = export(model, TARGET, precision, out=tmp_path / "plain", verify_data=(x[64:], None), thresholds=LOOSE)
        plain_ops = plain.inspect["ops"]
        assert plain_ops.get("com.microsoft.MatMulNBits", 0) == 0 and plain_ops["MatMulInteger"] == 2
        assert graph_metadata(plain.path)["ondevice.outlier_nodes"] == (
            "not checked: no calibration samples were given (every weight MatMul has a per-tensor activation scale)")
        assert art.verification["sqnr_db"] > plain.verification["sqnr_db"] + 10.0


@pytest.mark.parametrize("precision", ["int8_dynamic", "int8_static"])
def test_outliers_per_tensor_keeps_the_fast_scheme_and_says_so(outlier_case, tmp_path, precision):
    """Option outliers='per_tensor': no MatMulNBits; int8_dynamic does not look for outliers (every MatMul
    MatMulInteger), int8_static quantizes the outlier MatMul's input per tensor at run time; the metadata says which."""
    model, x = outlier_case
    art = export(model, TARGET, precision, out=tmp_path / "m", calibration=x[:64], verify_data=(x[64:], None),
                 thresholds=LOOSE, outliers="per_tensor")
    assert art.status == "verified", art.error
    ops, note = art.inspect["ops"], graph_metadata(art.path)["ondevice.outlier_nodes"]
    assert ops.get("com.microsoft.MatMulNBits", 0) == 0
    if precision == "int8_dynamic":
        assert ops["MatMulInteger"] == 2 and note.startswith("not checked: option outliers='per_tensor'"), note
    else:
        assert ops["MatMulInteger"] == 1 and "input quantized per tensor at run time" in note, note
    with pytest.raises(ValueError, match=r"option outliers='rowwise': valid values are 'blockwise', 'per_tensor'"):
        export(model, TARGET, precision, out=tmp_path / "bad", calibration=x[:64], outliers="rowwise")


def graph_metadata(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_outlier_rule_names_the_matmul_whose_input_has_outliers(outlier_case, tmp_path):
    """The same rule on the exported float graph names exactly the second MatMul (a 2-D input's Gemm counts too)."""
    from ondevice.targets.onnxruntime.target import outlier_matmuls

    model, x = outlier_case
    fp32 = export(model, TARGET, "fp32", out=tmp_path / "f", calibration=x[:64], verify_data=(x[64:], None))
    g32 = onnx.load(str(fp32.path)).graph
    names = [n.name for n in g32.node if n.op_type == "MatMul"]
    found = outlier_matmuls(Path(fp32.path), tmp_path, {g32.input[0].name: x[:64]}, 32)
    assert len(names) == 2 and found == [names[1]]


def test_an_outlier_gemm_stays_float(tmp_path):
    """A 2-D input exports the linear layers as Gemm; the rule names the Gemm whose input has the outlier channel, and
    MatMulNBits cannot take a Gemm, so it stays float (float weight initializer, no DequantizeLinear before it) while
    the other Gemm is static int8; the metadata says so."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 256), _Scale(), nn.Linear(256, 4)).eval()
    with torch.no_grad():
        net[2].weight[:, 0] /= 100.0
    x = torch.randn(96, 16).numpy()  # (N, features): Gemm
    art = export(net, TARGET, "int8_static", out=tmp_path / "g", calibration=x[:64], verify_data=(x[64:], None),
                 thresholds=LOOSE)
    assert art.status == "verified", art.error
    graph = onnx.load(str(art.path)).graph
    inits = {i.name for i in graph.initializer}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 2 and art.inspect["ops"].get("com.microsoft.MatMulNBits", 0) == 0
    float_gemms = [n for n in gemms if n.input[1] in inits]  # the weight read straight from a float initializer
    assert len(float_gemms) == 1
    note = graph_metadata(art.path)["ondevice.outlier_nodes"]
    assert note.startswith("1 weight MatMul/Gemm node(s)") and note.endswith(float_gemms[0].name), note


class _Scale(nn.Module):
    def forward(self, h):  # h (..., 256): channel 0 is 100x the others
        return h * torch.cat([torch.full((1,), 100.0), torch.ones(255)])


def test_int8_dynamic_calibration_must_name_the_inputs(outlier_case, tmp_path):
    model, x = outlier_case
    tgt = get_target(TARGET)
    with pytest.raises(ValueError, match=r"onnxruntime int8_dynamic: the calibration samples hold \['wrong'\], the "
                                         r"graph takes \["):
        tgt.export(model, PRECISIONS["int8_dynamic"], (torch.from_numpy(x[:2]),), tmp_path / "m.onnx",
                   calibration={"wrong": x[:8]})
