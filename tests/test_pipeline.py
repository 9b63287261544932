"""`ondevice run`: the whole chain on real data (digits) with the real ONNX Runtime, stage caching, resume, one failing
target not stopping the others, and the exit codes CI relies on."""
import json
from functools import partial
from pathlib import Path

import pytest

import helpers
from helpers import digits_recipe
from ondevice.pipeline import run
from ondevice.target import TargetSpec, register_target, SPECS, _INSTANCES

PIPELINE = """
[export]
calibration_samples = 128
verify_samples = 300

[[export.targets]]
target = "onnxruntime"
precisions = {precisions}

[bench]
mode = "quick"
profiles = ["midrange_phone_cpu"]

[gates]
min_accuracy = {min_accuracy}
max_size_bytes = 100000
profile = "midrange_phone_cpu"
power_budget = true
"""


def write(tmp_path, name="r.toml", precisions='["fp32", "int8_static"]', min_accuracy=0.8, out=None):
    p = tmp_path / name
    p.write_text(digits_recipe(out or tmp_path / "out", name="digits-pipeline", teacher_epochs=4,
                               student_kwargs="{ in_features = 64, hidden = [32], num_classes = 10 }", epochs=6,
                               extra=PIPELINE.format(precisions=precisions, min_accuracy=min_accuracy)))
    return p


cli = partial(helpers.cli, timeout=900)  # `ondevice run` does the whole chain (distill, exports, bench) in one call


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipe")
    rp = write(tmp)
    p = cli("run", str(rp), env={"ONDEVICE_PROGRESS": "1"})  # progress lines on: stderr is a pipe, not a terminal
    return tmp, rp, p


def test_first_run_produces_report_and_gates(first_run):
    tmp, rp, p = first_run
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = tmp / "out"
    rep = json.loads((out / "pipeline.json").read_text())
    rows = {(a["target"], a["precision"]): a for a in rep["artifacts"]}
    assert set(rows) == {("onnxruntime", "fp32"), ("onnxruntime", "int8_static")}
    for a in rows.values():
        assert a["status"] == "verified" and Path(a["path"]).exists()
        assert a["accuracy"] > 0.8 and a["p50_ms"] > 0 and a["p90_ms"] >= a["p50_ms"]
        assert a["estimates"]["midrange_phone_cpu"]["energy_mj"] > 0
    assert rows[("onnxruntime", "int8_static")]["size_bytes"] < rows[("onnxruntime", "fp32")]["size_bytes"]
    assert {m["role"] for m in rep["models"]} == {"teacher", "student"}
    for f in ("report/report.json", "report/report.md", "report/report.html", "gates/junit.xml", "gates/summary.md",
              "student.pt", "results.json"):
        assert (out / f).exists(), f
    assert all(g["passed"] for g in rep["gates"])
    assert "gates:" in p.stdout and "report:" in p.stdout
    assert all(not st["cached"] and st["seconds"] == st["seconds_this_run"] > 0 for st in rep["stages"].values())


def test_long_stages_print_progress_lines_off_a_terminal(first_run):
    err = first_run[2].stderr
    assert "[export] 1 of 2 (onnxruntime/fp32 done)" in err
    assert "[export] 2 of 2 (onnxruntime/int8_static done): done in" in err
    for stage in ("loading", "timing variants in interleaved rounds", "accuracy passes over"):
        assert f"[bench: {stage}" in err, err[-3000:]


def test_second_identical_run_reuses_every_stage(first_run):
    tmp, rp, _ = first_run
    first = json.loads((tmp / "out" / "pipeline.json").read_text())["stages"]
    res = run(rp)
    assert {k: v["state"] for k, v in res.report["stages"].items()} == {
        "distill": "cached", "export onnxruntime/fp32": "cached", "export onnxruntime/int8_static": "cached",
        "bench": "cached"}
    # the first run's stage times survive; this run's (near zero) are kept beside them
    for name, st in res.report["stages"].items():
        assert st["cached"] is True and st["seconds"] == first[name]["seconds"], name
        assert st["seconds_this_run"] < first[name]["seconds"], name


