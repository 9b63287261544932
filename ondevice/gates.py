"""CI gates: thresholds on a report that fail a build, with JUnit XML and a Markdown summary.

    ondevice gate REPORT [--gates FILE] [--recipe FILE] [--baseline FILE] [--junit FILE] [--summary FILE]

exit 0 when every gate passes, 1 when a gate fails, 2 on a usage or input error, 3 on an internal error. Each
failure names the metric, the artifact, the threshold and the value, and says whether the value was measured or
estimated.

Gates on what was asked, not only on what is there: a report without artifacts fails; every (target, precision) the
recipe asks for (the recipe embedded in pipeline.json, or --recipe) must be present and verified unless listed in
gates.allow_missing (e.g. ["coreml/int4_weight_only"]); a benchmarked item that failed fails with its reason; and an
artifact whose file no longer has the sha256 recorded at verification fails ("file changed since verification").

REPORT is the `pipeline.json` written by `ondevice run` (or a `report.json` written by `ondevice bench`). Thresholds
come from `--gates` (a TOML/YAML file with the keys of a recipe's [gates] section, at top level or under [gates]) or
else from the recipe embedded in the report.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, first_line
from .io import atomic_write_text, read_json

if TYPE_CHECKING:  # pydantic loads on first use, not when the CLI builds its parser
    from .config import GatesSpec


@dataclass
class GateResult:
    gate: str  # e.g. "max_size_bytes"
    artifact: str  # "target/precision" or "*" for run-wide gates
    metric: str
    threshold: Any
    value: Any
    passed: bool
    label: str  # "measured on ..." / "estimated (profile ...)" / "recorded"
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# --- rows: one flat record per artifact ------------------------------------------------------------------------
def artifact_rows(report: dict) -> tuple[list[dict], dict]:
    """(rows, context) from a pipeline report (key "artifacts") or a bench report (key "items")."""
    if not isinstance(report, dict):
        raise ConfigError(f"a report is a JSON object, got {type(report).__name__}; pass the pipeline.json written by "
                          f"`ondevice run` or the report.json written by `ondevice bench`")
    key = "artifacts" if "artifacts" in report else "items"
    if key in report and (not isinstance(report[key], list) or not all(isinstance(r, dict) for r in report[key])):
        raise ConfigError(f"the report's {key!r} is not a list of objects; the file is damaged or not an ondevice "
                          f"report")
    if "artifacts" in report:
        return report["artifacts"], report.get("context") if isinstance(report.get("context"), dict) else {}
    if "items" in report:
        from .summary import rows_from_bench_report

        return rows_from_bench_report(report)
    raise ConfigError("the report has neither 'artifacts' (ondevice run's pipeline.json) nor 'items' (ondevice bench's "
                      "report.json); pass one of those files")


def _name(row: dict) -> str:
    return f"{row.get('target')}/{row.get('precision')}"


# --- checks ------------------------------------------------------------------------------------------------------
def asked_artifacts(recipe: dict | None) -> list[str] | None:
    """'target/precision' for every export the recipe (a resolved recipe dict) asks for; None without a recipe."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("export"), dict):
        return None
    return [f"{t.get('target')}/{p}" for t in recipe["export"].get("targets") or [] for p in t.get("precisions") or []]


def check_gates(report: dict, gates: GatesSpec, baseline: dict | None = None,
                asked: list[str] | None = None) -> list[GateResult]:
    """Every gate on the report's rows. `asked`: the 'target/precision' list the recipe asked for (default: from
    the recipe embedded in the report, when there is one)."""
    rows, ctx = artifact_rows(report)
    machine = ctx.get("measured_on") or "measured on this host"
    if not machine.startswith("measured"):
        machine = f"measured on {machine}"
    out: list[GateResult] = []

    def add(gate, row, metric, threshold, value, ok, label, why=""):
        out.append(_result(gate, _name(row) if row is not None else "*", metric, threshold, value, ok, label, why))

    _coverage_gates(rows, gates, asked if asked is not None else asked_artifacts(report.get("recipe")), add)
    for row in rows:
        if not _trust_gates(row, gates, add):
            continue
        _threshold_gates(row, gates, machine, add)
    out += check_distillation(report, gates)
    if baseline is not None:
        out += check_regression(rows, artifact_rows(baseline)[0], gates.regression_tolerance)
    return out


