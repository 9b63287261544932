"""Record the Fashion-MNIST ablation (`results/fashion_mnist_ablation.md`) as JSON from its `ondevice distill` folders.

Each folder is one run of examples/fashion_mnist.toml with the changes the Markdown table lists. This adds what
the older runs did not write themselves: each model's accuracy on the training images (the diagnostic that
explained why distillation lost). Usage: python benchmarks/fashion_ablation_record.py OUT_JSON RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ondevice.data import load_dataset
from ondevice.distill import load_student
from ondevice.io import atomic_write_json, machine_record
from ondevice.train import evaluate


def main(out: str, run_dirs: list[str]) -> None:
    torch.set_num_threads(2)
    splits = load_dataset("fashion-mnist", seed=0, val_fraction=0.1)
    runs = []
    for d in map(Path, run_dirs):
        r = json.loads((d / "results.json").read_text())
        recipe = json.loads((d / "recipe.resolved.json").read_text())
        row = {"run": d.name, "losses": r["losses"], "epochs": r["epochs"],
               "threads": recipe.get("threads"),  # None: torch's default (2 on the 2-core host)
               "teacher_kwargs": recipe["teacher"].get("kwargs", {}), "student_kwargs": recipe["student"].get("kwargs", {})}
        for role, which in (("teacher", "teacher"), ("student", "student"), ("baseline", "baseline")):
            if role not in r or not (d / f"{which}.pt").exists():
                continue
            fit = evaluate(load_student(d, which), splits.train)
            row[role] = {"test_errors": r[role]["test_errors"], "params": r[role]["params"], "train_acc": fit["acc"]}
        runs.append(row)
        print(json.dumps(row))
    atomic_write_json(Path(out), {"suite": "fashion_mnist_ablation", "status": "measured", "runs": runs,
                                  "measured_on": machine_record()})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
