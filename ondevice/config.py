"""Recipe schema: one validated config object shared by recipe files (TOML/YAML) and the Python API.

Every section rejects unknown keys, types are strict (no bool for a number, no float for an integer, no string for
a number), ranges are checked, and every error names the key path, what was expected and what was given:

    recipe.toml: train.epochs: expected an integer, got 'five'
    recipe.toml: data.datset: unknown key; valid keys here: augment, dataset, limit_test, ...
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), strict=True)


PositiveInt = Annotated[int, Field(ge=1)]


class TrainSpec(_Strict):
    """Optimisation schedule (used for the student, the hard-label baseline and an ondevice-trained teacher)."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between x0.1 decays for schedule='step'")
    grad_clip: float | None = Field(None, gt=0)
    max_norm: float | None = Field(None, gt=0, description="after every step, rescale each unit's incoming weight "
                                   "vector (row of a Linear/conv weight) to at most this L2 norm (Srivastava et al. "
                                   "2014's max-norm constraint, used with dropout in Hinton et al. 2015)")
    eval_batch_size: int = Field(1000, ge=1)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps (auto: cuda if present, else cpu)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision for training (fp16 adds a GradScaler); export is unaffected")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        import re

        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class AugmentSpec(_Strict):
    shift: int = Field(0, ge=0, le=8, description="random +-N pixel translation (Hinton et al. used 2)")
    hflip: bool = Field(False, description="random left-right flip, p = 1/2 (garments, natural images; not digits)")

    @property
    def active(self) -> bool:
        """True when inputs change at random from epoch to epoch (so teacher outputs cannot be cached)."""
        return self.shift > 0 or self.hflip


