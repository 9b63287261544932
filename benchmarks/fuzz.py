"""Fuzz the trust paths with Hypothesis: random recipes, and damaged artifacts, records, data files and checkpoints.

    python benchmarks/fuzz.py                        # >= 1000 cases per kind -> benchmarks/results/fuzz.json (+ .md)
    python benchmarks/fuzz.py --cases 30 --kinds onnx,recipe --out /tmp/fuzz.json
    python benchmarks/fuzz.py --cases recipe=300,onnx=20 --kinds recipe,onnx --out /tmp/fuzz.json

Each case goes through the product code (no stubs):
  recipe      a valid recipe mutated at random (keys set to random values and types, deleted, added at any nesting
              level), and recipe files (TOML/YAML) with random bytes damaged -> recipe_from_dict / load_recipe ->
              check_references
  onnx, pte, tflite, mlpackage
              a verified fp32 export of a trained digits CNN, truncated or bit-flipped at random (for .mlpackage:
              one of its files) -> the bench's trust path: resolve_items (reads the record) -> re-hash -> load, run
              and inspect through the bench's ArtifactEngine in an isolated child process (what a bench worker
              does; a crash or a hang there is that worker failing, which bench reports as the item's error) ->
              verify_item (re-verification against the source student's outputs on labelled data) -> verdict
  record      the artifact's <artifact>.json (of a verified and of a failed artifact), truncated or bit-flipped ->
              sidecar.check
  idx_gz      a gzipped IDX file, truncated or bit-flipped -> ondevice.data.read_idx
  checkpoint  student.pt of a distill folder, bit-flipped or truncated, with and without its .sha256 record ->
              ondevice.distill.load_student + ondevice.provenance.check_student (what `ondevice export` does first)

Outcomes (exclusive): clear_error (refused: an ondevice error that names the problem, or a bench worker failing
on the file), correct (a result that is right: "verified" only when the outputs still match the undamaged
artifact's), traceback (any other exception, i.e. a bug), false_verified (called verified although wrong, or
damaged data accepted as intact). files_lost counts cases after which a file beside the fuzzed one (the user's
notes, another artifact, the record) was missing or changed. Details per kind (worker crashes, timeouts, ...) go
to "details"; the first examples of any bad outcome to "bad_examples".
"""
from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # fork-safe: no thread pools in the parent

import argparse  # noqa: E402
import copy  # noqa: E402
import gzip  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # test_bench_common: the digits data and the CNN module

import numpy as np  # noqa: E402

KINDS = ("recipe", "onnx", "pte", "tflite", "mlpackage", "record", "idx_gz", "checkpoint")
ARTIFACT_KINDS = {"onnx": ("onnxruntime", ".onnx"), "pte": ("executorch", ".pte"), "tflite": ("tflite", ".tflite"),
                  "mlpackage": ("coreml", ".mlpackage")}
DEFAULT_OUT = HERE / "results" / "fuzz.json"
N_VERIFY = {"mlpackage": 64}  # labelled samples each damaged artifact is run on (default 128)
CHILD_TIMEOUT_S = 120.0
CASE_TIMEOUT_S = 600  # a case that takes longer (beyond its children's own timeouts) is a hang


# --- outcomes ---------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    kind: str
    cases: int = 0
    clear_error: int = 0
    correct: int = 0
    traceback: int = 0
    false_verified: int = 0
    files_lost: int = 0
    details: dict = field(default_factory=dict)
    bad_examples: list = field(default_factory=list)
    seconds: float = 0.0

    def add(self, outcome: str, *, lost: bool = False, detail: str | None = None, example: Any = None) -> None:
        self.cases += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.files_lost += bool(lost)
        if detail:
            self.details[detail] = self.details.get(detail, 0) + 1
        if (outcome in ("traceback", "false_verified") or lost) and len(self.bad_examples) < 5:
            self.bad_examples.append({"outcome": outcome, "lost": lost, "example": str(example)[:1500]})

    def row(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "cases", "clear_error", "correct", "traceback",
                                               "false_verified", "files_lost")}


