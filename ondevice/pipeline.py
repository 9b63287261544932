"""`ondevice run RECIPE`: distill -> export -> verify -> benchmark -> report -> gates, in one command.

Each stage's result is cached under `<output_dir>/pipeline/state.json` by a hash of its inputs, so re-running after a
change redoes only what changed (a new precision exports one artifact; a new gate re-checks only), and an interrupted
run resumes: distillation from its last checkpoint, export from the first artifact not yet written. One target failing
is recorded with its error and the others continue.

Outputs in output_dir: the distillation outputs (student.pt, results.json, ...), artifacts/<target>/..., report/
(report.json, report.md, report.html from the bench harness), pipeline.json (one row per artifact + stage record) and
gates/ (junit.xml, summary.md). A stage record's `seconds` is the time of the run that computed the stage; a cached
re-run keeps it and adds `seconds_this_run` and `cached: true`.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .errors import first_line
from .io import atomic_write_json, atomic_write_text, library_versions, read_json, sha256_file
from .progress import Ticker, status

if TYPE_CHECKING:
    from .config import Recipe

PIPELINE_SCHEMA = 2  # 2: artifact rows carry the artifact's sha256 (re-checked by the gates)


def _h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageState:
    """The per-stage cache record, written atomically after every stage and every export job."""

    def __init__(self, path: Path, fresh: bool = False):
        self.path = path
        self.data: dict[str, dict] = {} if fresh or not path.exists() else read_json(path).get("stages", {})

    def hit(self, name: str, key: str) -> dict | None:
        rec = self.data.get(name)
        return rec if rec and rec.get("key") == key and rec.get("status") == "done" else None

    def done(self, name: str, key: str, **extra: Any) -> None:
        self.data[name] = {"key": key, "status": "done", **extra}
        self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, {"schema_version": PIPELINE_SCHEMA, "stages": self.data})

    def timing(self, name: str, key: str, info: dict) -> dict:
        """The stage's pipeline.json record. A stage computed now stores its seconds in the cache record; a cached
        one reports the seconds of the run that computed it (None when that run predates this record), with
        `seconds_this_run` and `cached: true`."""
        now, rec = info.get("seconds"), self.data.get(name)
        if info.get("cached"):
            return {"state": info["state"], "seconds": (rec or {}).get("seconds"), "seconds_this_run": now,
                    "cached": True}
        if rec is not None and rec.get("key") == key and rec.get("status") == "done":
            rec["seconds"] = now
            self._write()
        return {"state": info["state"], "seconds": now, "seconds_this_run": now, "cached": False}


class Board:
    """Live stage display: a rich table on a terminal, one line per event elsewhere."""

    def __init__(self, stages: list[str]):
        self.rows = {s: ["pending", "", ""] for s in stages}
        self._live = None
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), refresh_per_second=4, transient=False)
            self._live.__enter__()

    def _table(self):
        from rich.table import Table

        t = Table(title="ondevice run", show_lines=False)
        for c in ("stage", "state", "seconds", "note"):
            t.add_column(c)
        colours = {"running": "yellow", "done": "green", "cached": "cyan", "failed": "red", "pending": "dim"}
        for s, (st, sec, note) in self.rows.items():
            t.add_row(s, f"[{colours.get(st, 'white')}]{st}[/]", sec, note)
        return t

    def set(self, stage: str, state: str, seconds: float | None = None, note: str = "") -> None:
        self.rows.setdefault(stage, ["pending", "", ""])
        self.rows[stage] = [state, "" if seconds is None else f"{seconds:.1f}", note]
        if self._live is not None:
            self._live.update(self._table())
        elif state != "running":
            status(f"[run] {stage}: {state}{'' if seconds is None else f' ({seconds:.1f}s)'}{' - ' + note if note else ''}")

    def close(self) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)


@contextmanager
def _stage(board: Board, name: str) -> Iterator[dict]:
    info: dict[str, Any] = {"state": "done", "note": ""}
    board.set(name, "running")
    t0 = time.perf_counter()
    try:
        yield info
    except BaseException as e:
        board.set(name, "failed", time.perf_counter() - t0, f"{type(e).__name__}: {first_line(e, 100)}")
        raise
    info["seconds"] = time.perf_counter() - t0
    board.set(name, info["state"], info["seconds"], info["note"])


@dataclass
class PipelineResult:
    output_dir: Path
    report: dict
    gates: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


def _bench_data(split) -> tuple:
    """(inputs tree, labels or None) of a test split for the bench: labels only where they are class ids (N,)."""
    import torch

    x, y = split.batch(torch.arange(len(split)))
    return x, (y if isinstance(y, torch.Tensor) and y.ndim == 1 else None)


def _bench_test_data(recipe: Recipe, accuracy_samples: int | None) -> tuple:
    """The recipe's test split for the bench (`accuracy_samples` of it, else the recipe's limit), labels included."""
    from .data import load_data

    d = recipe.data.model_copy(update={"limit_test": accuracy_samples or recipe.data.limit_test,
                                       "limit_train": None, "limit_val": None})
    return _bench_data(load_data(d, recipe.seed).test)


def _teacher_ref(recipe: Recipe, out: Path):
    from .bench import TorchModelRef

    t = recipe.teacher
    weights = str(out / "teacher.pt") if t.train is not None else t.weights
    kwargs = dict(t.kwargs)
    if t.train is not None:
        kwargs.pop("pretrained", None)
    return TorchModelRef("teacher", t.model, weights=weights, kwargs=kwargs)


def _student_ref(recipe: Recipe, out: Path):
    """The distilled student for the bench: by its recipe's model name, or rebuilt from the run folder when it was
    made from the teacher (`from_teacher` is not a model a bench worker can build on its own)."""
    from .bench import TorchModelRef

    s = recipe.student
    if s.model == "from_teacher":
        return TorchModelRef("student", f"distilled:{out}", kwargs={"which": "student"})
    return TorchModelRef("student", s.model, weights=str(out / "student.pt"), kwargs=s.kwargs)


def _student_intact(out: Path) -> bool:
    """student.pt still has the sha256 recorded when distillation wrote it (else the distill stage runs again and
    rebuilds it from its checkpoints)."""
    from .errors import ArtifactChangedError
    from .provenance import verify_hash

    try:
        verify_hash(out / "student.pt")
    except ArtifactChangedError as e:
        status(f"[run] {e}; running the distill stage again")
        return False
    return True


def _cached_record(state: StageState, name: str, key: str) -> dict | None:
    """A cached export's record, only while its artifact still has the sha256 recorded at verification."""
    from . import sidecar

    rec = state.hit(name, key)
    if not rec or not Path(rec["record"]).exists():
        return None
    art = read_json(rec["record"])
    trust = sidecar.check(art.get("path") or "")
    if trust.hash != "match":
        status(f"[run] {name}: {trust.reason}; exporting it again")
        return None
    return art


