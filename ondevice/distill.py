"""`ondevice.distill(recipe)`: teacher -> distilled student (+ hard-label baseline), written to recipe.output_dir.

Output folder:
    student.pt            distilled student, best validation epoch (state dict); with several seeds, the first seed's
    baseline.pt           the same student trained on hard labels alone (when distill.baseline)
    teacher.pt            the teacher, when ondevice trained it (teacher.train)
    seeds/<k>/            student.pt and baseline.pt of every further seed (recipe.seeds)
    results.json          teacher / student / baseline test metrics, per seed and summarised (mean, spread, paired CI),
                          what distillation bought, the task, the input spec and how it was run
    metrics.jsonl         one line per epoch per phase
    recipe.resolved.json  the fully resolved recipe (+ .toml)
    checkpoints/          per-phase checkpoints used to resume

The steps, in order: prepare (device, folders) -> load data and the task -> build teacher and student and check that
they take the data's inputs (before any training) -> train the teacher if asked -> per seed, distil and train the
hard-label baseline from the same init -> evaluate -> write results.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Recipe, dump_toml
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_text, machine_record, read_json
from .outdir import claim_recipe_dir
from .progress import status
from .provenance import record_hash, verify_hash
from .train import (DistInfo, PhaseResult, PhaseSetup, TeacherOutputs, autocast_factory, evaluate, feature_shapes,
                    init_distributed, resolve_device, train_phase, write_metrics)


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
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    atomic_write_bytes(path, buf.getvalue())
    record_hash(path, buf.getvalue())  # <file>.sha256, checked by load_student


# ------------------------------------------------------------------------------------------------ models
def _build(spec, *, teacher: torch.nn.Module | None = None, skip_pretrained: bool = False) -> torch.nn.Module:
    """A model from its recipe section: registry name, reference, ``hf:<folder>``, or ``from_teacher``."""
    from .models import build_model, student_from_teacher

    kwargs = dict(spec.kwargs)
    if skip_pretrained:
        kwargs.pop("pretrained", None)
    if spec.model == "from_teacher":
        if teacher is None:
            from .errors import ConfigError

            raise ConfigError("student.model = 'from_teacher' needs a teacher to copy layers from")
        return student_from_teacher(teacher, **kwargs)
    return build_model(spec.model, weights=spec.weights, **kwargs)


def build_student(recipe: Recipe, teacher: torch.nn.Module | None = None, seed: int | None = None) -> torch.nn.Module:
    """The student with its seeded initialisation (identical for the distilled run and the baseline of one seed)."""
    torch.manual_seed(recipe.seed if seed is None else seed)
    return _build(recipe.student, teacher=teacher)


def load_student(output_dir: str | Path, which: str = "student") -> torch.nn.Module:
    """Rebuild a student (or baseline/teacher) from an `ondevice distill` output folder."""
    from .config import recipe_from_dict
    from .models import load_weights

    out = Path(output_dir)
    recipe = recipe_from_dict(read_json(out / "recipe.resolved.json"), str(out / "recipe.resolved.json"))
    weights = out / f"{which}.pt"
    if which == "teacher" and not weights.exists():
        return _build(recipe.teacher).eval()
    verify_hash(weights, fix=f"Re-run `ondevice distill` on this recipe (it rebuilds {weights.name} from its "
                             f"checkpoints), or with --fresh to train again.")
    if which == "teacher":
        return load_weights(_build(recipe.teacher, skip_pretrained=True), weights, what="teacher").eval()
    teacher = _build(recipe.teacher) if recipe.student.model == "from_teacher" else None
    if teacher is not None and (out / "teacher.pt").exists():
        verify_hash(out / "teacher.pt", fix="Re-run `ondevice distill` on this recipe, or with --fresh to train again.")
        load_weights(teacher, out / "teacher.pt", what="teacher")
    spec = recipe.student.model_copy(update={"weights": None})
    model = _build(spec, teacher=teacher, skip_pretrained=True)
    return load_weights(model, weights, what=which).eval()


def teacher_fit_note(teacher_train_acc: float, baseline_train_acc: float | None) -> str | None:
    """A warning when the teacher fits the training images worse than the student does on hard labels alone.

    Distillation then pulls the student towards the teacher's mistakes on exactly the images it learns from
    (measured on Fashion-MNIST: a dropout-heavy teacher right on 94.9% of the training images, a hard-label student
    on 97.2%, and every KD variant tied or lost). None when there is nothing to say.
    """
    if baseline_train_acc is None or teacher_train_acc >= baseline_train_acc:
        return None
    return (f"the teacher is right on {teacher_train_acc:.1%} of the training samples, the hard-label student on "
            f"{baseline_train_acc:.1%}: distillation pulls the student towards the teacher's mistakes. Train the "
            f"teacher to fit its training data better (less dropout/augmentation, more epochs) or raise the ce weight.")


# ------------------------------------------------------------------------------------------------ the run context
@dataclass
class Run:
    """What every step reads: the recipe, the task, the data, where to write, and how to train."""

    recipe: Recipe
    out: Path
    di: DistInfo
    device: torch.device
    resume: bool
    task: Any = None
    splits: Any = None
    spec: Any = None  # InputSpec
    t_start: float = field(default_factory=time.perf_counter)

    def setup(self, train_spec, *, seed: int, phase_hash: str, teacher: TeacherOutputs | None = None,
              student_layers: list[str] | None = None, augment=None) -> PhaseSetup:
        dev = resolve_device(train_spec.device) if train_spec.device != self.recipe.train.device else self.device
        return PhaseSetup(spec=train_spec, seed=seed, task=self.task, ckpt_dir=self.out / "checkpoints",
                          recipe_hash=phase_hash, teacher=teacher, student_layers=student_layers or [],
                          augment=augment, resume=self.resume, di=self.di, device=dev,
                          precision=train_spec.precision)

    def evaluate(self, model: torch.nn.Module, split, teacher: torch.nn.Module | None = None) -> dict:
        """Task metrics; the teacher is run alongside only for tasks that compare with it (agreement, cosine)."""
        t = self.recipe.train
        return evaluate(model, split, t.eval_batch_size, task=self.task, device=self.device,
                        teacher=teacher if self.task.eval_with_teacher else None,
                        autocast=autocast_factory(self.device, t.precision))


def _prepare(recipe: Recipe, resume: bool, fresh: bool, force: bool = False, explicit_output: bool = False) -> Run:
    device = resolve_device(recipe.train.device)  # a missing CUDA device fails here, before anything is written
    di = init_distributed(device)
    if di.enabled and device.type == "cuda":
        device = torch.device("cuda", di.local_rank)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    out = Path(recipe.output_dir)
    if di.is_main:  # owned output folder (ondevice.outdir); --fresh deletes only the checkpoints ondevice wrote
        claim_recipe_dir(recipe, force=force, fresh=fresh, explicit=explicit_output, purpose="distill")
    if di.enabled:
        torch.distributed.barrier()
    out.mkdir(parents=True, exist_ok=True)
    if di.is_main:
        resolved = recipe.to_dict()
        atomic_write_json(out / "recipe.resolved.json", resolved)
        atomic_write_text(out / "recipe.resolved.toml", dump_toml(resolved))
    return Run(recipe, out, di, device, resume)


def _load_data(run: Run) -> None:
    from .data import load_data

    r = run.recipe
    run.task = r.task.build()
    run.task.check_losses([l.name for l in r.distill.losses])
    if r.distill.transfer_samples:
        _check_transfer_losses(r)
    run.splits = load_data(r.data, r.seed, transfer=r.distill.transfer_samples)
    s = run.splits
    extra = f" + {len(s.transfer)} unlabelled (transfer set)" if s.transfer is not None else ""
    status(f"data: {r.data.dataset} train {len(s.train)}{extra} / val {len(s.val)} / test {len(s.test)} from "
           f"{s.info.source}; task {run.task.name}; device {run.device}, precision {r.train.precision}")


def _check_transfer_losses(r: Recipe) -> None:
    from .losses import LOSSES

    bad = [l.name for l in r.distill.losses if LOSSES.get(l.name).labels_every_sample]
    if bad:
        raise ConfigError(f"distill.losses: {bad} read every sample's label, and the transfer set's "
                          f"{r.distill.transfer_samples} samples have none; use kd (+ ce, which skips them) or set "
                          "distill.transfer_samples = 0")


# ------------------------------------------------------------------------------------------------ teacher
def _build_teacher(run: Run) -> torch.nn.Module:
    """The teacher as loaded (pretrained), or freshly initialised when ondevice trains it (teacher.train)."""
    t = run.recipe.teacher
    if t.train is not None:
        torch.manual_seed(run.recipe.seed + 1)
    return _build(t).to(run.device)


def _preflight(run: Run, teacher: torch.nn.Module) -> None:
    """Every check that can fail before any training: teacher and student take the data's inputs, outputs fit the
    task, labels fit the classes, the tokenizer fits the embeddings, and every feature layer the losses name exists
    with shapes the losses accept."""
    rng = torch.get_rng_state()  # building a probe student must not move the RNG the teacher then trains with
    try:
        _preflight_models(run, teacher)
    finally:
        torch.set_rng_state(rng)


def _preflight_models(run: Run, teacher: torch.nn.Module) -> None:
    from .losses import build_loss

    r = run.recipe
    check_model(run, teacher, "teacher")
    student = build_student(r, teacher, r.student_seeds[0]).to(run.device)
    check_model(run, student, "student")
    loss = build_loss([l.as_dict() for l in r.distill.losses])
    pairs = loss.feature_layers()
    x1 = _to(run.splits.train.batch(torch.arange(1))[0], run.device)
    loss.build(feature_shapes(student, sorted({s for s, _ in pairs}), x1, "student"),
               feature_shapes(teacher, sorted({t for _, t in pairs}), x1, "teacher"))


def _train_teacher(run: Run, model: torch.nn.Module) -> tuple[torch.nn.Module, PhaseResult | None]:
    from .losses import build_loss

    r, t = run.recipe, run.recipe.teacher
    if t.train is None:
        return model.eval(), None
    # a finished checkpoint makes this a no-op reuse (also when only the test subsample changed)
    h = r.section_hash("teacher", "data", "seed", "task", training_only=True)
    st = run.setup(t.train, seed=r.seed + 1, phase_hash=h, augment=t.augment or r.data.augment)
    res = train_phase("teacher", model, build_loss([{"name": "ce", "weight": 1.0}]), run.splits.train,
                      run.splits.val, st)
    if run.di.is_main:
        _save_state(run.out / "teacher.pt", res.model)
    return res.model.eval(), res


def check_model(run: Run, model: torch.nn.Module, role: str) -> None:
    """Before any training: the model takes the data's inputs, its outputs fit the task, labels fit its classes, and
    a tokenizer's vocabulary fits its embedding table. Every failure names the key, the value and the fix."""
    from .checks import check_model_on_data

    check_model_on_data(model, run.splits, run.task, role=role, recipe_key=f"{role}.model")


