"""The README's results section is generated from benchmarks/results/ (benchmarks/readme_tables.py): it must agree with
the committed files, describe machines from their recorded CPU flags, and read per-seed and single-seed files alike."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)


def test_readme_results_section_matches_the_result_files():
    diff = rt.check()
    assert diff == "", f"README.md disagrees with benchmarks/results/; run python benchmarks/readme_tables.py --write\n{diff}"


@pytest.mark.parametrize("flags, expected", [
    (["avx", "avx2", "avx512f", "avx512_vnni", "fma"], "AVX-512 with VNNI"),
    (["avx", "avx2", "avx512f"], "AVX-512 without VNNI"),
    (["avx", "avx2", "fma", "f16c"], "AVX2 without VNNI"),
    (["avx", "avx2", "avx_vnni"], "AVX2 with AVX-VNNI"),
    (["asimd", "asimddp"], "NEON with dot product"),
    (["sse4_2"], "no AVX2 or NEON recorded"),
])
def test_isa_comes_from_the_recorded_flags(flags, expected):
    assert rt.isa(flags) == expected


def test_machine_sentences_follow_the_recorded_flags():
    """The README once said 'AVX2 without VNNI' while the files recorded avx512_vnni: the machine is described from the
    file's own record, whichever machine measured it."""
    rec = rt.machine_record(rt.load("mnist_pipeline.json"))
    assert f"({rt.isa(rec['cpu_flags'])})" in rt.latency_section(rt.RESULTS)
    readme = " ".join((ROOT / "README.md").read_text().split())  # prose is wrapped
    assert rt.machine_phrase(rec) in readme
    assert "Xeon (2.8 GHz, AVX2 without VNNI)" not in readme


SINGLE = {"teacher": {"test_errors": 95}, "student": {"test_errors": 109}, "baseline": {"test_errors": 107},
          "distillation_gain_errors": -2, "gap_closed": -2 / 12}
SEEDED = {**SINGLE, "seeds": [0, 1, 2], "gain_errors_mean": 17 / 3, "gain_ci95": [4.0, 7.0], "gap_closed_mean": 0.49,
          "distilled_errors": 101.0, "distilled_errors_std": 2.6458, "hard_label_errors": 320 / 3,
          "hard_label_errors_std": 3.5119}
HINTON = {"teacher_errors": 104, "student_errors": 146, "distilled_errors": 114, "gap_closed": 0.7619}


def test_distill_numbers_read_each_generation_of_fields():
    old = rt.distill_numbers(SINGLE)
    assert (old["teacher"], old["hard"], old["distilled"], old["gain"], old["ci"], old["seeds"]) == (95, 107, 109, -2,
                                                                                                    None, 1)
    new = rt.distill_numbers(SEEDED)  # per-seed means win over the seed-0 blocks
    assert (new["hard"], new["distilled"], new["gain"], new["ci"], new["gap"], new["seeds"]) == (
        pytest.approx(320 / 3), 101.0, pytest.approx(17 / 3), [4.0, 7.0], 0.49, 3)
    h = rt.distill_numbers(HINTON)
    assert (h["teacher"], h["hard"], h["distilled"], h["gain"], h["gap"]) == (104, 146, 114, 32, 0.7619)


def test_distill_row_formats_means_spreads_and_the_ci():
    assert rt.distill_row("s", rt.distill_numbers(SEEDED), "`f.json`") == (
        "| s | 95 | 106.7 ± 3.5 | 101.0 ± 2.6 | **+5.7** [+4.0, +7.0] | 49% | 3 | `f.json` |")
    straddles = {**SEEDED, "gain_ci95": [-2.0, 4.0]}
    assert "| +5.7 [-2.0, +4.0] |" in rt.distill_row("s", rt.distill_numbers(straddles), "")
    loses = {**SEEDED, "gain_errors_mean": -7.7, "gain_ci95": [-13.0, -2.0]}  # a loss that all seeds agree on
    assert "| **-7.7** [-13.0, -2.0] |" in rt.distill_row("s", rt.distill_numbers(loses), "")
    assert "| 95 | 107 | 109 | -2 (1 seed: no CI) | -17% | 1 |" in rt.distill_row("s", rt.distill_numbers(SINGLE), "")


def test_stage_times_of_a_cached_rerun():
    assert rt.computed_seconds({"state": "cached", "seconds": 0.0002}) is None  # written before seconds were kept
    assert rt.computed_seconds({"state": "cached", "seconds": 390.0, "seconds_this_run": 0.1, "cached": True}) == 390.0
    assert rt.computed_seconds({"state": "done", "seconds": 12.5}) == 12.5


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(rt.RESULTS, tmp_path / "results")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


