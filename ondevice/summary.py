"""One flat row per artifact, merged from the export records and the bench report: what the pipeline's summary table,
`pipeline.json` and the gates read. Every number keeps its label (measured on what / estimated for which profile)."""
from __future__ import annotations

from typing import Any


def _run_at(item: dict, threads: int | None) -> dict | None:
    runs = item.get("runs") or []
    if threads is not None:
        for r in runs:
            if r.get("threads") == threads:
                return r
    return runs[0] if runs else None


def bench_fields(item: dict, threads: int | None = None) -> dict[str, Any]:
    """Latency, memory, accuracy and per-profile estimates of one bench report item."""
    run = _run_at(item, threads) or {}
    lat = run.get("latency") or {}
    acc = item.get("accuracy") or {}
    mem = run.get("memory") or {}
    measurable = (item.get("latency") or {}).get("measurable", True)
    est = {}
    for e in (item.get("energy") or {}).get("estimated") or []:
        est[e["profile"]] = {
            "label": e.get("label"),
            "latency_ms": None if e.get("latency_s") is None else 1e3 * e["latency_s"],
            "energy_mj": None if e.get("energy_per_inference_j") is None else 1e3 * e["energy_per_inference_j"],
            "sustainable_rate_per_s": e.get("sustainable_rate_per_s"),
            "fits_memory": e.get("fits_memory"),
            "meets_power": e.get("meets_power"),
            "passes": e.get("passes"),
            "why": e.get("why") or e.get("reason") or "",
        }
    return {
        "p50_ms": lat.get("p50_ms") if measurable else None,
        "p90_ms": lat.get("p90_ms") if measurable else None,
        "p99_ms": lat.get("p99_ms") if measurable else None,
        "p50_ci95_ms": lat.get("p50_ci95_ms") if measurable else None,
        "latency_label": (item.get("latency") or {}).get("label"),
        "latency_note": None if measurable else (item.get("latency") or {}).get("reason"),
        "threads": run.get("threads"),
        "run_peak_rss_above_baseline": mem.get("run_peak_rss_above_baseline"),
        "load_peak_rss_above_baseline": mem.get("load_peak_rss_above_baseline"),
        "runtime_memory": item.get("runtime_memory"),
        "accuracy": acc.get("accuracy"),
        "accuracy_n": acc.get("n"),
        "retention": acc.get("retention"),
        "agreement_with_teacher": acc.get("top1_agreement"),
        "kl_teacher_model": acc.get("kl_reference_model"),
        "bench_status": item.get("status"),
        "bench_errors": [e.get("message") for e in item.get("errors") or []],
        "estimates": est,
    }


def export_fields(art: dict) -> dict[str, Any]:
    v = art.get("verification") or {}
    return {
        "target": art.get("target"), "precision": art.get("precision"), "path": art.get("path"),
        "status": art.get("status"), "error": art.get("error"), "size_bytes": art.get("size_bytes"),
        "sha256": art.get("sha256"), "student_sha256": art.get("student_sha256"),
        "sqnr_db": v.get("sqnr_db"), "top1_agreement": v.get("top1_agreement"),
        "max_abs_err": v.get("max_abs_err"), "verify_accuracy": v.get("accuracy"), "verify_n": v.get("n"),
        # until the bench measures it on the whole test set: accuracy on the held-out verification samples
        "accuracy": v.get("accuracy"), "accuracy_n": v.get("n"),
    }


def merge_rows(exports: list[dict], bench_report: dict | None, threads: int | None = None) -> list[dict]:
    """Rows for every export (failed ones included, with their error), with bench numbers where measured."""
    from pathlib import Path

    def key(p) -> str:
        return str(Path(p).resolve())

    by_path = {}
    for it in (bench_report or {}).get("items") or []:
        if it.get("path"):
            by_path[key(it["path"])] = it
    rows = []
    for art in exports:
        row = export_fields(art)
        item = by_path.get(key(art["path"])) if art.get("path") else None
        if item is not None:
            bf = bench_fields(item, threads)
            if bf["accuracy"] is None:  # keep the verification accuracy rather than overwrite it with nothing
                bf.pop("accuracy"), bf.pop("accuracy_n")
            row.update(bf)
        rows.append(row)
    return rows


def model_rows(bench_report: dict | None, threads: int | None = None) -> list[dict]:
    """Rows for the eager PyTorch teacher and student of a bench report."""
    out = []
    for it in (bench_report or {}).get("items") or []:
        if it.get("kind") == "pytorch":
            out.append({"label": it["label"], "role": it["role"], **bench_fields(it, threads)})
    return out


def rows_from_bench_report(report: dict) -> tuple[list[dict], dict]:
    """Gate rows from a bare `ondevice bench` report. An artifact's status is the one bench established (its record's
    status only while the file still had the recorded sha256, else a fresh verification); a report written before
    bench did that gets its status from the artifact's record on disk, re-hashed now."""
    exports = []
    for it in report.get("items") or []:
        if it.get("kind") != "artifact":
            continue
        side = it.get("sidecar") or {}
        trust = it.get("verification") if isinstance(it.get("verification"), dict) else _trust_now(it.get("path"))
        matched = trust.get("hash") == "match" or trust.get("reverified")
        exports.append({"target": it.get("target"), "precision": it.get("precision"), "path": it.get("path"),
                        "status": trust.get("status") or "unverified", "error": trust.get("reason"),
                        "size_bytes": it.get("size_bytes"), "sha256": trust.get("actual_sha256") if matched else None,
                        "verification": side.get("verification") if trust.get("hash") == "match" else None})
    threads = ((report.get("config") or {}).get("threads") or [None])[0]
    return merge_rows(exports, report, threads), {"measured_on": report.get("measured_on")}


def _trust_now(path: str | None) -> dict[str, Any]:
    from .sidecar import check

    return check(path).to_dict() if path else {"status": "unverified", "reason": "no artifact path in the report"}
