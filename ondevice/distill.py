"""`ondevice.distill(recipe)`: teacher -> distilled student (+ hard-label baseline), written to recipe.output_dir.

Output folder:
    student.pt            distilled student, best validation epoch (state dict)
    baseline.pt           the same student trained on hard labels alone (when distill.baseline)
    teacher.pt            the teacher, when ondevice trained it (teacher.train)
    results.json          teacher / student / baseline test metrics, what distillation bought, how it was run
    metrics.jsonl         one line per epoch per phase
    recipe.resolved.json  the fully resolved recipe (+ .toml)
    checkpoints/          per-phase checkpoints used to resume
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Recipe, dump_toml
from .io import atomic_write_json, atomic_write_text, machine_record, read_json
from .outdir import claim_recipe_dir
from .provenance import record_hash, verify_hash
from .progress import status
from .train import (DistInfo, PhaseResult, TeacherOutputs, evaluate, feature_shapes, init_distributed, train_phase,
                    write_metrics)


@dataclass
class DistillResult:
    output_dir: Path
    results: dict[str, Any]
    student: torch.nn.Module
    teacher: torch.nn.Module
    baseline: torch.nn.Module | None


def _save_state(path: Path, model: torch.nn.Module) -> None:
    import io

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    record_hash(path, buf.getvalue())  # <file>.sha256, checked by load_student


def build_student(recipe: Recipe) -> torch.nn.Module:
    """The student with its seeded initialisation (identical for the distilled run and the baseline)."""
    from .models import build_model

    torch.manual_seed(recipe.seed)
    return build_model(recipe.student.model, weights=recipe.student.weights, **recipe.student.kwargs)


def load_student(output_dir: str | Path, which: str = "student") -> torch.nn.Module:
    """Rebuild a student (or baseline/teacher) from an `ondevice distill` output folder."""
    from .models import build_model

    out = Path(output_dir)
    resolved = read_json(out / "recipe.resolved.json")
    role = "teacher" if which == "teacher" else "student"
    spec = resolved[role]
    weights = out / f"{which}.pt"
    if which == "teacher" and not weights.exists():
        return build_model(spec["model"], weights=spec.get("weights"), **spec.get("kwargs", {})).eval()
    verify_hash(weights, fix=f"Re-run `ondevice distill` on this recipe (it rebuilds {weights.name} from its "
                             f"checkpoints), or with --fresh to train again.")
    return build_model(spec["model"], weights=str(weights), **{k: v for k, v in spec.get("kwargs", {}).items()
                                                               if k != "pretrained"}).eval()


def teacher_fit_note(teacher_train_acc: float, baseline_train_acc: float | None) -> str | None:
    """A warning when the teacher fits the training images worse than the student does on hard labels alone.

    Distillation then pulls the student towards the teacher's mistakes on exactly the images it learns from
    (measured on Fashion-MNIST: a dropout-heavy teacher right on 94.9% of the training images, a hard-label student
    on 97.2%, and every KD variant tied or lost). None when there is nothing to say.
    """
    if baseline_train_acc is None or teacher_train_acc >= baseline_train_acc:
        return None
    return (f"the teacher is right on {teacher_train_acc:.1%} of the training images, the hard-label student on "
            f"{baseline_train_acc:.1%}: distillation pulls the student towards the teacher's mistakes. Train the "
            f"teacher to fit its training data better (less dropout/augmentation, more epochs) or raise the ce weight.")


def _teacher(recipe: Recipe, splits, out: Path, di: DistInfo, resume: bool) -> tuple[torch.nn.Module, PhaseResult | None]:
    from .losses import build_loss
    from .models import build_model

    t = recipe.teacher
    if t.train is None:
        return build_model(t.model, weights=t.weights, **t.kwargs).eval(), None
    torch.manual_seed(recipe.seed + 1)
    model = build_model(t.model, **t.kwargs)
    h = recipe.section_hash("teacher", "data", "seed")  # a finished checkpoint makes this a no-op reuse
    res = train_phase("teacher", model, build_loss([{"name": "ce", "weight": 1.0}]), splits.train.x, splits.train.y,
                      splits.val.x, splits.val.y, t.train, seed=recipe.seed + 1, ckpt_dir=out / "checkpoints",
                      recipe_hash=h, augment=t.augment or recipe.data.augment, resume=resume, di=di)
    if di.is_main:
        _save_state(out / "teacher.pt", res.model)
    return res.model.eval(), res


def distill(recipe: Recipe, *, resume: bool = True, fresh: bool = False, force: bool = False,
            explicit_output: bool = False) -> DistillResult:
    """Run distillation as the recipe says; see the module docstring for what is written.

    The output folder is claimed first (ondevice.outdir): `force` adopts a non-empty folder ondevice does not own,
    `explicit_output` (the folder was given on the command line) lets it lie outside the working directory, and
    `fresh` deletes the checkpoints ondevice wrote there."""
    from .data import load_dataset
    from .losses import build_loss

    di = init_distributed()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.output_dir)
    ckpt_dir = out / "checkpoints"
    if di.is_main:
        claim_recipe_dir(recipe, force=force, fresh=fresh, explicit=explicit_output, purpose="distill")
    if di.enabled:
        torch.distributed.barrier()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    resolved = recipe.to_dict()
    if di.is_main:
        atomic_write_json(out / "recipe.resolved.json", resolved)
        atomic_write_text(out / "recipe.resolved.toml", dump_toml(resolved))

    d = recipe.data
    splits = load_dataset(d.dataset, root=d.root, seed=recipe.seed, val_fraction=d.val_fraction,
                          limit_train=d.limit_train, limit_val=d.limit_val, limit_test=d.limit_test)
    status(f"data: {d.dataset} train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)} "
           f"from {splits.info.source}")
    teacher, teacher_phase = _teacher(recipe, splits, out, di, resume)
    teacher_test = evaluate(teacher, splits.test.x, splits.test.y, recipe.train.eval_batch_size)
    status(f"teacher: test accuracy {teacher_test['acc']:.4f} ({teacher_test['errors']} errors)")

    # -- distilled student ------------------------------------------------------------------------------------
    loss = build_loss([l.as_dict() for l in recipe.distill.losses])
    pairs = loss.feature_layers()
    s_layers = sorted({s for s, _ in pairs})
    t_layers = sorted({t for _, t in pairs})
    student = build_student(recipe)
    x1 = splits.train.x[:1]
    loss.build(feature_shapes(student, s_layers, x1, "student"), feature_shapes(teacher, t_layers, x1, "teacher"))
    cache = recipe.distill.cache_teacher == "auto" and not recipe.data.augment.active
    t_out = TeacherOutputs(teacher, t_layers, splits.train.x, cache=cache,
                           budget_mb=recipe.distill.cache_budget_mb) if loss.needs_teacher else None
    h = recipe.section_hash("teacher", "student", "data", "train", "distill", "seed")
    res = train_phase("distill", student, loss, splits.train.x, splits.train.y, splits.val.x, splits.val.y,
                      recipe.train, seed=recipe.seed, ckpt_dir=ckpt_dir, recipe_hash=h, teacher=t_out,
                      student_layers=s_layers, augment=recipe.data.augment, resume=resume, di=di)
    student_test = evaluate(res.model, splits.test.x, splits.test.y, recipe.train.eval_batch_size)
    status(f"student (distilled): test accuracy {student_test['acc']:.4f} ({student_test['errors']} errors)")

    # -- hard-label baseline, same init and schedule ----------------------------------------------------------------
    base_res, base_test, baseline = None, None, None
    if recipe.distill.baseline:
        baseline = build_student(recipe)
        base_res = train_phase("baseline", baseline, build_loss([{"name": "ce", "weight": 1.0}]), splits.train.x,
                               splits.train.y, splits.val.x, splits.val.y, recipe.train, seed=recipe.seed,
                               ckpt_dir=ckpt_dir, recipe_hash=h, augment=recipe.data.augment,
                               resume=resume, di=di)
        base_test = evaluate(baseline, splits.test.x, splits.test.y, recipe.train.eval_batch_size)
        status(f"student (hard labels only): test accuracy {base_test['acc']:.4f} ({base_test['errors']} errors)")

    from .models import param_count

    def block(test: dict, model: torch.nn.Module, phase: PhaseResult | None) -> dict:
        b = {"test_acc": test["acc"], "test_errors": test["errors"], "test_loss": test["loss"], "test_n": test["n"],
             "params": param_count(model)}
        if phase is not None:
            b.update(best_epoch=phase.best_epoch, best_val_acc=phase.best_val_acc)
        return b

    # training-set fit: a teacher that gets fewer training images right than the hard-label student teaches its mistakes
    def train_acc(model: torch.nn.Module) -> float:
        return evaluate(model, splits.train.x, splits.train.y, recipe.train.eval_batch_size)["acc"]

    cached = t_out.logits if t_out is not None and t_out.mode == "cached" else None  # (N, C): no second teacher pass
    results_fit = {
        "teacher": (int((cached.argmax(1) == splits.train.y).sum()) / len(splits.train.y) if cached is not None
                    else train_acc(teacher)),
        "student": train_acc(res.model),
    }
    if baseline is not None:
        results_fit["baseline"] = train_acc(baseline)
    note = teacher_fit_note(results_fit["teacher"], results_fit.get("baseline"))

    results: dict[str, Any] = {
        "recipe": recipe.name,
        "dataset": d.dataset,
        "data_source": splits.info.source,
        "teacher": {**block(teacher_test, teacher, teacher_phase),
                    "model": recipe.teacher.model, "trained_by_ondevice": teacher_phase is not None},
        "student": {**block(student_test, res.model, res), "model": recipe.student.model},
        "losses": [l.as_dict() for l in recipe.distill.losses],
        "teacher_outputs": res.teacher_outputs,
        "teacher_outputs_reason": res.teacher_outputs_reason,
        "epochs": recipe.train.epochs,
        "world_size": di.world_size,
        "measured_on": machine_record(),
        "seconds_total": time.perf_counter() - t_start,
    }
    if base_test is not None:
        results["baseline"] = {**block(base_test, baseline, base_res), "model": recipe.student.model}
        gap = base_test["errors"] - teacher_test["errors"]
        results["distillation_gain_errors"] = base_test["errors"] - student_test["errors"]
        results["gap_closed"] = (base_test["errors"] - student_test["errors"]) / gap if gap > 0 else None
    for role, acc in results_fit.items():
        results[role]["train_acc"] = acc
    if note:
        results["notes"] = [note]
        status(f"note: {note}")
    results["compression"] = results["teacher"]["params"] / max(1, results["student"]["params"])
    if di.is_main:
        _save_state(out / "student.pt", res.model)
        if baseline is not None:
            _save_state(out / "baseline.pt", baseline)
        hist = ([teacher_phase.history] if teacher_phase else []) + [res.history] + ([base_res.history] if base_res else [])
        write_metrics(out / "metrics.jsonl", hist)
        atomic_write_json(out / "results.json", results)
        status(f"wrote {out}/student.pt, results.json, metrics.jsonl")
    return DistillResult(out, results, res.model, teacher, baseline)
