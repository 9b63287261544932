"""What to benchmark and how: BenchConfig, model references, item and data resolution."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np


# mode -> defaults. A variant is done when it has >= min_queries AND >= min_seconds of measured time, or has
# reached max_seconds (see latency.py).
MODES: dict[str, dict[str, Any]] = {
    "quick": dict(min_queries=64, min_seconds=2.0, max_seconds=30.0, warmup_queries=8, warmup_seconds=0.2,
                  chunk_seconds=0.1),
    "full": dict(min_queries=1024, min_seconds=60.0, max_seconds=600.0, warmup_queries=64, warmup_seconds=2.0,
                 chunk_seconds=0.5),
}


@dataclass
class BenchConfig:
    """How to measure. Fields left None take the mode's defaults (MODES).

    mode:             "quick" (64 queries and 2 s per variant) or "full" (1024 queries and 60 s, MLPerf-style)
    threads:          thread counts; each (item, threads) runs in its own worker process
    batch_size:       samples per query
    profiles:         device profiles for the energy estimates: "all", names, or .toml paths
    accuracy_samples: test samples for accuracy (None: the whole given test set)
    latency_samples:  distinct real samples cycled through during timing
    timeout_s:        limit for any one worker command (import, load, a chunk, the accuracy pass)
    max_workers:      worker processes alive at once; more items are measured in groups (interleaved within
                      a group, groups one after another), which bounds memory (each worker holds a runtime)
    """

    mode: str = "quick"
    threads: tuple[int, ...] = (1,)
    batch_size: int = 1
    min_queries: int | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    warmup_queries: int | None = None
    warmup_seconds: float | None = None
    chunk_seconds: float | None = None
    profiles: Any = "all"
    accuracy: bool = True
    accuracy_samples: int | None = None
    latency_samples: int = 1024
    input_shape: tuple[int, ...] | None = None  # with the batch dim, e.g. (1, 1, 28, 28); only without data
    input_dtype: str = "float32"
    seed: int = 0
    n_boot: int = 2000
    timeout_s: float = 600.0
    max_workers: int = 16
    plots: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown bench mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        for k, v in MODES[self.mode].items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if isinstance(self.threads, int):
            self.threads = (self.threads,)
        self.threads = tuple(int(t) for t in self.threads)
        if not self.threads or any(t < 1 for t in self.threads):
            raise ValueError(f"threads must be positive integers, got {self.threads}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {self.max_workers}")
        if self.min_queries < 1:
            raise ValueError(f"min_queries must be >= 1, got {self.min_queries}")
        if self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threads"] = list(self.threads)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        d["profiles"] = self.profiles if isinstance(self.profiles, str) else [str(p) for p in self.profiles]
        return d


@dataclass
class TorchModelRef:
    """An eager PyTorch model, rebuilt inside the worker with ondevice.models.build_model(ref, weights, **kwargs).

    ref: an ondevice.models registry name, "pkg.module:factory" or "path/to/file.py:factory".
    """

    label: str
    ref: str
    weights: str | None = None
    kwargs: dict = field(default_factory=dict)

    def engine_spec(self) -> dict:
        return {"kind": "torch", "ref": self.ref,
                "weights": str(Path(self.weights).resolve()) if self.weights else None, "kwargs": dict(self.kwargs)}


@dataclass
class Item:
    """One thing to benchmark (resolved)."""

    label: str
    kind: str  # "pytorch" | "artifact"
    role: str  # "teacher" | "student" | "model" | "artifact"
    engine: dict
    target: str
    precision: str | None = None
    path: str | None = None
    ref: str | None = None
    weights: str | None = None
    sidecar: dict | None = None
    sidecar_error: str | None = None  # the record beside the artifact exists but is damaged


def _sidecar(path: Path) -> tuple[dict | None, str | None]:
    """(record, None) or (None, why it cannot be read) for the `<artifact>.json` beside `path`."""
    from ondevice import sidecar
    from ondevice.errors import SidecarError

    try:
        return sidecar.read(path), None
    except SidecarError as e:
        return None, str(e)


def known_suffixes() -> dict[str, str]:
    from ondevice.target import SPECS, _discover

    _discover()
    return {SPECS.get(n).suffix: n for n in SPECS.names()}


def expand_artifacts(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Artifact paths; a folder contributes every artifact in it (e.g. the output folder of `ondevice export`)."""
    suffixes = known_suffixes()
    out: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        is_artifact_dir = p.is_dir() and any(str(p).rstrip("/").endswith(s) for s in suffixes)
        if p.is_dir() and not is_artifact_dir:
            found = sorted(c for c in p.iterdir()
                           if any(c.name.endswith(s) for s in suffixes) and not c.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"no artifacts ({', '.join(sorted(suffixes))}) in folder {p}")
            out.extend(found)
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"artifact {p} does not exist")
    return out


