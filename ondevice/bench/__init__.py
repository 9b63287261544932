"""Benchmark harness: latency, memory, accuracy retention and energy under mobile power budgets.

    from ondevice.bench import bench, BenchConfig, TorchModelRef
    report = bench(["out/model.onnx", "out/"],                      # artifacts or folders of artifacts
                   data=(x_test, y_test),                           # or "mnist", or a .npz with x, y
                   teacher=TorchModelRef("teacher", "ccexam_mnist_cnn"),
                   student=TorchModelRef("student", "mnist_small_cnn", weights="runs/student.pt"),
                   config=BenchConfig(mode="quick", threads=(1, 2)),
                   out_dir="bench_out")                             # report.json / .md / .html

Latency: every (item, thread count) runs in its own persistent worker process; variants are timed in interleaved
rounds (see latency.py). Memory: peak RSS of the worker above its baseline (memory.py). Accuracy: every model
on the same test set, against the teacher (accuracy.py). Energy: estimated per device profile from MAC and byte
counts (energy.py, profiles in ondevice/profiles/*.toml), plus measured host energy where RAPL is readable.
Importing this package imports neither torch nor any runtime SDK; the workers do.
"""
from __future__ import annotations

from .accuracy import kl_mean, retention
from .config import MODES, BenchConfig, TorchModelRef, expand_artifacts, load_data, resolve_items
from .energy import PRECISION_COST, count_graph, estimate
from .harness import SCHEMA_VERSION, bench
from .latency import StopRule, bootstrap_ci, interleave, latency_stats, percentile
from .profiles import Profile, builtin_profile_names, load_profile, load_profiles, profile_from_dict
from .report import load_report, load_schema, to_html, to_markdown, validate_report, write_report

__all__ = [
    "bench", "BenchConfig", "TorchModelRef", "MODES", "SCHEMA_VERSION",
    "expand_artifacts", "resolve_items", "load_data",
    "percentile", "bootstrap_ci", "latency_stats", "interleave", "StopRule",
    "kl_mean", "retention",
    "Profile", "load_profile", "load_profiles", "profile_from_dict", "builtin_profile_names",
    "count_graph", "estimate", "PRECISION_COST",
    "write_report", "load_report", "validate_report", "load_schema", "to_markdown", "to_html",
]
