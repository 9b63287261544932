"""Devices and training precision, exercised on the CPU (the GPU paths are the same code with another device; the GPU
check script benchmarks/gpu_check.py runs them on CUDA when a GPU machine is available)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from ondevice.config import load_recipe
from ondevice.distill import distill
from ondevice.errors import ConfigError
from ondevice.train import autocast_factory, resolve_device

from helpers import cli, digits_recipe


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type in (want, "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device = 'cuda:1' but no CUDA device is available"):
            resolve_device("cuda:1")
    with pytest.raises(ConfigError, match=r"expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"):
        resolve_device("tpu")


def test_autocast_factory():
    assert autocast_factory(torch.device("cpu"), "fp32") is contextlib.nullcontext
    with autocast_factory(torch.device("cpu"), "bf16")():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match=r"train\.precision: expected one of fp32, bf16, fp16, got 'int8'"):
        autocast_factory(torch.device("cpu"), "int8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_learns(tmp_path, precision):
    p = tmp_path / "r.toml"
    p.write_text(digits_recipe(tmp_path / "out", epochs=4, extra="") .replace("[train]\n", f"[train]\nprecision = \"{precision}\"\n"))
    res = distill(load_recipe(p))
    assert res.results["precision"] == precision
    assert res.results["student"]["test_acc"] > 0.75  # 10 classes: well above chance
    ck = torch.load(tmp_path / "out" / "checkpoints" / "distill.pt", weights_only=True)
    assert "scaler" in ck and ("cuda" in ck["rng"]) == (torch.cuda.is_available() and torch.cuda.is_initialized())
    if precision == "fp16":
        assert ck["scaler"]  # the GradScaler's scale and growth tracker are checkpointed


def test_fp16_resume_after_kill_is_bit_exact_on_cpu(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(
            digits_recipe(tmp_path / name, epochs=3).replace("[train]\n", "[train]\nprecision = \"fp16\"\n"))
    assert cli("distill", str(tmp_path / "a.toml")).returncode == 0
    assert cli("distill", str(tmp_path / "b.toml"), env={"ONDEVICE_KILL_AFTER": "distill:2"}).returncode == 137
    p = cli("distill", str(tmp_path / "b.toml"))
    assert p.returncode == 0 and "resuming from" in p.stderr
    a = torch.load(tmp_path / "a" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "student.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_export_takes_a_cpu_copy_of_the_student():
    from ondevice.export import cpu_copy

    m = torch.nn.Linear(3, 2)
    assert cpu_copy(m) is m  # already on the CPU: no copy
    if torch.cuda.is_available():
        g = torch.nn.Linear(3, 2).cuda()
        c = cpu_copy(g)
        assert c is not g and next(c.parameters()).device.type == "cpu" and next(g.parameters()).is_cuda


def test_gpu_check_script_runs_the_cpu_side_and_states_a_missing_gpu(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gpu_check.json"
    small = ["data.limit_train=256", "data.limit_val=64", "data.limit_test=64", "teacher.train.epochs=1",
             "train.epochs=1", "threads=1"]
    assert mod.main(["--devices", "cpu,cuda", "--out", str(out), *[x for s in small for x in ("--set", s)]]) == 0
    r = json.loads(out.read_text())
    assert r["rows"][0]["device"] == "cpu" and r["rows"][0]["metric"] == "acc"
    assert 0 <= r["rows"][0]["student"] <= 1 and r["rows"][0]["seconds"] > 0
    if not torch.cuda.is_available():
        assert r["skipped"] == {"cuda": "not available on this machine (no CUDA device)"}
    assert "| cpu |" in out.with_suffix(".md").read_text()
