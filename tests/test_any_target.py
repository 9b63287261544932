"""Any model through the targets: named inputs of any dtype, several outputs, state; the one batching and padding
path; the typed inspection; the input spec inside the artifact; and bad input named with its fix (exit code 2)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import cli, padded_tokens
from ondevice.errors import InputMismatchError
from ondevice.export import export, run_target
from ondevice.target import (IOTensor, Signature, check_feeds, get_target, pad_batch, run_batched)
from ondevice.textnets import text_encoder

ROOT = Path(__file__).resolve().parents[1]
T = 12  # tokens per sample


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    return padded_tokens(n, seed, high=100, length=T)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return text_encoder(vocab_size=100, dim=32, layers=1, heads=2, ffn=64, max_len=16, num_classes=5).eval()


@pytest.fixture(scope="module")
def onnx_encoder(encoder, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "enc.onnx"
    return export(encoder, "onnxruntime", "fp32", out=out, calibration=_tokens(32, 0),
                  verify_data=(_tokens(24, 1), None), preprocessing={"tokenizer": "words", "max_length": T,
                                                                     "vocab_size": 100})


# --- the shared batching helper --------------------------------------------------------------------------------
def test_one_padding_policy_repeats_the_last_sample():
    feeds = {"ids": np.arange(6).reshape(3, 2), "m": np.ones((3, 2), np.int64)}
    padded = pad_batch(feeds, 4)
    assert padded["ids"].tolist() == [[0, 1], [2, 3], [4, 5], [4, 5]]  # a copy of the last sample, never zeros
    calls = []

    def call(f):
        calls.append({k: v.shape for k, v in f.items()})
        return {"y": f["ids"].sum(1, keepdims=True)}

    out = run_batched(call, {"ids": np.arange(10).reshape(5, 2)}, 2)  # 2 + 2 + 1 (padded to 2)
    assert out["y"].ravel().tolist() == [1, 5, 9, 13, 17] and len(calls) == 3
    assert all(c == {"ids": (2, 2)} for c in calls)


def test_feeds_are_checked_and_converted_without_touching_ids():
    sig = Signature((IOTensor("ids", "int32", (None, 4)), IOTensor("x", "float32", (None, 3))), ())
    feeds = check_feeds(sig, {"ids": np.array([[1, 2, 3, 4]], np.int64), "x": np.zeros((1, 3), np.float64)})
    assert feeds["ids"].dtype == np.int32 and feeds["x"].dtype == np.float32
    with pytest.raises(InputMismatchError, match=r"input 'ids' takes int32, got float32; pass integer values .*"
                                                 r"never cast to float"):
        check_feeds(sig, {"ids": np.zeros((1, 4), np.float32), "x": np.zeros((1, 3), np.float32)})
    with pytest.raises(InputMismatchError, match=r"missing input\(s\) x \(float32 \[\?, 3\]\).*Pass every one by "
                                                 r"name"):
        check_feeds(sig, {"ids": np.zeros((1, 4), np.int64)})
    with pytest.raises(InputMismatchError, match=r"values 0..2147483648 do not fit"):
        check_feeds(sig, {"ids": np.array([[0, 1, 2, 2 ** 31]]), "x": np.zeros((1, 3), np.float32)})
    quant = Signature((IOTensor("x", "int8", (1, 2), quantization=(0.5, 1)),), ())
    assert check_feeds(quant, {"x": np.array([[1.0, -70.0]], np.float32)})["x"].tolist() == [[3, -128]]


# --- two int64 inputs, any batch, through the protocol ---------------------------------------------------------
def test_two_int64_inputs_keep_their_dtype_and_names(onnx_encoder, encoder):
    art = onnx_encoder
    assert art.status == "verified", art.error
    assert [i["name"] for i in art.inspect["inputs"]] == ["input_ids", "attention_mask"]
    assert {i["dtype"] for i in art.inspect["inputs"]} == {"int64"}  # no float cast anywhere
    assert art.inspect["inputs"][0]["shape"] == ["batch", "seq"]  # both axes dynamic in ONNX Runtime
    assert art.input_spec["inputs"][0]["dtype"] == "int64" and art.input_spec["structure"][0] == "dict"
    tgt = get_target("onnxruntime")
    runner = tgt.load(art.path)
    x = _tokens(5, 3)
    got = tgt.run(runner, x)["output"]
    with torch.no_grad():
        want = encoder(**{k: torch.from_numpy(v) for k, v in x.items()}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    longer = {k: np.concatenate([v, v[:, :4]], 1) for k, v in x.items()}  # T = 16: a dynamic seq axis takes it
    assert tgt.run(runner, longer)["output"].shape == (5, 5)


def test_the_artifact_carries_its_spec_and_preprocessing(onnx_encoder):
    import onnx

    meta = {p.key: p.value for p in onnx.load(onnx_encoder.path).metadata_props}
    spec = json.loads(meta["ondevice.input_spec"])
    assert [t["name"] for t in spec["inputs"]] == ["input_ids", "attention_mask"]
    assert json.loads(meta["ondevice.preprocessing"]) == {"tokenizer": "words", "max_length": T, "vocab_size": 100}
    r = cli("inspect", onnx_encoder.path)
    assert r.returncode == 0, r.stderr
    assert "preprocessing (from the artifact's own metadata):" in r.stdout and "max_length: 12" in r.stdout
    assert "inputs (in the file): input_ids int64['batch', 'seq'], attention_mask int64['batch', 'seq']" in r.stdout
    assert "status: verified" in r.stdout


def test_missing_input_names_the_input_and_how_to_pass_it(encoder, onnx_encoder, tmp_path):
    tgt = get_target("onnxruntime")
    runner = tgt.load(onnx_encoder.path)
    with pytest.raises(InputMismatchError, match=r"missing input\(s\) attention_mask \(int64 \[batch, seq\]\)\. The "
                                                 r"artifact takes exactly: input_ids .*attention_mask .*Pass every "
                                                 r"one by name"):
        tgt.run(runner, {"input_ids": _tokens(2, 0)["input_ids"]})
    with pytest.raises(InputMismatchError, match=r"unexpected input\(s\) 'token_type_ids'"):
        tgt.run(runner, {**_tokens(2, 0), "token_type_ids": np.zeros((2, T), np.int64)})
    # the export verb: samples without the mask are refused before anything is converted, with the model's inputs
    ids_only = {"input_ids": _tokens(8, 0)["input_ids"]}
    with pytest.raises(InputMismatchError, match=r"missing \['attention_mask'\].*pass the samples in the form the "
                                                 r"model takes \(inputs input_ids: int64\[batch, seq\], "
                                                 r"attention_mask"):
        export(encoder, "onnxruntime", "fp32", out=tmp_path / "x.onnx", calibration=_tokens(8, 0),
               verify_data=(ids_only, None), raise_on_failure=False)
    assert not (tmp_path / "x.onnx").exists()


def test_fixed_length_targets_refuse_a_longer_sequence_with_the_fix(encoder, tmp_path):
    art = export(encoder, "tflite", "fp32", out=tmp_path / "enc.tflite", calibration=_tokens(16, 0),
                 verify_data=(_tokens(16, 1), None))
    assert art.status == "verified", art.error
    assert any("fixed size seq=12" in n for n in art.options["notes"])  # said so, with the size
    assert art.input_spec["inputs"][0]["shape"] == ["batch", T]
    tgt = get_target("tflite")
    runner = tgt.load(art.path)  # the spec comes from the file's own metadata
    assert [t.dtype for t in tgt.signature(runner).inputs] == ["int32", "int32"]  # LiteRT's integer ids
    longer = {k: np.concatenate([v, v[:, :4]], 1) for k, v in _tokens(2, 0).items()}
    with pytest.raises(InputMismatchError, match=r"input 'input_ids' has 16 positions on axis 1, longer than the "
                                                 r"exported fixed length 12; truncate it to 12 .*onnxruntime"):
        tgt.run(runner, longer)
    got = tgt.run(runner, _tokens(3, 2))["output"]  # int64 ids fed to int32 inputs: converted, range-checked
    with torch.no_grad():
        want = encoder(**{k: torch.from_numpy(v) for k, v in _tokens(3, 2).items()}).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_executorch_error_0x12_is_translated(encoder, tmp_path):
    art = export(encoder, "executorch", "fp32", out=tmp_path / "enc.pte", calibration=_tokens(8, 0),
                 verify_data=(_tokens(8, 1), None))
    assert art.status == "verified", art.error
    tgt = get_target("executorch")
    runner = tgt.load(art.path)
    assert tgt.signature(runner).input_names == ["input_ids", "attention_mask"]  # names from the record
    bad = {"input_ids": np.zeros((1, T), np.float32), "attention_mask": np.ones((1, T), np.int64)}
    with pytest.raises(InputMismatchError, match=r"ExecuTorch refused the inputs \(InvalidArgument: .*\)\. The "
                                                 r"program takes exactly: input_ids \(int64 \[1, 12\]\)"):
        tgt.call(runner, bad)  # the raw call, past run()'s own checks: the runtime's 0x12 is named


# --- raise_on_failure=False, records, inspection schema ---------------------------------------------------------
class _Eig(torch.nn.Module):
    def forward(self, x):  # no ONNX function exists for linalg_eig
        return torch.linalg.eigvals(x.reshape(-1, 8, 8)).real


def test_raise_on_failure_false_returns_the_failed_artifact(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    art = export(_Eig(), "onnxruntime", "fp32", out=tmp_path / "eig.onnx", verify_data=(x, None),
                 raise_on_failure=False)
    assert art.status == "error" and "aten.linalg_eig" in art.error
    assert json.loads((tmp_path / "eig.onnx.json").read_text())["status"] == "error"
    assert not (tmp_path / "eig.onnx").exists()


def test_every_target_fills_the_same_inspection(tmp_path):
    from conformance_models import digits_case

    case = digits_case("mlp")
    expected = 4 * (64 * 64 + 64 + 10 * 64 + 10)  # float32 bytes of both Linear layers
    for target in ("onnxruntime", "executorch", "tflite", "coreml"):
        art = export(case.model, target, "fp32", out=tmp_path / f"mlp_{target}", calibration=case.calibration[:32],
                     verify_data=(case.x_verify[:32], case.y_verify[:32]))
        info = get_target(target).inspect(art.path).to_dict()
        for key in ("format", "ops", "num_ops", "weight_bytes", "weight_tensors", "inputs", "outputs",
                    "delegated_ops", "non_delegated_ops", "planned_memory_bytes", "metadata"):
            assert key in info, (target, key)
        assert info["weight_bytes"]["float32"] == expected, (target, info["weight_bytes"])  # bytes, everywhere
        assert info["weight_tensors"]["float32"] == 4, (target, info["weight_tensors"])  # tensor counts
        if target != "executorch":  # .pte has no metadata section: the spec lives in its record
            assert "ondevice.input_spec" in info["metadata"], target


# --- bad input: exit code 2, nothing written lost ----------------------------------------------------------------
def test_corrupted_and_mismatched_artifacts_exit_2_and_keep_the_files(onnx_encoder, tmp_path):
    bad = tmp_path / "truncated.onnx"
    data = Path(onnx_encoder.path).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    r = cli("inspect", str(bad))
    assert r.returncode == 2 and re.search(r"not a readable ONNX model .*export it again", r.stderr), r.stderr
    r = cli("bench", str(bad), "--vocab", "100", "--input-shape", "input_ids=1,12",
            "--input-shape", "attention_mask=1,12", "--out", str(tmp_path / "rep"))
    assert r.returncode == 2 and "cannot load it" in r.stderr + r.stdout, r.stderr[-2000:]
    assert bad.read_bytes() == data[: len(data) // 3]  # nothing deleted or rewritten
    # a record that belongs to another file: it names a target whose files end differently
    other = tmp_path / "enc.tflite"
    shutil.copy(onnx_encoder.path, other)
    shutil.copy(onnx_encoder.path + ".json", str(other) + ".json")
    before = Path(str(other) + ".json").read_bytes()
    r = cli("bench", str(other), "--out", str(tmp_path / "rep2"))
    assert r.returncode == 2 and "the record belongs to another file" in r.stderr, r.stderr[-2000:]
    assert Path(str(other) + ".json").read_bytes() == before


def test_bare_file_bench_synthesises_ids_below_the_vocabulary(onnx_encoder, tmp_path):
    bare = tmp_path / "third_party.onnx"
    shutil.copy(onnx_encoder.path, bare)  # no record beside it: a third-party file
    r = cli("bench", str(bare), "--input-shape", "input_ids=1,12", "--input-shape", "attention_mask=1,12",
            "--out", str(tmp_path / "nov"))
    assert r.returncode == 2 and re.search(r"input 'input_ids' is int64 \(token ids\?\): pass --vocab N", r.stderr)
    r = cli("bench", str(bare), "--vocab", "100", "--input-shape", "input_ids=1,12", "--input-shape",
            "attention_mask=1,12", "--min-queries", "16", "--min-seconds", "0", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["data"]["synthetic"] and "synthetic" in rep["warnings"][0]
    assert rep["data"]["inputs"]["input_ids"]["origin"].startswith("synthetic: token ids uniform in [0, 100)")
    assert rep["data"]["inputs"]["attention_mask"]["origin"].startswith("synthetic: ones")
    assert rep["items"][0]["status"] == "ok" and rep["items"][0]["runs"][0]["latency"]["n"] >= 16


def test_bench_inputs_npz_of_named_real_samples(onnx_encoder, tmp_path):
    samples = tmp_path / "samples.npz"
    np.savez(samples, **_tokens(20, 5))
    r = cli("bench", onnx_encoder.path, "--inputs", str(samples), "--min-queries", "16", "--min-seconds", "0",
            "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert not rep["data"]["synthetic"] and rep["data"]["inputs"]["input_ids"]["dtype"] == "int64"
    assert rep["items"][0]["accuracy"]["n"] == 20  # the artifact's outputs on every sample
    np.savez(samples, input_ids=_tokens(4, 5)["input_ids"].astype(np.float32),
             attention_mask=_tokens(4, 5)["attention_mask"])
    r = cli("bench", onnx_encoder.path, "--inputs", str(samples), "--out", str(tmp_path / "rep2"))
    assert r.returncode == 2 and "input 'input_ids' takes int64, got float32" in r.stderr + r.stdout, r.stderr[-2000:]


def test_stateful_bench_carries_the_state(tmp_path):
    """ONNX Runtime and LiteRT bind a call whose state output feeds the next call's state input."""
    from conformance_models import any_case

    case = any_case("lstm_stream")
    x0 = {k: v[:1] for k, v in case.x_verify.items()}
    with torch.no_grad():  # two steps of the PyTorch model on the same row, the state carried
        s1 = case.model(**{k: torch.from_numpy(v) for k, v in x0.items()})
        s2 = case.model(torch.from_numpy(x0["x"]), s1["h_next"], s1["c_next"])
    for target in ("onnxruntime", "tflite"):
        art = export(case.model, target, "fp32", out=tmp_path / f"lstm_{target}", calibration=case.calibration,
                     verify_data=(case.x_verify, None), input_spec=case.input_spec)
        assert art.status == "verified", art.error
        tgt = get_target(target)
        runner = tgt.load(art.path)
        step = tgt.bind(runner, tgt.prepare(runner, x0), {"h": "h_next", "c": "c_next"})
        step()
        out = step()
        logits = out["logits"] if isinstance(out, dict) else out[0]
        np.testing.assert_allclose(np.asarray(logits), s2["logits"].numpy(), rtol=1e-4, atol=1e-4)
    r = cli("bench", art.path, "--state", "h=h_next", "--state", "c=c_next", "--min-queries", "16",
            "--min-seconds", "0", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["config"]["state"] == {"h": "h_next", "c": "c_next"}
    assert rep["data"]["inputs"]["h"]["origin"].startswith("synthetic: zeros (initial state")


def test_tflite_input_shape_is_read_from_the_file(tmp_path):
    from conformance_models import digits_case

    case = digits_case("conv_bn")
    art = export(case.model, "tflite", "fp32", out=tmp_path / "nhwc.tflite", calibration=case.calibration[:16],
                 verify_data=(case.x_verify[:16], case.y_verify[:16]), nhwc=True)
    bare = tmp_path / "bare.tflite"
    shutil.copy(art.path, bare)  # no record: the bench reads the signature from the file itself
    # the file's own metadata (written by ondevice) maps its NHWC tensor to the model's NCHW input 'x'; a shape in
    # any other layout is refused, naming the shape the file takes and where it was read
    r = cli("bench", str(bare), "--input-shape", "1,8,8,1", "--out", str(tmp_path / "rep"))
    assert r.returncode == 2 and re.search(r"input 'x' takes shape \[1, 1, 8, 8\] \(read from the file "
                                           r".*bare\.tflite itself", r.stderr), r.stderr[-2000:]
    r = cli("bench", str(bare), "--min-queries", "16", "--min-seconds", "0", "--out", str(tmp_path / "rep2"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert rep["data"]["inputs"]["x"]["sample_shape"] == [1, 8, 8]


def test_core_and_bench_name_no_target():
    """Outside targets/, no code names a target: only docstrings, help texts and error prose may (AST scan)."""
    import ast

    pat = re.compile(r"onnxruntime|executorch|tflite|litert|ai_edge|coremltools|\bcoreml\b|\bonnx\b", re.I)
    found = []
    for p in sorted((ROOT / "ondevice").rglob("*.py")):
        if "targets" in p.parts:
            continue
        tree = ast.parse(p.read_text())
        prose: set[int] = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant):
                prose.add(id(body[0].value))  # docstrings
            if isinstance(node, ast.keyword) and node.arg in ("help", "description", "epilog"):
                prose.update(id(n) for n in ast.walk(node.value))
            if isinstance(node, ast.Raise) or (isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id in ("DESCRIPTION", "EPILOG") for t in node.targets)):
                prose.update(id(n) for n in ast.walk(node))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose \
                    and pat.search(node.value):
                found.append(f"{p.relative_to(ROOT)}:{node.lineno}: {node.value[:80]!r}")
    assert found == []