def _result(gate: str, artifact: str, metric: str, threshold: Any, value: Any, ok: bool, label: str,
            why: str = "") -> GateResult:
    msg = "" if ok else (f"{gate}: {artifact} {metric} = {_fmt(value)} ({label}) violates threshold {_fmt(threshold)}"
                         + (f"; {why}" if why else ""))
    return GateResult(gate, artifact, metric, threshold, value, bool(ok), label, msg)


def check_distillation(report: dict, gates: GatesSpec) -> list[GateResult]:
    """min_distillation_gain (run-wide): hard-label errors minus distilled errors on the test set, mean over seeds, must
    be >= the threshold; with distillation_gain_confidence the lower end of its paired bootstrap 95% CI must also lie
    above the threshold (a single seed has no interval and fails that half). Reads report["distill"] (results.json of
    `ondevice distill`, embedded in pipeline.json); single-seed results written before seeds existed are read through
    their `distillation_gain_errors`."""
    thr = gates.min_distillation_gain
    if thr is None:
        return []
    gate = "min_distillation_gain"
    d = report.get("distill")
    if not d:
        return [_result(gate, "*", "gain_errors_mean", thr, None, False, "recorded",
                        "the report carries no distillation results; gate the pipeline.json written by `ondevice run`")]
    mean = d.get("gain_errors_mean", d.get("distillation_gain_errors"))
    seeds = d.get("seeds") or []
    label = (f"measured on {(d.get('student') or {}).get('test_n', '?')} test samples, "
             f"{len(seeds) or 1} seed{'s' if len(seeds) > 1 else ''}")
    if mean is None:
        return [_result(gate, "*", "gain_errors_mean", thr, None, False, label,
                        "no hard-label student was trained (distill.baseline = false), so there is no gain to check")]
    out = [_result(gate, "*", "gain_errors_mean", thr, mean, mean >= thr, label,
                   "hard-label student errors minus distilled student errors")]
    if gates.distillation_gain_confidence:
        ci = d.get("gain_ci95")
        why = ("" if ci and len(seeds) > 1 else
               "a single seed has no confidence interval: distill over 3 or more seeds, or set "
               "distillation_gain_confidence = false")
        low = ci[0] if ci else None
        out.append(_result("distillation_gain_confidence", "*", "gain_ci95_low", thr, low,
                           not why and low > thr, label + ", paired bootstrap 95% CI", why or
                           f"the 95% CI {_fmt_ci(ci)} of the gain does not lie above the threshold"))
    return out


def _fmt_ci(ci: list) -> str:
    return f"[{_fmt(float(ci[0]))}, {_fmt(float(ci[1]))}]"


def _coverage_gates(rows: list[dict], gates: GatesSpec, asked: list[str] | None, add) -> None:
    """An empty report fails; every asked-for artifact must be in it (or allowed to be missing)."""
    if not rows:
        add("artifacts", None, "artifacts", ">= 1", 0, False, "recorded",
            "the report holds no artifacts: nothing was exported and verified, so there is nothing to pass")
    present = {_name(r) for r in rows}
    for name in asked or []:
        if name in present:
            continue
        allowed = name in gates.allow_missing
        add("expected_artifacts", {"target": name.split("/")[0], "precision": name.split("/", 1)[1]}, "present",
            "present", "missing", allowed, "allowed by gates.allow_missing" if allowed else "recorded",
            "the recipe asks for it and the report does not have it; add it to gates.allow_missing to accept that")