def _checked_student(out: Path, splits):
    """The distilled student, refused unless it reproduces its recorded test accuracy on the labelled test split."""
    from .distill import load_student
    from .provenance import check_student

    student = load_student(out)
    check_student(out, "student", student, test=splits.test)
    return student


@dataclass
class _Run:
    """What the stages of one `run` share: the recipe, its output folder, the stage cache and the live board."""

    recipe: Recipe
    out: Path
    state: StageState
    board: Board
    fresh: bool
    explicit_output: bool
    stages: dict[str, dict] = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def report_dir(self) -> Path:
        return self.out / "report"


def run(recipe: Recipe | str | Path, *, overrides: list[str] | None = None, fresh: bool = False,
        bench: bool | None = None, force: bool = False, explicit_output: bool = False) -> PipelineResult:
    """Run every stage the recipe asks for; see the module docstring. `bench=False` skips benchmarking.

    The output folder is claimed first (ondevice.outdir): `force` adopts a non-empty folder ondevice does not own,
    `explicit_output` lets a folder given on the command line lie outside the working directory."""
    from .config import Recipe, check_references, load_recipe
    from .outdir import claim_recipe_dir

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    check_references(recipe, resume=not fresh)
    out = Path(recipe.output_dir)
    claim_recipe_dir(recipe, force=force, explicit=explicit_output, purpose="run")
    jobs = [(t.target, p, t.options) for t in recipe.export.targets for p in t.precisions]
    board = Board(["distill", *(f"export {t}/{p}" for t, p, _ in jobs), "bench", "report", "gates"])
    r = _Run(recipe, out, StageState(out / "pipeline" / "state.json", fresh=fresh), board, fresh, explicit_output)
    try:
        results = _distill_stage(r)
        exports = _export_stage(r, jobs, results) if jobs else []
        do_bench = recipe.bench.enabled if bench is None else bench
        bench_report = _bench_stage(r, exports) if do_bench else None
        report = _report_stage(r, results, exports, bench_report)
        gates = _gates_stage(r, report)
    finally:
        board.close()
    return PipelineResult(out, report, gates)


