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
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per input name, batch dim first
    vocab: int | None = None  # synthetic token ids are drawn from [0, vocab)
    state: dict[str, str] = field(default_factory=dict)  # state input -> the output fed back into it between calls
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
        self.input_shapes = {k: tuple(int(d) for d in v) for k, v in dict(self.input_shapes or {}).items()}
        if self.vocab is not None and int(self.vocab) < 1:
            raise ValueError(f"vocab must be >= 1 (token ids are drawn from [0, vocab)), got {self.vocab}")
        self.state = dict(self.state or {})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threads"] = list(self.threads)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        d["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
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

    def engine_spec(self, structure: Any = None) -> dict:
        return {"kind": "torch", "ref": self.ref, "structure": structure,
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
        side, side_error = _sidecar(p)
        target = artifact_target(p, side)  # the record's target; the suffix only for a bare file
        precision = side.get("precision") if side else None
        label = _unique(f"{target}/{precision}" if precision else p.name, taken)
        taken.add(label)
        out.append(Item(label=label, kind="artifact", role="artifact",
                        engine={"kind": "artifact", "target": target, "path": str(p.resolve()),
                                "input_spec": (side or {}).get("input_spec")},
                        target=target, precision=precision, path=str(p.resolve()), sidecar=side,
                        sidecar_error=side_error))
    if not out:
        raise ValueError("nothing to benchmark: give artifact paths, a folder of artifacts, or --teacher/--student")
    return out


# --- data --------------------------------------------------------------------------------------------------
@dataclass
class Data:
    """What every item is fed: named inputs (N, ...) each, labels, and where they came from."""

    x: dict[str, np.ndarray]
    y: np.ndarray | None  # (N,) int labels or None
    source: str
    synthetic: bool = False
    structure: Any = None  # how an eager model is called with the inputs (ondevice.tree.tree_structure)
    origin: dict[str, str] = field(default_factory=dict)  # input name -> "real" or how it was synthesised

    def __len__(self) -> int:
        return len(next(iter(self.x.values())))

    def take(self, n: int) -> dict[str, np.ndarray]:
        return {k: v[:n] for k, v in self.x.items()}


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _named(x) -> tuple[dict[str, np.ndarray], Any]:
    """A tree of arrays/tensors -> ({name: array}, structure): names as ondevice.tree names leaves ("x" for one
    tensor, dict keys, "input_<i>" for tuple positions). Float64 becomes float32; integers keep their dtype."""
    from ondevice.export import as_tree
    from ondevice.tree import tree_items, tree_structure

    tree = as_tree(x)
    named = {}
    for k, t in tree_items(tree):
        a = t.numpy()
        named[k] = np.ascontiguousarray(a.astype(np.float32) if a.dtype == np.float64 else a)
    return named, tree_structure(tree)


LABEL_KEYS = ("y", "y_test", "Y", "labels", "label")


def _npz(p: Path) -> Data:
    """An .npz of real samples: one array per input name (or `x`), and optionally labels (`y` / `labels`)."""
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    with np.load(p) as z:
        yk = next((k for k in LABEL_KEYS if k in z.files), None)
        keys = [k for k in z.files if k != yk]
        if not keys:
            raise ValueError(f"{p} holds no input arrays (found: {', '.join(z.files)}); save one array per input "
                             f"name: np.savez(path, input_ids=ids, attention_mask=mask, y=labels)")
        named = {k: np.ascontiguousarray(z[k].astype(np.float32) if z[k].dtype == np.float64 else z[k])
                 for k in keys}
        y = z[yk].astype(np.int64).ravel() if yk else None
    lens = {k: len(v) for k, v in named.items()}
    if len(set(lens.values())) != 1:
        raise ValueError(f"{p}: every input needs the same number of samples (axis 0); got {lens}")
    return Data(named, y, str(p), structure="tensor" if list(named) == ["x"] else ["dict", {k: "tensor"
                                                                                             for k in named}],
                origin={k: "real" for k in named})


def load_data(data: Any, *, input_shape: Sequence[int] | None = None, input_dtype: str = "float32",
              seed: int = 0, items: Sequence[Item] = (), config: Any = None) -> Data:
    """(x, y) arrays/tensors (x may be a tuple or dict of inputs), a .npz file of named inputs (and labels), a dataset
    name from ondevice.data, or None.

    With None, every input is synthesised from the first artifact's signature (its record's input spec, else the
    file itself): see `synthesize`. Accuracy is then unavailable; the report says the inputs are synthetic.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2:
        named, structure = _named(data[0])
        y = None if data[1] is None else _np(data[1]).astype(np.int64).ravel()
        return Data(named, y, "arrays given", structure=structure, origin={k: "real" for k in named})
    if isinstance(data, (str, os.PathLike)):
        s = str(data)
        if s.endswith(".npz"):
            return _npz(Path(s).expanduser())
        try:
            from ondevice.data import load_dataset
        except ImportError as e:
            raise ValueError(f"data {s!r} is not a .npz file and ondevice.data is not available ({e})") from None
        ds = load_dataset(s)
        split = ds.test if getattr(ds, "test", None) is not None else ds
        named, structure = _named(split.x)
        y = getattr(split, "y", None)
        return Data(named, None if y is None else _np(y).astype(np.int64).ravel(), f"dataset {s} (test split)",
                    structure=structure, origin={k: "real" for k in named})
    if data is not None:
        raise TypeError(f"data must be (x, y), a .npz path or a dataset name, got {type(data).__name__}")
    from .synth import synthesize

    return synthesize(items, config, input_shape=input_shape, input_dtype=input_dtype, seed=seed)


def config_fields() -> list[str]:
    return [f.name for f in fields(BenchConfig)]