# ------------------------------------------------------------------------------------------------ students
@dataclass
class SeedRun:
    seed: int
    student: torch.nn.Module
    phase: PhaseResult
    test: dict
    baseline: torch.nn.Module | None = None
    base_phase: PhaseResult | None = None
    base_test: dict | None = None


def _student_hash(r: Recipe) -> str:
    """What a student phase's checkpoint is keyed by: everything that shapes its training, not the test subsample."""
    return r.section_hash("teacher", "student", "data", "train", "distill", "seed", "task", training_only=True)


def _phase_name(base: str, seed: int, run: Run) -> str:
    return base if seed == run.recipe.student_seeds[0] else f"{base}.seed{seed}"


def _distilled(run: Run, teacher: torch.nn.Module, seed: int, t_out_cache: dict) -> tuple:
    from .losses import build_loss

    r = run.recipe
    loss = build_loss([l.as_dict() for l in r.distill.losses])
    pairs = loss.feature_layers()
    s_layers, t_layers = sorted({s for s, _ in pairs}), sorted({t for _, t in pairs})
    student = build_student(r, teacher, seed).to(run.device)
    x1 = run.splits.train.batch(torch.arange(1))[0]
    x1 = _to(x1, run.device)
    loss.build(feature_shapes(student, s_layers, x1, "student"), feature_shapes(teacher, t_layers, x1, "teacher"))
    if loss.needs_teacher and "t_out" not in t_out_cache:  # built once, shared by every seed
        cache = r.distill.cache_teacher == "auto" and not r.data.augment.active
        t_out_cache["t_out"] = TeacherOutputs(
            teacher, t_layers, run.splits.distill_train(), task=run.task, cache=cache, budget_mb=r.distill.cache_budget_mb,
            batch_size=r.train.eval_batch_size, device=run.device,
            autocast=autocast_factory(run.device, r.train.precision), top_k=loss.teacher_top_k())
    t_out = t_out_cache.get("t_out") if loss.needs_teacher else None
    h = _student_hash(r)
    st = run.setup(r.train, seed=seed, phase_hash=h, teacher=t_out, student_layers=s_layers, augment=r.data.augment)
    res = train_phase(_phase_name("distill", seed, run), student, loss, run.splits.distill_train(), run.splits.val,
                      st)
    return res, t_out


