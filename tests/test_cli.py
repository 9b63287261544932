"""The command line: complete help for every subcommand, exit codes, and `ondevice export` from a distill folder."""
import json
from pathlib import Path

import pytest

from helpers import cli, digits_recipe

SUBCOMMANDS = ["distill", "export", "bench", "run", "gate", "fetch", "targets"]


def test_top_level_help_lists_every_subcommand():
    p = cli("--help")
    assert p.returncode == 0
    for s in SUBCOMMANDS:
        assert f"\n    {s} " in p.stdout, s
    assert "examples:" in p.stdout


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_each_subcommand_has_help_with_a_description(sub):
    p = cli(sub, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: ondevice {sub}")
    body = p.stdout.split("\n\n", 2)
    assert len(body) >= 2 and len(p.stdout) > 300  # a description and documented options, not a bare usage line


def test_no_command_prints_help_and_exits_2():
    p = cli()
    assert p.returncode == 2 and "usage: ondevice" in p.stdout


def test_targets_lists_all_four():
    p = cli("targets")
    assert p.returncode == 0
    for t in ("coreml", "executorch", "onnxruntime", "tflite"):
        assert t in p.stdout


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    # a 64-unit student: int8 agreement on a 16-unit one sits at the 98% floor and differs by CPU (AVX2 vs VNNI)
    (tmp / "r.toml").write_text(digits_recipe(tmp / "out", threads=None, teacher_hidden=(64,), teacher_lr=1e-2,
                                              epochs=4, student_kwargs="{ in_features = 64, hidden = [64], "
                                                                       "num_classes = 10 }"))
    p = cli("distill", str(tmp / "r.toml"))
    assert p.returncode == 0, p.stderr
    assert "student (distilled)" in p.stdout
    return tmp / "out"


def test_export_from_a_distill_folder(distilled):
    p = cli("export", str(distilled), "-t", "onnxruntime", "-p", "fp32", "-p", "int8_dynamic")
    assert p.returncode == 0, p.stdout + p.stderr
    recs = json.loads((distilled / "artifacts" / "exports.json").read_text())
    assert [(r["target"], r["precision"], r["status"]) for r in recs] == [
        ("onnxruntime", "fp32", "verified"), ("onnxruntime", "int8_dynamic", "verified")]
    for r in recs:
        assert Path(r["path"]).exists() and Path(r["path"] + ".json").exists()
        assert r["verification"]["n"] == 359  # every held-out digits test sample (fewer than --verify-samples)
    assert "exports (measured in each target's runtime" in p.stdout


def test_export_usage_errors_exit_2(distilled):
    p = cli("export", str(distilled), "-t", "onnxruntime", "-p", "palettize4")
    assert p.returncode == 2 and "cannot produce 'palettize4'; it can do: fp32" in p.stderr
    p = cli("export", str(distilled), "-t", "onnxrt")
    assert p.returncode == 2 and "unknown target 'onnxrt'; valid targets:" in p.stderr
    p = cli("export", str(distilled.parent))
    assert p.returncode == 2 and "is not an `ondevice distill` output folder" in p.stderr
    p = cli("export", "--model", "mlp")
    assert p.returncode == 2 and "--data is needed with --model" in p.stderr
    p = cli("export", str(distilled), "-t", "onnxruntime", "-o", "nhwc=true")
    assert p.returncode == 2 and "takes option(s) ['nhwc']" in p.stderr
