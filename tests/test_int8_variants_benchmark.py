"""benchmarks/int8_transformer_variants.py's arithmetic: SQNR and agreement against the fp32 file (the fp32 file
against itself has no finite SQNR and is written as none, not as infinity), and the Markdown rows."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import int8_transformer_variants as v  # noqa: E402


def test_score_against_the_fp32_outputs():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [1.0, 3.0]])
    noisy = ref + np.array([[0.0, 0.1], [0.0, 0.0], [0.0, 0.0], [2.5, 0.0]])  # the last row's top-1 flips
    s = v.score(ref, noisy)
    assert s["top1_agreement"] == 0.75 and s["n"] == 4
    assert s["sqnr_db"] == pytest.approx(10 * np.log10((ref ** 2).sum() / (0.1 ** 2 + 2.5 ** 2)))
    assert v.score(ref, ref)["sqnr_db"] is None


def test_markdown_rows():
    rows = [{"model": "teacher", "target": "onnxruntime", "variant": "fp32", "sqnr_db": None, "top1_agreement": 1.0,
             "size_ratio_vs_fp32": 1.0, "p50_ms_batch1": 8.91},
            {"model": "teacher", "target": "coreml", "variant": "int8_weight_only", "sqnr_db": 38.44,
             "top1_agreement": 1.0, "size_ratio_vs_fp32": 0.255, "p50_ms_batch1": None}]
    md = v.markdown({"run_folder": "runs/minilm-quick", "verify_n": 512, "latency": "p50", "rows": rows,
                     "machine": {"cpu_model": "cpu", "cpu_flags": ["avx2"]}})
    assert "| teacher | onnxruntime | fp32 | - | 1.0000 | 1.00 | 8.91 |" in md
    assert "| teacher | coreml | int8_weight_only | 38.4 | 1.0000 | 0.26 | - |" in md