def _baseline(run: Run, teacher: torch.nn.Module, seed: int) -> tuple[torch.nn.Module, PhaseResult]:
    from .losses import build_loss

    r = run.recipe
    baseline = build_student(r, teacher, seed).to(run.device)
    h = _student_hash(r)
    st = run.setup(r.train, seed=seed, phase_hash=h, augment=r.data.augment)
    res = train_phase(_phase_name("baseline", seed, run), baseline, build_loss([{"name": "ce", "weight": 1.0}]),
                      run.splits.train, run.splits.val, st)
    return baseline, res


def _seed_run(run: Run, teacher: torch.nn.Module, seed: int, t_out_cache: dict) -> SeedRun:
    test_split = run.splits.test
    res, _ = _distilled(run, teacher, seed, t_out_cache)
    sr = SeedRun(seed, res.model, res, run.evaluate(res.model, test_split, teacher))
    status(f"student (distilled, seed {seed}): test {_metric_line(run, sr.test)}")
    if run.recipe.distill.baseline:
        sr.baseline, sr.base_phase = _baseline(run, teacher, seed)
        sr.base_test = run.evaluate(sr.baseline, test_split, teacher)
        status(f"student (hard labels only, seed {seed}): test {_metric_line(run, sr.base_test)}")
    return sr


