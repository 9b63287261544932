"""The README's "Any model on the targets" commands, run as written, with one change that keeps CI short: MiniLM with
one transformer layer (`--model-kwarg 'config={num_hidden_layers = 1}'`) and fewer samples."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("### Any model on the targets"):text.index("### Losses")]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("readme") / "minilm"
    assert "--model hf:minilm --model-kwarg head=embedding --task embedding -p fp32" in _readme_block()
    r = cli("export", "--model", "hf:minilm", "--model-kwarg", "head=embedding", "--model-kwarg",
            "config={num_hidden_layers = 1}", "--task", "embedding", "-p", "fp32", "--data", "wordnet",
            "--data-kwarg", "tokenizer=minilm", "--data-kwarg", "max_length=16", "--calibration-samples", "16",
            "--verify-samples", "32", "--out", str(out), timeout=3000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_minilm_exports_to_all_four_targets_with_two_int64_inputs(minilm):
    exports = json.loads((minilm / "exports.json").read_text())
    assert sorted(a["target"] for a in exports) == ["coreml", "executorch", "onnxruntime", "tflite"]
    for a in exports:
        assert a["status"] == "verified", (a["target"], a["error"])
        assert [t["name"] for t in a["input_spec"]["inputs"]] == ["input_ids", "attention_mask"]
        assert {t["dtype"] for t in a["input_spec"]["inputs"]} == {"int64"}
        crit = a["verification"]["criteria"]
        assert crit["cosine"] > 0.9999 and crit["nn_agreement@1"] >= 0.99, (a["target"], crit)
        assert a["input_spec"]["preprocessing"]["max_length"] == 16


def test_inspect_prints_the_tokenizer_from_the_file(minilm):
    r = cli("inspect", str(minilm / "tflite" / "hf_minilm_fp32.tflite"))
    assert r.returncode == 0, r.stderr
    assert "preprocessing (from the artifact's own metadata):" in r.stdout
    assert re.search(r"tokenizer_file: .*tokenizer\.json", r.stdout) and "max_length: 16" in r.stdout


def test_bare_third_party_files_with_two_inputs(minilm, tmp_path):
    tfl = tmp_path / "third_party.tflite"
    shutil.copy(minilm / "tflite" / "hf_minilm_fp32.tflite", tfl)
    r = cli("bench", str(tfl), "--vocab", "30522", "--min-queries", "16", "--min-seconds", "0", "--out",
            str(tmp_path / "bench_tflite"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "bench_tflite" / "report.json").read_text())
    assert rep["data"]["synthetic"] and set(rep["data"]["inputs"]) == {"input_ids", "attention_mask"}
    assert rep["data"]["inputs"]["input_ids"]["origin"].startswith("synthetic: token ids uniform in [0, 30522)")

    from ondevice.data import load_dataset

    t = load_dataset("wordnet", kwargs={"tokenizer": "minilm", "max_length": 16}).test.x
    np.savez(tmp_path / "samples.npz", **{k: v[:64].numpy() for k, v in t.items()})
    onnx = tmp_path / "third_party.onnx"
    shutil.copy(minilm / "onnxruntime" / "hf_minilm_fp32.onnx", onnx)
    r = cli("bench", str(onnx), "--inputs", str(tmp_path / "samples.npz"), "--min-queries", "16", "--min-seconds",
            "0", "--out", str(tmp_path / "bench_onnx"))
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((tmp_path / "bench_onnx" / "report.json").read_text())
    item = rep["items"][0]
    assert item["status"] == "ok" and item["accuracy"]["n"] == 64 and not rep["data"]["synthetic"]
