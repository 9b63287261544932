"""Cross-target conformance: every registered target x every precision in its spec x every conformance model.

Each case runs the real verb `ondevice.export.export` (quantize -> convert -> load in the real runtime -> run
held-out real samples -> compare with PyTorch) with real calibration samples and the precision's default
thresholds, then loads the written artifact afresh and verifies it again, fed in batches of 7. Targets are picked
up through `ondevice.target.target_names()`, so a new target folder joins the matrix without editing this file.

Default run: every target x every precision on the MLP and the example student (QUICK_MODELS). The other models
are marked `slow` (`pytest -m slow` runs them, `pytest -m "slow or not slow"` the whole matrix). A JSON report
of every case that ran (size, SQNR, top-1 agreement, accuracy, op coverage, seconds) is written atomically at the
end of the session to $ONDEVICE_CONFORMANCE_REPORT, else build/conformance.json; its `cells` are what
`benchmarks/conformance_matrix.py` commits as benchmarks/results/conformance_matrix.json.

The models include what real deployments feed (tests/conformance_models.py): int64 token ids with a padding mask,
a causal LM's (B, T, V) logits, a streaming LSTM with its state in and out, two inputs and two outputs, and a
MobileNetV3 block; each is verified by its task's criteria (ondevice.verify).

Known failures live in ONE table, EXPECTED_FAILURES: (pattern of the converter's or runtime's own error, or of the
verification criterion a precision missed, and why, with the measured numbers). Each is an xfail that only counts
when the artifact's recorded error matches the pattern: one failing for another reason is a plain failure; a case
that starts passing is XPASS(strict) -> failure, except the few in VARIES_BY_CPU that miss a floor by a hair with
int8 kernels that differ between CPUs. So the table cannot go stale silently.
"""
from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import pytest

import conformance_models as cm
from helpers import export_case
from ondevice.errors import MissingBackendError
from ondevice.export import fit_to_spec, named_arrays, run_target, torch_outputs
from ondevice.flatmodel import flat_model
from ondevice.spec import InputSpec
from ondevice.io import atomic_write_json, machine_record
from ondevice.target import get_spec, get_target, target_names
from ondevice.verify import compare, thresholds_for

QUICK_MODELS = ("mlp", "student")
REPORT_ENV = "ONDEVICE_CONFORMANCE_REPORT"
DEFAULT_REPORT = Path(__file__).resolve().parent.parent / "build" / "conformance.json"

# (target, precision, model) -> (regex on the artifact's recorded error, why it fails). Two kinds of entries, each
# measured on this machine (see the targets' READMEs): a genuine converter/runtime limit, named by the converter's or
# runtime's own words; and a precision that verification measured too lossy for a model (the pattern is the criterion
# it missed, the reason carries the measured numbers). "*" in the model slot covers every model.
_SMALL = ("every weight tensor of this model has fewer than 2048 elements, the floor below which Core ML leaves a "
          "tensor uncompressed (coremltools' weight_threshold), so nothing is compressed: precision not applied")
_NARROW = ("{what} without fine-tuning is too coarse for this 32-wide model: measured {numbers}. Fine-tune after "
           "compression or keep this model at int8/fp16")
_STATIC_ATTENTION = ("static int8 quantizes the activations of attention (scores, softmax, LayerNorm) with one min-max "
                     "range per tensor, and this small transformer's activations have outliers: measured {numbers}. "
                     "Use int8_dynamic (weights int8, activations float) for transformers")
_SMALL_HEAD = ("the 'ink' head is a (N, 1) regression output of small range; int8 activations leave it at {numbers}, "
               "under the 20 dB int8 floor, while the digit head agrees on >= 99.7% of samples")