def test_a_new_precision_redoes_only_what_changed(first_run):
    tmp, rp, _ = first_run
    rp2 = write(tmp, "r2.toml", precisions='["fp32", "int8_static", "int8_dynamic"]')
    res = run(rp2)
    st = {k: v["state"] for k, v in res.report["stages"].items()}
    assert st["distill"] == "cached" and st["export onnxruntime/fp32"] == "cached"
    assert st["export onnxruntime/int8_dynamic"] == "done" and st["bench"] == "done"


def test_impossible_gate_exits_1_naming_the_metric(first_run, tmp_path):
    tmp, _, _ = first_run
    rp = write(tmp, "r3.toml", min_accuracy=0.9999)
    p = cli("run", str(rp))
    assert p.returncode == 1
    assert "GATE FAILED min_accuracy: onnxruntime/fp32 accuracy = " in p.stdout
    assert "violates threshold 0.9999" in p.stdout


def test_invalid_recipe_exits_2_naming_the_key(tmp_path):
    rp = write(tmp_path)
    rp.write_text(rp.read_text().replace('precisions = ["fp32", "int8_static"]', 'precisions = ["fp32", "int3"]'))
    p = cli("run", str(rp))
    assert p.returncode == 2
    assert "export.targets[0].precisions[1]: target 'onnxruntime' cannot produce 'int3'" in p.stderr
    rp.write_text(rp.read_text().replace("[gates]\n", "[gates]\nmin_acuracy = 1\n"))
    p = cli("run", str(rp))
    assert p.returncode == 2 and "gates.min_acuracy: unknown key" in p.stderr


def test_interrupted_run_resumes(tmp_path):
    rp = write(tmp_path, precisions='["fp32"]')
    p = cli("run", str(rp), env={"ONDEVICE_KILL_AFTER": "distill:3"})
    assert p.returncode == 137
    p = cli("run", str(rp), "--no-bench", "--set", "gates.power_budget=false")  # power needs bench estimates
    assert p.returncode == 0, p.stderr[-2000:]
    assert "[distill] resuming from" in p.stderr and "after epoch 3/6" in p.stderr


def test_one_failing_target_is_recorded_and_the_others_continue(first_run, tmp_path):
    tmp, _, _ = first_run
    spec = TargetSpec(name="npu_sdk", extra="npu", requires=("vendor_npu_sdk_not_installed",), precisions=("fp32",),
                      suffix=".npu", factory="nowhere:Nothing")
    register_target(spec)
    try:
        rp = write(tmp, "r4.toml", precisions='["fp32"]')
        rp.write_text(rp.read_text().replace("[bench]", '[[export.targets]]\ntarget = "npu_sdk"\nprecisions = ["fp32"]\n\n[bench]'))
        res = run(rp, bench=False)
    finally:
        SPECS._items.pop("npu_sdk", None)
        _INSTANCES.pop("npu_sdk", None)
    rows = {a["target"]: a for a in res.report["artifacts"]}
    assert rows["onnxruntime"]["status"] == "verified"
    assert rows["npu_sdk"]["status"] == "error"
    assert "pip install 'ondevice[npu]'" in rows["npu_sdk"]["error"]
    assert not res.passed
    assert any(g.gate == "require_all_targets" and g.artifact == "npu_sdk/fp32" and not g.passed for g in res.gates)


def test_closing_summary_shows_the_seed_gain_with_its_ci(tmp_path, capsys):
    from ondevice.pipeline import PipelineResult, print_summary
    from ondevice.stats import summarize_seeds

    per_seed = [{"seed": s, "student": {"test_errors": e}, "baseline": {"test_errors": b}}
                for s, e, b in ((0, 220, 272), (1, 187, 254), (2, 192, 264))]
    block = {"model": "m", "params": 1000, "test_acc": 0.98}
    rep = {"distill": {"teacher": block, "student": block, "baseline": block, **summarize_seeds(per_seed, 95)},
           "context": {"measured_on": "measured on test-cpu"}, "artifacts": [], "gates": [],
           "recipe": {"gates": {"profile": None}, "bench": {"profiles": ["midrange_phone_cpu"]}}}
    print_summary(PipelineResult(tmp_path, rep, []))
    out = " ".join(capsys.readouterr().out.split())
    assert ("distillation distilled 199.7 ± 17.8 vs hard-label 263.3 ± 9.0 test errors over 3 seeds: gain +63.7, "
            "95% CI [+52.0, +72.0] (excludes zero;") in out
