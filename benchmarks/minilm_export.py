"""Step 6 of benchmarks/minilm_wordnet.py: the MiniLM teacher and its students exported to every target and
precision of examples/minilm_wordnet.toml by `ondevice.export_many`, each verified on real held-out glosses, then
timed by `ondevice.bench` in one run per batch size (batch 1 with accuracy on the test glosses, batch 8 for latency),
so the teacher and a student are measured side by side in the same runtime and precision.

What it returns (into benchmarks/results/minilm_wordnet.json):
- artifacts: one row per (model, target, precision): status, size, SQNR, agreement, accuracy, p50 at batch 1 and 8;
- latency: teacher and student p50 per runtime and precision, and the teacher / student ratio (the speedup);
- speedup_p50_batch1 / speedup_runtime: the ratio in HEADLINE (ONNX Runtime fp32) when it was measured there, else in
  the first runtime and precision where both were measured;
- `_int8` (called by minilm_wordnet.assemble on the artifact rows): int8_size_ratio_max / int8_accuracy_drop_max
  over every verified int8 artifact, against the same model's fp32 file of the same target (accuracy in points on
  the same test glosses); int8 artifacts that failed verification are listed in int8_failed, not hidden.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

HEADLINE = ("onnxruntime", "fp32")
INT8 = ("int8_dynamic", "int8_static", "int8_weight_only")
# (label, run folders under the benchmark's base folder, the first with results wins, which weights of it): the
# 3-layer student shipped is the transfer-set one once it was trained (the headline of minilm_wordnet.json)
MODELS = (("teacher", ("students",), "teacher"), ("student_3", ("transfer", "students"), "student"),
          ("student_2", ("two_layer",), "student"))


def export_and_bench(base: Path, state: dict, m: dict, threads: int) -> dict:
    """Export, verify and bench the models of the earlier steps; see the module docstring."""
    from ondevice.config import recipe_from_dict
    from ondevice.io import machine_record, read_json

    run_dir = base / "students"
    recipe = recipe_from_dict(read_json(run_dir / "recipe.resolved.json"), str(run_dir / "recipe.resolved.json"))
    exports = _export_all(base, recipe, m)
    rows: dict[str, list[dict]] = {label: [] for label in exports}
    reports = {bs: _bench(base, recipe, m, exports, bs, threads, accuracy=bs == 1) for bs in (1, 8)}
    measured_on = machine_record()  # taken when the bench ran (an assemble-only re-run keeps it)
    from ondevice.summary import merge_rows

    for label, arts in exports.items():
        b1 = merge_rows(arts, reports[1], threads)
        b8 = {r["path"]: r for r in merge_rows(arts, reports[8], threads)}
        for r in b1:
            rows[label].append({"model": label, **_row(r), "p50_ms_batch8": b8[r["path"]].get("p50_ms")})
    latency = _latency(rows)
    head = next((x for x in latency if (x["target"], x["precision"]) == HEADLINE and x["speedup"]),
                next((x for x in latency if x["speedup"]), None))
    return {"artifacts": [r for rs in rows.values() for r in rs], "latency": latency,
            "speedup_p50_batch1": head and head["speedup"],
            "speedup_runtime": head and f"{head['target']} {head['precision']} (batch 1, {threads} thread)",
            "eager": {bs: _eager(rep) for bs, rep in reports.items()}, "measured_on": measured_on,
            "export_samples": {"calibration": recipe.export.calibration_samples,
                               "verify": m.get("export_verify", recipe.export.verify_samples)}}


def _models(base: Path, wanted: tuple[str, ...]):
    from ondevice.distill import load_student

    for label, folders, which in MODELS:
        folder = next((base / f for f in folders if (base / f / "results.json").exists()), None)
        if label in wanted and folder is not None:
            yield label, folder, load_student(folder, which)


def _export_all(base: Path, recipe, m: dict) -> dict[str, list[dict]]:
    """Every model of MODELS that was trained, exported to the recipe's targets (one failing target does not stop
    the others: export_many records it)."""
    from ondevice.cli import export_samples
    from ondevice.data import load_data
    from ondevice.export import export_many
    from ondevice.io import read_json
    from ondevice.provenance import sha256_file

    ex = recipe.export
    splits = load_data(recipe.data, recipe.seed)
    samples = export_samples(splits, ex.calibration_samples, m.get("export_verify", ex.verify_samples))
    jobs = export_jobs(ex, m)
    out: dict[str, list[dict]] = {}
    for label, folder, model in _models(base, m.get("export_models", [x[0] for x in MODELS])):
        res = read_json(folder / "results.json")
        weights = folder / ("teacher.pt" if label == "teacher" else "student.pt")
        weights_sha = sha256_file(weights) if weights.exists() else None
        n_verify = min(m.get("export_verify", ex.verify_samples), len(splits.test))
        done = _recorded(base, label, weights_sha, jobs, n_verify)
        if done is not None:
            print(f"{label}: {len(done)} exports reused (their records match these weights and files)")
            out[label] = done
            continue
        acc = (res["teacher"] if label == "teacher" else res["student"]).get("test_acc")
        arts = export_many(model, jobs, out_dir=base / "artifacts", stem=label, thresholds=ex.thresholds,
                           student_sha256=weights_sha, recorded_accuracy=acc, input_spec=res.get("input_spec"),
                           task=res.get("task"), **samples)
        out[label] = [a.to_dict() for a in arts]
    return out


def export_jobs(ex, m: dict) -> list[tuple[str, list[str], dict]]:
    """(target, precisions, options) of the recipe's export section; a mode's export_precisions keeps only those."""
    keep = m.get("export_precisions")
    return [(t.target, [p for p in t.precisions if keep is None or p in keep], t.options) for t in ex.targets]


def _recorded(base: Path, label: str, weights_sha: str | None, jobs: list, n_verify: int) -> list[dict] | None:
    """The records of a finished export of `label` (every target and precision: exported from these weights,
    verified on as many samples, the file unchanged since), or None when any is missing or stale."""
    from ondevice import sidecar
    from ondevice.target import get_spec

    recs = []
    for target, precisions, _ in jobs:
        for precision in precisions:
            path = base / "artifacts" / target / f"{label}_{precision}{get_spec(target).suffix}"
            rec = sidecar.read(path) if path.exists() else None
            if (not rec or not weights_sha or rec.get("student_sha256") != weights_sha
                    or (rec.get("verification") or {}).get("n", n_verify) != n_verify
                    or sidecar.check(path, rec).hash != "match"):
                return None
            recs.append({**rec, "path": str(path)})  # where the file is now (a run folder may have been moved)
    return recs


def _bench(base: Path, recipe, m: dict, exports: dict, batch_size: int, threads: int, accuracy: bool) -> dict:
    """One bench run over every verified artifact plus the eager teacher and 3-layer student."""
    from ondevice.bench import BenchConfig
    from ondevice.bench import bench as run_bench
    from ondevice.pipeline import _bench_test_data, _student_ref, _teacher_ref

    b = recipe.bench.model_copy(update={"accuracy_samples": m.get("bench_accuracy", recipe.bench.accuracy_samples)})
    paths = [a["path"] for arts in exports.values() for a in arts if a["status"] == "verified"]
    out = base / "students"
    return run_bench(paths, data=_bench_test_data(recipe, b.accuracy_samples), teacher=_teacher_ref(recipe, out),
                     student=_student_ref(recipe, out),
                     config=BenchConfig(mode=b.mode, threads=(threads,), batch_size=batch_size,
                                        profiles=list(b.profiles), accuracy=accuracy,
                                        accuracy_samples=b.accuracy_samples),
                     out_dir=base / f"bench-b{batch_size}", force=True)


def _row(r: dict) -> dict:
    keep = ("target", "precision", "status", "error", "size_bytes", "sqnr_db", "top1_agreement", "verify_accuracy",
            "verify_n", "accuracy", "accuracy_n", "p50_ms", "p90_ms", "latency_label", "latency_note")
    return {k: r.get(k) for k in keep}


def _eager(report: dict) -> list[dict]:
    from ondevice.summary import model_rows

    return [{k: r.get(k) for k in ("label", "role", "p50_ms", "accuracy", "latency_label")}
            for r in model_rows(report)]


def _latency(rows: dict[str, list[dict]]) -> list[dict]:
    """Teacher and 3-layer student p50 in the same runtime and precision, and their ratio (where both measured)."""
    student = {(r["target"], r["precision"]): r for r in rows.get("student_3", [])}
    out = []
    for t in rows.get("teacher", []):
        s = student.get((t["target"], t["precision"]))
        if s is None:
            continue
        entry = {"target": t["target"], "precision": t["precision"]}
        for bs, key in ((1, "p50_ms"), (8, "p50_ms_batch8")):
            tp, sp = t.get(key), s.get(key)
            entry[f"teacher_p50_ms_batch{bs}"], entry[f"student_p50_ms_batch{bs}"] = tp, sp
            entry[f"speedup_batch{bs}"] = tp / sp if tp and sp else None
        entry["speedup"] = entry["speedup_batch1"]
        entry["latency_label"] = t.get("latency_label") if t.get("p50_ms") else t.get("latency_note")
        out.append(entry)
    return out


def _int8(rows: dict[str, list[dict]]) -> dict:
    """Size ratio and accuracy drop of each int8 artifact against the same model's fp32 file of the same target."""
    ratios, drops, failed = [], [], []
    for rs in rows.values():
        fp32 = {r["target"]: r for r in rs if r["precision"] == "fp32" and r["status"] == "verified"}
        for r in rs:
            if r["precision"] not in INT8:
                continue
            if r["status"] != "verified":
                failed.append({k: r.get(k) for k in ("model", "target", "precision", "status", "sqnr_db", "error")})
                continue
            ref = fp32.get(r["target"])
            if ref is None:
                continue
            ratios.append((r["size_bytes"] / ref["size_bytes"], f"{r['model']} {r['target']} {r['precision']}"))
            if r.get("accuracy") is not None and ref.get("accuracy") is not None:
                drops.append(100 * (ref["accuracy"] - r["accuracy"]))
    top = max(ratios, default=(None, None))
    return {"int8_size_ratio_max": top[0], "int8_size_ratio_max_at": top[1],
            "int8_accuracy_drop_max": max(drops, default=None), "int8_verified": len(ratios), "int8_failed": failed}