def _ondevice_error() -> type:
    from ondevice.errors import OndeviceError

    return OndeviceError


def describe(e: BaseException) -> dict:
    return {"type": type(e).__name__, "message": str(e)[:500], "clear": isinstance(e, _ondevice_error()),
            "traceback": "".join(traceback.format_exception(e))[-1500:]}


# --- isolation: a forked child per case, as a bench worker is a process per item ----------------------------------------
def _limit_memory(extra_gb: float = 3.0) -> None:
    """Cap the child's address space so a damaged size field fails with MemoryError, not the OOM killer."""
    try:
        vm_kb = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmSize:")))
        cap = int(vm_kb * 1024 + extra_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (OSError, ValueError, StopIteration):
        pass


def isolated(fn: Callable, *args: Any, timeout: float = CHILD_TIMEOUT_S) -> tuple[str, Any]:
    """fn(*args) in a forked child: ("ok", value) | ("raised", describe(e)) | ("crashed", signal) | ("timeout", None)."""
    fd, result = tempfile.mkstemp(prefix="ondevice-fuzz-")
    os.close(fd)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            _limit_memory()
            res: tuple = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            res = ("raised", describe(e))
        try:
            with open(result, "wb") as f:
                pickle.dump(res, f)
        except BaseException:  # noqa: BLE001
            code = 70
        os._exit(code)
    try:
        return _wait(pid, result, timeout)
    except BaseException:  # interrupted (Ctrl-C, the case alarm): do not leave the child running
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.unlink(result)


def _wait(pid: int, result: str, timeout: float) -> tuple[str, Any]:
    deadline, pause = time.monotonic() + timeout, 0.001
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", None
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    if os.WIFSIGNALED(st):
        return "crashed", signal.Signals(os.WTERMSIG(st)).name
    try:
        with open(result, "rb") as f:
            return pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return "crashed", f"exit {os.WEXITSTATUS(st)} without a result"


# --- damage ------------------------------------------------------------------------------------------------------------
def damage_strategy(size: int):
    """Truncate to a random length, flip 1-16 random bits, or overwrite a random block."""
    from hypothesis import strategies as st

    return st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, max(0, size - 1))),
        st.tuples(st.just("flip"), st.lists(st.integers(0, 8 * size - 1), min_size=1, max_size=16)),
        st.tuples(st.just("block"), st.tuples(st.integers(0, max(0, size - 1)), st.integers(1, 4096),
                                               st.integers(0, 255))),
    )


def damaged(data: bytes, how: tuple) -> bytes:
    op, arg = how
    if op == "truncate":
        return data[:arg]
    b = bytearray(data)
    if not b:
        return data
    if op == "flip":
        for bit in arg:
            bit %= 8 * len(b)  # a strategy drawn for a longer file wraps around
            b[bit // 8] ^= 1 << (bit % 8)
    else:
        start, n, value = arg
        b[start:start + n] = bytes([value]) * len(b[start:start + n])
    return bytes(b)


def snapshot(folder: Path, skip: set[str]) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).parts[0] not in skip}