EXPECTED_FAILURES: dict[tuple[str, str, str], tuple[str, str]] = {
    **{("coreml", p, "dw_separable"): (r"precision not applied", _SMALL)
       for p in ("int8_weight_only", "int4_weight_only", "palettize4", "prune50")},
    ("coreml", "int4_weight_only", "causal_lm"): (r"next_token_agreement 0\.\d+ < 0\.85", _NARROW.format(
        what="per-block int4 weights", numbers="next-token agreement 0.58, KL 0.076 nats/token, SQNR 20 dB")),
    ("coreml", "palettize4", "causal_lm"): (r"next_token_agreement 0\.\d+ < 0\.85", _NARROW.format(
        what="a 16-entry palette per tensor", numbers="next-token agreement 0.68, KL 0.050 nats/token, SQNR 19 dB")),
    ("coreml", "prune50", "causal_lm"): (r"next_token_agreement 0\.\d+ < 0\.75", _NARROW.format(
        what="50% magnitude pruning", numbers="next-token agreement 0.10, KL 0.99 nats/token, SQNR 11 dB")),
    ("coreml", "int4_weight_only", "two_in_two_out"): (r"SQNR of 'ink' \d+\.\d+ dB < 12 dB", _NARROW.format(
        what="per-block int4 weights", numbers="SQNR of the 'ink' regression head 5.2 dB (digit agreement 0.994)")),
    ("coreml", "palettize4", "two_in_two_out"): (r"SQNR of 'ink' \d+\.\d+ dB < 12 dB", _NARROW.format(
        what="a 16-entry palette per tensor", numbers="SQNR of the 'ink' regression head 2.6 dB")),
    ("coreml", "prune50", "two_in_two_out"): (r"SQNR of 'ink' \d+\.\d+ dB < 10 dB", _NARROW.format(
        what="50% magnitude pruning", numbers="SQNR of the 'ink' regression head 8.7 dB")),
    ("executorch", "int8_static", "causal_lm"): (r"next_token_agreement 0\.\d+ < 0\.95", _STATIC_ATTENTION.format(
        numbers="SQNR 18.4 dB, next-token agreement 0.52, KL 0.17 nats/token")),
    ("onnxruntime", "int8_dynamic", "two_in_two_out"): (r"SQNR of 'ink' \d+\.\d+ dB < 20 dB", _SMALL_HEAD.format(
        numbers="14.2 dB")),
    ("onnxruntime", "int8_static", "two_in_two_out"): (r"SQNR of 'ink' \d+\.\d+ dB < 20 dB", _SMALL_HEAD.format(
        numbers="14.9 dB")),
    # misses by a hair on this machine (AVX2 without VNNI: ONNX Runtime quantizes with reduce_range here); int8 kernels
    # differ between CPUs, so these may pass elsewhere (non-strict, see VARIES_BY_CPU)
    ("onnxruntime", "int8_dynamic", "causal_lm"): (r"next_token_agreement 0\.9\d+ < 0\.95", (
        "measured next-token agreement 0.948 against the 0.95 floor (3 of 128 x 16 tokens more than allowed) while "
        "KL is 0.0017 nats/token and SQNR 38 dB: near-ties of a barely trained byte LM flip under int8")),
    ("tflite", "int8_static", "causal_lm"): (r"next_token_agreement 0\.9\d+ < 0\.95", (
        "measured next-token agreement 0.938 against the 0.95 floor while KL is 0.0011 nats/token and SQNR 39 dB: "
        "near-ties of a barely trained byte LM flip under int8 activations")),
    ("onnxruntime", "int8_static", "causal_lm"): (r"next_token_agreement 0\.9\d+ < 0\.95", (
        "measured next-token agreement 0.946 against the 0.95 floor while KL is 0.0011 nats/token and SQNR 39 dB "
        "(LayerNormalization float since the static int8 rework; every op QDQ gave 18 dB and agreement 0.52): "
        "near-ties of a barely trained byte LM flip under int8 activations")),
    ("tflite", "int8_static", "token_encoder"): (r"top1_agreement 0\.9\d+ < 0\.98", (
        "measured on an Intel Xeon with AVX-512 VNNI and AMX: top-1 agreement 0.977 on 128 samples against the 0.98 "
        "floor (3 samples instead of 2) at SQNR 37.6 dB, accuracy unchanged (0.422); verified on AMD EPYC")),
    ("onnxruntime", "int8_static", "lstm_stream"): (r"top1_agreement of 'logits' 0\.9\d+ < 0\.98", (
        "measured top-1 agreement 0.977 on 128 samples against the 0.98 floor (3 samples instead of 2) at SQNR 36 dB")),
}
# Entries whose outcome depends on the CPU's int8 kernels: xfail without strict, so a pass elsewhere is not a failure.
VARIES_BY_CPU = {("onnxruntime", "int8_dynamic", "causal_lm"), ("tflite", "int8_static", "causal_lm"),
                 ("onnxruntime", "int8_static", "causal_lm"), ("tflite", "int8_static", "token_encoder"),
                 ("onnxruntime", "int8_static", "lstm_stream"), ("onnxruntime", "int8_dynamic", "two_in_two_out"),
                 ("onnxruntime", "int8_static", "two_in_two_out")}


class ExpectedConverterError(AssertionError):
    """Raised only when a case fails with the error its EXPECTED_FAILURES entry names (the strict xfail's `raises`)."""


def expected_failure(target: str, precision: str, model: str) -> tuple[str, str] | None:
    return EXPECTED_FAILURES.get((target, precision, model)) or EXPECTED_FAILURES.get((target, precision, "*"))


