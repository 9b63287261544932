"""benchmarks/hinton_mnist.py: the result file it writes records its schedule, and a run with extra overrides (a probe,
a shortened schedule) writes its summary into its own run folder instead of replacing the committed measurement."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ondevice.errors import OutputDirError

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("hinton_mnist", ROOT / "benchmarks" / "hinton_mnist.py")
hm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hm)


def test_an_overridden_run_keeps_the_committed_result_file_and_records_its_epochs(tmp_path):
    committed = ROOT / "benchmarks" / "results" / "hinton_mnist_quick.json"
    before = committed.read_bytes()
    args = ["--mode", "quick", "--out-dir", str(tmp_path / "run"), "--threads", "1",
            "--set", "data.limit_train=300", "--set", "data.limit_val=100", "--set", "data.limit_test=200",
            "--set", "teacher.train.epochs=1", "--set", "train.epochs=1", "--set", "seeds=[0, 1]"]
    with pytest.raises(OutputDirError,
                       match=r"holds no finished run of this mode's recipe \(no results.json.*run without --summarize"):
        hm.main([*args, "--summarize"])
    assert hm.main(args) == 0
    assert committed.read_bytes() == before
    r = json.loads((tmp_path / "run" / "hinton_mnist_quick.json").read_text())
    assert r["epochs"] == {"teacher": 1, "student": 1} and r["regime"] == hm.REGIME["quick"]
    assert r["seeds"] == [0, 1] and len(r["per_seed"]) == 2 and r["test_n"] == 200
    assert r["gain_ci95"][0] <= r["gain_errors_mean"] <= r["gain_ci95"][1]
    assert (tmp_path / "run" / "hinton_mnist_quick.md").read_text().startswith("# Hinton et al. 2015 MNIST, quick")

    # --summarize rebuilds the same file from the finished run, training nothing (its measured time is kept) ...
    first = (tmp_path / "run" / "hinton_mnist_quick.json").read_text()
    (tmp_path / "run" / "hinton_mnist_quick.json").unlink()
    assert hm.main([*args, "--summarize"]) == 0
    assert (tmp_path / "run" / "hinton_mnist_quick.json").read_text() == first
    # ... and refuses a run folder trained with another recipe
    with pytest.raises(OutputDirError, match="holds no finished run of this mode's recipe"):
        hm.main([*args, "--set", "train.epochs=2", "--summarize"])
