"""Core ML with the models real deployments feed, checked on Linux by the reference evaluator: token ids and padding
masks (integer inputs, gathers, compare/select), the ops coremltools lacks (aten.alias registered, lstm_cell /
new_ones lowered), and a negative control per op family: a change the evaluator must see is seen, a change it must
not see is not."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import padded_tokens
from ondevice.export import export, run_target
from ondevice.target import get_target
from ondevice.textnets import text_encoder

T = 12
VOCAB = 100
UNUSED_ID = 99  # the samples below draw ids from [1, 90): row 99 of the table is never read


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    return padded_tokens(n, seed, high=90, length=T)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return text_encoder(vocab_size=VOCAB, dim=32, layers=1, heads=2, ffn=64, max_len=16, num_classes=5).eval()


@pytest.fixture(scope="module")
def package(encoder, tmp_path_factory):
    art = export(encoder, "coreml", "fp32", out=tmp_path_factory.mktemp("cm") / "enc.mlpackage",
                 calibration=_tokens(8, 0), verify_data=(_tokens(32, 1), None))
    assert art.status == "verified", art.error
    return art


def _torch(encoder, x: dict) -> np.ndarray:
    with torch.no_grad():
        return encoder(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()


def _table_row(pkg: Path, row: int, scale: float) -> None:
    """Scale row `row` of the token-embedding table (the gather's (VOCAB, D) const) in weight.bin, in place."""
    from ondevice.targets.coreml.mil_eval import load_program, load_spec

    gather = next(op for op in load_program(pkg).functions["main"].operations
                  if op.op_type == "gather" and op.x.shape and op.x.shape[0] == VOCAB)
    block = next(iter(load_spec(pkg).mlProgram.functions["main"].block_specializations.values()))
    const = next(o for o in block.operations if o.type == "const" and o.outputs[0].name == gather.x.name)
    wfile = pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = bytearray(wfile.read_bytes())
    sentinel, _, nbytes, off = struct.unpack_from("<IIQQ", raw, const.attributes["val"].blobFileValue.offset)
    assert sentinel == 0xDEADBEEF
    table = np.frombuffer(bytes(raw[off:off + nbytes]), np.float32).reshape(VOCAB, -1).copy()
    table[row] *= scale
    raw[off:off + nbytes] = table.tobytes()
    wfile.write_bytes(bytes(raw))


def test_integer_inputs_and_gathers_run_in_numpy_kernels(package, encoder):
    info = get_target("coreml").inspect(package.path)
    assert [(i["name"], i["dtype"]) for i in info["inputs"]] == [("input_ids", "int32"), ("attention_mask", "int32")]
    how = info["evaluator_ops"]
    assert how["gather"] == "numpy" and how["select"] == "numpy" and how["greater_equal"] == "numpy"
    tgt = get_target("coreml")
    x = _tokens(6, 7)
    np.testing.assert_allclose(run_target(tgt, tgt.load(package.path), x)["output"], _torch(encoder, x), rtol=1e-4,
                               atol=1e-5)


def test_gather_negative_control(package, encoder, tmp_path):
    """Scaling a table row the inputs use moves the outputs; scaling one they never use leaves them bit-identical."""
    tgt = get_target("coreml")
    x = _tokens(16, 3)
    base = run_target(tgt, tgt.load(package.path), x)["output"]
    used = int(x["input_ids"][0, 0])
    for row, moves in ((used, True), (UNUSED_ID, False)):
        pkg = tmp_path / f"row{row}.mlpackage"
        shutil.copytree(package.path, pkg)
        _table_row(pkg, row, 1.5)
        got = run_target(tgt, tgt.load(pkg), x)["output"]
        if moves:
            assert np.abs(got - base).max() > 1e-3
        else:
            np.testing.assert_array_equal(got, base)


def test_mask_negative_control(package, encoder):
    """The padding mask is honoured exactly: ids under mask 0 change nothing, unmasking a position changes the output
    (the compare / select / cast ops on integer inputs are evaluated, not skipped)."""
    tgt = get_target("coreml")
    runner = tgt.load(package.path)
    x = _tokens(8, 4)
    base = run_target(tgt, runner, x)["output"]
    other_pad = {**x, "input_ids": np.where(x["attention_mask"] == 1, x["input_ids"], 77)}
    np.testing.assert_allclose(run_target(tgt, runner, other_pad)["output"], base, rtol=0, atol=1e-6)
    unmasked = {**x, "attention_mask": np.ones_like(x["attention_mask"])}
    got = run_target(tgt, runner, unmasked)["output"]
    assert np.abs(got - base).max() > 1e-3
    np.testing.assert_allclose(got, _torch(encoder, unmasked), rtol=1e-4, atol=1e-5)  # and it is the right change


def test_lstm_cell_is_lowered_and_its_weights_count(tmp_path):
    """coremltools has no lstm_cell: it is lowered with torch's decomposition; a 1% change to one LSTM weight then
    fails verification (the lowered sigmoid/tanh/split ops are evaluated, not passed through)."""
    from conformance_models import any_case
    from ondevice.precision import get_precision
    from ondevice.targets.coreml.mil_eval import load_program
    from ondevice.verify import compare, thresholds_for
    from test_target_coreml import _perturb_const

    case = any_case("lstm_stream")
    art = export(case.model, "coreml", "fp32", out=tmp_path / "lstm.mlpackage", calibration=case.calibration,
                 verify_data=(case.x_verify, None), input_spec=case.input_spec)
    assert art.status == "verified", art.error
    ops = art.inspect["ops"]
    assert ops.get("sigmoid", 0) >= 3 and ops.get("tanh", 0) >= 2 and "lstm" not in ops
    tgt = get_target("coreml")
    ref = run_target(tgt, tgt.load(art.path), case.x_verify)
    bad = tmp_path / "moved.mlpackage"
    shutil.copytree(art.path, bad)
    first = next(op for op in load_program(bad).functions["main"].operations if op.op_type == "linear")
    _perturb_const(bad, first.weight.name, 0.01)
    moved = run_target(tgt, tgt.load(bad), case.x_verify)
    c = compare(ref, moved, None, thresholds_for(get_precision("fp32")), task="classification")
    assert not c.passed and any("not within rtol" in f for f in c.failures)


def test_alias_from_a_buffer_slice_converts(tmp_path):
    """causal_lm slices its causal-mask buffer to the full length: torch.export records aten.alias, which
    coremltools does not know; it is registered as coremltools' own no-op and the model converts."""
    from ondevice.textnets import causal_lm

    torch.manual_seed(0)
    lm = causal_lm(vocab_size=50, dim=16, layers=1, heads=2, ffn=32, max_len=T).eval()
    x = _tokens(4, 0)
    x["input_ids"] = x["input_ids"] % 50
    art = export(lm, "coreml", "fp32", out=tmp_path / "lm.mlpackage", verify_data=(x, None), task="token_lm")
    assert art.status == "verified", art.error
    assert art.verification["criteria"]["next_token_agreement"] == 1.0


class _Inner(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.eigvals(x.reshape(-1, 8, 8)).real


class _Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)
        self.block = _Inner()

    def forward(self, x):
        return self.block(self.lin(x.flatten(1)))


def test_an_op_that_still_fails_is_named_with_its_module(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    art = export(_Outer(), "coreml", "fp32", out=tmp_path / "eig", verify_data=(x, None), raise_on_failure=False)
    assert art.status == "error"
    assert "torch op 'linalg_eig' (from module 'block' (_Inner), test_coreml_any_model.py" in art.error