def _cases():
    for target in target_names():
        for precision in get_spec(target).precisions:
            for model in cm.MODEL_NAMES:
                marks = [] if model in QUICK_MODELS else [pytest.mark.slow]
                expected = expected_failure(target, precision, model)
                if expected:
                    strict = (target, precision, model) not in VARIES_BY_CPU
                    marks.append(pytest.mark.xfail(strict=strict, reason=expected[1], raises=ExpectedConverterError))
                yield pytest.param(target, precision, model, id=f"{target}-{precision}-{model}", marks=marks)


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def example_student() -> cm.ModelCase:
    """The example student: ondevice.models.build_model("mnist_small_cnn") trained briefly on real MNIST, with
    256 real training images for calibration and 1000 real test images for verification. (Swap in a distilled
    student by returning another ModelCase here.)"""
    return cm.student_case()


@pytest.fixture(scope="session")
def conformance_report():
    """Collects one record per case; written atomically when the session ends."""
    records: list[dict] = []
    started = time.time()
    yield records
    if not records:
        return
    per_target: dict[str, dict] = {}
    cells = [_cell(r) for r in records]
    fp32 = {(c["model"], c["target"]): c["size_bytes"] for c in cells if c["precision"] == "fp32" and c["size_bytes"]}
    for c in cells:
        base = fp32.get((c["model"], c["target"]))
        c["size_ratio_vs_fp32"] = c["size_bytes"] / base if base and c["size_bytes"] else None
    for r in records:
        t = per_target.setdefault(r["target"], {"cases": 0, "verified": 0, "seconds": 0.0})
        t["cases"] += 1
        t["verified"] += r["status"] == "verified"
        t["seconds"] += r["seconds"]
    path = Path(os.environ.get(REPORT_ENV) or DEFAULT_REPORT)
    atomic_write_json(path, {
        "what": "ondevice cross-target conformance (tests/test_conformance.py); seconds are measured wall time "
                "of export+verify per case on the machine below",
        "machine": machine_record(),
        "session_seconds": time.time() - started,
        "per_target": per_target,
        "models": {name: {"train_accuracy": c.train_accuracy, "test_accuracy": c.test_accuracy,
                          "verify_samples": int(len(c.x_verify))}
                   for name, c in _used_cases.items()},
        "expected_failures": {"/".join(k): {"error": v[0], "reason": v[1]} for k, v in EXPECTED_FAILURES.items()},
        "cells": cells,
        "cases": records,
    })


def _cell(r: dict) -> dict:
    """One matrix cell in the committed schema: status verified | xfail | failed, the reason (the converter's own error
    for an xfail), SQNR, agreement and the size relative to the same target's fp32 file of that model."""
    status = "verified" if r["status"] == "verified" else ("xfail" if r.get("expected_failure") else "failed")
    crit = r.get("criteria") or {}
    agreement = r.get("top1_agreement")
    kind = "top1_agreement" if agreement is not None else None
    for k in ("next_token_agreement", "nn_agreement@1", "digit.top1_agreement"):
        if agreement is None and k in crit:
            agreement, kind = crit[k], k
    return {"model": r["model"], "target": r["target"], "precision": r["precision"], "status": status,
            "reason": None if status == "verified" else (r.get("error") or "").strip()[:600] or None,
            "sqnr_db": r.get("sqnr_db"), "agreement": agreement, "agreement_kind": kind,
            "size_bytes": r.get("size_bytes"), "size_ratio_vs_fp32": None, "criteria": crit,
            "seconds": r.get("seconds"), "task": r.get("task")}


_used_cases: dict[str, cm.ModelCase] = {}


def _model_case(model: str, request) -> cm.ModelCase:
    case = request.getfixturevalue("example_student") if model == "student" else cm.make_case(model)
    _used_cases[model] = case
    return case


def _op_coverage(info: dict) -> dict:
    """What the report keeps of `inspect`: ops, and the delegated/non-delegated split where a target has one."""
    keep = ("ops", "num_ops", "delegated_ops", "non_delegated_ops", "num_delegated_ops", "num_non_delegated_ops",
            "weight_dtypes")
    return {k: info[k] for k in keep if k in info}