def run_cases(strategy, case_fn: Callable[[Any], None], n: int, seed: int) -> None:
    """Draw `n` examples from a Hypothesis strategy (deterministic per seed) and call case_fn on each."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    done = 0
    while done < n:
        batch = min(n - done, 500)
        counter = {"n": 0}

        @hseed(seed + done)
        @settings(max_examples=batch, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(strategy)
        def body(example):
            if counter["n"] < batch:
                counter["n"] += 1
                case_fn(example)

        body()
        if counter["n"] == 0:
            break
        done += counter["n"]


# --- artifacts -----------------------------------------------------------------------------------------------------------
def _export_all(folder: str, kinds: tuple[str, ...]) -> dict:
    """(in a child) Train the digits CNN, export it fp32 to each kind's target, verified on labelled digits."""
    import torch

    from ondevice.export import export
    from test_bench_common import digits, train_cnn, write_models

    torch.manual_seed(0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = write_models(folder)
    model = train_cnn(models, folder / "cnn.pt")
    x, y = digits()
    out = {}
    for kind in kinds:
        target, suffix = ARTIFACT_KINDS[kind]
        art = export(model, target, "fp32", out=folder / "pristine" / kind / f"cnn_fp32{suffix}",
                     verify_data=(x[1400:], y[1400:]))
        out[kind] = art.path
    return {"models": str(models), "weights": str(folder / "cnn.pt"), "paths": out}


def _engine_outputs(target: str, path: str, x: np.ndarray) -> dict:
    """(in a child) What a bench worker does with an artifact: load, predict in batches of 64, info/inspect."""
    from ondevice.bench.engines import make_engine, predict

    engine = make_engine({"kind": "artifact", "target": target, "path": path})
    runner = engine.load()
    return {"outputs": predict(engine, runner, x, 64), "inspect": engine.info().get("inspect")}


class ArtifactFuzz:
    """One artifact kind: the pristine verified artifact, the student's outputs, and the per-case trust path."""

    def __init__(self, kind: str, setup: dict, work: Path):
        import torch

        from ondevice.bench.engines import make_engine
        from ondevice.models import build_model
        from test_bench_common import digits

        self.kind, self.target = kind, ARTIFACT_KINDS[kind][0]
        self.pristine = Path(setup["paths"][kind])
        self.work = work
        x, y = digits()
        n = N_VERIFY.get(kind, 128)
        self.x, self.y = np.ascontiguousarray(x[1400:1400 + n]), y[1400:1400 + n]
        model = build_model(f"{setup['models']}:cnn", weights=setup["weights"]).eval()
        with torch.no_grad():
            self.student_out = model(torch.from_numpy(self.x)).numpy()  # (n, 10)
        make_engine({"kind": "artifact", "target": self.target, "path": str(self.pristine)}).prepare()
        status, res = isolated(_engine_outputs, self.target, str(self.pristine), self.x)
        if status != "ok":
            raise RuntimeError(f"the pristine {kind} artifact does not run: {status} {res}")
        self.pristine_out = res["outputs"]
        self.files = [p for p in sorted(self.pristine.rglob("*")) if p.is_file()] if self.pristine.is_dir() \
            else [self.pristine]

    def strategy(self):
        from hypothesis import strategies as st

        return st.integers(0, len(self.files) - 1).flatmap(
            lambda i: st.tuples(st.just(i), damage_strategy(self.files[i].stat().st_size)))

    def _case_folder(self) -> Path:
        d = self.work / "case"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        name = self.pristine.name
        (shutil.copytree if self.pristine.is_dir() else shutil.copyfile)(self.pristine, d / name)
        rec = json.loads(Path(str(self.pristine) + ".json").read_text())
        rec["path"] = str(d / name)
        (d / (name + ".json")).write_text(json.dumps(rec))
        (d / "notes.txt").write_text("the user's own notes\n")
        shutil.copyfile(Path(str(self.pristine) + ".json"), d / "other_record.json")
        return d / name

    def case(self, example: tuple, tally: Tally) -> None:
        i, how = example
        path = self._case_folder()
        target_file = path / self.files[i].relative_to(self.pristine) if path.is_dir() else path
        target_file.write_bytes(damaged(target_file.read_bytes(), how))
        before = snapshot(path.parent, {path.name})
        try:
            outcome, detail = self._judge(path)
        except Exception as e:  # noqa: BLE001 - an ondevice error refuses the file; anything else is a bug
            if not isinstance(e, _ondevice_error()):
                tally.add("traceback", detail=type(e).__name__, example=describe(e))
                return
            outcome, detail = "clear_error", f"refused ({type(e).__name__})"
        lost = snapshot(path.parent, {path.name}) != before
        tally.add(outcome, lost=lost, detail=detail, example=(how, detail))

    def _judge(self, path: Path) -> tuple[str, str]:
        from ondevice.bench.config import resolve_items
        from ondevice.bench.harness import item_failed_verification, verify_item
        from ondevice.precision import get_precision
        from ondevice.verify import compare, thresholds_for

        item = resolve_items([path])[0]
        status, res = isolated(_engine_outputs, self.target, str(path), self.x)
        out = res["outputs"] if status == "ok" else None
        if status == "raised" and not res["clear"]:
            raise RuntimeError(f"unexpected {res['type']} in the worker: {res['traceback']}")
        v = verify_item(item, out, self.student_out, self.y, res.get("inspect") if status == "ok" else None)
        verified = v["status"] == "verified" and not item_failed_verification(v)
        if verified:
            truth = out is not None and compare(self.pristine_out, out, self.y,
                                                thresholds_for(get_precision("fp32"))).passed
            return ("correct", "verified, outputs intact") if truth else ("false_verified", v["reason"])
        if out is None:
            return "clear_error", {"raised": "worker error", "crashed": "worker crashed",
                                   "timeout": "worker timed out"}[status]
        return "correct", ("refused after re-verification" if v.get("reverified") else f"refused: {v['hash']}")


# --- records, data files, checkpoints -----------------------------------------------------------------------------------
class RecordFuzz:
    """Damaged <artifact>.json records of a verified and of a failed (degenerate-reference) artifact."""

    def __init__(self, work: Path):
        status, res = isolated(_export_pair, str(work / "records"))
        if status != "ok":
            raise RuntimeError(f"record setup failed: {status} {res}")
        self.paths = [Path(p) for p in res]

    def strategy(self):
        from hypothesis import strategies as st

        return st.integers(0, 1).flatmap(lambda i: st.tuples(
            st.just(i), damage_strategy(Path(str(self.paths[i]) + ".json").stat().st_size)))

    def case(self, example: tuple, tally: Tally) -> None:
        from ondevice import sidecar

        i, how = example
        path = self.paths[i]
        rec = Path(str(path) + ".json")
        good = rec.read_bytes()
        art_sha = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            rec.write_bytes(damaged(good, how))
            trust = sidecar.check(path)
        except Exception as e:  # noqa: BLE001 - check() returns a verdict; an exception is a bug
            tally.add("traceback", example=describe(e))
            return
        finally:
            lost = hashlib.sha256(path.read_bytes()).hexdigest() != art_sha
            rec.write_bytes(good)
        bad_artifact = i == 1
        if trust.status == "verified" and bad_artifact:
            tally.add("false_verified", lost=lost, example=(how, trust.to_dict()))
        elif trust.hash == "invalid record":
            tally.add("clear_error", lost=lost, detail="damaged record refused")
        else:
            tally.add("correct", lost=lost, detail=f"{trust.hash}: {trust.status}")


def _export_pair(folder: str) -> list[str]:
    """(in a child) An ONNX artifact that verified and one whose reference is degenerate (status recorded bad)."""
    import torch

    from ondevice.export import export
    from test_bench_common import digits

    x, y = digits()
    torch.manual_seed(0)
    good = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        flat[1].weight.zero_()
    a = export(good, "onnxruntime", "fp32", out=Path(folder) / "good.onnx", verify_data=(x[:200], y[:200]))
    b = export(flat, "onnxruntime", "fp32", out=Path(folder) / "flat.onnx", verify_data=(x[:200], y[:200]),
               raise_on_failure=False)
    assert a.status == "verified" and b.status == "degenerate reference"
    return [a.path, b.path]


class IdxFuzz:
    """A gzipped IDX label file (600 labels), damaged; read_idx must refuse it or return the intact array."""

    def __init__(self, work: Path):
        rng = np.random.default_rng(0)
        self.labels = rng.integers(0, 10, 600, dtype=np.uint8)
        raw = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 600) + self.labels.tobytes()
        self.data = gzip.compress(raw, mtime=0)
        self.path = work / "idx" / "t10k-labels-idx1-ubyte.gz"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def strategy(self):
        return damage_strategy(len(self.data))

    def case(self, how: tuple, tally: Tally) -> None:
        from ondevice.data import read_idx

        self.path.write_bytes(damaged(self.data, how))
        try:
            arr = read_idx(self.path, expect_ndim=1)
        except Exception as e:  # noqa: BLE001
            ok = isinstance(e, _ondevice_error()) and str(self.path) in str(e)
            tally.add("clear_error" if ok else "traceback", detail=type(e).__name__, example=describe(e))
            return
        if np.array_equal(arr, self.labels):
            tally.add("correct", detail="damage outside the data (gzip header): intact labels")
        else:
            tally.add("false_verified", example=how)


