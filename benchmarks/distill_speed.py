"""The trainer's own speed, measured side by side in interleaved rounds (medians), for image and token inputs:

- ``cached_over_student_only``: one epoch of KD reading the cached teacher outputs, over one epoch of student-only
  training (goal <= 1.15: distillation with a cached teacher costs little more than plain training);
- ``student_only_over_plain_loop``: ondevice's student-only epoch over a minimal hand-written PyTorch loop with the
  same model, data, batch size, optimizer and threads (goal <= 1.10: the trainer adds little overhead);
- ``uncached_over_student_only``: the same KD with the teacher run live on every batch (what augmentation costs).

Rows: ``image`` (MNIST, the pretrained ccexam CNN teacher, the 103k-param mnist_small_cnn student) and ``tokens``
(WordNet glosses, int64 input_ids + attention_mask; a 4-layer text_encoder teacher and a 2-layer student; the
teacher's weights are untrained because only time is measured).

    .venv/bin/python benchmarks/distill_speed.py [--rounds 3] [--threads 1]
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
from ondevice.data import load_dataset, trim_padding  # noqa: E402
from ondevice.io import atomic_write_json, atomic_write_text, machine_record  # noqa: E402
from ondevice.losses import build_loss  # noqa: E402
from ondevice.models import build_model  # noqa: E402
from ondevice.train import PhaseSetup, TeacherOutputs, train_phase  # noqa: E402
from ondevice.tree import call_model, tree_index  # noqa: E402

KD = [{"name": "kd", "weight": 0.9, "temperature": 4.0}, {"name": "ce", "weight": 0.1}]
TEXT = dict(vocab_size=8000, max_len=32, num_classes=45)


def plain_epoch(model: torch.nn.Module, split, spec: TrainSpec, seed: int) -> float:
    """A minimal hand-written loop: shuffled batches, forward, cross-entropy, backward, AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    n = len(split)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    model.train()
    t0 = time.perf_counter()
    for i in range(n // spec.batch_size):
        idx = perm[i * spec.batch_size:(i + 1) * spec.batch_size]
        x, y = trim_padding(tree_index(split.x, idx), split.y[idx])  # pad to the batch's longest sequence
        loss = torch.nn.functional.cross_entropy(call_model(model, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def measure(kind: str, splits, teacher, make_student, spec: TrainSpec, rounds: int) -> dict:
    t0 = time.perf_counter()
    cached = TeacherOutputs(teacher, [], splits.train, cache=True, budget_mb=4096)
    cache_build_s = time.perf_counter() - t0
    live = TeacherOutputs(teacher, [], splits.train, cache=False, budget_mb=0)
    assert cached.mode == "cached" and live.mode == "live"
    variants = {"kd_cached": (KD, cached), "kd_uncached": (KD, live),
                "student_only": ([{"name": "ce", "weight": 1.0}], None), "plain_loop": (None, None)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for name, (losses, t_out) in variants.items():
            torch.manual_seed(0)
            student = make_student()
            if losses is None:
                sec = plain_epoch(student, splits.train, spec, seed=r)
            else:
                res = train_phase(name, student, build_loss(losses), splits.train, splits.val,
                                  PhaseSetup(spec=spec, seed=r, teacher=t_out))
                sec = res.seconds_per_epoch[0]
            times[name].append(sec)
            print(f"{kind} round {r + 1}/{rounds} {name:13s} {sec:.2f} s/epoch", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"input_kind": kind, "cached_over_student_only": med["kd_cached"] / med["student_only"],
            "student_only_over_plain_loop": med["student_only"] / med["plain_loop"],
            "uncached_over_student_only": med["kd_uncached"] / med["student_only"],
            "seconds_per_epoch": times, "median_seconds_per_epoch": med, "cache_build_seconds": cache_build_s,
            "n_train": len(splits.train), "batch_size": spec.batch_size}


def image_row(a) -> dict:
    splits = load_dataset("mnist", seed=0, limit_train=a.limit_train, limit_val=1000)
    teacher = build_model("ccexam_mnist_cnn").eval()
    row = measure("image", splits, teacher, lambda: build_model("mnist_small_cnn"),
                  TrainSpec(epochs=1, batch_size=128, lr=3e-3), a.rounds)
    return {**row, "dataset": f"mnist train subset n={len(splits.train)}",
            "teacher": "ccexam_mnist_cnn (421,642 params, pretrained)", "student": "mnist_small_cnn (103,018 params)"}


def token_row(a) -> dict:
    splits = load_dataset("wordnet", seed=0, limit_train=a.limit_train_tokens, limit_val=500,
                          kwargs={"max_length": 32})
    torch.manual_seed(1)
    teacher = build_model("text_encoder", dim=128, layers=4, heads=4, ffn=512, **TEXT).eval()
    row = measure("tokens", splits, teacher,
                  lambda: build_model("text_encoder", dim=64, layers=2, heads=4, ffn=256, **TEXT),
                  TrainSpec(epochs=1, batch_size=64, lr=3e-3), a.rounds)
    return {**row, "dataset": f"wordnet glosses (word tokenizer, max_length 32) n={len(splits.train)}",
            "teacher": "text_encoder dim 128 x 4 layers (untrained: timing only)",
            "student": "text_encoder dim 64 x 2 layers"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit-train", type=int, default=20000)
    ap.add_argument("--limit-train-tokens", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distill_speed.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = [image_row(a), token_row(a)]
    result = {
        "what": "seconds per training epoch (medians over interleaved rounds), measured",
        "threads": a.threads, "rounds": a.rounds,
        "cached_over_student_only": rows[0]["cached_over_student_only"],  # the image row, as before
        "rows": rows,
        "goals": {"cached_over_student_only": "<= 1.15", "student_only_over_plain_loop": "<= 1.10"},
        "measured_on": machine_record(),
    }
    out = Path(a.out)
    atomic_write_json(out, result)
    md = ["| input | cached KD / student-only | student-only / plain loop | live-teacher KD / student-only | "
          "median s/epoch (student-only) | n |", "|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['input_kind']} | {r['cached_over_student_only']:.3f} | "
                  f"{r['student_only_over_plain_loop']:.3f} | {r['uncached_over_student_only']:.2f} | "
                  f"{r['median_seconds_per_epoch']['student_only']:.2f} | {r['n_train']} |")
    m = result["measured_on"]
    atomic_write_text(out.with_suffix(".md"), f"# Distillation speed (measured on {m['cpu_model']}, flags "
                      f"{', '.join(m['cpu_flags'])}; {a.threads} thread(s), {a.rounds} interleaved rounds)\n\n"
                      + "\n".join(md) + "\n\nGoals: cached KD / student-only <= 1.15; student-only / plain loop "
                      "<= 1.10.\n")
    for r in rows:
        print(f"{r['input_kind']}: cached/student-only {r['cached_over_student_only']:.3f}, student-only/plain "
              f"{r['student_only_over_plain_loop']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
