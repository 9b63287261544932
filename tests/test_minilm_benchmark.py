"""benchmarks/minilm_wordnet.py's arithmetic: the speedup of the 3-layer student over the teacher in the same runtime
and precision, int8 size ratios and accuracy drops against the same model's fp32 file of the same target, failed int8
artifacts kept visible, and the result file's top-level fields (the ones issue 11 names, checked mechanically)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import minilm_export  # noqa: E402
import minilm_wordnet  # noqa: E402

ISSUE_FIELDS = {"mode", "seeds", "teacher_accuracy", "distilled_accuracy", "hard_label_accuracy", "retention",
                "speedup_p50_batch1", "speedup_runtime", "int8_size_ratio_max", "int8_accuracy_drop_max",
                "embed_agreement_at10"}


def _row(model, target, precision, status="verified", size=None, acc=None, p50=None, p50_b8=None):
    return {"model": model, "target": target, "precision": precision, "status": status, "size_bytes": size,
            "accuracy": acc, "p50_ms": p50, "p50_ms_batch8": p50_b8, "sqnr_db": 30.0, "error": None,
            "latency_label": "measured on test", "latency_note": None}


ROWS = {
    "teacher": [_row("teacher", "onnxruntime", "fp32", size=1000, acc=0.60, p50=10.0, p50_b8=40.0),
                _row("teacher", "onnxruntime", "int8_dynamic", size=280, acc=0.595, p50=6.0, p50_b8=20.0),
                _row("teacher", "coreml", "fp32", size=1000, acc=0.60),  # latency not measurable off Apple
                _row("teacher", "tflite", "fp32", size=1000, acc=0.60, p50=12.0, p50_b8=50.0)],
    "student_3": [_row("student_3", "onnxruntime", "fp32", size=700, acc=0.58, p50=4.0, p50_b8=16.0),
                  _row("student_3", "onnxruntime", "int8_dynamic", size=140, acc=0.56, p50=2.0, p50_b8=8.0),
                  _row("student_3", "onnxruntime", "int8_static", status="failed", size=140, acc=0.2),
                  _row("student_3", "coreml", "fp32", size=700, acc=0.58),
                  _row("student_3", "tflite", "fp32", size=700, acc=0.58, p50=5.0, p50_b8=21.0)],
}


def test_speedup_is_teacher_over_student_in_the_same_runtime_and_precision():
    lat = {(x["target"], x["precision"]): x for x in minilm_export._latency(ROWS)}
    assert lat[("onnxruntime", "fp32")]["speedup_batch1"] == pytest.approx(2.5)
    assert lat[("onnxruntime", "fp32")]["speedup_batch8"] == pytest.approx(2.5)
    assert lat[("onnxruntime", "int8_dynamic")]["speedup_batch1"] == pytest.approx(3.0)
    assert lat[("tflite", "fp32")]["speedup_batch1"] == pytest.approx(2.4)
    assert lat[("coreml", "fp32")]["speedup"] is None  # not measured: no ratio invented


def test_int8_ratios_and_drops_against_the_same_models_fp32_file():
    r = minilm_export._int8(ROWS)
    assert r["int8_size_ratio_max"] == pytest.approx(0.28)  # teacher 280 / 1000 (student 140 / 700 = 0.2)
    assert r["int8_size_ratio_max_at"] == "teacher onnxruntime int8_dynamic"
    assert r["int8_accuracy_drop_max"] == pytest.approx(2.0)  # student 0.58 -> 0.56, in points
    assert r["int8_verified"] == 2
    assert [(f["model"], f["precision"], f["status"]) for f in r["int8_failed"]] == [
        ("student_3", "int8_static", "failed")]


def test_result_file_has_the_fields_the_issue_names():
    state = {"students": {"teacher": {"test_acc": 0.6, "params": 22_700_000},
                          "student": {"test_n": 1000, "params": 17_000_000},
                          "per_seed": [{"seed": 0, "student_errors": 420, "baseline_errors": 440, "gain": 20},
                                       {"seed": 1, "student_errors": 400, "baseline_errors": 450, "gain": 50}],
                          "gain_errors_mean": 35.0, "gain_ci95": [10.0, 50.0]},
             "export": {"artifacts": [r for rs in ROWS.values() for r in rs], "speedup_p50_batch1": 2.5,
                        "speedup_runtime": "onnxruntime fp32"},
             "embed": {"student": {"test_nn_agreement@10": 0.91, "test_nn_agreement@1": 0.8, "test_cosine": 0.97,
                                   "test_n": 1000},
                       "split_sizes": {"train": 48000}, "epochs": 2, "seconds_training": 600.0},
             "ablation": {"kd + ce": {"test_acc": 0.62, "train_samples": 3000},
                          "+ hidden_cos (DistilBERT)": {"test_acc": 0.58, "train_samples": 3000}},
             "kd_sweep": {"kd 0.5 T=2 + ce 0.5": {"kd_weight": 0.5, "temperature": 2.0, "test_errors": 431,
                                                  "test_n": 1000, "test_acc": 0.569, "train_acc": 0.7}}}
    r = minilm_wordnet.assemble("quick", minilm_wordnet.MODES["quick"], state)
    assert ISSUE_FIELDS <= set(r)
    assert r["distilled_accuracy"] == pytest.approx(0.59) and r["hard_label_accuracy"] == pytest.approx(0.555)
    assert r["retention"] == pytest.approx(0.59 / 0.6)
    assert r["int8_accuracy_drop_max"] == pytest.approx(2.0) and r["embed_agreement_at10"] == 0.91
    md = minilm_wordnet.markdown(r)
    assert "| ondevice (test accuracy) | 0.6000 | 0.5900 | 0.5550 | - | 0.983 | 2.50 (onnxruntime fp32) |" in md
    assert "| 1 | 400 | 450 | +50 | - |" in md and "Gain mean +35.0 errors of 1000" in md
    assert r["no_transfer"] is None and "(no transfer set)" in r["distilled_student"]
    assert r["ablation_se_points"] == pytest.approx(100 * (0.6 * 0.4 / 1000) ** 0.5)  # at the rows' mean, 0.60
    assert "| + hidden_cos (DistilBERT) | 3000 | 0.5800 |" in md and "about 1.55 points" in md
    assert r["kd_sweep_hard_label_errors"] == 440 and "hard-label student (440 errors)" in md and "| kd 0.5 T=2 + ce 0.5 | 431 | +9 | 0.7000 |" in md


def test_the_transfer_set_student_is_the_headline_paired_by_seed_with_the_hard_label_students():
    """Once the transfer step ran, the distilled numbers are its students', each paired with the students step's
    hard-label student of the same seed (same teacher, init and labelled glosses); the no-transfer ones stay beside."""
    students = {"teacher": {"test_acc": 0.6, "test_errors": 400, "params": 1}, "student": {"test_n": 1000},
                "per_seed": [{"seed": s, "student_errors": e, "baseline_errors": b, "gain": b - e}
                             for s, e, b in ((0, 450, 440), (1, 460, 450), (2, 455, 445))],
                "gain_errors_mean": -10.0, "gain_ci95": [-10.0, -10.0]}
    transfer = {"transfer_samples": 18000, "split_sizes": {"train": 6000}, "seconds_training": 600.0,
                "per_seed": [{"seed": s, "student_errors": e} for s, e in ((0, 400), (1, 420), (2, 430))]}
    control = {"seed": 0, "epochs": 8, "steps_factor": 4.0, "test_errors": 437}
    r = minilm_wordnet.assemble("quick", minilm_wordnet.MODES["quick"], {"students": students, "transfer": transfer,
                                                                         "more_steps": control})
    assert [(p["seed"], p["student_errors"], p["baseline_errors"], p["gain"]) for p in r["per_seed"]] == [
        (0, 400, 440, 40), (1, 420, 450, 30), (2, 430, 445, 15)]
    assert r["distilled_accuracy"] == pytest.approx(1 - 1250 / 3000) and r["hard_label_accuracy"] == pytest.approx(
        1 - 1335 / 3000)
    assert r["gain_errors_mean"] == pytest.approx(85 / 3) and r["gain_ci95"][0] > 0  # every seed gained
    assert r["transfer_samples"] == 18000 and "6000 labelled glosses plus a transfer set of 18000" in r[
        "distilled_student"]
    assert r["no_transfer"]["gain_errors_mean"] == -10.0 and r["no_transfer"]["distilled_accuracy"] == pytest.approx(
        1 - 1365 / 3000)
    md = minilm_wordnet.markdown(r)
    assert "| 0 | 400 | 440 | +40 | 450 |" in md and "Without the transfer set: gain -10.0" in md
    c = r["more_steps_control"]
    assert c["beats_distilled"] is False and c["vs_distilled"]["gain_errors_mean"] == 37.0
    assert ("Control: hard-label students trained 8 epochs (as many optimizer steps as the transfer-set student) make "
            "437 (seed 0) errors against the distilled students' 400: distilled minus control gain +37.0 errors (one "
            "seed): the distilled student is ahead, within the seeds' noise.") in md
    # every seed's control, paired with that seed's transfer-set student: here the longer schedule wins
    rows = [{"seed": s, "test_errors": e} for s, e in ((0, 390), (1, 400), (2, 415))]
    longer = minilm_wordnet.assemble("quick", minilm_wordnet.MODES["quick"], {
        "students": students, "transfer": transfer, "more_steps": {**control, "test_errors": 390, "per_seed": rows}})
    v = longer["more_steps_control"]["vs_distilled"]
    assert [(p["seed"], p["student_errors"], p["baseline_errors"]) for p in v["per_seed"]] == [
        (0, 400, 390), (1, 420, 400), (2, 430, 415)]
    assert v["gain_errors_mean"] == pytest.approx(-15.0) and v["gain_ci95"][1] < 0 and v["significant"]
    assert longer["more_steps_control"]["beats_distilled"] is True
    assert ("make 390 (seed 0), 400 (seed 1), 415 (seed 2) errors against the distilled students' 400, 420, 430: "
            "distilled minus control gain -15.0 errors, paired bootstrap 95% CI [") in minilm_wordnet.markdown(longer)
    assert "the longer schedule, not the teacher, explains the transfer set's gain." in minilm_wordnet.markdown(longer)


def test_an_export_is_reused_only_while_its_records_match_the_weights_and_the_files(tmp_path):
    """The export step resumes: every (target, precision) recorded from these weights, verified on as many samples,
    with the file unchanged, is reused; anything else exports again."""
    import numpy as np
    import torch

    from ondevice.export import export_many

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    jobs = [("onnxruntime", ["fp32", "fp16"], {})]
    export_many(model, jobs, out_dir=tmp_path / "artifacts", stem="student_3", calibration=x[:16],
                verify_data=(x[16:], None), student_sha256="a" * 64)
    recs = minilm_export._recorded(tmp_path, "student_3", "a" * 64, jobs, 24)
    assert [(r["precision"], r["status"]) for r in recs] == [("fp32", "verified"), ("fp16", "verified")]
    assert minilm_export._recorded(tmp_path, "student_3", "b" * 64, jobs, 24) is None  # other weights
    assert minilm_export._recorded(tmp_path, "student_3", "a" * 64, jobs, 128) is None  # other verification set
    assert minilm_export._recorded(tmp_path, "teacher", "a" * 64, jobs, 24) is None  # never exported
    import shutil

    shutil.copytree(tmp_path / "artifacts", tmp_path / "moved" / "artifacts")  # a run folder renamed
    moved = minilm_export._recorded(tmp_path / "moved", "student_3", "a" * 64, jobs, 24)
    assert [r["path"] for r in moved] == [str(tmp_path / "moved" / "artifacts" / "onnxruntime" / f"student_3_{p}.onnx")
                                          for p in ("fp32", "fp16")]
    with open(tmp_path / "artifacts" / "onnxruntime" / "student_3_fp16.onnx", "ab") as f:
        f.write(b"\0")  # the file changed since it was verified
    assert minilm_export._recorded(tmp_path, "student_3", "a" * 64, jobs, 24) is None


def test_two_processes_record_disjoint_steps_without_losing_either(tmp_path):
    """Each step's result is merged into the state file as it finishes: a process that read the state before another
    one recorded a step does not erase that step when it records its own."""
    path = tmp_path / "state.json"
    minilm_wordnet.record(path, "students", {"seeds": [0]})
    stale = minilm_wordnet.load_state(path)  # process B read the state here ...
    minilm_wordnet.record(path, "transfer", {"transfer_samples": 10})  # ... process A recorded a step ...
    assert "transfer" not in stale
    minilm_wordnet.record(path, "embed", {"student": {}})  # ... and B records its own: A's step survives
    assert minilm_wordnet.load_state(path) == {"students": {"seeds": [0]}, "transfer": {"transfer_samples": 10},
                                               "embed": {"student": {}}}


def test_unknown_step_is_refused_with_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        minilm_wordnet.main(["--steps", "students,trasnfer"])
    err = capsys.readouterr().err
    assert "unknown step(s) ['trasnfer']" in err and "choice, students, two_layer" in err


def test_the_strong_teacher_students_are_paired_with_the_steps_matched_hard_label_students():
    """strong_teacher: transfer-set students of a longer-trained teacher against the more_steps control's students of
    the same seeds (the control in the hard-label place): the gain, its CI and a verdict that follows the CI."""
    control = {"seed": 0, "epochs": 8, "steps_factor": 4.0, "test_errors": 453,
               "per_seed": [{"seed": s, "test_errors": e} for s, e in ((0, 453), (1, 462), (2, 459))]}
    strong = {"teacher_epochs": 8, "seeds": [0, 1],
              "per_seed": [{"seed": 0, "test_errors": 430, "teacher_test_errors": 470, "seconds": 1.0},
                           {"seed": 1, "test_errors": 440, "teacher_test_errors": 470, "seconds": 1.0}]}
    st = minilm_wordnet._strong(strong, control, 2000)
    assert st["teacher_test_errors"] == 470 and st["teacher_accuracy"] == pytest.approx(0.765)
    v = st["vs_control"]
    assert [(p["seed"], p["student_errors"], p["baseline_errors"], p["gain"]) for p in v["per_seed"]] == [
        (0, 430, 453, 23), (1, 440, 462, 22)]
    assert v["gain_errors_mean"] == pytest.approx(22.5) and v["significant"]
    text = minilm_wordnet.strong_sentence(st)
    assert text.startswith("A teacher fine-tuned 8 epochs (470 test errors) and transfer-set students distilled from "
                           "it: seed 0: 430, seed 1: 440 errors against the steps-matched hard-label students' 453, 462: "
                           "gain +22.5, paired bootstrap 95% CI [")
    assert text.endswith("distilled ahead on 2 of 2 seeds, too few seeds for the interval to settle it.")
    three = {**strong, "per_seed": [*strong["per_seed"], {**strong["per_seed"][0], "seed": 2, "test_errors": 441}]}
    assert minilm_wordnet.strong_sentence(minilm_wordnet._strong(three, control, 2000)).endswith(
        "with a teacher that knows more, distillation wins at equal steps.")
    lose = minilm_wordnet._strong({**three, "per_seed": [{**r, "test_errors": r["test_errors"] + 40}
                                                         for r in three["per_seed"]]}, control, 2000)
    assert minilm_wordnet.strong_sentence(lose).endswith("distillation still loses at equal steps.")
    assert minilm_wordnet._strong(None, control, 2000) is None


def test_paired_comparisons_use_only_the_seeds_both_sides_ran_and_per_seed_folders_keep_seed_0_where_it_was(tmp_path):
    v = minilm_wordnet.paired({0: 400, 1: 420, 2: 430}, {0: 410, 2: 425, 5: 1}, 300)
    assert v["seeds"] == [0, 2] and [p["gain"] for p in v["per_seed"]] == [10, -5]
    assert minilm_wordnet.paired({1: 400}, {0: 400}, 300) is None
    assert minilm_wordnet._seed_run(tmp_path / "hard-e8", 0) == (tmp_path / "hard-e8", [])
    assert minilm_wordnet._seed_run(tmp_path / "hard-e8", 2) == (tmp_path / "hard-e8-seed2", ["seeds=[2]"])


def test_embedding_runs_on_fewer_glosses_give_the_trend_and_an_extrapolation_labelled_estimated():
    """Agreement@10 against log2(training glosses), least squares: 0.50 at 12k, 0.55 at 24k, 0.60 at 48k is +0.05 per
    doubling, so 0.9 is 6 more doublings of 48,000 glosses away; the Markdown says it is an estimate."""
    runs = [{"student": {"test_cosine": c, "test_nn_agreement@1": a1, "test_nn_agreement@10": a10, "test_n": 2000},
             "split_sizes": {"train": n}, "epochs": 2, "seconds_training": 60.0 * n / 1000}
            for n, c, a1, a10 in ((12000, 0.80, 0.40, 0.50), (24000, 0.85, 0.45, 0.55), (48000, 0.90, 0.50, 0.60))]
    state = {"embed": runs[2], "embed_scaling": [minilm_wordnet.embed_row(r) for r in runs[:2]]}
    r = minilm_wordnet.assemble("quick", minilm_wordnet.MODES["quick"], state)
    assert [x["train_glosses"] for x in r["embed_scaling"]] == [12000, 24000, 48000]
    assert r["embed_agreement_at10"] == 0.60
    t = r["embed_trend"]
    assert t["at10_gain_per_doubling"] == pytest.approx(0.05)
    assert t["doublings_to_goal_estimated"] == pytest.approx(6.0)
    assert t["glosses_to_goal_estimated"] == pytest.approx(48000 * 64)
    md = minilm_wordnet.markdown(r)
    assert "| 24000 | 2 | 0.8500 | 0.4500 | 0.5500 | 24.0 |" in md
    assert "gains +0.050 per doubling" in md and "about 6.0 more doublings, 3,072,000 glosses (estimated" in md
    assert "(set overlap of the 10 nearest of 2,000 held-out glosses)" in md
    assert minilm_wordnet.embed_trend(state["embed_scaling"][:1]) is None  # one run: no trend
    flat = [{**x, "at10": 0.6} for x in r["embed_scaling"]]
    assert minilm_wordnet.embed_trend(flat)["doublings_to_goal_estimated"] is None  # no gain: nothing to extrapolate


def test_quick_mode_is_a_subsample_of_every_part_and_full_mode_runs_every_step(tmp_path):
    """Quick mode leaves out only the steps that explain the full result and exports fp32 and int8 to every target of
    the recipe; full mode scores every test gloss; --steps overrides either; step minutes merge per step."""
    from ondevice.config import load_recipe

    quick, full = minilm_wordnet.MODES["quick"], minilm_wordnet.MODES["full"]
    assert minilm_wordnet.chosen_steps(full, None) == set(minilm_wordnet.STEPS) - {"longer_teacher"}
    assert minilm_wordnet.chosen_steps(quick, None) == (set(minilm_wordnet.STEPS) - {"longer_teacher"}
                                                        - set(minilm_wordnet.OPTIONAL_STEPS))
    assert minilm_wordnet.chosen_steps(quick, "students,export") == {"students", "export"}
    assert full["limit_test"] is None and quick["limit_test"] and quick["limit_train"] < full["limit_train"]
    ex = load_recipe(Path(minilm_wordnet.ROOT) / "examples" / "minilm_wordnet.toml").export
    jobs = {t: ps for t, ps, _ in minilm_export.export_jobs(ex, quick)}
    assert jobs.keys() == {t.target for t in ex.targets}  # every target, fewer precisions
    assert all(ps and "fp32" in ps and set(ps) <= set(quick["export_precisions"]) for ps in jobs.values())
    assert {t: ps for t, ps, _ in minilm_export.export_jobs(ex, full)} == {t.target: t.precisions for t in ex.targets}
    path = tmp_path / "state.json"
    minilm_wordnet.record_minutes(path, "students", 3.0, 2)
    minilm_wordnet.record_minutes(path, "export", 5.0, 2)
    minilm_wordnet.record_minutes(path, "students", 4.0, 1)  # a later call of a step replaces its own entry
    mins = minilm_wordnet.load_state(path)["step_minutes"]
    assert {k: (v["minutes"], v["threads"]) for k, v in mins.items()} == {"students": (4.0, 1), "export": (5.0, 2)}
