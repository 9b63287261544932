"""The harness end to end with real workers: eager PyTorch and ONNX Runtime artifacts on real digits data,
crash isolation with really crashing workers, timeouts, and the report files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ondevice.bench import BenchConfig, TorchModelRef, bench, validate_report
from ondevice.bench.worker import Worker, WorkerError

from test_bench_common import FAST, cnn_with_onnx_artifacts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A trained digits CNN (student), an MLP (teacher) and the student's ONNX Runtime exports (fp32, int8)."""
    pytest.importorskip("onnxruntime")
    s = cnn_with_onnx_artifacts(tmp_path_factory.mktemp("bench"), ("fp32", "int8_static"), calibration_n=256)
    (s["arts"] / "exports.json").write_text("[]")  # what `ondevice export` leaves beside the artifacts: not an artifact
    return s


@pytest.fixture(scope="module")
def report(setup):
    s = setup
    cfg = BenchConfig(threads=(1, 2), batch_size=1, **FAST)
    return bench([s["arts"]], data=(s["x"][1400:], s["y"][1400:]),
                 teacher=TorchModelRef("teacher", f"{s['models']}:mlp"),
                 student=TorchModelRef("student", f"{s['models']}:cnn", weights=str(s["weights"])),
                 config=cfg, out_dir=s["tmp"] / "report")


def _item(report, label):
    return next(it for it in report["items"] if it["label"] == label)


def test_report_files_schema_and_markdown(report, setup):
    files = report["files"]
    on_disk = json.loads(open(files["json"]).read())
    validate_report(on_disk)
    assert on_disk["schema_version"] == 1
    labels = [it["label"] for it in report["items"]]
    assert labels == ["teacher", "student", "onnxruntime/fp32", "onnxruntime/int8_static"]
    md = open(files["markdown"]).read()
    for lab in labels:
        assert f"| {lab} |" in md
    assert "measured on " in md and "estimated (npu_1w)" in md
    html = open(files["html"]).read()
    assert html.count("data:image/png;base64,") == 4
    assert "http://" not in html and "https://" not in html and "<script" not in html
    # a schema violation is caught
    bad = json.loads(json.dumps(on_disk))
    bad["items"][0]["runs"][0]["latency"]["p50_ms"] = "fast"
    with pytest.raises(Exception, match="fast"):
        validate_report(bad)


def test_latency_per_thread_worker(report):
    for it in report["items"]:
        assert it["status"] == "ok", it["errors"]
        assert [r["threads"] for r in it["runs"]] == [1, 2]
        for r in it["runs"]:
            assert r["omp_num_threads"] == str(r["threads"])  # BLAS/OpenMP pinned to the worker's count
            st = r["latency"]
            assert st["n"] >= 16
            assert st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"] <= st["max_ms"]
            assert st["p50_ci95_ms"][0] <= st["p50_ms"] <= st["p50_ci95_ms"][1]
            assert r["warmup"]["n"] >= 4
    sched = report["schedule"]
    assert len(sched["first_rounds"][0]) == 8  # all 4 items x 2 thread counts in the first round
    assert sched["first_rounds"][0][:2] == ["teacher@1t", "teacher@2t"]


def test_memory_fields_present_and_positive(report):
    for it in report["items"]:
        assert it["memory"]["method"].startswith("VmHWM")
        assert it["size_bytes"] > 0 and it["memory"]["file_size_bytes"] == it["size_bytes"]
        for r in it["runs"]:
            m = r["memory"]
            assert m["baseline_rss_bytes"] > 10 * 2**20  # python + numpy + the runtime
            assert m["load_peak_rss_above_baseline"] > 0
            # the peak includes the RSS after loading (up to the kernel's per-CPU RSS counter slack)
            assert m["load_peak_rss_above_baseline"] >= m["rss_after_load_above_baseline"] - 256 * 1024
            assert m["run_peak_rss_above_baseline"] >= 0
    fp32, int8 = _item(report, "onnxruntime/fp32"), _item(report, "onnxruntime/int8_static")
    assert int8["size_bytes"] < fp32["size_bytes"]
    assert fp32["sidecar"]["status"] == "verified" and fp32["inspect"]["format"] == "onnx"


