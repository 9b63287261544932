"""Property-based tests (Hypothesis) of the trust paths: `benchmarks/fuzz.py` run with modest case counts (the
committed benchmark runs >= 1000 per kind) over random recipes, and truncated or bit-flipped .onnx / .pte / .tflite
/ .mlpackage artifacts, artifact records, gzipped IDX files and student checkpoints. Every case must end in a clear
error or a correct result: no traceback, no hang, no false "verified", no lost file. It runs as its own process
(one thread per library, as the script sets), because it forks a child per damaged file as bench runs a worker."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz  # noqa: E402

CASES = {"recipe": 200, "record": 100, "idx_gz": 100, "onnx": 25, "tflite": 25, "pte": 15, "mlpackage": 10,
         "checkpoint": 10}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "fuzz.json"
    spec = ",".join(f"{k}={n}" for k, n in CASES.items())
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--cases", spec, "--kinds",
                        ",".join(CASES), "--seed", "13", "--out", str(out)], capture_output=True, text=True,
                       timeout=1800)
    assert out.exists(), p.stderr[-3000:]
    return {"rc": p.returncode, **json.loads(out.read_text())}


def test_the_result_file_has_the_documented_fields(result):
    assert [k["kind"] for k in result["kinds"]] == list(CASES)
    for k in result["kinds"]:
        assert set(k) == {"kind", "cases", "clear_error", "correct", "traceback", "false_verified", "files_lost"}
    assert result["machine"]["cpu_model"] and result["rc"] == 0


@pytest.mark.parametrize("kind", list(CASES))
def test_every_case_ends_in_a_clear_error_or_a_correct_result(result, kind):
    t = next(k for k in result["kinds"] if k["kind"] == kind)
    assert t["cases"] == CASES[kind]
    assert (t["traceback"], t["false_verified"], t["files_lost"]) == (0, 0, 0), result["bad_examples"].get(kind)
    assert t["clear_error"] + t["correct"] == t["cases"]


@pytest.mark.parametrize("kind", ["onnx", "tflite", "pte", "mlpackage"])
def test_damaged_artifacts_are_refused_or_judged_again(result, kind):
    """Most damage makes the runtime refuse the file; what still runs is judged again against the student and is
    verified only when its outputs still match the undamaged artifact's (checked by the harness)."""
    details = result["details"][kind]
    assert details.get("worker error", 0) + details.get("worker crashed", 0) > 0
    assert set(details) <= {"worker error", "worker crashed", "worker timed out", "verified, outputs intact",
                            "refused after re-verification", "refused: changed"}


def test_the_recipe_fuzz_reaches_both_outcomes(result):
    details = result["details"]["recipe"]
    assert details.get("refused", 0) > 0 and details.get("valid recipe", 0) > 0


def test_damage_helper_truncates_flips_and_overwrites():
    data = bytes(range(16))
    assert fuzz.damaged(data, ("truncate", 3)) == bytes([0, 1, 2])
    assert fuzz.damaged(data, ("flip", [0, 9])) == bytes([1, 3]) + data[2:]
    assert fuzz.damaged(data, ("block", (14, 100, 7))) == data[:14] + bytes([7, 7])
    assert fuzz.damaged(data, ("flip", [8 * 16 + 1])) == bytes([2]) + data[1:]  # wraps around
