"""Where a model came from, checked: weight files carry a recorded sha256 (`<file>.sha256`, `sha256sum -c` format)
checked when they are loaded, and a student must still reproduce the test accuracy recorded in `results.json`
before anything is exported from it.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import ArtifactChangedError
from .io import atomic_write_text, sha256_bytes, sha256_file


def hash_path(weights: str | os.PathLike) -> Path:
    return Path(str(weights) + ".sha256")


def record_hash(path: str | os.PathLike, data: bytes | None = None) -> str:
    """Write `<path>.sha256` for a file ondevice just wrote (pass its bytes to avoid reading it back)."""
    p = Path(path)
    digest = sha256_bytes(data) if data is not None else sha256_file(p)
    atomic_write_text(hash_path(p), f"{digest}  {p.name}\n")
    return digest


def recorded_hash(path: str | os.PathLike) -> str | None:
    """The sha256 recorded for `path`, or None when there is no (readable) record."""
    hp = hash_path(path)
    try:
        text = hp.read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    digest = text[0].lower() if text else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None


def verify_hash(path: str | os.PathLike, *, fix: str = "") -> str | None:
    """Re-hash `path` against its record; returns the sha256 (None when nothing is recorded).

    A mismatch raises ArtifactChangedError naming the file, both hashes and `fix` (what to run to rebuild it).
    """
    p = Path(path)
    want = recorded_hash(p)
    if want is None:
        return None
    got = sha256_file(p)
    if got != want:
        raise ArtifactChangedError(
            f"{p} changed since ondevice wrote it (sha256 recorded in {hash_path(p).name}: {want[:16]}..., now "
            f"{got[:16]}...): it was modified or corrupted, and is refused. {fix or 'Rebuild it.'}")
    return got


def check_reproduces(recorded: dict[str, Any], measured: dict[str, Any], what: str, fix: str) -> None:
    """Refuse a model whose test errors now differ from those recorded (results.json) by more than evaluation noise.

    recorded / measured: {"test_errors", "test_n"} (measured: the evaluate() result {"errors", "n"} also works).
    """
    from .errors import CheckpointError

    r_err, r_n = recorded.get("test_errors"), recorded.get("test_n")
    m_err, m_n = measured.get("test_errors", measured.get("errors")), measured.get("test_n", measured.get("n"))
    if r_err is None or r_n is None:
        return
    if m_n != r_n:
        raise CheckpointError(f"{what}: results.json records {r_n} test samples but {m_n} are loaded now; the "
                              f"dataset changed since distillation. {fix}")
    slack = max(2, math.ceil(0.002 * r_n))  # thread-count dependent float sums flip a borderline argmax or two
    if abs(m_err - r_err) > slack:
        raise CheckpointError(
            f"{what} does not reproduce its recorded test accuracy: {m_n - m_err}/{m_n} = {(m_n - m_err) / m_n:.4f} "
            f"now vs {(r_n - r_err) / r_n:.4f} recorded in results.json ({m_err} vs {r_err} errors, allowed "
            f"+-{slack}); the weights are not the ones distillation measured. Nothing was exported. {fix}")


def recorded_results(out_dir: str | os.PathLike, which: str) -> dict[str, Any]:
    """results.json's block for `which` (student, baseline or teacher) of an `ondevice distill` folder."""
    from .errors import CheckpointError
    from .io import read_json

    path = Path(out_dir) / "results.json"
    try:
        block = read_json(path).get(which)
    except (OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path} is missing or unreadable ({type(e).__name__}); without the recorded test "
                              f"accuracy the {which} cannot be checked. Re-run `ondevice distill` on this recipe.")
    if not isinstance(block, dict):
        raise CheckpointError(f"{path} records no {which!r}; export one of the models it records")
    return block


def check_student(out_dir: str | os.PathLike, which: str, model, test=None) -> dict[str, Any]:
    """Re-evaluate `model` (the `which` model of a distill folder) on the test split its recipe used and refuse it
    (CheckpointError) unless it reproduces the test metric recorded in results.json: the error count for
    classification, the task's primary metric (perplexity, cosine, ...) otherwise. `test`: that split when already
    loaded. Returns the recorded block."""
    from .config import recipe_from_dict
    from .data import load_data
    from .io import read_json
    from .train import evaluate

    out = Path(out_dir)
    recorded = recorded_results(out, which)
    recipe = recipe_from_dict(read_json(out / "recipe.resolved.json"), str(out / "recipe.resolved.json"))
    task = recipe.task.build()
    test = load_data(recipe.data, recipe.seed).test if test is None else test
    teacher = None
    if task.eval_with_teacher:
        from .distill import load_student

        teacher = load_student(out, "teacher")
    measured = evaluate(model, test, recipe.train.eval_batch_size, task=task, teacher=teacher)
    what, fix = f"{out / (which + '.pt')}", "Re-run `ondevice distill` on this recipe to rebuild it (or --fresh to train again)."
    if "errors" in measured:
        check_reproduces(recorded, measured, what, fix)
    else:
        _check_metric(recorded, measured, task.primary, what, fix)
    return recorded


def _check_metric(recorded: dict, measured: dict, key: str, what: str, fix: str) -> None:
    from .errors import CheckpointError

    want, got = recorded.get("test_" + key), measured.get(key)
    if want is None or got is None:
        return
    if abs(got - want) > 1e-3 * max(1.0, abs(want)):  # float sums in another thread count move the 4th digit at most
        raise CheckpointError(f"{what} does not reproduce its recorded test {key}: {got:.6g} now vs {want:.6g} "
                              f"recorded in results.json; the weights are not the ones distillation measured. "
                              f"Nothing was exported. {fix}")