def _distill_stage(r: _Run) -> dict:
    """Distil (or reuse an intact student.pt of the same recipe sections and teacher weights); results.json."""
    recipe, out = r.recipe, r.out
    key = _h(recipe.section_hash("teacher", "student", "data", "train", "distill", "seed", "seeds"),
             sha256_file(recipe.teacher.weights) if recipe.teacher.weights else None)
    with _stage(r.board, "distill") as info:
        if r.state.hit("distill", key) and (out / "student.pt").exists() and (out / "results.json").exists() \
                and _student_intact(out):
            info.update(state="cached", cached=True, note="student.pt reused")
        else:
            from .distill import distill

            distill(recipe, fresh=r.fresh, explicit_output=r.explicit_output)
            r.state.done("distill", key)
        results = read_json(out / "results.json")
        if "baseline" in results:
            info["note"] = (info["note"] + "; " if info["note"] else "") + _distill_note(results)
    r.stages["distill"] = r.state.timing("distill", key, info)
    return results


def _distill_note(results: dict) -> str:
    """Test errors of the distilled and hard-label students (means over seeds when there are several)."""
    teacher = results["teacher"]["test_errors"]
    if results.get("gain_errors_mean") is not None and results.get("distilled_errors") is not None:
        return (f"student {results['distilled_errors']:.1f} errors vs hard-label {results['hard_label_errors']:.1f} "
                f"(means over seeds {results['seeds']}), teacher {teacher}")
    return (f"student {results['student']['test_errors']} errors vs hard-label "
            f"{results['baseline']['test_errors']}, teacher {teacher}")


def _export_stage(r: _Run, jobs: list[tuple], results: dict) -> list[dict]:
    """Export + verify each (target, precision); a record of the same student, settings and libraries is reused."""
    from .cli import export_samples
    from .data import load_data
    from .export import export_many

    recipe, out, ex = r.recipe, r.out, r.recipe.export
    loaded: dict[str, Any] = {}  # the splits and the checked student, loaded by the first job that needs them
    student_sha = sha256_file(out / "student.pt")
    ticker = Ticker(len(jobs), "export")
    exports: list[dict] = []
    for target, precision, options in jobs:
        name = f"export {target}/{precision}"
        jkey = _h(student_sha, target, precision, options, ex.calibration_samples, ex.verify_samples,
                  ex.thresholds.get(precision), recipe.section_hash("data", "seed", "student"), library_versions())
        with _stage(r.board, name) as info:
            art = _cached_record(r.state, name, jkey)
            if art is not None:
                info.update(state="cached", cached=True)
            else:
                if not loaded:
                    loaded["splits"] = load_data(recipe.data, recipe.seed)
                    loaded["student"] = _checked_student(out, loaded["splits"])
                a = export_many(loaded["student"], [(target, [precision], options)], out_dir=out / "artifacts",
                                stem="student", thresholds=ex.thresholds, student_sha256=student_sha,
                                recorded_accuracy=results["student"].get("test_acc"),
                                input_spec=results.get("input_spec"), task=results.get("task"),
                                **export_samples(loaded["splits"], ex.calibration_samples, ex.verify_samples))[0]
                art = a.to_dict()
                if a.status in ("verified", "failed"):  # a deterministic outcome is worth caching
                    r.state.done(name, jkey, record=str(a.record_path()))
            info["state"] = info["state"] if art["status"] == "verified" else art["status"]
            v = art.get("verification") or {}
            info["note"] = (f"{art.get('size_bytes') or 0:,} B, SQNR {v.get('sqnr_db', float('nan')):.1f} dB"
                            if art["status"] == "verified" else first_line(art.get("error"), 100))
        exports.append(art)
        r.stages[name] = r.state.timing(name, jkey, info)
        ticker.tick(f"{target}/{precision} {info['state']}")
    return exports


