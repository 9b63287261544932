"""Both MiniLM recipes (examples/minilm_wordnet.toml, examples/minilm_embed.toml) through `ondevice run` end to end:
distil from the real all-MiniLM-L6-v2 on real WordNet glosses, export, verify in ONNX Runtime, bench, report and
gates. Kept short for CI with overrides only: the teacher cut to 2 of its 6 layers (so the every-other-layer student
has 1), a few hundred glosses, one epoch, one target. benchmarks/minilm_wordnet.py runs them at full size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SMALL = ["teacher.kwargs.config={num_hidden_layers = 2}", "data.limit_train=256", "data.limit_val=64",
         "data.limit_test=128", "train.epochs=1", "export.calibration_samples=16", "export.verify_samples=64",
         'export.targets=[{target = "onnxruntime", precisions = ["fp32", "fp16"]}]',
         "bench.accuracy_samples=128", "threads=1"]


def _run(recipe: str, out: Path, extra: list[str]) -> tuple:
    sets = [a for kv in [*SMALL, *extra, f'output_dir="{out}"'] for a in ("--set", kv)]
    r = cli("run", str(ROOT / "examples" / recipe), *sets, timeout=3000)
    assert (out / "pipeline.json").exists(), r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads((out / "pipeline.json").read_text())


def _check_run(r, report: dict) -> None:
    """Both artifacts verified on held-out glosses and timed in ONNX Runtime; the exit code is the gates' verdict."""
    arts = report["artifacts"]
    assert [(a["target"], a["precision"], a["status"]) for a in arts] == [
        ("onnxruntime", "fp32", "verified"), ("onnxruntime", "fp16", "verified")], arts
    assert all(a["p50_ms"] > 0 and a["latency_label"].startswith("measured on") for a in arts)
    models = {m["role"]: m for m in report["models"]}  # the eager teacher and the from_teacher student, measured
    assert sorted(models) == ["student", "teacher"] and all(m["bench_status"] == "ok" for m in models.values())
    passed = all(g["passed"] for g in report["gates"])
    assert r.returncode == (0 if passed else 1), r.stdout[-3000:] + r.stderr[-3000:]


def test_minilm_wordnet_recipe_runs_end_to_end(tmp_path):
    out = tmp_path / "wordnet"
    r, report = _run("minilm_wordnet.toml", out, ["teacher.train.epochs=1"])
    d = report["distill"]
    assert d["teacher"]["model"] == "hf:minilm" and d["student"]["params"] < d["teacher"]["params"]
    assert d["baseline"]["test_n"] == d["student"]["test_n"] == 128
    # the glosses that did not fit in 32 tokens were truncated and counted, and the report says so
    pre = d["input_spec"]["preprocessing"]
    assert pre["max_length"] == 32 and pre["truncated"]["test"] > 0 and "to 32 tokens" in pre["truncation"]
    for a in report["artifacts"]:
        assert 0.0 <= a["accuracy"] <= 1.0 and a["accuracy_n"] == 128
        assert [t["name"] for t in json.loads(Path(a["path"] + ".json").read_text())["input_spec"]["inputs"]] == [
            "input_ids", "attention_mask"]
    assert (out / "gates" / "junit.xml").exists()
    _check_run(r, report)


def test_minilm_embed_recipe_runs_end_to_end(tmp_path):
    out = tmp_path / "embed"
    r, report = _run("minilm_embed.toml", out, [])
    s = report["distill"]["student"]
    # judged as search: cosine to the teacher's vectors and nearest-neighbour agreement on held-out glosses
    assert 0.0 < s["test_cosine"] <= 1.0 and 0.0 <= s["test_nn_agreement@10"] <= 1.0
    assert "baseline" not in report["distill"]
    for a in report["artifacts"]:
        crit = json.loads(Path(a["path"] + ".json").read_text())["verification"]["criteria"]
        assert crit["cosine"] > 0.99, (a["precision"], crit)
    _check_run(r, report)