def test_check_fails_with_a_diff_when_a_file_changes(copy, monkeypatch, capsys):
    p = copy / "results" / "targets_matrix.json"
    d = json.loads(p.read_text())
    d["verify_n"] = 3000
    p.write_text(json.dumps(d))
    diff = rt.check(copy / "README.md", copy / "results")
    assert "-**Targets** (`targets_matrix.json`, the distilled MNIST student `mnist_small_cnn`, 2,000 test" in diff
    assert "+**Targets** (`targets_matrix.json`, the distilled MNIST student `mnist_small_cnn`, 3,000 test" in diff
    monkeypatch.setattr(rt, "README", copy / "README.md")
    monkeypatch.setattr(rt, "RESULTS", copy / "results")
    assert rt.main(["--check"]) == 1
    assert "README.md disagrees with benchmarks/results/" in capsys.readouterr().err
    assert rt.main(["--write"]) == 0 and rt.main(["--check"]) == 0
    assert "3,000 test images" in (copy / "README.md").read_text()


def test_a_second_machine_is_named_with_its_files(copy):
    p = copy / "results" / "distill_speed.json"
    d = json.loads(p.read_text())
    d["measured_on"] = {**d["measured_on"], "cpu_model": "Example CPU", "cpu_flags": ["avx", "avx2"], "cores": 3}
    p.write_text(json.dumps(d))
    text = rt.machines_section(copy / "results")
    assert "a 3-core Example CPU (AVX2 without VNNI): `distill_speed.json`;" in text
    assert "a 2-core Intel(R) Xeon(R) Processor @ 2.80GHz (AVX-512 with VNNI): `fashion_mnist_ablation.json`" in text


def test_missing_markers_are_an_error_that_names_them(tmp_path):
    (tmp_path / "README.md").write_text("# no markers\n")
    with pytest.raises(SystemExit, match="results:begin"):
        rt.check(tmp_path / "README.md")


def test_setup_text_names_models_schedule_losses_and_the_training_set_when_recorded():
    d = {"teacher": {"model": "big", "params": 421642}, "student": {"model": "small", "params": 103018}, "epochs": 20,
         "losses": [{"name": "kd", "weight": 0.9, "temperature": 4.0, "standardize": True}, {"name": "ce", "weight": 0.1}]}
    assert rt.setup_text("MNIST example", d) == ("MNIST example: big (421,642 params) -> small (103,018 params), 20 epochs, "
                                                 "0.9 KD (T=4, standardized) + 0.1 CE")
    assert "small (103,018 params), 5,000 training images, 20 epochs" in rt.setup_text("x", {**d, "split_sizes": {"train": 5000, "val": 1000, "test": 10000}})


def _minilm(copy, **fields):
    p = copy / "results" / "minilm_wordnet.json"
    d = {**json.loads(p.read_text()), **fields}
    p.write_text(json.dumps(d))
    return copy / "results"


def _run(teacher_train, student_test, baseline_test, baseline_train=0.8):
    return {"teacher": {"test_acc": 0.75, "train_acc": teacher_train},
            "student": {"test_acc": student_test, "train_acc": 0.8},
            "baseline": {"test_acc": baseline_test, "train_acc": baseline_train},
            "trainable_layers": 6, "teacher_epochs": 3, "student_epochs": 2}


def test_the_minilm_teacher_runs_explain_each_loss_by_the_teachers_fit(copy):
    """A weak teacher (fits its training glosses worse than the hard-label student) and a strong teacher whose student
    still lost get different explanations; a run where distillation won gets neither."""
    res = _minilm(copy, teacher_runs={"weak": _run(0.7, 0.70, 0.72), "strong": _run(0.9, 0.73, 0.74),
                                      "won": _run(0.9, 0.76, 0.74)})
    text = rt.minilm_teachers_section(res)
    assert "fine-tuned in the teacher for 3 epochs" in text
    assert "A teacher that fits its training glosses worse than the student trained alone (weak) teaches" in text
    assert "where the teacher fits them better (strong) the distilled student still lost" in text
    assert "(won)" not in text and "(weak, " not in text


def test_the_kd_sweep_is_compared_with_the_seed_0_hard_label_student(copy):
    res = _minilm(copy, kd_sweep_hard_label_errors=564, ablation_se_points=1.0,
                  kd_sweep={"kd 0.5 T=2 + ce 0.5": {"test_errors": 550, "test_n": 2000},
                            "kd 0.5 T=1 + ce 0.5": {"test_errors": 580, "test_n": 2000}})
    text = rt.minilm_kd_sweep_section(res)
    assert "the seed-0 hard-label student's 564 errors on 2,000 test glosses" in text
    assert "kd 0.5 T=2 + ce 0.5: 550 errors (+14); kd 0.5 T=1 + ce 0.5: 580 errors (-16)" in text
    assert "about 57 errors: every setting is within 16 errors of the hard-label student" in text  # 2 sqrt(2) 1 pt
    far = _minilm(copy, kd_sweep={"kd 0.5 T=1 + ce 0.5": {"test_errors": 464, "test_n": 2000}})
    assert "a setting is 100 errors from the hard-label student, more than that" in rt.minilm_kd_sweep_section(far)
    assert rt.minilm_kd_sweep_section(_minilm(copy, kd_sweep=None)) == ""


