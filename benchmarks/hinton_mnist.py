"""Reproduce the MNIST table of Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network").

Paper: teacher 784-1200-1200-10 (dropout, +-2 px jitter) 67 test errors; student 784-800-800-10 on hard labels 146
errors; the same student on soft targets at T = 20: 74 errors -> distillation closed (146-74)/(146-67) = 91% of the gap.

    python benchmarks/hinton_mnist.py --mode quick    # minutes: short schedules
    python benchmarks/hinton_mnist.py --mode full     # paper-like length (long)

Runs examples/hinton_mnist.toml through `ondevice.distill` (teacher trained by ondevice, then the distilled student and
the hard-label baseline from the same init) and writes benchmarks/results/hinton_mnist_<mode>.json (+ .md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ondevice.config import load_recipe  # noqa: E402
from ondevice.distill import distill  # noqa: E402
from ondevice.io import atomic_write_json, atomic_write_text  # noqa: E402

PAPER = {"teacher_errors": 67, "student_errors": 146, "distilled_errors": 74, "temperature": 20,
         "gap_closed": (146 - 74) / (146 - 67)}
MODES = {
    # epochs of teacher / students; the paper trained for far longer (and used jitter + dropout on the teacher)
    "quick": {"teacher": 12, "student": 6},
    "full": {"teacher": 30, "student": 30},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="quick")
    ap.add_argument("--out-dir", default=None, help="run folder (default runs/hinton-mnist-<mode>)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    m = MODES[a.mode]
    out_dir = a.out_dir or f"runs/hinton-mnist-{a.mode}"
    recipe = load_recipe(HERE.parent / "examples" / "hinton_mnist.toml", [
        f"teacher.train.epochs={m['teacher']}", f"train.epochs={m['student']}", f'output_dir="{out_dir}"',
        f"threads={a.threads}"])
    res = distill(recipe).results
    T = next(l["temperature"] for l in res["losses"] if l["name"] == "kd")
    gap = res["baseline"]["test_errors"] - res["teacher"]["test_errors"]
    result = {
        "mode": a.mode,
        "teacher_errors": res["teacher"]["test_errors"],
        "student_errors": res["baseline"]["test_errors"],
        "distilled_errors": res["student"]["test_errors"],
        "test_n": res["student"]["test_n"],
        "temperature": T,
        "epochs": {"teacher": m["teacher"], "student": m["student"]},
        "gap_closed": (res["baseline"]["test_errors"] - res["student"]["test_errors"]) / gap if gap > 0 else None,
        "teacher_params": res["teacher"]["params"],
        "student_params": res["student"]["params"],
        "teacher_outputs": res["teacher_outputs"],
        "paper": PAPER,
        "recipe": recipe.to_dict(),
        "seconds_total": res["seconds_total"],
        "measured_on": res["measured_on"],
    }
    out = HERE / "results" / f"hinton_mnist_{a.mode}.json"
    atomic_write_json(out, result)
    gc = result["gap_closed"]
    md = (f"# Hinton et al. 2015 MNIST, {a.mode} mode (measured on {res['measured_on']['cpu_model']})\n\n"
          "| | teacher errors | hard-label student errors | distilled student errors | gap closed |\n|---|---|---|---|---|\n"
          f"| paper (T=20) | 67 | 146 | 74 | {PAPER['gap_closed']:.0%} |\n"
          f"| ondevice (T={T:g}, {m['teacher']}/{m['student']} epochs) | {result['teacher_errors']} | "
          f"{result['student_errors']} | {result['distilled_errors']} | {'n/a' if gc is None else f'{gc:.0%}'} |\n")
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