def _distill(folder: str) -> str:
    """(in a child) A small digits distillation: student.pt (+ .sha256), results.json, recipe.resolved.json."""
    from helpers import digits_recipe
    from ondevice.config import load_recipe
    from ondevice.distill import distill

    rp = Path(folder) / "r.toml"
    rp.parent.mkdir(parents=True, exist_ok=True)
    rp.write_text(digits_recipe(Path(folder) / "out", teacher_hidden=(32,), teacher_epochs=2, epochs=3))
    distill(load_recipe(rp))
    return str(Path(folder) / "out")


def _load_and_check(out: str) -> str:
    """(in a child) What `ondevice export RUN_DIR` does before exporting anything."""
    from ondevice.distill import load_student
    from ondevice.provenance import check_student

    check_student(out, "student", load_student(out))
    return "accepted"


class CheckpointFuzz:
    """student.pt damaged, with (first half of the cases) and without its .sha256 record."""

    def __init__(self, work: Path):
        status, res = isolated(_distill, str(work / "distill"), timeout=900)
        if status != "ok":
            raise RuntimeError(f"distill setup failed: {status} {res}")
        self.src = Path(res)
        self.data = (self.src / "student.pt").read_bytes()
        self.case_dir = work / "distill-case"

    def strategy(self):
        from hypothesis import strategies as st

        return st.tuples(st.booleans(), damage_strategy(len(self.data)))

    def case(self, example: tuple, tally: Tally) -> None:
        with_hash, how = example
        shutil.rmtree(self.case_dir, ignore_errors=True)
        shutil.copytree(self.src, self.case_dir, ignore=shutil.ignore_patterns("checkpoints", "artifacts"))
        if not with_hash:
            (self.case_dir / "student.pt.sha256").unlink()
        (self.case_dir / "student.pt").write_bytes(damaged(self.data, how))
        before = snapshot(self.case_dir, {"student.pt"})
        status, res = isolated(_load_and_check, str(self.case_dir))
        lost = snapshot(self.case_dir, {"student.pt"}) != before
        if status == "ok":
            tally.add("correct", lost=lost, detail="accepted: reproduces its recorded accuracy")
        elif status == "raised" and res["clear"]:
            tally.add("clear_error", lost=lost, detail=f"refused ({res['type']})")
        else:
            tally.add("traceback", lost=lost, detail=status, example=res)