def _control(pairs, mean, ci, beats) -> dict:
    """A more_steps_control as minilm_wordnet.assemble writes it: (seed, distilled errors, control errors) rows."""
    return {"seed": 0, "epochs": 8, "steps_factor": 4.0, "test_errors": pairs[0][2], "beats_distilled": beats,
            "vs_distilled": {"per_seed": [{"seed": sd, "student_errors": d, "baseline_errors": c} for sd, d, c in pairs],
                             "gain_errors_mean": mean, "gain_ci95": ci}}


def res_nt(copy) -> dict:
    return {"per_seed": [{"seed": 0, "student_errors": 571}, {"seed": 1, "student_errors": 585}],
            "gain_errors_mean": -19.5, "gain_ci95": [-32.0, -7.0]}


def test_the_minilm_seeds_sentence_names_the_distilled_student_and_sets_the_no_transfer_run_beside_it(copy):
    seeds = [{"seed": s, "student_errors": e, "baseline_errors": b, "gain": b - e}
             for s, e, b in ((0, 491, 564), (1, 500, 553))]
    res = _minilm(copy, per_seed=seeds, test_n=2000, gain_errors_mean=63.0, gain_ci95=[53.0, 73.0],
                  distilled_student="3 layers, distilled with a transfer set",
                  no_transfer={"per_seed": [{"seed": 0, "student_errors": 571}, {"seed": 1, "student_errors": 585}],
                               "gain_errors_mean": -19.5, "gain_ci95": [-32.0, -7.0]},
                  more_steps_control=_control([(0, 491, 560)], 69.0, [69.0, 69.0], False))
    text = rt.minilm_seeds_section(res)
    assert ("hard-label students trained 8 epochs instead of 2 (as many optimizer steps as the transfer-set student) "
            "make seed 0: 560 (against 564 in the shorter schedule and 491 distilled) errors; distilled minus control "
            "+69.0 (one seed).") in text
    assert "distilled: 3 layers, distilled with a transfer set): seed 0: 491 vs 564 (+73)" in text
    assert "CI [+53.0, +73.0]" in text
    assert ("without the transfer set: seed 0: 571, seed 1: 585 errors, gain -19.5 (CI [-32.0, -7.0]): the win comes "
            "from the teacher's outputs") in text
    longer = rt.minilm_seeds_section(_minilm(copy, per_seed=seeds, test_n=2000, gain_errors_mean=63.0,
                                             teacher_accuracy=0.78,
                                             gain_ci95=[53.0, 73.0], no_transfer=res_nt(copy),
                                             more_steps_control=_control([(0, 491, 453), (1, 500, 470)], -34.0,
                                                                         [-38.0, -30.0], True)))
    assert "the win comes" not in longer  # the control explains it
    assert ("seed 1: 470 (against 553 in the shorter schedule and 500 distilled) errors; distilled minus control "
            "-34.0, CI [-38.0, -30.0]: so the gain over the hard-label student of the same epochs comes from the "
            "longer schedule, not from the teacher.") in longer
    assert "Those students also beat their teacher (" not in longer  # a teacher at 440 errors beats 453 and 470
    weak = rt.minilm_seeds_section(_minilm(copy, per_seed=seeds, test_n=2000, teacher_accuracy=0.743,
                                           gain_errors_mean=63.0, gain_ci95=[53.0, 73.0], no_transfer=res_nt(copy),
                                           more_steps_control=_control([(0, 491, 453), (1, 500, 470)], -34.0,
                                                                       [-38.0, -30.0], True)))
    assert "Those students also beat their teacher (514 errors)" in weak
    lost = rt.minilm_seeds_section(_minilm(copy, per_seed=seeds, test_n=2000, gain_errors_mean=-5.0,
                                           gain_ci95=[-9.0, 2.0], no_transfer={"per_seed": [], "gain_ci95": None},
                                           more_steps_control=None))
    assert "the win comes" not in lost and "without the transfer set" not in lost


def test_the_single_seed_sentence_lists_only_one_seed_files_each_with_its_reason(copy):
    res = copy / "results"
    for name, _ in rt.DISTILL_FILES:  # every file on three seeds: nothing to say
        d = json.loads((res / name).read_text())
        (res / name).write_text(json.dumps({**d, "seeds": [0, 1, 2]}))
    assert rt.single_seed_section(res) == ""
    quick = json.loads((res / "hinton_mnist_quick.json").read_text())
    (res / "hinton_mnist_quick.json").write_text(json.dumps({**quick, "seeds": [0]}))
    text = rt.single_seed_section(res)
    assert "`hinton_mnist_quick.json`" in text and rt.SINGLE_SEED_WHY["hinton_mnist_quick.json"] in text
    assert "hinton_mnist_full.json" not in text