def _bench_stage(r: _Run, exports: list[dict]) -> dict:
    """Bench the verified artifacts beside the eager teacher and student (report/report.json)."""
    from .bench import BenchConfig
    from .bench import bench as run_bench

    recipe, out, b = r.recipe, r.out, r.recipe.bench
    ok_paths = [a["path"] for a in exports if a["status"] == "verified"]
    bkey = _h(sorted((p, sha256_file(p + ".json")) for p in ok_paths), b.model_dump(mode="json"),
              sha256_file(out / "student.pt"), recipe.section_hash("teacher", "data", "seed"))
    with _stage(r.board, "bench") as info:
        if r.state.hit("bench", bkey) and (r.report_dir / "report.json").exists():
            bench_report = read_json(r.report_dir / "report.json")
            info.update(state="cached", cached=True)
        else:
            bench_report = run_bench(
                ok_paths, data=_bench_test_data(recipe, b.accuracy_samples), teacher=_teacher_ref(recipe, out),
                student=_student_ref(recipe, out),
                config=BenchConfig(mode=b.mode, threads=tuple(b.threads), batch_size=b.batch_size,
                                   profiles=list(b.profiles), accuracy_samples=b.accuracy_samples),
                out_dir=r.report_dir)
            r.state.done("bench", bkey)
        info["note"] = f"{len(ok_paths)} artifacts + teacher + student, {b.mode} mode"
    r.stages["bench"] = r.state.timing("bench", bkey, info)
    return bench_report


def _report_stage(r: _Run, results: dict, exports: list[dict], bench_report: dict | None) -> dict:
    """pipeline.json: the recipe, the distillation results, one row per model and per artifact, stage times."""
    from .summary import merge_rows, model_rows

    with _stage(r.board, "report") as info:
        threads = r.recipe.bench.threads[0]
        report = {
            "schema_version": PIPELINE_SCHEMA,
            "kind": "ondevice.pipeline",
            "recipe": r.recipe.to_dict(),
            "context": {"measured_on": (bench_report or {}).get("measured_on")
                        or f"measured on {results['measured_on']['cpu_model']}"},
            "distill": results,
            "models": model_rows(bench_report, threads),
            "artifacts": merge_rows(exports, bench_report, threads),
            "bench_report": str(r.report_dir / "report.json") if bench_report else None,
            "stages": r.stages,
            "seconds": time.perf_counter() - r.t_start,
        }
        atomic_write_json(r.out / "pipeline.json", report)
        info["note"] = str(r.out / "pipeline.json")
    return report


def _gates_stage(r: _Run, report: dict) -> list:
    """Check the recipe's gates on the report: gates/junit.xml, gates/summary.md (and GitHub's step summary)."""
    import os

    from .gates import check_gates, junit_xml, markdown_summary

    with _stage(r.board, "gates") as info:
        baseline = read_json(r.recipe.gates.baseline) if r.recipe.gates.baseline else None
        gates = check_gates(report, r.recipe.gates, baseline)
        md = markdown_summary(gates)
        atomic_write_text(r.out / "gates" / "junit.xml", junit_xml(gates))
        atomic_write_text(r.out / "gates" / "summary.md", md)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
                f.write(md + "\n")
        failed = [g for g in gates if not g.passed]
        info["state"] = "done" if not failed else "failed"
        info["note"] = f"{len(gates) - len(failed)}/{len(gates)} passed"
    report["gates"] = [g.to_dict() for g in gates]
    atomic_write_json(r.out / "pipeline.json", report)
    return gates


