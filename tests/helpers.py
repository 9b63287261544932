"""Helpers shared by several test files: the `ondevice` command line in a subprocess, digits recipes, and one export
of a conformance model case. Plain functions (no fixtures, no tests); imported as `from helpers import ...`, which
works because pytest's default (prepend) import mode puts tests/ on sys.path (tests/ has no __init__.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEFAULT_STUDENT_KWARGS = "{ in_features = 64, hidden = [16], num_classes = 10 }"


def cli(*args: str, env: dict | None = None, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m ondevice.cli *args` in a fresh process (no progress bars, one OpenMP thread, `env` on top)."""
    e = {**os.environ, "ONDEVICE_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "ondevice.cli", *args], capture_output=True, text=True, env=e,
                          cwd=cwd, timeout=timeout)


def digits_recipe(out, *, name: str | None = None, seed: int = 0, threads: int | None = 1,
                  teacher_hidden: tuple[int, ...] = (128, 128), teacher_epochs: int = 3, teacher_lr: float = 3e-3,
                  student: str = "mlp", student_kwargs: str = DEFAULT_STUDENT_KWARGS, shift: int | None = None,
                  epochs: int = 3, extra: str = "") -> str:
    """Recipe TOML: an MLP teacher and a `student` distilled on scikit-learn digits into the folder `out`.

    `name`/`threads`/`shift` = None leave that key out (the recipe default applies); `extra` is appended verbatim
    (more tables: distill losses, export, bench, gates).
    """
    head = (f'name = "{name}"\n' if name is not None else "") + f'seed = {seed}\noutput_dir = "{out}"\n'
    if threads is not None:
        head += f"threads = {threads}\n"
    augment = f"augment = {{ shift = {shift} }}\n" if shift is not None else ""
    return f"""{head}
[teacher]
model = "mlp"
kwargs = {{ in_features = 64, hidden = {list(teacher_hidden)}, num_classes = 10 }}

[teacher.train]
epochs = {teacher_epochs}
batch_size = 64
lr = {teacher_lr!r}

[student]
model = "{student}"
kwargs = {student_kwargs}

[data]
dataset = "digits"
{augment}
[train]
epochs = {epochs}
batch_size = 64
lr = 1e-2
{extra}"""


def export_case(case, target: str, precision: str, tmp_path: Path, **options):
    """`ondevice.export` of a conformance ModelCase (tests/conformance_models.py) into tmp_path, calibrated on and
    verified against the case's own real data."""
    from ondevice.export import export

    return export(case.model, target, precision, out=tmp_path / f"{case.name}_{precision}",
                  calibration=case.calibration, verify_data=(case.x_verify, case.y_verify),
                  task=getattr(case, "task", None), input_spec=getattr(case, "input_spec", None), **options)


def padded_tokens(n: int, seed: int, high: int, length: int = 12) -> dict:
    """{"input_ids", "attention_mask"}: int64 (n, length), ids in [1, high), sample i padded after 6 + i % 6 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.zeros((n, length), np.int64)
    for i in range(n):
        mask[i, :6 + i % 6] = 1
    return {"input_ids": rng.integers(1, high, (n, length)) * mask, "attention_mask": mask}