def _trust_gates(row: dict, gates: GatesSpec, add) -> bool:
    """Status, file hash and bench outcome of one row; True when its numbers may be gated."""
    name = _name(row)
    ok_status = row.get("status") == "verified"
    allowed = name in gates.allow_missing
    if gates.require_all_targets or allowed:
        add("require_all_targets", row, "status", "verified", row.get("status"), ok_status or allowed,
            "allowed by gates.allow_missing" if allowed and not ok_status else "recorded",
            first_line(row.get("error") or f"its status is {row.get('status')!r}") if not ok_status else "")
    if not ok_status:
        return False
    if row.get("sha256") and row.get("path"):
        now = _rehash(row["path"])
        add("artifact_hash", row, "sha256", row["sha256"][:12], (now or "missing")[:12], now == row["sha256"],
            "re-hashed now", "" if now == row["sha256"] else
            ("unverified: file changed since verification" if now else f"the artifact {row['path']} is gone"))
    if row.get("bench_status") in ("failed", "partial"):
        errors = row.get("bench_errors") or ["(no message recorded)"]
        add("bench", row, "bench_status", "ok", row["bench_status"], False, "recorded by ondevice bench",
            f"the benchmark of this artifact failed: {first_line(errors[0])}")
        return False
    return True


def _rehash(path: str) -> str | None:
    from .sidecar import digest

    try:
        return digest(path)[0]
    except OSError:
        return None


def _threshold_gates(row: dict, gates: GatesSpec, machine: str, add) -> None:
    if gates.max_size_bytes is not None:
        add("max_size_bytes", row, "size_bytes", gates.max_size_bytes, row.get("size_bytes"),
            row.get("size_bytes") is not None and row["size_bytes"] <= gates.max_size_bytes, "measured (file size)")
    if gates.min_accuracy is not None:
        v = row.get("accuracy")
        add("min_accuracy", row, "accuracy", gates.min_accuracy, v, v is not None and v >= gates.min_accuracy,
            f"measured on {row.get('accuracy_n', '?')} test samples")
    if gates.min_retention is not None:
        v = row.get("retention")
        add("min_retention", row, "retention", gates.min_retention, v, v is not None and v >= gates.min_retention,
            "measured (accuracy / teacher accuracy)")
    if gates.min_sqnr_db is not None:
        v = row.get("sqnr_db")
        add("min_sqnr_db", row, "sqnr_db", gates.min_sqnr_db, v, v is not None and float(v) >= gates.min_sqnr_db,
            "measured vs the PyTorch student")
    if gates.max_p90_ms is not None:
        v = row.get("p90_ms")
        if v is None:
            add("max_p90_ms", row, "p90_ms", gates.max_p90_ms, None, True, "not measurable here",
                row.get("latency_note", ""))
        else:
            add("max_p90_ms", row, "p90_ms", gates.max_p90_ms, v, v <= gates.max_p90_ms, machine)
    _estimate_gates(row, gates, add)


def _estimate_gates(row: dict, gates: GatesSpec, add) -> None:
    needs_profile = (gates.max_estimated_p90_ms, gates.max_energy_mj, gates.power_budget or None)
    if all(x is None for x in needs_profile):
        return
    est = (row.get("estimates") or {}).get(gates.profile or "", None)
    if est is None:
        add("profile", row, "estimates", gates.profile, None, False, "estimated",
            f"no estimate for profile {gates.profile!r} in the report; add it to bench.profiles")
        return
    lab = f"estimated (profile {gates.profile})"
    if gates.max_estimated_p90_ms is not None:
        add("max_estimated_p90_ms", row, "estimated_latency_ms", gates.max_estimated_p90_ms,
            est.get("latency_ms"), est.get("latency_ms") is not None
            and est["latency_ms"] <= gates.max_estimated_p90_ms, lab)
    if gates.max_energy_mj is not None:
        add("max_energy_mj", row, "estimated_energy_mj", gates.max_energy_mj, est.get("energy_mj"),
            est.get("energy_mj") is not None and est["energy_mj"] <= gates.max_energy_mj, lab)
    if gates.power_budget:
        add("power_budget", row, "fits_profile_budgets", True, est.get("passes"), bool(est.get("passes")), lab,
            est.get("why", ""))