def console():
    """stdout console; wide enough for the summary tables when stdout is a file or a CI log."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def _headline_metric(results: dict) -> str:
    """The test metric the summary line shows: the task's primary one (accuracy, cosine to the teacher, ...), as
    results.json records it (`test_<name>`)."""
    from .tasks import build_task

    task = results.get("task") or {"name": "classification"}
    primary = build_task(task["name"], {k: v for k, v in task.items() if k != "name"}).primary
    have = [k[len("test_"):] for k in results["teacher"] if k.startswith("test_") and k != "test_n"]
    return primary if primary in have else have[0]


def print_summary(res: PipelineResult) -> None:
    from rich.table import Table

    r = res.report
    d = r["distill"]
    con = console()
    key = _headline_metric(d)
    con.print(f"[bold]teacher[/] {d['teacher']['model']} {d['teacher']['params']:,} params, test {key} "
              f"{d['teacher'][f'test_{key}']:.4f}; [bold]student[/] {d['student']['model']} "
              f"{d['student']['params']:,} params, test {key} {d['student'][f'test_{key}']:.4f}"
              + (f" (hard labels only: {d['baseline'][f'test_{key}']:.4f})" if "baseline" in d else "")
              + f"  [dim]{r['context']['measured_on']}[/]")
    if d.get("gain_errors_mean") is not None and d.get("distilled_errors") is not None:  # several seeds
        from .stats import describe_gain

        con.print(f"[bold]distillation[/] {describe_gain(d)}")
    gate_fail = {}
    for g in r.get("gates", []):
        if not g["passed"]:
            gate_fail.setdefault(g["artifact"], []).append(g["gate"])
    prof = r["recipe"]["gates"].get("profile") or (r["recipe"]["bench"]["profiles"] or [None])[0]
    t = Table(title="artifacts: measured here unless marked est. (estimated on device profile "
                    f"{prof})")
    for c in ("target", "precision", "status", "size", "SQNR dB", "acc", "retention", "p50 ms", "p90 ms",
              "est. ms", "est. mJ", "gates"):
        t.add_column(c)

    def f(v, fmt):
        return "-" if v is None else format(float(v), fmt)

    for a in r["artifacts"]:
        e = (a.get("estimates") or {}).get(prof) or {}
        name = f"{a['target']}/{a['precision']}"
        t.add_row(a["target"], a["precision"], a["status"], f"{a['size_bytes']:,}" if a.get("size_bytes") else "-",
                  f(a.get("sqnr_db"), ".1f"), f(a.get("accuracy"), ".4f"), f(a.get("retention"), ".4f"),
                  f(a.get("p50_ms"), ".3g") if a.get("latency_note") is None else "n/a",
                  f(a.get("p90_ms"), ".3g") if a.get("latency_note") is None else "n/a",
                  f(e.get("latency_ms"), ".3g"), f(e.get("energy_mj"), ".3g"),
                  "[red]FAIL " + ",".join(gate_fail[name]) + "[/]" if name in gate_fail else "[green]pass[/]")
    con.print(t)
    gates = r.get("gates", [])
    failed = [g for g in gates if not g["passed"]]
    for g in failed:
        con.print(f"[red]GATE FAILED[/] {g['message']}")
    out = res.output_dir
    con.print(f"gates: {len(gates) - len(failed)}/{len(gates)} passed ({out / 'gates' / 'junit.xml'})")
    if r.get("bench_report"):
        con.print(f"report: {out / 'report' / 'report.html'} (also report.md, report.json); summary: {out / 'pipeline.json'}")


def add_parser(sub) -> None:
    import argparse

    from .exits import EPILOG

    p = sub.add_parser("run", help="distill -> export -> verify -> bench -> report -> gates, cached by stage",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe file (.toml, .yaml or .yml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--fresh", action="store_true", help="ignore every cached stage and checkpoint")
    p.add_argument("--no-bench", action="store_true", help="skip the benchmark stage")
    from .cli import add_force

    add_force(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(a) -> int:
    from .cli import output_dir_given

    res = run(a.recipe, overrides=a.overrides, fresh=a.fresh, bench=False if a.no_bench else None, force=a.force,
              explicit_output=output_dir_given(a.overrides))
    print_summary(res)
    return 0 if res.passed else 1
