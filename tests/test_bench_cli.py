"""`ondevice bench` command line: help, usage errors (exit 2), and a real run on a bare artifact."""
from __future__ import annotations

import argparse
import json
import shutil

import pytest

from ondevice.bench import cli, validate_report

from test_bench_common import digits, train_cnn, write_models


def _parse(argv):
    p = argparse.ArgumentParser(prog="ondevice")
    sub = p.add_subparsers(dest="command")
    cli.add_parser(sub)
    return p.parse_args(["bench", *argv])


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as ei:
        _parse(["--help"])
    assert ei.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--teacher", "--teacher-weights", "--student", "--student-weights", "--mode", "--threads",
                "--batch-size", "--profiles", "--out", "--input-shape", "--limit", "--strict", "--list-profiles"):
        assert opt in out
    assert "exit codes: 0" in out and "not measurable" in out and "Pareto" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(_parse([])) == 2
    assert "nothing to benchmark" in capsys.readouterr().err
    assert cli.main(_parse([str(tmp_path / "missing.onnx")])) == 2
    assert "missing.onnx does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(_parse([str(tmp_path / "empty")])) == 2
    assert "no artifacts" in capsys.readouterr().err
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"x")
    assert cli.main(_parse([str(weird), "--input-shape", "1,4"])) == 2
    assert "cannot tell the target" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        _parse(["m.onnx", "--threads", "0"])
    assert ei.value.code == 2
    assert "expected positive integers" in capsys.readouterr().err


def test_bad_profile_file_exits_2_with_key_path(tmp_path, capsys):
    prof = tmp_path / "p.toml"
    prof.write_text('name = "p"\nsustained_power_w = 2\nmemory_capacity_bytes = 1e9\n'
                    'memory_bandwidth_bytes_per_s = 1e9\nwatts = 3\n[peak_macs_per_s]\nint8 = "many"\n'
                    '[energy_pj.mult]\n[energy_pj.add]\n[energy_pj.memory]\ndram_per_64bit = 1300\n'
                    'sram_per_64bit = 10\n')
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert cli.main(_parse([str(onnx), "--input-shape", "1,4", "--profiles", str(prof)])) == 2
    err = capsys.readouterr().err
    assert "peak_macs_per_s.int8: expected a number, got str ('many')" in err
    assert "watts: unknown key 'watts'" in err
    assert cli.main(_parse(["--list-profiles"])) == 0
    assert "npu_1w" in capsys.readouterr().out


def test_bare_artifact_with_synthetic_inputs(tmp_path, capsys):
    """A bare .onnx (no sidecar, no data): latency and memory on synthetic inputs, accuracy unavailable."""
    pytest.importorskip("onnxruntime")
    from ondevice.export import export

    models = write_models(tmp_path)
    model = train_cnn(models, tmp_path / "cnn.pt", steps=5)
    x, y = digits()
    art = export(model, "onnxruntime", "fp32", out=tmp_path / "exp" / "m.onnx", verify_data=(x[:32], y[:32]))
    bare = tmp_path / "bare.onnx"
    shutil.copy(art.path, bare)  # no bare.onnx.json beside it
    out = tmp_path / "rep"
    rc = cli.main(_parse([str(bare), "--input-shape", "1,1,8,8", "--min-queries", "8", "--min-seconds", "0",
                          "--profiles", "mcu", "--out", str(out), "--strict"]))
    printed = capsys.readouterr().out
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    validate_report(rep)
    it = rep["items"][0]
    assert it["label"] == "bare.onnx" and it["precision"] is None and it["status"] == "ok"
    assert it["runs"][0]["latency"]["n"] >= 8 and it["accuracy"] is None
    assert rep["data"]["synthetic"] and rep["data"]["sample_shape"] == [1, 8, 8]
    assert any("synthetic" in w for w in rep["warnings"])
    assert it["energy"]["estimated"] is None and "--student" in it["energy"]["estimated_reason"]
    assert "bare.onnx" in printed and "measured on" in printed
    assert (out / "report.md").exists() and (out / "report.html").exists()
