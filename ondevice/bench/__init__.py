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

import importlib
from typing import Any

_LAZY = {
    "kl_mean": "accuracy", "retention": "accuracy",
    "MODES": "config", "BenchConfig": "config", "TorchModelRef": "config", "expand_artifacts": "config",
    "load_data": "config", "resolve_items": "config",
    "precision_cost": "energy", "count_graph": "energy", "estimate": "energy",
    "SCHEMA_VERSION": "harness", "bench": "harness",
    "StopRule": "latency", "bootstrap_ci": "latency", "interleave": "latency", "latency_stats": "latency",
    "percentile": "latency",
    "Profile": "profiles", "builtin_profile_names": "profiles", "load_profile": "profiles", "load_profiles": "profiles",
    "profile_from_dict": "profiles",
    "load_report": "report", "load_schema": "report", "to_html": "report", "to_markdown": "report",
    "validate_report": "report", "write_report": "report",
}


def __getattr__(name: str) -> Any:
    """Names load on first use, so `ondevice bench --help` imports no numpy."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "bench", "BenchConfig", "TorchModelRef", "MODES", "SCHEMA_VERSION",
    "expand_artifacts", "resolve_items", "load_data",
    "percentile", "bootstrap_ci", "latency_stats", "interleave", "StopRule",
    "kl_mean", "retention",
    "Profile", "load_profile", "load_profiles", "profile_from_dict", "builtin_profile_names",
    "count_graph", "estimate", "precision_cost",
    "write_report", "load_report", "validate_report", "load_schema", "to_markdown", "to_html",
]