# metric -> (direction, label): "up" means larger is worse
REGRESSION_METRICS = {
    "size_bytes": ("up", "measured (file size)"),
    "accuracy": ("down", "measured on the test set"),
    "sqnr_db": ("down", "measured vs the PyTorch student"),
}


def check_regression(rows: list[dict], base_rows: list[dict], tol: float) -> list[GateResult]:
    """Each artifact present in the baseline may not be worse than it by more than `tol` (relative); an artifact
    that was verified in the baseline and is not now is a regression. Measured latency is not compared: on shared
    machines it is noise; gate it with max_p90_ms on a dedicated runner instead."""
    base = {_name(r): r for r in base_rows}
    out: list[GateResult] = []
    for row in rows:
        b = base.get(_name(row))
        if b is None or b.get("status") != "verified":
            continue
        if row.get("status") != "verified":
            out.append(GateResult("regression", _name(row), "status", "verified", row.get("status"), False, "recorded",
                                  f"regression: {_name(row)} was verified in the baseline and is {row.get('status')} now"))
            continue
        for metric, (direction, label) in REGRESSION_METRICS.items():
            new, old = row.get(metric), b.get(metric)
            if new is None or old is None:
                continue
            new, old = float(new), float(old)
            if direction == "up":
                limit = old * (1 + tol)
                ok = new <= limit
            else:
                limit = old - abs(old) * tol
                ok = new >= limit
            msg = "" if ok else (f"regression: {_name(row)} {metric} = {_fmt(new)} ({label}) vs baseline {_fmt(old)}; "
                                 f"allowed {'<=' if direction == 'up' else '>='} {_fmt(limit)} "
                                 f"(tolerance {tol:.0%})")
            out.append(GateResult(f"regression_{metric}", _name(row), metric, limit, new, ok, label, msg))
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


# --- outputs -------------------------------------------------------------------------------------------------------
def junit_xml(results: list[GateResult], suite: str = "ondevice-gates") -> str:
    failures = sum(not r.passed for r in results)
    ts = ET.Element("testsuite", name=suite, tests=str(len(results)), failures=str(failures), errors="0", skipped="0")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname=f"{suite}.{r.gate}", name=f"{r.gate}[{r.artifact}]")
        ET.SubElement(tc, "system-out").text = f"{r.metric} = {_fmt(r.value)} ({r.label}); threshold {_fmt(r.threshold)}"
        if not r.passed:
            f = ET.SubElement(tc, "failure", message=r.message, type="GateFailed")
            f.text = r.message
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(failures))
    root.append(ts)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown_summary(results: list[GateResult]) -> str:
    failed = [r for r in results if not r.passed]
    head = (f"## ondevice gates: {'PASSED' if not failed else 'FAILED'} "
            f"({len(results) - len(failed)}/{len(results)} passed)\n\n")
    lines = ["| | gate | artifact | metric | value | threshold | how |", "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r.passed, r.gate, r.artifact)):
        lines.append(f"| {'✅' if r.passed else '❌'} | {r.gate} | {r.artifact} | {r.metric} | {_fmt(r.value)} | "
                     f"{_fmt(r.threshold)} | {r.label} |")
    body = "\n".join(lines) + "\n"
    if failed:
        body += "\n### Failures\n\n" + "\n".join(f"- {r.message}" for r in failed) + "\n"
    return head + body


def load_gates_file(path: str | os.PathLike) -> GatesSpec:
    from pydantic import ValidationError

    from .config import GatesSpec, format_validation_error

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"gates file {str(p)!r} does not exist")
    if p.suffix == ".toml":
        import tomllib

        data = tomllib.loads(p.read_text())
    elif p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(p.read_text()) or {}
    else:
        raise ConfigError(f"{p}: expected a .toml, .yaml or .yml gates file, got {p.suffix or 'no suffix'!r}")
    if isinstance(data, dict) and "gates" in data:
        data = data["gates"]
    try:
        return GatesSpec.model_validate(data)
    except ValidationError as e:
        err = format_validation_error(e, GatesSpec, str(p))
        raise ConfigError(str(err).replace("invalid recipe", "invalid gates file"), err.problems) from None