# --- recipes ------------------------------------------------------------------------------------------------------------
VALID_RECIPE = {
    "name": "fuzz", "seed": 0, "output_dir": "runs/fuzz-never-written",
    "teacher": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [32], "num_classes": 10},
                "train": {"epochs": 1}},
    "student": {"model": "mlp", "kwargs": {"in_features": 64, "hidden": [8], "num_classes": 10}},
    "data": {"dataset": "digits", "val_fraction": 0.1, "augment": {"shift": 0}},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.01},
    "distill": {"losses": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "temperature": 4.0}]},
    "export": {"targets": [{"target": "onnxruntime", "precisions": ["fp32", "int8_static"]}],
               "thresholds": {"int8_static": {"min_sqnr_db": 18.0}}},
    "bench": {"threads": [1], "profiles": ["mcu"]},
    "gates": {"min_accuracy": 0.5, "allow_missing": ["onnxruntime/int8_static"]},
}
TEXT_DAMAGE_SPAN = 1200  # bytes of the recipe texts (about 700 TOML, 900 YAML) a damage may reach
INTERESTING = [True, False, 0, -1, 1, 2.5, -0.0, 1e308, float("inf"), float("nan"), "", "fp32", "mlp", "digits",
               "zz_fuzz_nowhere.models:factory", "mlp:nope", "/", "../../etc", [], {}, [0], [True], None, "1",
               "onnxruntime/fp32", "coreml/int4_weight_only", 2**63, -(2**63) - 1]


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


