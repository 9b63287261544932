"""Every target through the same harness: ExecuTorch (threads fixed per process), TFLite and Core ML (no runtime
on Linux: latency not measurable, numerics from its reference evaluator). Slow: several exports and runtimes."""
from __future__ import annotations

import json
import sys

import pytest

from ondevice.bench import BenchConfig, TorchModelRef, bench, validate_report
from ondevice.target import get_spec

from test_bench_common import FAST, digits, train_cnn, write_models

pytestmark = pytest.mark.slow

EXPORTS = [("executorch", "fp32"), ("executorch", "int8_static"), ("tflite", "fp32"), ("coreml", "fp16")]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from ondevice.export import export

    tmp = tmp_path_factory.mktemp("targets")
    models = write_models(tmp)
    model = train_cnn(models, tmp / "cnn.pt")
    x, y = digits()
    arts = tmp / "arts"
    for target, prec in EXPORTS:
        if get_spec(target).missing_packages():
            pytest.fail(f"{target} is not installed: {get_spec(target).pip_line()}")
        export(model, target, prec, out=arts / f"cnn_{target}_{prec}{get_spec(target).suffix}", calibration=x[:256],
               verify_data=(x[1400:1600], y[1400:1600]))
    return bench([arts], data=(x[1400:1600], y[1400:1600]),
                 student=TorchModelRef("student", f"{models}:cnn", weights=str(tmp / "cnn.pt")),
                 config=BenchConfig(threads=(1, 2), **FAST), out_dir=tmp / "report")


def _item(report, label):
    return next(it for it in report["items"] if it["label"] == label)


def test_report_valid_and_complete(report):
    validate_report(json.loads(open(report["files"]["json"]).read()))
    labels = [it["label"] for it in report["items"]]
    assert labels == ["student", "coreml/fp16", "executorch/fp32", "executorch/int8_static", "tflite/fp32"]
    md = open(report["files"]["markdown"]).read()
    for lab in labels:
        assert f"| {lab} |" in md


def test_executorch_one_process_per_thread_count(report):
    s = _item(report, "student")
    for lab in ("executorch/fp32", "executorch/int8_static"):
        it = _item(report, lab)
        assert it["status"] == "ok", it["errors"]
        assert [r["threads"] for r in it["runs"]] == [1, 2]
        assert all(r["latency"]["n"] >= 16 and r["memory"]["load_peak_rss_above_baseline"] > 0 for r in it["runs"])
        assert it["runtime_memory"]["planned_bytes"] > 0  # the runtime's own figure, beside the RSS
    fp32 = _item(report, "executorch/fp32")
    assert fp32["accuracy"]["accuracy"] == pytest.approx(s["accuracy"]["accuracy"], abs=1 / 200)
    assert _item(report, "executorch/int8_static")["energy"]["estimated"][0]["compute_kind"] == "int8"


def test_tflite(report):
    it = _item(report, "tflite/fp32")
    assert it["status"] == "ok", it["errors"]
    assert it["accuracy"]["accuracy"] == pytest.approx(_item(report, "student")["accuracy"]["accuracy"], abs=1 / 200)
    assert it["energy"]["weight_bytes"] > 0


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs natively on macOS; this checks the Linux path")
def test_coreml_latency_not_measurable_numerics_from_evaluator(report):
    it = _item(report, "coreml/fp16")
    assert it["status"] == "ok", it["errors"]
    assert it["latency"]["measurable"] is False
    assert "not measurable" in it["latency"]["reason"]
    assert [r["status"] for r in it["runs"]] == ["not_measurable", "not_measurable"]
    assert all(r["latency"] is None and r["memory"] is None for r in it["runs"])
    assert it["memory"]["measurable"] is False and "reference evaluator" in it["memory"]["reason"]
    assert "reference evaluator" in it["accuracy"]["evaluated_with"]
    s = _item(report, "student")
    assert it["accuracy"]["accuracy"] == pytest.approx(s["accuracy"]["accuracy"], abs=2 / 200)  # fp16 numerics
    assert it["energy"]["estimated"][0]["compute_kind"] == "float16"
    md = open(report["files"]["markdown"]).read()
    assert "not measurable here" in md
    assert "coreml/fp16" not in report["pareto"]["front"]