def _unique(label: str, taken: set[str]) -> str:
    if label not in taken:
        return label
    i = 2
    while f"{label}#{i}" in taken:
        i += 1
    return f"{label}#{i}"


def resolve_items(items: Sequence[Any], teacher: TorchModelRef | None = None,
                  student: TorchModelRef | None = None) -> list[Item]:
    """teacher, student, then `items` (artifact paths / folders and TorchModelRefs), with unique labels."""
    from ondevice.target import artifact_target

    out: list[Item] = []
    taken: set[str] = set()

    def add_torch(ref: TorchModelRef, role: str) -> None:
        label = _unique(ref.label, taken)
        taken.add(label)
        out.append(Item(label=label, kind="pytorch", role=role, engine=ref.engine_spec(), target="pytorch",
                        precision="fp32", ref=ref.ref, weights=ref.weights))

    if teacher is not None:
        add_torch(teacher, "teacher")
    if student is not None:
        add_torch(student, "student")
    paths: list = []
    for it in items:
        if isinstance(it, TorchModelRef):
            add_torch(it, "model")
        elif isinstance(it, (str, os.PathLike)):
            paths.append(it)
        else:
            raise TypeError(f"bench items must be artifact paths or TorchModelRef, got {type(it).__name__}")
    for p in expand_artifacts(paths):
        target = artifact_target(p)
        side, side_error = _sidecar(p)
        precision = side.get("precision") if side else None
        label = _unique(f"{target}/{precision}" if precision else p.name, taken)
        taken.add(label)
        out.append(Item(label=label, kind="artifact", role="artifact",
                        engine={"kind": "artifact", "target": target, "path": str(p.resolve())},
                        target=target, precision=precision, path=str(p.resolve()), sidecar=side,
                        sidecar_error=side_error))
    if not out:
        raise ValueError("nothing to benchmark: give artifact paths, a folder of artifacts, or --teacher/--student")
    return out


# --- data --------------------------------------------------------------------------------------------------
@dataclass
class Data:
    x: np.ndarray  # (N, ...) float32
    y: np.ndarray | None  # (N,) int labels or None
    source: str
    synthetic: bool = False


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def load_data(data: Any, *, input_shape: Sequence[int] | None = None, input_dtype: str = "float32",
              seed: int = 0, items: Sequence[Item] = ()) -> Data:
    """(x, y) arrays/tensors, a .npz file with x and y, a dataset name from ondevice.data, or None.

    With None, latency runs on seeded synthetic inputs of `input_shape` (batch dim first) or of the first
    artifact's recorded input shape; accuracy is then unavailable.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = _np(data[0]).astype(np.float32, copy=False), (None if data[1] is None else _np(data[1]))
        return Data(np.ascontiguousarray(x), None if y is None else y.astype(np.int64).ravel(), "arrays given")
    if isinstance(data, (str, os.PathLike)):
        s = str(data)
        if s.endswith(".npz"):
            p = Path(s).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"data file {p} does not exist")
            with np.load(p) as z:
                xk = next((k for k in ("x", "x_test", "X") if k in z), None)
                yk = next((k for k in ("y", "y_test", "Y", "labels") if k in z), None)
                if xk is None:
                    raise ValueError(f"{p} has no array named x (found: {', '.join(z.files)}); save it with "
                                     f"np.savez(path, x=inputs, y=labels)")
                x = np.ascontiguousarray(z[xk], dtype=np.float32)
                y = z[yk].astype(np.int64).ravel() if yk else None
            return Data(x, y, str(p))
        try:
            from ondevice.data import load_dataset
        except ImportError as e:
            raise ValueError(f"data {s!r} is not a .npz file and ondevice.data is not available ({e})") from None
        ds = load_dataset(s)
        split = ds.test if getattr(ds, "test", None) is not None else ds
        x = np.ascontiguousarray(_np(split.x), dtype=np.float32)
        y = getattr(split, "y", None)
        return Data(x, None if y is None else _np(y).astype(np.int64).ravel(), f"dataset {s} (test split)")
    if data is not None:
        raise TypeError(f"data must be (x, y), a .npz path or a dataset name, got {type(data).__name__}")
    shape = tuple(input_shape) if input_shape else None
    if shape is None:
        for it in items:
            ins = ((it.sidecar or {}).get("inspect") or {}).get("inputs") or []
            if ins and all(isinstance(d, int) and d > 0 for d in ins[0].get("shape", [])):
                shape = tuple(ins[0]["shape"])
                break
    if shape is None:
        raise ValueError("no data given and the input shape is unknown: pass data (--data mnist or a .npz with x, y) "
                         "or an input spec (--input-shape 1,1,28,28)")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, *shape[1:])).astype(input_dtype)  # (256, ...) seeded synthetic samples
    return Data(x, None, f"synthetic standard-normal inputs of shape {list(shape)} (seed {seed})", synthetic=True)


def config_fields() -> list[str]:
    return [f.name for f in fields(BenchConfig)]