class ModelSpec(_Strict):
    """A model from the built-in registry by name, or user code as `package.module:factory`."""

    model: str = Field(min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = Field(None, description="state-dict file, loaded with weights_only=True")
    train: TrainSpec | None = Field(None, description="teacher only: train it with ondevice first (hard labels)")
    augment: AugmentSpec | None = Field(None, description="teacher only: augmentation while ondevice trains it "
                                                            "(default: data.augment)")


class DataSpec(_Strict):
    dataset: str = Field(min_length=1, description="digits | mnist | fashion-mnist | mnist1d | idx | wordnet | "
                                                    "a registered name | package.module:factory")
    root: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict, description="options passed to the dataset loader/factory "
                                                                     "(e.g. tokenizer, max_length)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    limit_train: int | None = Field(None, ge=1)
    limit_val: int | None = Field(None, ge=1)
    limit_test: int | None = Field(None, ge=1)
    augment: AugmentSpec = Field(default_factory=AugmentSpec)


class TaskSpec(BaseModel):
    """``task = "token_lm"`` or ``[task] name = "multi_output" heads = {...}``; parameters are checked by
    ondevice.tasks."""

    model_config = ConfigDict(extra="allow")
    name: str = Field("classification", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self):
        from .tasks import build_task

        return build_task(self.name, self.params())


class LossSpec(BaseModel):
    """`{name = "kd", weight = 0.9, temperature = 4}`: the loss's own parameters are checked by ondevice.losses."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1)
    weight: float = Field(1.0, ge=0)

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, **self.params()}


class DistillSpec(_Strict):
    losses: list[LossSpec] = Field(
        default_factory=lambda: [LossSpec(name="ce", weight=0.1), LossSpec(name="kd", weight=0.9, temperature=4.0)],
        min_length=1,
    )
    cache_teacher: Literal["auto", "never"] = Field(
        "auto", description="auto: cache teacher outputs when inputs are deterministic (no augmentation)")
    cache_budget_mb: int = Field(2048, ge=0, description="largest teacher-output cache kept in memory")
    baseline: bool = Field(True, description="also train the student on hard labels alone, same init and schedule")
    transfer_samples: int = Field(0, ge=0, description=(
        "training-split samples after the first data.limit_train whose labels are withheld: the distilled student "
        "also learns the teacher's outputs on them (Hinton et al. 2015's transfer set); the teacher and the "
        "hard-label baseline see only the labelled ones"))


class ExportTargetSpec(_Strict):
    target: str = Field(min_length=1)
    precisions: list[str] = Field(default_factory=lambda: ["fp32"], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)


class ExportSpec(_Strict):
    targets: list[ExportTargetSpec] = Field(default_factory=list)
    calibration_samples: int = Field(256, ge=1)
    verify_samples: int = Field(1000, ge=1)
    thresholds: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="per precision overrides, e.g. {int8_static = {min_sqnr_db = 18}}")

    @field_validator("thresholds")
    @classmethod
    def _threshold_names(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        from .precision import PRECISIONS, Thresholds

        known = list(Thresholds.__dataclass_fields__)
        for prec, th in v.items():
            if prec not in PRECISIONS:
                raise ValueError(f"unknown precision {prec!r}; valid precisions: {', '.join(PRECISIONS)}")
            bad = sorted(set(th) - set(known))
            if bad:
                raise ValueError(f"{prec}: unknown threshold(s) {bad}; valid thresholds: {', '.join(known)}")
        return v


class BenchSpec(_Strict):
    enabled: bool = True
    mode: Literal["quick", "full"] = "quick"
    threads: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1,
                                       description="thread counts, each >= 1")
    batch_size: int = Field(1, ge=1)
    profiles: list[str] = Field(default_factory=lambda: ["midrange_phone_cpu"])
    accuracy_samples: int | None = Field(None, ge=1, description="test samples for accuracy retention (default all)")


class GatesSpec(_Strict):
    """Thresholds a CI build must meet. Each applies to every verified artifact unless noted."""

    max_size_bytes: int | None = Field(None, ge=1)
    min_accuracy: float | None = Field(None, ge=0, le=1)
    min_retention: float | None = Field(None, ge=0, description="artifact accuracy / teacher accuracy")
    max_p90_ms: float | None = Field(None, gt=0, description="measured p90 latency (ms)")
    max_estimated_p90_ms: float | None = Field(None, gt=0, description="estimated latency on `profile` (ms)")
    min_sqnr_db: float | None = None
    max_energy_mj: float | None = Field(None, gt=0, description="estimated energy per inference on `profile` (mJ)")
    power_budget: bool = Field(False, description="every artifact must fit `profile`'s power and memory budget")
    profile: str | None = None
    require_all_targets: bool = Field(True, description="an export that failed fails the gate")
    baseline: str | None = Field(None, description="committed baseline report to compare against")
    regression_tolerance: float = Field(0.05, ge=0, description="relative worsening allowed vs the baseline")
    min_distillation_gain: float | None = Field(
        None, description="run-wide: hard-label student errors minus distilled student errors on the test set, mean "
                          "over seeds (the distill results embedded in ondevice run's pipeline.json)")
    distillation_gain_confidence: bool = Field(
        True, description="min_distillation_gain also needs the lower end of the gain's 95% CI above the threshold")
    allow_missing: list[str] = Field(
        default_factory=list, description="'target/precision' artifacts the recipe asks for that may be missing or "
                                          "failed, e.g. ['coreml/int4_weight_only']")

    @field_validator("allow_missing")
    @classmethod
    def _target_slash_precision(cls, v: list[str]) -> list[str]:
        for item in v:
            target, _, precision = item.partition("/")
            if not target or not precision or "/" in precision:
                raise ValueError(f"expected 'target/precision' entries like 'coreml/int4_weight_only', got {item!r}")
        return v


_LATER_SECTIONS = frozenset({"task", "seeds"})
# (section, key): settings that choose what is evaluated, never what is trained (the training and validation splits
# do not depend on them): left out of the training checkpoints' hash (Recipe.section_hash(training_only=True))
EVAL_ONLY = (("data", "limit_test"),)


class Recipe(_Strict):
    schema_version: int = SCHEMA_VERSION
    name: str = "run"
    seed: int = Field(0, ge=0)
    seeds: list[int] | None = Field(None, min_length=1, description="train the distilled and the hard-label student "
                                    "once per seed (paired inits); results report mean, spread and a paired CI")
    output_dir: str = Field("runs/run", min_length=1)
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    teacher: ModelSpec
    student: ModelSpec
    data: DataSpec
    task: TaskSpec = Field(default_factory=TaskSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    distill: DistillSpec = Field(default_factory=DistillSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)

    @field_validator("schema_version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"expected schema_version {SCHEMA_VERSION}, got {v}")
        return v

    @model_validator(mode="after")
    def _student_not_trained(self) -> "Recipe":
        if self.student.train is not None or self.student.augment is not None:
            raise ValueError("student.train/student.augment are not used: the student's schedule is the top-level "
                             "[train] section and its augmentation [data.augment]")
        return self

    # -- helpers --------------------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _unique_seeds(self) -> "Recipe":
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected distinct seeds, got {self.seeds}")
        return self

    @model_validator(mode="after")
    def _transfer_needs_limit(self) -> "Recipe":
        if self.distill.transfer_samples and self.data.limit_train is None:
            raise ValueError(f"distill.transfer_samples = {self.distill.transfer_samples} needs data.limit_train: the "
                             "transfer set is the training samples after the first limit_train (the labelled ones); "
                             "set data.limit_train, or distill.transfer_samples = 0")
        return self

    @property
    def student_seeds(self) -> list[int]:
        """The seeds the students are trained with (the data split always follows `seed`)."""
        return list(self.seeds) if self.seeds else [self.seed]

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["distill"]["losses"] = [l.as_dict() for l in self.distill.losses]
        d["task"] = {"name": self.task.name, **self.task.params()}
        return d

    def section_hash(self, *sections: str, training_only: bool = False) -> str:
        """Stable hash of the named sections (e.g. the inputs of one pipeline stage).

        Settings left at their defaults do not enter it, so an optional setting added by a later ondevice version
        does not invalidate checkpoints and cached stages written before it existed. `training_only` leaves out the
        settings that change what is evaluated and never what is trained (EVAL_ONLY): a training checkpoint keyed by
        it is reused when only the test subsample changed, so the finished run is re-scored, not retrained.
        """
        d = self.model_dump(mode="json", exclude_defaults=True)
        for section, key in EVAL_ONLY if training_only else ():
            (d.get(section) or {}).pop(key, None)
        for t in (d.get("train"), (d.get("teacher") or {}).get("train")):
            if isinstance(t, dict):
                t.pop("device", None)  # a checkpoint resumes on any device
        # sections added after checkpoints existed enter the hash only when set, so old hashes stay valid
        payload = {s: d.get(s) for s in sections if s in d or s not in _LATER_SECTIONS}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# --- validation-error formatting -----------------------------------------------------------------------------
_EXPECT = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a table/mapping", "model_type": "a table/mapping",
    "model_attributes_type": "a table/mapping",
}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _valid_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in getattr(ann, "__args__", ()) + (ann,):
            inner = getattr(cand, "__args__", None)
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
            if inner:
                sub = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
                if sub:
                    cur = sub[0]
                    break
        else:
            return []
    return sorted(getattr(cur, "model_fields", {}))


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str = "recipe") -> ConfigError:
    problems: list[tuple[str, str]] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = _path(loc)
        typ = e["type"]
        given = e.get("input")
        if typ == "extra_forbidden":
            keys = _valid_keys(model, loc)
            msg = "unknown key" + (f"; valid keys here: {', '.join(keys)}" if keys else "")
        elif typ == "missing":
            msg = "required key is missing"
        elif typ in _EXPECT:
            msg = f"expected {_EXPECT[typ]}, got {given!r}"
        elif typ == "literal_error":
            exp = e.get("ctx", {}).get("expected", "")
            msg = f"expected one of {exp}, got {given!r}"
        elif typ.startswith(("greater_than", "less_than")):
            msg = f"expected a value {e['msg'].replace('Input should be ', '')}, got {given!r}"
        elif typ == "too_short":
            msg = f"expected at least {e.get('ctx', {}).get('min_length', 1)} item(s), got {given!r}"
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if given is not None and not isinstance(given, dict) and "got" not in msg:
                msg += f", got {given!r}"
        problems.append((path, msg))
    lines = [f"{source}: {p}: {m}" for p, m in problems]
    return ConfigError("invalid recipe:\n  " + "\n  ".join(lines), problems)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a table/mapping at the top level, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise format_validation_error(e, Recipe, source) from None


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a TOML (.toml) or YAML (.yaml/.yml) recipe. `overrides` are `key.path=value` strings
    (value parsed as TOML, falling back to a string; `null` unsets an optional value), e.g. ["train.epochs=1",
    "output_dir=runs/x", "teacher.train=null"]."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"recipe file {str(p)!r} does not exist; see examples/ for recipes to start from")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save the "
                          f"recipe as UTF-8") from None
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{p}: expected a .toml, .yaml or .yml recipe, got {p.suffix or 'no suffix'!r}")
    except ConfigError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError / yaml.YAMLError carry line numbers
        raise ConfigError(f"{p}: cannot parse {p.suffix[1:].upper()}: {e}") from None
    for ov in overrides or []:
        apply_override(data, ov)
    # relative weight paths are relative to the recipe file
    for role in ("teacher", "student"):
        w = (data.get(role) or {}).get("weights") if isinstance(data.get(role), dict) else None
        if isinstance(w, str) and not os.path.isabs(w) and (p.parent / w).exists():
            data[role]["weights"] = str((p.parent / w).resolve())
    return recipe_from_dict(data, str(p))


def apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key.path=value, e.g. train.epochs=1")
    key, raw = override.split("=", 1)
    import tomllib

    if raw.strip() in ("null", "none"):  # TOML has no null: unset an optional value (e.g. teacher.train=null)
        value = None
    else:
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except Exception:
            value = raw
    cur = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    cur[parts[-1]] = value


def dump_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for resolved recipes (tables, arrays of tables, scalars, inline lists/dicts)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines: list[str] = []

    def table(prefix: str, t: dict[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if v is not None and not isinstance(v, dict)
                   and not (isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
        if prefix and scalars:
            lines.append(f"\n[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {val(v)}")
        for k, v in t.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                table(name, v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    for ik, iv in item.items():
                        if iv is not None:
                            lines.append(f"{ik} = {val(iv)}")

    table("", d)
    return "\n".join(lines).lstrip() + "\n"


def check_references(recipe: Recipe, source: str = "recipe", *, resume: bool = True) -> None:
    """Resolve every name and file the recipe uses before any work starts, so a typo fails in a second with the key
    path and the valid names, not after an hour of training: models (registry names, and `package.module:factory`
    imported), weight files (read with weights_only=True into the model, and checked against a recorded sha256),
    dataset, losses, targets, precisions, device profiles, gates.allow_missing, and (when `resume`) the checkpoints
    a run would resume from."""
    problems: list[tuple[str, str]] = []

    def check(path: str, fn) -> None:
        from .errors import OndeviceError
        from .registry import UnknownNameError

        try:
            fn()
        except (UnknownNameError, OndeviceError, ValueError, KeyError) as e:
            problems.append((path, str(e).replace("invalid recipe:\n  ", "")))

    _check_models(recipe, check)
    from . import data
    from .losses import build_loss

    check("data.dataset", lambda: data.resolve_loader(recipe.data.dataset))

    try:
        task = recipe.task.build()
    except ConfigError as e:
        problems.append(("task", str(e)))
    else:
        check("distill.losses", lambda: task.check_losses([l.name for l in recipe.distill.losses]))
        if recipe.distill.baseline and not task.has_labels:
            problems.append(("distill.baseline", f"task {task.name!r} has no labels to train a hard-label baseline "
                                                 "on; set distill.baseline = false"))

    def losses() -> None:
        try:
            build_loss([l.as_dict() for l in recipe.distill.losses])
        except ConfigError as e:
            raise ConfigError(str(e).replace("losses[", "distill.losses[")) from None

    check("distill.losses", losses)
    _check_targets(recipe, problems)
    from .bench.profiles import load_profile

    names = list(recipe.bench.profiles) + ([recipe.gates.profile] if recipe.gates.profile else [])
    for i, name in enumerate(names):
        path = f"bench.profiles[{i}]" if i < len(recipe.bench.profiles) else "gates.profile"
        check(path, lambda name=name: load_profile(name))
    if resume:
        _check_checkpoints(recipe, check)
    if problems:
        lines = [f"{source}: {m}" if m.startswith(p) or m.startswith(f"{source}: {p}") else f"{source}: {p}: {m}"
                 for p, m in problems]
        raise ConfigError("invalid recipe:\n  " + "\n  ".join(lines), problems)


def _check_models(recipe: Recipe, check) -> None:
    from . import models
    from .provenance import verify_hash

    for role in ("teacher", "student"):
        spec: ModelSpec = getattr(recipe, role)
        ref = spec.model
        if ref == "from_teacher":  # the student is cut from the teacher (ondevice.shrink), nothing to import
            if role == "teacher":
                check("teacher.model", lambda: (_ for _ in ()).throw(ConfigError(
                    "'from_teacher' makes a student from the teacher; give the teacher a model")))
            continue
        check(f"{role}.model", lambda ref=ref: models._resolve_factory(ref))
        if spec.weights is None:
            continue

        def weights(spec=spec) -> None:  # readable, of the right architecture, and unchanged if a hash is recorded
            from .errors import CheckpointError

            if not Path(spec.weights).is_file():
                raise CheckpointError(f"weights file {spec.weights} does not exist")
            verify_hash(spec.weights, fix="Restore the original file.")
            try:
                models._resolve_factory(spec.model)
            except Exception:  # noqa: BLE001 - reported under {role}.model
                return
            models.build_model(spec.model, weights=spec.weights, **spec.kwargs)

        check(f"{role}.weights", weights)


def _check_targets(recipe: Recipe, problems: list[tuple[str, str]]) -> None:
    from .target import get_spec

    for i, t in enumerate(recipe.export.targets):
        try:
            spec = get_spec(t.target)
        except KeyError as e:
            problems.append((f"export.targets[{i}].target", str(e)))
            continue
        for j, p in enumerate(t.precisions):
            if p not in spec.precisions:
                problems.append((f"export.targets[{i}].precisions[{j}]",
                                 f"target {t.target!r} cannot produce {p!r}; it can do: {', '.join(spec.precisions)}"))
        for k in t.options:
            if k not in spec.options:
                problems.append((f"export.targets[{i}].options.{k}",
                                 f"unknown option for {t.target!r}; its options: {', '.join(spec.options) or '(none)'}"))
    for i, item in enumerate(recipe.gates.allow_missing):
        target, _, precision = item.partition("/")
        try:
            spec = get_spec(target)
        except KeyError as e:
            problems.append((f"gates.allow_missing[{i}]", str(e)))
            continue
        if precision not in spec.precisions:
            problems.append((f"gates.allow_missing[{i}]", f"target {target!r} cannot produce {precision!r}; it can "
                                                         f"do: {', '.join(spec.precisions)}"))


def _check_checkpoints(recipe: Recipe, check) -> None:
    """The per-phase checkpoints a run would resume from must be readable ondevice checkpoints."""
    from .outdir import MARKER

    folder = Path(recipe.output_dir) / "checkpoints"
    if not folder.is_dir() or not (folder.parent / MARKER).exists():  # a folder ondevice does not own is refused
        return                                                           # when it is claimed
    from .train import load_checkpoint

    for ck in sorted(folder.glob("*.pt")):
        check(f"output_dir (checkpoint {ck.name})", lambda ck=ck: load_checkpoint(ck))