def test_accuracy_retention_chain(report, setup):
    t, s = _item(report, "teacher"), _item(report, "student")
    fp32, int8 = _item(report, "onnxruntime/fp32"), _item(report, "onnxruntime/int8_static")
    assert report["reference"] == "teacher"
    assert report["retention_chain"] == ["teacher", "student", "onnxruntime/fp32", "onnxruntime/int8_static"]
    n = len(setup["y"]) - 1400
    assert s["accuracy"]["n"] == n and s["accuracy"]["accuracy"] > 0.8  # the trained CNN
    assert t["accuracy"]["top1_agreement"] == 1.0 and t["accuracy"]["kl_reference_model"] == pytest.approx(0, abs=1e-12)
    assert t["accuracy"]["retention"] == pytest.approx(1.0)
    # the fp32 ONNX artifact computes what its source computes
    assert fp32["accuracy"]["accuracy"] == pytest.approx(s["accuracy"]["accuracy"], abs=1 / n)
    assert fp32["accuracy"]["kl_reference_model"] == pytest.approx(s["accuracy"]["kl_reference_model"], rel=1e-3)
    assert fp32["accuracy"]["retention"] == pytest.approx(fp32["accuracy"]["accuracy"] / t["accuracy"]["accuracy"])
    assert int8["accuracy"]["accuracy"] > 0.75
    assert fp32["accuracy"]["evaluated_with"] == "onnxruntime runtime"
    # the artifacts verified by `export` agree with the student (from their sidecars)
    assert int8["sidecar"]["verification"]["top1_agreement"] >= 0.95


def test_energy_estimates_use_the_student_graph(report):
    s = _item(report, "student")
    fp32, int8 = _item(report, "onnxruntime/fp32"), _item(report, "onnxruntime/int8_static")
    macs = 8 * 1 * 9 * 64 + 128 * 32 + 32 * 10  # conv 8x1x3x3 on 8x8, then 128->32, 32->10
    assert s["energy"]["graph"]["macs"] == macs
    assert fp32["energy"]["graph_source"] == "counted on student (PyTorch)"
    by = {e["profile"]: e for e in int8["energy"]["estimated"]}
    assert set(by) == {"midrange_phone_cpu", "flagship_phone_cpu", "npu_1w", "mcu"}
    assert by["npu_1w"]["compute_kind"] == "int8" and by["npu_1w"]["supported"]
    f_by = {e["profile"]: e for e in fp32["energy"]["estimated"]}
    assert not f_by["npu_1w"]["supported"]  # no fp32 on the NPU profile
    assert by["mcu"]["energy_per_inference_j"] < f_by["mcu"]["energy_per_inference_j"]
    assert int8["energy"]["weight_bytes"] < fp32["energy"]["weight_bytes"]
    assert "weight_bytes" in fp32["energy"]["weight_bytes_source"]  # from the artifact's own dtypes
    assert all(e["label"].startswith("estimated (") for e in f_by.values())
    assert fp32["energy"]["measured_host"]["available"] == report["host_energy"]["available"]


def test_crash_isolation(setup, tmp_path):
    """A factory that raises, a model that aborts the process mid-run and a corrupt artifact each fail alone."""
    s = setup
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    items = [TorchModelRef("good", f"{s['models']}:mlp"), TorchModelRef("raises", f"{s['models']}:crash_on_load"),
             TorchModelRef("aborts", f"{s['models']}:abort_in_forward"), str(bad)]
    rep = bench(items, data=(s["x"][1400:1500], s["y"][1400:1500]),
                config=BenchConfig(threads=(1,), max_workers=2, **FAST), out_dir=tmp_path / "out")
    assert rep["schedule"]["groups"] == 2  # 4 workers, at most 2 alive at once
    good, raises, aborts, corrupt = rep["items"]
    assert good["status"] == "ok" and good["runs"][0]["latency"]["n"] >= 16 and good["accuracy"]["n"] == 100
    assert raises["status"] == "failed"
    assert raises["errors"][0]["stage"] == "load"
    assert "BENCH-TEST-LOAD-FAILURE" in raises["errors"][0]["message"]
    assert aborts["status"] == "failed"
    assert aborts["errors"][0]["stage"] == "warmup"
    assert "SIGABRT" in aborts["errors"][0]["message"]
    assert "BENCH-TEST-ABORT-MARKER" in aborts["errors"][0]["stderr_tail"]
    assert corrupt["status"] == "failed" and corrupt["errors"][0]["stage"] == "load"
    assert "corrupt.onnx" in corrupt["errors"][0]["message"]
    validate_report(json.loads(open(rep["files"]["json"]).read()))
    md = open(rep["files"]["markdown"]).read()
    assert "## Failures" in md and "SIGABRT" in md


