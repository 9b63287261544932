"""ExecuTorch target: real .pte programs (XNNPACK delegate) of models trained on real digits, run by
executorch.runtime."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from conformance_models import digits_case
from helpers import export_case
from ondevice.errors import ConfigError, ConversionError
from ondevice.export import export, run_target, torch_outputs
from ondevice.precision import get_precision
from ondevice.target import get_target

TARGET = "executorch"


@pytest.fixture(scope="module")
def mlp():
    return digits_case("mlp")


def test_fp32_is_fully_delegated_and_matches_torch(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp32", tmp_path)
    assert art.status == "verified", art.error
    info = art.inspect
    assert info["delegated_ops"]["XNNFullyConnected"] == 2
    assert info["num_non_delegated_ops"] == 0
    assert [d["backend"] for d in info["delegates"]] == ["XnnpackBackend"]
    assert info["inputs"] == [{"name": "input_0", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert info["weight_dtypes"] == {"float32": 4}  # 2 weights + 2 biases inside the delegate
    assert info["weight_bytes"]["float32"] == 4 * (64 * 64 + 64 + 10 * 64 + 10)
    mem = art.runtime_memory
    assert mem["planned_bytes"] == sum(mem["non_const_buffer_sizes"][1:]) > 0
    tgt = get_target(TARGET)
    x = mlp.x_verify[:5]  # a batch-1 program runs any N (one sample per call)
    np.testing.assert_allclose(run_target(tgt, tgt.load(art.path), x), torch_outputs(mlp.model, x), rtol=1e-4, atol=1e-5)


def test_batch_option_pads_the_last_chunk(mlp, tmp_path):
    art = export_case(mlp, TARGET, "fp32", tmp_path, batch=4)
    assert art.inspect["inputs"][0]["shape"] == [4, 1, 8, 8]
    tgt = get_target(TARGET)
    x = mlp.x_verify[:10]  # 4 + 4 + 2 (padded to 4)
    np.testing.assert_allclose(run_target(tgt, tgt.load(art.path), x), torch_outputs(mlp.model, x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match=r"option batch=0: must be >= 1"):
        export_case(mlp, TARGET, "fp32", tmp_path, batch=0)


def test_int8_static_has_per_channel_int8_weights(mlp, tmp_path):
    art = export_case(mlp, TARGET, "int8_static", tmp_path)
    assert art.status == "verified", art.error
    assert art.inspect["xnnpack_weight_dtypes"] == {"qcint8": 2, "qcint32": 2}  # per-channel weights and biases
    assert art.inspect["num_non_delegated_ops"] == 0
    assert art.verification["sqnr_db"] >= 20.0 and art.verification["top1_agreement"] >= 0.98


def test_int8_static_ranges_come_from_the_calibration_samples(mlp):
    """The observed input range of the quantized graph follows the calibration samples."""
    tgt = get_target(TARGET)
    prec = get_precision("int8_static")
    ex = (torch.from_numpy(mlp.calibration[:1]),)

    def first_activation_scale(cal: np.ndarray) -> float:
        gm = tgt.quantize(mlp.model, prec, ex, {"x": cal})  # calibration samples by input name
        q = next(n for n in gm.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target))
        return float(q.args[1])

    s1 = first_activation_scale(mlp.calibration)
    s3 = first_activation_scale(mlp.calibration * 3.0)
    assert s3 == pytest.approx(3.0 * s1, rel=0.05)  # HistogramObserver: same samples, three times the range


def test_int8_dynamic_quantizes_linear_weights_and_activations_at_run_time(mlp, tmp_path):
    art = export_case(mlp, TARGET, "int8_dynamic", tmp_path)
    assert art.status == "verified", art.error
    info = art.inspect
    assert info["xnnpack_weight_dtypes"]["qcint8"] == 2  # both Linear weights, per channel
    assert info["delegated_ops"]["XNNConvert"] == 2  # fp32 -> dynamically quantized int8 before each Linear


def test_transformer_reports_partial_delegation(tmp_path):
    case = digits_case("transformer")
    art = export_case(case, TARGET, "fp32", tmp_path)
    assert art.status == "verified", art.error
    info = art.inspect
    assert info["delegated_ops"]["XNNSoftmax"] == 1 and info["delegated_ops"]["XNNBatchMatrixMultiply"] == 2
    assert info["non_delegated_ops"]["aten::native_layer_norm.out"] == 3  # LayerNorm runs on portable kernels
    assert info["num_ops"] == info["num_delegated_ops"] + info["num_non_delegated_ops"]


def test_export_is_deterministic(mlp, tmp_path):
    paths = [export_case(mlp, TARGET, "int8_static", tmp_path / str(i)).path for i in range(2)]
    digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths]
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_ptq_quantizer_without_qat_patterns_gives_identical_programs(tmp_path):
    """ptq_quantizer drops the QAT-only conv+BatchNorm patterns; on a conv+BN model the .pte is byte-identical."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)

    case = digits_case("conv_bn")
    tgt, prec = get_target(TARGET), get_precision("int8_static")
    ex = (torch.from_numpy(case.calibration[:1]),)
    stock = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    blobs = []
    for i, quantizer in enumerate((None, stock)):
        path = tgt.export(tgt.quantize(case.model, prec, ex, {"x": case.calibration}, quantizer=quantizer), prec, ex,
                          tmp_path / f"{i}.pte")
        blobs.append(path.read_bytes())
    assert blobs[0] == blobs[1]


