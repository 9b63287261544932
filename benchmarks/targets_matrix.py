"""Export one MNIST student to every registered target x every precision, verified on real MNIST.

    python benchmarks/targets_matrix.py --student-dir runs/mnist
    python benchmarks/targets_matrix.py --model mnist_small_cnn --weights path/to/state_dict.pt

--student-dir is an `ondevice distill` output folder (student.pt + recipe.resolved.json; the student is rebuilt with
ondevice.distill.load_student and the dataset named in the recipe is used). Calibration: the first 256 real training
images; verification: the first --n-verify (default 2000) real test images. Each artifact is loaded and run in its
real runtime (Core ML on Linux: the target's reference evaluator). One target failing (missing SDK, conversion
error, failed verification) is recorded in its rows and the others go on.

Writes --out (default benchmarks/results/targets_matrix.json) and a Markdown table beside it (.md). Every number
is measured on this machine; sizes are artifact bytes on disk; size_ratio_vs_fp32 divides by the same target's fp32
artifact.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ondevice.io import atomic_write_json, atomic_write_text, machine_record, read_json  # noqa: E402

DEFAULT_OUT = HERE / "results" / "targets_matrix.json"


def load_model(args):
    """(model in eval mode, dataset name, description of where it came from)."""
    if args.student_dir:
        from ondevice.distill import load_student

        d = Path(args.student_dir)
        resolved = read_json(d / "recipe.resolved.json")
        dataset = (resolved.get("data") or {}).get("dataset", "mnist")
        return load_student(d), dataset, {"student_dir": str(d), "model": resolved["student"].get("model"),
                                          "kwargs": resolved["student"].get("kwargs", {})}
    from ondevice.models import build_model

    return build_model(args.model, weights=args.weights).eval(), args.dataset, {"model": args.model,
                                                                                "weights": args.weights}


def _num(v):
    """JSON turns inf into the string "inf"; make it a float again for formatting."""
    return float(v) if isinstance(v, (int, float, str)) and v is not None else None


def rows_from(artifacts) -> list[dict]:
    fp32 = {a.target: a.size_bytes for a in artifacts if a.precision == "fp32" and a.size_bytes}
    rows = []
    for a in artifacts:
        v = a.verification or {}
        info = a.inspect or {}
        base = fp32.get(a.target)
        rows.append({
            "target": a.target, "precision": a.precision, "status": a.status, "error": a.error,
            "size_bytes": a.size_bytes,
            "size_ratio_vs_fp32": (a.size_bytes / base) if a.size_bytes and base else None,
            "sqnr_db": v.get("sqnr_db"), "top1_agreement": v.get("top1_agreement"),
            "accuracy": v.get("accuracy"), "reference_accuracy": v.get("reference_accuracy"),
            "max_abs_err": v.get("max_abs_err"), "verify_n": v.get("n"),
            "num_ops": info.get("num_ops"), "num_non_delegated_ops": info.get("num_non_delegated_ops"),
            "weight_dtypes": info.get("weight_dtypes"), "runtime_memory": a.runtime_memory or None,
            "seconds": a.seconds, "artifact": Path(a.path).name if a.path else None,
        })
    return rows


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Targets matrix: {result['model'].get('model')} on {result['dataset']}",
        "",
        f"Measured on {m['cpu_model']} ({m['cores']} cores, {m['os']}), {result['verify_n']} real test images, "
        f"calibration {result['calibration_n']} real training images. Reference (PyTorch fp32) accuracy "
        f"{result['reference_accuracy']:.4f}. Sizes are artifact bytes on disk (measured); ratio vs the same "
        f"target's fp32 artifact.",
        "",
        "| target | precision | status | size (bytes) | vs fp32 | SQNR (dB) | top-1 agreement | accuracy | error |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        def f(key, fmt):
            val = _num(r.get(key))
            return "-" if val is None else ("inf" if math.isinf(val) else format(val, fmt))

        err = (r.get("error") or "").splitlines()[0][:120] if r.get("error") else ""
        lines.append(f"| {r['target']} | {r['precision']} | {r['status']} | {r.get('size_bytes') or '-'} | "
                     f"{f('size_ratio_vs_fp32', '.2f')} | {f('sqnr_db', '.1f')} | {f('top1_agreement', '.4f')} | "
                     f"{f('accuracy', '.4f')} | {err.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--student-dir", help="an `ondevice distill` output folder (student.pt, recipe.resolved.json)")
    src.add_argument("--model", help="registered model name, with --weights (a state dict)")
    ap.add_argument("--weights", help="state dict for --model")
    ap.add_argument("--dataset", default="mnist", help="dataset for --model (default mnist)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--targets", default=None, help="comma-separated subset (default: every registered target)")
    ap.add_argument("--n-calibration", type=int, default=256)
    ap.add_argument("--n-verify", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--artifacts-dir", default=None, help="keep the artifacts here (default: a temp dir)")
    a = ap.parse_args(argv)
    if a.model and not a.weights:
        ap.error("--model needs --weights (a state dict of that model)")

    import numpy as np
    import torch

    from ondevice.data import load_dataset
    from ondevice.export import export_many, torch_outputs
    from ondevice.target import get_spec, target_names

    if a.threads:
        torch.set_num_threads(a.threads)
    model, dataset, source = load_model(a)
    ds = load_dataset(dataset)
    cal = ds.train.x[:a.n_calibration].numpy().astype(np.float32)  # (256, 1, 28, 28) real training images
    test = ds.test.take(a.n_verify)
    x, y = test.x.numpy().astype(np.float32), test.y.numpy()
    ref_acc = float(np.mean(torch_outputs(model, x).argmax(1) == y))
    targets = a.targets.split(",") if a.targets else target_names()
    jobs = []
    for t in targets:
        try:
            jobs.append((t, list(get_spec(t).precisions), {}))
        except KeyError as e:  # unknown target: export_many records the message listing the valid ones
            print(f"[targets_matrix] {e}", file=sys.stderr)
            jobs.append((t, ["fp32"], {}))

    def progress(art) -> None:
        v = art.verification or {}
        print(f"[targets_matrix] {art.target:12s} {art.precision:17s} {art.status:9s} "
              f"size={art.size_bytes} sqnr={v.get('sqnr_db')} top1={v.get('top1_agreement')}"
              + (f" error={art.error.splitlines()[0][:160]}" if art.error else ""), flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ondevice-matrix-") as tmp:
        out_dir = Path(a.artifacts_dir) if a.artifacts_dir else Path(tmp)
        arts = export_many(model, jobs, out_dir=out_dir, calibration=cal, verify_data=(x, y), stem="student",
                           on_result=progress)
    result = {
        "what": "every target x precision for one student, verified on real test images (all numbers measured)",
        "model": source, "dataset": dataset, "calibration_n": int(len(cal)), "verify_n": int(len(x)),
        "reference_accuracy": ref_acc, "seconds": time.perf_counter() - t0,
        "machine": machine_record(), "rows": rows_from(arts),
    }
    out = Path(a.out)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    n_ok = sum(r["status"] == "verified" for r in result["rows"])
    print(f"[targets_matrix] {n_ok}/{len(result['rows'])} verified; wrote {out} and {out.with_suffix('.md')}")
    return 0 if n_ok == len(result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
