"""The conformance matrix: every model x target x precision of tests/test_conformance.py, as committed results.

    python benchmarks/conformance_matrix.py                      # run the whole matrix (pytest), then write
    python benchmarks/conformance_matrix.py -k token_encoder     # only some cases (merged into the committed file)
    python benchmarks/conformance_matrix.py --from build/conformance.json   # convert a report pytest already wrote

Writes benchmarks/results/conformance_matrix.json:
    {"cells": [{"model", "target", "precision", "status": "verified" | "xfail" | "failed", "reason", "sqnr_db",
                "agreement", "agreement_kind", "size_ratio_vs_fp32", ...}], "machine": {...}, ...}
and conformance_matrix.md (the table the README shows). An xfail's reason is the converter's or runtime's own error as
the artifact's record holds it; a failed cell is a case that failed without an entry in EXPECTED_FAILURES. Every
number is measured: the artifact run in its real runtime (Core ML on Linux: ondevice's reference evaluator) against
the PyTorch model on held-out real samples.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
KEY = ("model", "target", "precision")


def run_pytest(report: Path, select: str | None) -> int:
    env = {**os.environ, "ONDEVICE_CONFORMANCE_REPORT": str(report), "OPENBLAS_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_conformance.py"), "-q", "-m", "slow or not slow",
           "-k", f"test_conformance and ({select})" if select else "test_conformance", "-p", "no:cacheprovider"]
    return subprocess.call(cmd, env=env, cwd=ROOT)


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """`new` cells replace the same (model, target, precision) in `old`; the order is model, target, precision."""
    by = {tuple(c[k] for k in KEY): c for c in old}
    by.update({tuple(c[k] for k in KEY): c for c in new})
    return [by[k] for k in sorted(by)]


def write(report: dict, out: Path, keep_others: bool) -> dict:
    from ondevice.io import atomic_write_json, atomic_write_text

    cells = report["cells"]
    if keep_others and out.exists():
        cells = merge(json.loads(out.read_text())["cells"], cells)
    counts = {s: sum(c["status"] == s for c in cells) for s in ("verified", "xfail", "failed")}
    res = {"cells": cells, "machine": report["machine"],
           "kind": "ondevice.conformance_matrix",
           "what": "every model x target x precision of tests/test_conformance.py: exported, run in the target's real "
                   "runtime (Core ML on Linux: ondevice's NumPy reference evaluator of the saved program) on held-out "
                   "real samples and judged by the model's task against PyTorch (measured)",
           "counts": counts, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "session_seconds": report.get("session_seconds")}
    atomic_write_json(out, res)
    atomic_write_text(out.with_suffix(".md"), markdown(res))
    return res


def summary_table(cells: list[dict]) -> str:
    """Models x targets: verified / all precisions per cell, with the xfail and failed precisions named."""
    targets = sorted({c["target"] for c in cells})
    models = list(dict.fromkeys(c["model"] for c in cells))
    rows = ["| model | " + " | ".join(targets) + " |", "|---|" + "---|" * len(targets)]
    for m in models:
        out = []
        for t in targets:
            cs = [c for c in cells if c["model"] == m and c["target"] == t]
            ok = sum(c["status"] == "verified" for c in cs)
            notes = [f"{c['precision']} {c['status']}" for c in cs if c["status"] != "verified"]
            out.append(f"{ok}/{len(cs)}" + (f" ({', '.join(notes)})" if notes else "") if cs else "-")
        rows.append(f"| {m} | " + " | ".join(out) + " |")
    return "\n".join(rows)


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Conformance matrix (measured)", "",
             f"Measured on {m.get('cpu_model')} ({m.get('cores')} cores, {m.get('os')}); {res['counts']['verified']} "
             f"verified, {res['counts']['xfail']} expected failures (xfail, each with its reason), {res['counts']['failed']} failed, of "
             f"{len(res['cells'])} cells.", "", summary_table(res["cells"]), "",
             "| model | target | precision | status | SQNR dB | agreement | size vs fp32 | reason |",
             "|---|---|---|---|---|---|---|---|"]
    for c in res["cells"]:
        sq = "-" if c["sqnr_db"] is None else f"{float(c['sqnr_db']):.1f}" if c["sqnr_db"] != "inf" else "inf"
        ag = "-" if c.get("agreement") is None else f"{c['agreement']:.4f} ({c.get('agreement_kind')})"
        sz = "-" if c.get("size_ratio_vs_fp32") is None else f"{c['size_ratio_vs_fp32']:.2f}x"
        why = (c.get("reason") or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {c['model']} | {c['target']} | {c['precision']} | {c['status']} | {sq} | {ag} | {sz} | "
                     f"{why} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="select", help="pytest -k expression selecting cases (merged into the committed file)")
    ap.add_argument("--from", dest="source", help="a report tests/test_conformance.py wrote (no pytest run)")
    ap.add_argument("--out", default=str(RESULTS / "conformance_matrix.json"))
    args = ap.parse_args(argv)
    report_path = Path(args.source or ROOT / "build" / "conformance_matrix_run.json")
    if not args.source:
        rc = run_pytest(report_path, args.select)
        print(f"pytest exited {rc} (failures are recorded as failed cells)")
    report = json.loads(report_path.read_text())
    res = write(report, Path(args.out), keep_others=bool(args.select or args.source))
    print(f"{res['counts']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