class _DataDependent(nn.Module):
    def forward(self, x):  # Python control flow on a tensor value: torch.export cannot capture it
        return x.flatten(1)[:, :10] if x.sum() > 0 else -x.flatten(1)[:, :10]


class _Eig(nn.Module):
    def forward(self, x):  # x (N, 1, 8, 8) -> (N, 8); the runtime has no kernel for linalg_eig
        return torch.linalg.eigvals(x.reshape(-1, 8, 8)).real


def test_conversion_errors_name_the_step_and_the_op(mlp, tmp_path):
    x = mlp.x_verify[:4]
    with pytest.raises(ConversionError, match=r"executorch target, precision fp32: capture step failed.*"
                                              r"data-dependent.*Try: make the model traceable"):
        export(_DataDependent(), TARGET, "fp32", out=tmp_path / "dd", verify_data=(x, None))
    with pytest.raises(ConversionError, match=r"kernels step failed on op\(s\) aten::linalg_eig\.out"):
        export(_Eig(), TARGET, "fp32", out=tmp_path / "eig", verify_data=(x, None))
    assert not (tmp_path / "eig.pte").exists()


def test_threads_cannot_change_after_a_load(mlp, tmp_path):
    tgt = get_target(TARGET)
    tgt.load(export_case(mlp, TARGET, "fp32", tmp_path).path)
    with pytest.raises(RuntimeError, match=r"cannot change the thread count to 3 after a program was loaded"):
        tgt.set_threads(3)


