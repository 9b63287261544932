"""The toolkit's own speed: seconds per epoch of cached KD, uncached (live teacher) KD and student-only training.

All three run side by side in one process, interleaved in rounds (A B C, A B C, ...), on the real MNIST training set with
the real ccexam teacher, and the medians are compared as ratios; absolute times on a shared machine are noise.

    python benchmarks/distill_speed.py [--rounds 3] [--limit-train 20000] [--out benchmarks/results/distill_speed.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ondevice.config import TrainSpec  # noqa: E402
from ondevice.data import load_dataset  # noqa: E402
from ondevice.io import atomic_write_json, atomic_write_text, machine_record  # noqa: E402
from ondevice.losses import build_loss  # noqa: E402
from ondevice.models import build_model  # noqa: E402
from ondevice.train import TeacherOutputs, train_phase  # noqa: E402

KD = [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_speed.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    splits = load_dataset("mnist", seed=0, limit_train=a.limit_train, limit_val=1000)
    teacher = build_model("ccexam_mnist_cnn").eval()
    spec = TrainSpec(epochs=1, batch_size=128, lr=3e-3)

    t0 = time.perf_counter()
    cached = TeacherOutputs(teacher, [], splits.train.x, cache=True, budget_mb=4096)
    cache_build_s = time.perf_counter() - t0
    live = TeacherOutputs(teacher, [], splits.train.x, cache=False, budget_mb=0)
    assert cached.mode == "cached" and live.mode == "live"

    variants = {
        "kd_cached": (KD, cached),
        "kd_uncached": (KD, live),
        "student_only": ([{"name": "ce", "weight": 1.0}], None),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for name, (losses, t_out) in variants.items():
            torch.manual_seed(0)
            student = build_model("mnist_small_cnn")
            res = train_phase(name, student, build_loss(losses), splits.train.x, splits.train.y, splits.val.x,
                              splits.val.y, spec, seed=r, ckpt_dir=None, teacher=t_out)
            times[name].append(res.seconds_per_epoch[0])
            print(f"round {r + 1}/{a.rounds} {name:13s} {res.seconds_per_epoch[0]:.2f} s/epoch", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "what": "seconds per training epoch (medians over interleaved rounds), measured",
        "dataset": f"mnist train subset n={len(splits.train)}",
        "teacher": "ccexam_mnist_cnn (421,642 params)",
        "student": "mnist_small_cnn",
        "batch_size": spec.batch_size,
        "threads": a.threads,
        "rounds": a.rounds,
        "seconds_per_epoch": times,
        "median_seconds_per_epoch": med,
        "cache_build_seconds": cache_build_s,
        "cached_over_student_only": med["kd_cached"] / med["student_only"],
        "uncached_over_student_only": med["kd_uncached"] / med["student_only"],
        "goal": "cached_over_student_only <= 1.15",
        "measured_on": machine_record(),
    }
    out = Path(a.out)
    atomic_write_json(out, result)
    md = ["| variant | median s/epoch | ratio to student-only |", "|---|---|---|"]
    for k in variants:
        md.append(f"| {k} | {med[k]:.2f} | {med[k] / med['student_only']:.3f} |")
    atomic_write_text(out.with_suffix(".md"), f"# Distillation speed (measured on {result['measured_on']['cpu_model']}, "
                      f"{a.threads} thread(s), n={len(splits.train)})\n\n" + "\n".join(md) +
                      f"\n\nTeacher-output cache built once in {cache_build_s:.2f} s.\n")
    print(f"cached_over_student_only = {result['cached_over_student_only']:.3f} "
          f"(uncached {result['uncached_over_student_only']:.3f}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