def test_worker_timeout_kills_the_worker(setup, tmp_path):
    np.save(tmp_path / "x.npy", setup["x"][:8])
    w = Worker(1, label="sleepy")
    try:
        w.request("init", 120, engine={"kind": "torch", "ref": f"{setup['models']}:hang_on_load"}, threads=1,
                  inputs=str(tmp_path / "x.npy"))
        with pytest.raises(WorkerError, match=r"timed out after 2 s in load"):
            w.request("load", 2)
        assert w.proc.poll() is not None  # killed, not left behind
        with pytest.raises(WorkerError, match="timed out"):
            w.request("info", 5)
    finally:
        w.close()


def test_unknown_command_is_reported_not_fatal(setup, tmp_path):
    np.save(tmp_path / "x.npy", setup["x"][:8])
    w = Worker(1, label="plain")
    try:
        with pytest.raises(WorkerError, match="unknown worker command 'dance'"):
            w.request("dance", 60)
        r = w.request("init", 120, engine={"kind": "artifact", "target": "onnxruntime",
                                            "path": str(setup["arts"] / "cnn_fp32.onnx")},
                      threads=1, inputs=str(tmp_path / "x.npy"), batch_size=3)
        assert r["distinct_batches"] == 2 and r["baseline_rss_bytes"] > 0  # 8 samples -> 2 batches of 3
        w.request("load", 60)
        ns = w.request("chunk", 60, n=5)["ns"]
        assert len(ns) == 5 and all(v > 0 for v in ns)
    finally:
        w.close()


def test_worker_groups():
    from ondevice.bench.harness import _groups

    items = list(range(5))
    assert _groups(items, 2, 16) == [[0, 1, 2, 3, 4]]
    assert _groups(items, 2, 4) == [[0, 1], [2, 3], [4]]  # every thread count of an item stays in one group
    assert _groups(items, 3, 2) == [[0], [1], [2], [3], [4]]  # at least one item per group


def test_a_query_larger_than_the_artifacts_static_batch_times_one_runtime_call_per_chunk(setup, tmp_path,
                                                                                        monkeypatch):
    """A batch-5 query on a batch-1 .pte times 5 real runtime calls (never one call labelled batch 5); the ONNX
    Runtime artifact, exported with a dynamic batch, takes the 5 samples in one call."""
    import torch

    from ondevice.bench.engines import ArtifactEngine
    from ondevice.export import export
    from ondevice.models import build_model

    s = setup
    x = s["x"][1400:1405]  # (5, 1, 8, 8) real digits
    model = build_model(f"{s['models']}:cnn", weights=str(s["weights"])).eval()
    pte = export(model, "executorch", "fp32", out=tmp_path / "cnn.pte", example_inputs=(torch.from_numpy(x[:1]),))
    for target, path, calls in (("executorch", pte.path, [1] * 5), ("onnxruntime", s["arts"] / "cnn_fp32.onnx", [5])):
        eng = ArtifactEngine(target, str(path))
        eng.prepare()  # no set_threads: ExecuTorch's pool is process-wide and other tests loaded programs already
        runner = eng.load()
        seen = []  # the batch of every runtime call the query makes
        real = eng.target.bind

        def bind(r, feeds, carry=None, real=real):
            step = real(r, feeds, carry)
            return lambda: seen.append(len(next(iter(feeds.values())))) or step()

        monkeypatch.setattr(eng.target, "bind", bind)
        query = eng.bind(runner, {"x": x})
        query()
        assert (query.runtime_calls, seen) == (len(calls), calls), target