# ------------------------------------------------------------------------------------------------ the matrix
@pytest.mark.parametrize("target,precision,model", list(_cases()))
def test_conformance(target, precision, model, request, tmp_path, conformance_report):
    tgt = get_target(target)  # a missing SDK fails here with the pip line (never skipped)
    case = _model_case(model, request)
    expected = expected_failure(target, precision, model)
    record = {"target": target, "precision": precision, "model": model, "status": "error", "task": case.task,
              "expected_failure": expected[1] if expected else None}
    t0 = time.perf_counter()
    try:
        art = export_case(case, target, precision, tmp_path, raise_on_failure=False)
    except Exception as e:
        record["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        record["seconds"] = time.perf_counter() - t0
        conformance_report.append(record)
    v = art.verification or {}
    record.update(status=art.status, error=art.error, size_bytes=art.size_bytes, sqnr_db=v.get("sqnr_db"),
                  max_abs_err=v.get("max_abs_err"), top1_agreement=v.get("top1_agreement"),
                  criteria=v.get("criteria"), accuracy=v.get("accuracy"),
                  reference_accuracy=v.get("reference_accuracy"), thresholds=v.get("thresholds"),
                  phase_seconds=art.seconds, runtime_memory=art.runtime_memory, **_op_coverage(art.inspect or {}))
    if expected and art.status != "verified" and re.search(expected[0], art.error or ""):
        raise ExpectedConverterError(f"{target}/{precision}/{model}: {expected[1]} -- recorded error: {art.error}")
    assert art.status == "verified", art.error
    assert Path(str(art.path) + ".json").is_file()
    assert art.size_bytes and art.size_bytes > 0
    assert art.inspect["num_ops"] > 0 and sum(art.inspect["ops"].values()) > 0

    # A fresh load of the written artifact in the real runtime (for Core ML on Linux: its reference evaluator),
    # fed in batches of 7 (not the 64 the verb used, and not a divisor of the sample counts) passes the same
    # thresholds, judged by the same task.
    t1 = time.perf_counter()
    spec = InputSpec.from_dict(art.input_spec)
    named = fit_to_spec(spec, named_arrays(spec, case.x_verify))
    actual = run_target(tgt, tgt.load(art.path, spec), named, batch_size=7)
    record["reload_seconds"] = time.perf_counter() - t1
    reference = torch_outputs(flat_model(case.model, spec), named)
    again = compare(dict(zip(spec.output_names, reference.values())), actual, case.y_verify,
                    thresholds_for(tgt.precision(precision)), task=case.task, inputs=named)
    record["reload_batch7"] = {"sqnr_db": again.sqnr_db, "criteria": again.criteria, "passed": again.passed}
    assert again.passed, f"reloaded artifact, batches of 7: {'; '.join(again.failures)} [{again.summary()}]"


# ------------------------------------------------------------------------------------------------ around it
@pytest.mark.parametrize("target", target_names())
def test_backend_sdk_is_installed(target):
    """A registered target whose SDK is missing fails here, with the MissingBackendError pip line."""
    spec = get_spec(target)
    if spec.missing_packages():
        with pytest.raises(MissingBackendError, match=re.escape(spec.pip_line())) as err:
            get_target(target)
        pytest.fail(f"target {target!r} is registered but its SDK is not installed: {err.value}")
    assert get_target(target).name == target


def test_expected_failures_table_names_real_cases():
    for (target, precision, model), (pattern, reason) in EXPECTED_FAILURES.items():
        assert target in target_names(), f"unknown target {target!r} in EXPECTED_FAILURES"
        assert precision in get_spec(target).precisions, f"{target} has no precision {precision!r}"
        assert model == "*" or model in cm.MODEL_NAMES, f"unknown model {model!r}"
        assert len(reason) > 40, f"give a precise reason for {(target, precision, model)}"
        assert len(pattern) > 10 and re.compile(pattern), f"name the converter's own error for {(target, precision)}"


def test_matrix_marks_slow_models_and_strict_expected_failures(monkeypatch):
    """Every (target, precision, model) is a case; non-quick models are slow; a table entry becomes a strict xfail
    (a wildcard entry covers every model of that target/precision)."""
    monkeypatch.setitem(EXPECTED_FAILURES, ("onnxruntime", "fp16", "*"), ("some converter error", "example reason " * 4))
    params = {p.id: p for p in _cases()}
    expected = {f"{t}-{p}-{m}" for t in target_names() for p in get_spec(t).precisions for m in cm.MODEL_NAMES}
    assert set(params) == expected
    marks = {name: [m for m in p.marks] for name, p in params.items()}
    assert [m.name for m in marks["onnxruntime-fp32-mlp"]] == []
    assert [m.name for m in marks["onnxruntime-fp32-transformer"]] == ["slow"]
    xfail = [m for m in marks["onnxruntime-fp16-student"] if m.name == "xfail"]
    assert xfail and xfail[0].kwargs == {"strict": True, "reason": "example reason " * 4,
                                         "raises": ExpectedConverterError}
    assert any(m.name == "xfail" for m in marks["onnxruntime-fp16-conv_bn"])
    assert not any(m.name == "xfail" for m in marks["onnxruntime-fp32-conv_bn"])


def test_conformance_models_are_trained_on_real_data():
    """The digits models learnt something (so quantization is judged on meaningful weights)."""
    for name in ("mlp",):
        case = cm.digits_case(name)
        assert case.test_accuracy > 0.9, f"{name}: test accuracy {case.test_accuracy:.3f}"
        assert len(case.calibration) == cm.N_CALIBRATION and math.isclose(float(case.calibration.std()), 1.0,
                                                                           rel_tol=0.2)