def recipe_strategy():
    from hypothesis import strategies as st

    leaf = st.one_of(st.sampled_from(INTERESTING), st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
    value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c,
                                                                                    max_size=3), max_leaves=6)
    paths = _paths(VALID_RECIPE)
    op = st.one_of(
        st.tuples(st.just("set"), st.sampled_from(paths), value),
        st.tuples(st.just("delete"), st.sampled_from(paths), st.none()),
        st.tuples(st.just("add"), st.sampled_from([()] + paths), st.tuples(st.text(min_size=1, max_size=10), value)),
    )
    text_damage = st.tuples(st.sampled_from(["toml", "yaml"]), damage_strategy(TEXT_DAMAGE_SPAN))
    return st.one_of(st.tuples(st.just("dict"), st.lists(op, min_size=1, max_size=4)),
                     st.tuples(st.just("file"), text_damage))


def mutate(ops: list) -> Any:
    d = copy.deepcopy(VALID_RECIPE)
    for kind, path, arg in ops:
        parent, key = _walk(d, path)
        if parent is None:
            continue
        if kind == "set":
            parent[key] = arg
        elif kind == "delete":
            del parent[key]
        else:
            node = parent[key] if key is not None else d
            if isinstance(node, dict):
                node[arg[0]] = arg[1]
            elif isinstance(node, list):
                node.append(arg[1])
    return d


def _walk(d: Any, path: tuple) -> tuple[Any, Any]:
    """(container, key) of `path` in d, or (d, None) for the root; (None, None) when the path no longer exists."""
    if not path:
        return d, None
    cur = d
    for k in path[:-1]:
        try:
            cur = cur[k]
        except (KeyError, IndexError, TypeError):
            return None, None
    try:
        cur[path[-1]]
    except (KeyError, IndexError, TypeError):
        return None, None
    return cur, path[-1]


class RecipeFuzz:
    def __init__(self, work: Path):
        self.work = work / "recipes"
        self.work.mkdir(parents=True, exist_ok=True)
        self.sentinel = self.work / "the-users-notes.txt"
        self.sentinel.write_text("keep me\n")
        from ondevice.config import dump_toml, recipe_from_dict

        self.texts = {"toml": dump_toml(recipe_from_dict(VALID_RECIPE).to_dict()).encode()}
        import yaml

        self.texts["yaml"] = yaml.safe_dump(VALID_RECIPE).encode()

    def strategy(self):
        return recipe_strategy()

    def case(self, example: tuple, tally: Tally) -> None:
        from ondevice.config import check_references, load_recipe, recipe_from_dict

        mode, arg = example
        if mode == "file":
            p = self.work / f"r.{arg[0]}"
            p.write_bytes(damaged(self.texts[arg[0]], arg[1]))
        try:
            recipe = recipe_from_dict(mutate(arg)) if mode == "dict" else load_recipe(p)
            check_references(recipe, resume=False)
            outcome, detail = "correct", "valid recipe"
        except Exception as e:  # noqa: BLE001 - an ondevice error refuses the recipe; anything else is a bug
            if not isinstance(e, _ondevice_error()):
                tally.add("traceback", detail=type(e).__name__, example=(example, describe(e)))
                return
            outcome, detail = "clear_error", "refused"
        lost = self.sentinel.read_text() != "keep me\n"
        tally.add(outcome, lost=lost, detail=detail)


# --- driver ---------------------------------------------------------------------------------------------------------------
class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"no result within {CASE_TIMEOUT_S} s")


