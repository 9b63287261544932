"""Shared helpers for the bench tests (real data: scikit-learn's digits; real models: small torch nets).

Imported by the other tests/test_bench*.py files; it defines no tests itself.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

FAST = dict(mode="quick", min_queries=16, min_seconds=0.0, max_seconds=5.0, warmup_queries=4, warmup_seconds=0.0,
            chunk_seconds=0.02, n_boot=500, timeout_s=300.0)

MODELS_PY = textwrap.dedent('''
    import os, sys, time
    import torch
    from torch import nn

    def cnn(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10))

    def mlp(hidden=64, seed=1):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def crash_on_load():
        raise RuntimeError("BENCH-TEST-LOAD-FAILURE: this factory always raises")

    class _Abort(nn.Module):
        def forward(self, x):
            sys.stderr.write("BENCH-TEST-ABORT-MARKER about to abort\\n")
            sys.stderr.flush()
            os.abort()

    def abort_in_forward():
        return _Abort()

    class _Sleepy(nn.Module):
        def forward(self, x):
            return x

    def hang_on_load():
        time.sleep(3600)
        return _Sleepy()
''')


def write_models(folder: Path) -> Path:
    p = Path(folder) / "bench_test_models.py"
    p.write_text(MODELS_PY)
    return p


def digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn digits as (N, 1, 8, 8) float32 in [0, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # reshape: no zero strides (a [:, None] view has them)
    return x, d.target.astype(np.int64)


def train_cnn(models_py: Path, weights: Path, steps: int = 80):
    """Full-batch Adam on the first 1400 digits: ~90% test accuracy in about a second."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("bench_test_models_train", models_py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x, y = digits()
    m = mod.cnn()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    xb, yb = torch.from_numpy(x[:1400]), torch.from_numpy(y[:1400])
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(xb), yb).backward()
        opt.step()
    torch.save(m.state_dict(), weights)
    return m.eval()


def cnn_with_onnx_artifacts(tmp: Path, precisions: tuple[str, ...], *, calibration_n: int | None = None,
                            verify: slice = slice(1400, None)) -> dict:
    """The bench setup on real digits: models module (`write_models`), a trained CNN (`tmp/cnn.pt`) and its ONNX
    Runtime exports `tmp/artifacts/cnn_<precision>.onnx`, calibrated on the first `calibration_n` samples (if
    given) and verified on `verify`. Returns {"tmp", "models", "weights", "arts", "x", "y"}."""
    from ondevice.export import export

    models = write_models(tmp)
    model = train_cnn(models, tmp / "cnn.pt")
    x, y = digits()
    arts = tmp / "artifacts"
    for prec in precisions:
        export(model, "onnxruntime", prec, out=arts / f"cnn_{prec}.onnx",
               calibration=None if calibration_n is None else x[:calibration_n], verify_data=(x[verify], y[verify]))
    return {"tmp": tmp, "models": models, "weights": tmp / "cnn.pt", "arts": arts, "x": x, "y": y}