def _metric_line(run: Run, m: dict) -> str:
    p = run.task.primary
    if "errors" in m:
        return f"accuracy {m['acc']:.4f} ({m['errors']} errors)"
    return f"{p} {m[p]:.4f}" + "".join(f", {k} {v:.4g}" for k, v in m.items()
                                        if k not in (p, "n") and isinstance(v, float))


# ------------------------------------------------------------------------------------------------ results
def _block(test: dict, model: torch.nn.Module, phase: PhaseResult | None) -> dict:
    from .models import param_count

    b = {"test_" + k: v for k, v in test.items()}
    b["params"] = param_count(model)
    if phase is not None:
        b.update(best_epoch=phase.best_epoch, best_val_acc=phase.best_val_acc)
    return b


def _train_fit(run: Run, teacher, seeds: list[SeedRun], t_out) -> tuple[dict, str | None]:
    """Training-set accuracy (classification): a teacher that gets fewer training samples right than the hard-label
    student teaches its mistakes."""
    if run.task.name != "classification":
        return {}, None
    train = run.splits.train
    ev = lambda m: run.evaluate(m, train)["acc"]  # noqa: E731
    cached = t_out.logits if t_out is not None and t_out.mode == "cached" else None  # (N, C): no second pass
    cached = None if cached is None else cached[:len(train)]  # the labelled rows come first (distill_train)
    y = train.y if hasattr(train, "y") else None
    fit = {"teacher": (int((cached.argmax(1).cpu() == y).sum()) / len(y) if cached is not None and y is not None
                       else ev(teacher)),
           "student": ev(seeds[0].student)}
    if seeds[0].baseline is not None:
        fit["baseline"] = ev(seeds[0].baseline)
    return fit, teacher_fit_note(fit["teacher"], fit.get("baseline"))


def _results(run: Run, teacher, teacher_test: dict, teacher_phase, seeds: list[SeedRun], t_out) -> dict:
    r, first = run.recipe, seeds[0]
    res = {
        "recipe": r.name, "dataset": r.data.dataset, "data_source": run.splits.info.source,
        "split_sizes": run.splits.sizes(),
        "task": run.task.describe(),
        "input_spec": run.spec.to_dict() if run.spec is not None else None,
        "teacher": {**_block(teacher_test, teacher, teacher_phase), "model": r.teacher.model,
                    "trained_by_ondevice": teacher_phase is not None},
        "student": {**_block(first.test, first.student, first.phase), "model": r.student.model},
        "losses": [l.as_dict() for l in r.distill.losses], "transfer_samples": r.distill.transfer_samples,
        "teacher_outputs": first.phase.teacher_outputs, "teacher_outputs_reason": first.phase.teacher_outputs_reason,
        "epochs": r.train.epochs, "world_size": run.di.world_size, "device": str(run.device),
        "precision": r.train.precision,
        "measured_on": {**machine_record(), "device": _device_name(run.device)},
    }
    ret = run.task.retention(first.test, teacher_test)
    if ret is not None:
        res["student"]["retention"] = ret
    if first.base_test is not None:
        res["baseline"] = {**_block(first.base_test, first.baseline, first.base_phase), "model": r.student.model}
        if "errors" in first.test:
            gap = first.base_test["errors"] - teacher_test["errors"]
            res["distillation_gain_errors"] = first.base_test["errors"] - first.test["errors"]
            res["gap_closed"] = (first.base_test["errors"] - first.test["errors"]) / gap if gap > 0 else None
    fit, note = _train_fit(run, teacher, seeds, t_out)
    for role, acc in fit.items():
        res[role]["train_acc"] = acc
    if note:
        res["notes"] = [note]
        status(f"note: {note}")
    if len(seeds) > 1 or r.seeds:
        res.update(_seed_summary(seeds, teacher_test))
    res["compression"] = res["teacher"]["params"] / max(1, res["student"]["params"])
    res["seconds_total"] = time.perf_counter() - run.t_start  # this process only
    # the training epochs' own times, from the checkpointed history: a killed and resumed run counts them all
    res["seconds_training"] = sum(rec["seconds"] for h in _histories(seeds, teacher_phase) for rec in h)
    return res