def guarded_case(fz, example: Any, tally: Tally) -> None:
    """One case under a wall-clock alarm: a hang is recorded (as a traceback, with its example), not waited out."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(CASE_TIMEOUT_S)
    try:
        fz.case(example, tally)
    except Hang as e:
        tally.add("traceback", detail="hang", example=(example, str(e)))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def build(kind: str, work: Path, setup: dict | None):
    if kind in ARTIFACT_KINDS:
        return ArtifactFuzz(kind, setup, work)
    return {"recipe": RecipeFuzz, "record": RecordFuzz, "idx_gz": IdxFuzz, "checkpoint": CheckpointFuzz}[kind](work)


def fuzz(kinds: tuple[str, ...], cases: int | dict[str, int], work: Path, seed: int = 0,
         progress: bool = False) -> list[Tally]:
    """Run `cases` cases of each kind (or cases[kind]) in `work`; returns one Tally per kind."""
    setup = None
    art_kinds = tuple(k for k in kinds if k in ARTIFACT_KINDS)
    if art_kinds:
        status, setup = isolated(_export_all, str(work / "artifacts"), art_kinds, timeout=1800)
        if status != "ok":
            raise RuntimeError(f"artifact setup failed: {status} {setup}")
    tallies = []
    for kind in kinds:
        fz = build(kind, work, setup)
        tally = Tally(kind)
        t0 = time.perf_counter()
        n = cases[kind] if isinstance(cases, dict) else cases
        run_cases(fz.strategy(), lambda ex: guarded_case(fz, ex, tally), n, seed)
        tally.seconds = time.perf_counter() - t0
        if progress:
            print(json.dumps({**tally.row(), "seconds": round(tally.seconds, 1)}), flush=True)
        tallies.append(tally)
    return tallies


def write_results(tallies: list[Tally], out: Path, seed: int, seconds: float) -> None:
    from ondevice.io import atomic_write_json, atomic_write_text, machine_record

    result = {
        "what": "fuzzing the trust paths (benchmarks/fuzz.py): random recipes; damaged artifacts, records, data "
                "files and checkpoints",
        "kinds": [t.row() for t in tallies],
        "goal": "traceback = false_verified = files_lost = 0 for every kind, >= 1000 cases per kind",
        "passed": all(t.traceback == t.false_verified == t.files_lost == 0 for t in tallies),
        "details": {t.kind: t.details for t in tallies},
        "bad_examples": {t.kind: t.bad_examples for t in tallies if t.bad_examples},
        "seconds": {t.kind: round(t.seconds, 1) for t in tallies},
        "seed": seed,
        "total_seconds": round(seconds, 1),
        "machine": machine_record(),
    }
    atomic_write_json(out, result)
    lines = ["# Fuzzing the trust paths", "", f"`python benchmarks/fuzz.py` (seed {seed}), "
             f"{round(seconds / 60, 1)} min on {result['machine']['cpu_model']} ({result['machine']['cores']} cores).",
             "", "| kind | cases | clear error | correct | traceback | false verified | files lost | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for t in tallies:
        lines.append(f"| {t.kind} | {t.cases} | {t.clear_error} | {t.correct} | {t.traceback} | {t.false_verified} "
                     f"| {t.files_lost} | {t.seconds:.0f} |")
    lines += ["", "What the outcomes were, per kind:", ""]
    for t in tallies:
        lines.append(f"- **{t.kind}**: " + ", ".join(f"{k} {v}" for k, v in sorted(t.details.items(),
                                                                                 key=lambda kv: -kv[1])))
    lines += ["", __doc__.split("\n\n", 2)[2].strip(), ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def _cases(text: str) -> int | dict[str, int]:
    if "=" not in text:
        return int(text)
    return {k.strip(): int(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=_cases, default=1000,
                    help="cases per kind (default 1000), or per kind as KIND=N,KIND=N")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args(argv)
    kinds = tuple(k for k in a.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        ap.error(f"unknown kind(s) {sorted(unknown)}; valid: {', '.join(KINDS)}")
    if isinstance(a.cases, dict) and set(kinds) - set(a.cases):
        ap.error(f"--cases gives no count for {sorted(set(kinds) - set(a.cases))}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ondevice-fuzz-") as work:
        tallies = fuzz(kinds, a.cases, Path(work), a.seed, progress=True)
    write_results(tallies, a.out, a.seed, time.perf_counter() - t0)
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0 if all(t.traceback == t.false_verified == t.files_lost == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
