"""Plain progress lines for long stages when stderr is not a terminal: the helper, the bench harness and export."""
from __future__ import annotations

import re
import sys

import pytest

from ondevice.bench.latency import StopRule, VariantProgress, rounds_done
from ondevice.progress import Bar, Ticker, progress_bar, progress_line


@pytest.fixture
def plain(monkeypatch):
    """Progress on (conftest turns it off for the suite) and stderr captured, which is not a terminal."""
    monkeypatch.setenv("ONDEVICE_PROGRESS", "1")
    monkeypatch.delenv("ONDEVICE_QUIET", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_progress_line_counts_elapsed_and_estimate():
    # 3 of 18 done in 12 s: 15 left at 4 s each
    assert progress_line("export", 3, 18, 12.0, "tflite/fp16 verified") == (
        "[export] 3 of 18 (tflite/fp16 verified): 12 s elapsed, about 60 s left (estimated from the pace so far)")
    assert progress_line("bench: timing", 2.5, 10, 5.0) == (
        "[bench: timing] 2.5 of 10: 5 s elapsed, about 15 s left (estimated from the pace so far)")
    assert progress_line("export", 18, 18, 71.6) == "[export] 18 of 18: done in 72 s (measured)"


def test_ticker_prints_every_item_off_a_terminal(plain, capsys):
    t = Ticker(3, "job", every_s=0)
    for what in ("a", "b", "c"):
        t.tick(what)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["[job] 1 of 3 (a)", "[job] 2 of 3 (b)", "[job] 3 of 3 (c)"]
    assert re.fullmatch(r"\[job\] 1 of 3 \(a\): 0 s elapsed, about 0 s left \(estimated from the pace so far\)",
                        lines[0])
    assert lines[2].endswith("done in 0 s (measured)")


def test_ticker_rate_limits_but_keeps_the_first_and_last(plain, capsys):
    t = Ticker(50, "job", every_s=3600)
    for _ in range(50):
        t.tick()
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["[job] 1 of 50", "[job] 50 of 50"]


def test_a_training_bar_prints_plain_lines_in_a_log_once_the_stage_is_long(plain, capsys, monkeypatch):
    """A MiniLM training epoch ran 10 minutes with nothing in the log: off a terminal the bar prints a plain line at
    most every PLAIN_EVERY_S, and its last; a stage shorter than that prints nothing (its caller's summary says it)."""
    with progress_bar(20, "distill epoch 1/2") as bar:
        for _ in range(20):
            bar.advance(1)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(Bar, "PLAIN_EVERY_S", 0.0)
    with progress_bar(3, "distill epoch 1/2") as bar:
        for _ in range(3):
            bar.advance(1, loss=0.5)
    lines = [ln.split(":")[0] for ln in capsys.readouterr().err.splitlines()]
    assert lines == ["[distill epoch 1/2] 1 of 3", "[distill epoch 1/2] 2 of 3", "[distill epoch 1/2] 3 of 3"]


def test_ticker_is_silent_on_a_terminal_for_one_item_and_when_turned_off(plain, capsys, monkeypatch):
    Ticker(1, "single", every_s=0).tick()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    Ticker(3, "tty", every_s=0).tick()
    monkeypatch.undo()
    for env in ({"ONDEVICE_PROGRESS": "0"}, {"ONDEVICE_PROGRESS": "1", "ONDEVICE_QUIET": "1"},
                {"ONDEVICE_PROGRESS": "1", "RANK": "1"}):
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            Ticker(3, "off", every_s=0).tick()
    assert capsys.readouterr().err == ""


def test_rounds_done_sums_each_variants_share_of_the_stop_rule():
    rule = StopRule(min_queries=100, min_seconds=2.0, max_seconds=30.0)
    p = {"done": VariantProgress([10**7] * 200),  # 200 queries, 2 s: done
         "half": VariantProgress([10**7] * 100),  # 100 queries but 1 s of 2: the slower half decides
         "slow": VariantProgress([3 * 10**9] * 5),  # 5 queries in 15 s: half way to the 30 s cap
         "failed": VariantProgress(error="boom")}
    assert rule.fraction(100, 1.0) == 0.5 and rule.fraction(5, 15.0) == 0.5
    assert rounds_done(p, rule) == pytest.approx(1 + 0.5 + 0.5 + 1)


def test_export_many_prints_one_line_per_artifact(plain, capsys, tmp_path):
    pytest.importorskip("onnxruntime")
    import numpy as np
    import torch

    from ondevice.export import export_many

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    export_many(model, [("onnxruntime", ["fp32", "fp16"], {})], out_dir=tmp_path, calibration=x, verify_data=(x, None))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[export]")]
    assert [ln.split(":")[0] for ln in lines] == ["[export] 1 of 2 (onnxruntime/fp32 verified)",
                                                  "[export] 2 of 2 (onnxruntime/fp16 verified)"]
    assert lines[1].endswith("(measured)")


def test_bench_prints_progress_when_not_on_a_terminal(plain, capsys, tmp_path):
    """Two eager models: loading, interleaved timing and accuracy passes each say how far they are."""
    from ondevice.bench import BenchConfig, TorchModelRef, bench

    from test_bench_common import FAST, digits, write_models

    models = write_models(tmp_path)
    x, y = digits()
    bench([TorchModelRef("a", f"{models}:mlp"), TorchModelRef("b", f"{models}:mlp")], data=(x[:100], y[:100]),
          config=BenchConfig(threads=(1,), **FAST), out_dir=None)
    err = capsys.readouterr().err
    for stage in ("loading", "timing variants in interleaved rounds", "accuracy passes over 100 samples"):
        assert re.search(rf"^\[bench: {stage}\] 2 of 2.*: done in \d+ s \(measured\)$", err, re.M), err
    assert re.search(r"^\[bench: loading\] 1 of 2 \(a\): \d+ s elapsed, about \d+ s left", err, re.M), err