def run_gates(report_path: str | os.PathLike, *, gates: GatesSpec | None = None,
              baseline_path: str | os.PathLike | None = None, junit: str | os.PathLike | None = None,
              summary: str | os.PathLike | None = None,
              recipe_path: str | os.PathLike | None = None) -> tuple[list[GateResult], str]:
    """Evaluate, write JUnit + Markdown (and append to $GITHUB_STEP_SUMMARY when set); returns (results, markdown).

    recipe_path: the recipe whose export targets x precisions the report must hold (default: the recipe embedded in
    the report; a bare bench report has none, and then only the rows present are checked)."""
    rp = Path(report_path)
    if not rp.exists():
        raise ConfigError(f"report {str(rp)!r} does not exist; run `ondevice run RECIPE` (pipeline.json) or "
                          f"`ondevice bench` (report.json) first")
    try:
        report = read_json(rp)
    except ValueError as e:
        raise ConfigError(f"report {rp} is not valid JSON: {e}") from None
    if gates is None:
        from .config import GatesSpec

        from pydantic import ValidationError

        from .config import format_validation_error

        embedded = (report.get("recipe") or {}).get("gates") if isinstance(report, dict) else None
        if embedded is None:
            raise ConfigError(f"{rp} carries no gates; pass --gates FILE")
        try:
            gates = GatesSpec.model_validate(embedded)
        except ValidationError as e:
            raise format_validation_error(e, GatesSpec, f"{rp} (recipe.gates)") from None
    base_path = baseline_path or gates.baseline
    baseline = None
    if base_path:
        if not Path(base_path).exists():
            raise ConfigError(f"baseline report {str(base_path)!r} does not exist")
        try:
            baseline = read_json(base_path)
        except ValueError as e:
            raise ConfigError(f"baseline report {base_path} is not valid JSON: {e}") from None
    asked = None
    if recipe_path is not None:
        from .config import load_recipe

        asked = asked_artifacts(load_recipe(recipe_path).to_dict())
    results = check_gates(report, gates, baseline, asked)
    md = markdown_summary(results)
    out_dir = rp.parent
    atomic_write_text(junit or out_dir / "gates.junit.xml", junit_xml(results))
    atomic_write_text(summary or out_dir / "gates.md", md)
    gh = os.environ.get("GITHUB_STEP_SUMMARY")
    if gh:
        with open(gh, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    return results, md


# --- CLI -------------------------------------------------------------------------------------------------------------
def add_parser(sub) -> None:
    from .exits import EPILOG

    p = sub.add_parser("gate", help="check a report against size/accuracy/latency/energy gates (exit 1 on failure)",
                       description=__doc__, epilog=EPILOG,
                       formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("report", help="pipeline.json from `ondevice run` or report.json from `ondevice bench`")
    p.add_argument("--gates", help="TOML/YAML file of thresholds (default: the gates of the recipe in the report)")
    p.add_argument("--recipe", help="recipe whose export targets x precisions must all be in the report (default: "
                                    "the recipe embedded in pipeline.json)")
    p.add_argument("--baseline", help="a committed earlier report; artifacts may not regress beyond the tolerance")
    p.add_argument("--junit", help="JUnit XML output (default: gates.junit.xml beside the report)")
    p.add_argument("--summary", help="Markdown summary output (default: gates.md beside the report)")
    p.set_defaults(func=_cmd_gate)


def _cmd_gate(a) -> int:
    gates = load_gates_file(a.gates) if a.gates else None
    results, md = run_gates(a.report, gates=gates, baseline_path=a.baseline, junit=a.junit, summary=a.summary,
                            recipe_path=a.recipe)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(f"GATE FAILED {r.message}")
    print(f"{len(results) - len(failed)}/{len(results)} gates passed")
    return 1 if failed else 0