def _seed_summary(seeds: list[SeedRun], teacher_test: dict) -> dict:
    """Mean, spread and the paired bootstrap CI over seeds (ondevice.stats), for classification errors."""
    from .stats import summarize_seeds

    per_seed = [{"seed": s.seed, "student": {"test_errors": s.test.get("errors"), "test_acc": s.test.get("acc")},
                 **({"baseline": {"test_errors": s.base_test.get("errors"), "test_acc": s.base_test.get("acc")}}
                    if s.base_test is not None else {})}
                for s in seeds]
    if any(p["student"]["test_errors"] is None for p in per_seed):
        return {"seeds": [s.seed for s in seeds], "per_seed": per_seed}
    return summarize_seeds(per_seed, teacher_test["errors"])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _to(tree, device):
    from .tree import tree_to

    return tree_to(tree, device)


def _histories(seeds: list[SeedRun], teacher_phase) -> list[list[dict]]:
    """Every phase's per-epoch records (restored from the checkpoints on a resume), teacher first."""
    hist = [teacher_phase.history] if teacher_phase else []
    for s in seeds:
        hist += [s.phase.history] + ([s.base_phase.history] if s.base_phase else [])
    return hist


def _write(run: Run, results: dict, seeds: list[SeedRun], teacher_phase) -> None:
    if not run.di.is_main:
        return
    out = run.out
    first = seeds[0]
    _save_state(out / "student.pt", first.student)
    if first.baseline is not None:
        _save_state(out / "baseline.pt", first.baseline)
    for s in seeds[1:]:
        _save_state(out / "seeds" / str(s.seed) / "student.pt", s.student)
        if s.baseline is not None:
            _save_state(out / "seeds" / str(s.seed) / "baseline.pt", s.baseline)
    write_metrics(out / "metrics.jsonl", _histories(seeds, teacher_phase))
    atomic_write_json(out / "results.json", results)
    status(f"wrote {out}/student.pt, results.json, metrics.jsonl")


def finished_results(recipe: Recipe) -> dict | None:
    """The results.json of a finished run of exactly this recipe in its output folder, else None (nothing trains)."""
    out = Path(recipe.output_dir)
    if not (out / "results.json").exists() or not (out / "recipe.resolved.json").exists():
        return None
    return read_json(out / "results.json") if read_json(out / "recipe.resolved.json") == recipe.to_dict() else None


# ------------------------------------------------------------------------------------------------ the verb
def distill(recipe: Recipe, *, resume: bool = True, fresh: bool = False, force: bool = False,
            explicit_output: bool = False) -> DistillResult:
    """Run distillation as the recipe says; see the module docstring for the steps and what is written.

    The output folder is claimed first (ondevice.outdir): `force` adopts a non-empty folder ondevice does not own,
    `explicit_output` (the folder was given on the command line) lets it lie outside the working directory, and
    `fresh` deletes the checkpoints ondevice wrote there."""
    from .spec import infer_spec

    run = _prepare(recipe, resume, fresh, force, explicit_output)
    _load_data(run)
    teacher = _build_teacher(run)
    _preflight(run, teacher)
    teacher, teacher_phase = _train_teacher(run, teacher)
    x1 = _to(run.splits.train.batch(torch.arange(1))[0], run.device)
    with torch.no_grad():
        run.spec = infer_spec(x1, run.task.prediction(_call(teacher, x1)),
                              preprocessing=run.splits.info.deploy_preprocessing())
    teacher_test = run.evaluate(teacher, run.splits.test, teacher)
    status(f"teacher: test {_metric_line(run, teacher_test)}")
    t_out_cache: dict = {}
    seeds = [_seed_run(run, teacher, seed, t_out_cache) for seed in recipe.student_seeds]
    results = _results(run, teacher, teacher_test, teacher_phase, seeds, t_out_cache.get("t_out"))
    _write(run, results, seeds, teacher_phase)
    first = seeds[0]
    return DistillResult(run.out, results, first.student, teacher, first.baseline)


def _call(model, inputs):
    from .tree import call_model

    return call_model(model.eval(), inputs)