@pytest.mark.slow
def test_threads_are_set_before_the_first_load(tmp_path):
    """In a fresh process (the pool is process-wide): set_threads(1) then load -> the pool has 1 thread."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from conformance_models import digits_case
        from ondevice.export import export
        from ondevice.target import get_target
        from executorch.extension.pybindings import portable_lib
        case = digits_case("mlp")
        tgt = get_target("executorch")
        tgt.set_threads(1)
        art = export(case.model, "executorch", "fp32", out={str(tmp_path / 'm')!r},
                     verify_data=(case.x_verify, case.y_verify))
        print("status", art.status, "threads", portable_lib._threadpool_get_thread_count())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "status verified threads 1" in out.stdout


@pytest.mark.slow
def test_int8_of_a_hugging_face_bert_quantizes_and_runs(tmp_path):
    """PT2E's prepare turned Hugging Face's `kv_arange += kv_offset` into a float32 constant, so the mask's index
    became float and every int8 export of all-MiniLM-L6-v2 failed with "tensors used as indices must be long";
    the integer arithmetic keeps its dtype now. Real MiniLM (one of its layers), real WordNet glosses."""
    from ondevice.data import load_dataset
    from ondevice.models import build_model
    from ondevice.targets.executorch.target import integral_constants

    torch.manual_seed(0)
    model = build_model("hf:minilm", head="embedding", config={"num_hidden_layers": 1}).eval()
    s = load_dataset("wordnet", kwargs={"tokenizer": "minilm", "max_length": 16}, limit_train=64, limit_test=64)
    cal = {k: v.numpy() for k, v in s.train.batch(torch.arange(32))[0].items()}
    ver = {k: v.numpy() for k, v in s.test.batch(torch.arange(64))[0].items()}
    art = export(model, TARGET, "int8_dynamic", out=tmp_path / "m.pte", calibration=cal, verify_data=(ver, None),
                 task="embedding", raise_on_failure=False)
    assert art.status == "verified", art.error
    assert art.verification["criteria"]["cosine"] > 0.99


@pytest.mark.slow
def test_int8_of_a_hugging_face_bert_stores_the_embedding_table_as_uint8_rows(tmp_path):
    """all-MiniLM-L6-v2's token table is 11.7M of its 22.7M parameters; the XNNPACKQuantizer left it fp32 (the MiniLM
    student's int8 file was 0.77x its fp32 file). Both int8 precisions now store every table as uint8 rows read by
    quantized_decomposed::embedding_byte, and int8_static keeps the mask / residual adds and outlier inputs out of
    per-tensor int8. Real MiniLM (two of its layers), real WordNet glosses, run in the ExecuTorch runtime."""
    from ondevice.data import load_dataset
    from ondevice.models import build_model

    torch.manual_seed(0)
    model = build_model("hf:minilm", head="embedding", config={"num_hidden_layers": 2}).eval()
    s = load_dataset("wordnet", kwargs={"tokenizer": "minilm", "max_length": 16}, limit_train=64, limit_test=64)
    cal = {k: v.numpy() for k, v in s.train.batch(torch.arange(64))[0].items()}
    ver = {k: v.numpy() for k, v in s.test.batch(torch.arange(64))[0].items()}

    def ex(precision, **options):
        art = export(model, TARGET, precision, out=tmp_path / f"{precision}{len(options)}.pte", calibration=cal,
                     verify_data=(ver, None), task="embedding", raise_on_failure=False, **options)
        assert art.status == "verified", art.error
        return art

    fp32, dyn, static = ex("fp32"), ex("int8_dynamic"), ex("int8_static")
    dyn_fp32_table = ex("int8_dynamic", embeddings="fp32")
    table = 30522 * 384  # token embeddings
    assert dyn_fp32_table.size_bytes - dyn.size_bytes > 0.74 * 3 * table  # 4 -> 1 byte per value (+ row scales)
    for art in (dyn, static):
        assert art.inspect["non_delegated_ops"].get("quantized_decomposed::embedding_byte.out") == 3  # word/pos/type
        assert art.size_bytes < 0.3 * fp32.size_bytes
        assert art.verification["criteria"]["cosine"] > 0.99
    with pytest.raises(ConfigError, match=r"option embeddings: expected one of int8, fp32, got 'int4'"):
        export(model, TARGET, "int8_dynamic", out=tmp_path / "bad.pte", calibration=cal, verify_data=(ver, None),
               task="embedding", embeddings="int4")


def test_outlier_nodes_are_the_ops_whose_calibrated_input_has_outliers():
    """ondevice.outliers (OUTLIER_RATIO): max|x| over the 99th percentile of |x|. One of 256 channels of the second layer's input is
    1,000x the others (a transformer's FFN down-projection input looks like this); the first layer's input is plain
    data."""
    from ondevice.targets.executorch.target import capture, outlier_nodes

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 256), nn.Linear(256, 4)

        def forward(self, x):
            h = self.a(x)
            return self.b(h * torch.cat([torch.full((1,), 1000.0), torch.ones(255)]))

    torch.manual_seed(0)
    gm, _ = capture(Net().eval(), (torch.randn(1, 16),))
    chunks = [(torch.randn(32, 16),), (torch.randn(32, 16),)]
    assert outlier_nodes(gm, chunks) == {"linear_1"}
    names = [n.name for n in gm.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    assert names == ["linear", "linear_1"]


@pytest.mark.parametrize("op,const_first,expected", [
    ("add", False, [2, 3, 4]), ("add", True, [2, 3, 4]), ("sub", True, [2, 1, 0]), ("mul", True, [0, 2, 4])])
def test_integral_constants_keeps_integer_arithmetic_integer(op, const_first, expected):
    """The pass on its own: a float 0-dim constant with an integral value meeting an int64 tensor, on either side,
    takes the tensor's dtype; the same constant added to a float tensor still gives float."""
    from ondevice.targets.executorch.target import integral_constants

    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.zeros(3, dtype=torch.int64)
    y = g.placeholder("y")
    y.meta["val"] = torch.zeros(3)
    c = g.get_attr("c")
    fn = getattr(torch.ops.aten, op).Tensor
    g.output((g.call_function(fn, (c, x) if const_first else (x, c)),
              g.call_function(torch.ops.aten.add.Tensor, (y, c))))
    gm = torch.fx.GraphModule({"c": torch.tensor(2.0)}, g)
    assert integral_constants(gm).c.dtype == torch.int64
    out = gm(torch.arange(3), torch.zeros(3))
    assert out[0].dtype == torch.int64 and out[0].tolist() == expected
    assert out[1].dtype == torch.float32 and out[1].tolist() == [2.0, 2.0, 2.0]


def test_integral_constants_leaves_fractional_and_in_place_targets_alone():
    from ondevice.targets.executorch.target import integral_constants

    g = torch.fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.zeros(3, dtype=torch.int64)
    h, c = g.get_attr("h"), g.get_attr("c")
    g.output((g.call_function(torch.ops.aten.add.Tensor, (x, h)), g.call_function(torch.ops.aten.add_.Tensor, (c, x))))
    gm = integral_constants(torch.fx.GraphModule({"h": torch.tensor(0.5), "c": torch.tensor(2.0)}, g))
    assert gm.h.dtype == torch.float32 and gm.c.dtype == torch.float32
