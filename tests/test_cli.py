"""The command line: complete help for every subcommand, exit codes, and `ondevice export` from a distill folder."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUBCOMMANDS = ["distill", "export", "bench", "run", "gate", "fetch", "targets"]


def cli(*args, env=None, timeout=600):
    e = {**os.environ, "ONDEVICE_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ondevice.cli", *args], capture_output=True, text=True, env=e,
                          timeout=timeout)


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
    (tmp / "r.toml").write_text(f"""
seed = 0
output_dir = "{tmp / 'out'}"
[teacher]
model = "mlp"
kwargs = {{ in_features = 64, hidden = [64], num_classes = 10 }}
[teacher.train]
epochs = 3
batch_size = 64
lr = 1e-2
[student]
model = "mlp"
kwargs = {{ in_features = 64, hidden = [16], num_classes = 10 }}
[data]
dataset = "digits"
[train]
epochs = 4
batch_size = 64
lr = 1e-2
""")
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
