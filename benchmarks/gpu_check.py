"""The GPU check: the same distillation recipe on the CPU and on CUDA, side by side.

Runs `ondevice.distill` once per device (``train.device`` overridden; everything else identical: data, seeds,
schedule), and writes ``benchmarks/results/gpu_check.json`` (+ .md) with, per device: its name (the CUDA device name
or the CPU model), training precision, seconds, the student's and the hard-label student's test metric, and the
difference to the CPU run. Run it on a machine with a GPU; on a machine without one it runs the CPU side only and
says so (``cuda: not available``) -- nothing in ondevice depends on having a GPU.

    .venv/bin/python benchmarks/gpu_check.py [--recipe R] [--devices cpu,cuda] [--precision bf16] [--set k=v ...]

The default recipe is the token classifier of the test suite scaled up (WordNet glosses, 20k training glosses,
text_encoder teacher trained by ondevice, 2-layer student): real text, int64 inputs with a mask.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_RECIPE = """
name = "gpu-check"
seed = 0
[teacher]
model = "text_encoder"
kwargs = { vocab_size = 8000, dim = 256, layers = 4, heads = 4, ffn = 1024, max_len = 32, num_classes = 45 }
[teacher.train]
epochs = 4
batch_size = 128
lr = 1e-3
[student]
model = "from_teacher"
kwargs = { layers = 2 }
[data]
dataset = "wordnet"
limit_train = 20000
limit_val = 2000
limit_test = 4000
kwargs = { max_length = 32 }
[train]
epochs = 4
batch_size = 128
lr = 1e-3
[[distill.losses]]
name = "kd"
weight = 0.9
temperature = 4.0
[[distill.losses]]
name = "ce"
weight = 0.1
"""


def run_on(recipe_path: Path, device: str, precision: str | None, out: Path, overrides: list[str]) -> dict:
    import torch

    from ondevice.config import load_recipe
    from ondevice.distill import distill

    ov = [*overrides, f'train.device="{device}"', f'output_dir="{out}"']
    if precision:
        ov.append(f'train.precision="{precision}"')
    recipe = load_recipe(recipe_path, ov)
    if recipe.teacher.train is not None:
        ov.append(f'teacher.train.device="{device}"')
        if precision:
            ov.append(f'teacher.train.precision="{precision}"')
        recipe = load_recipe(recipe_path, ov)
    t0 = time.perf_counter()
    res = distill(recipe, fresh=True)
    seconds = time.perf_counter() - t0
    r = res.results
    primary = recipe.task.build().primary
    return {"device": device, "device_name": r["measured_on"]["device"] if device != "cpu" else r["measured_on"]["cpu_model"],
            "precision": r["precision"], "seconds": seconds, "metric": primary,
            "student": r["student"].get("test_" + primary), "hard_label": (r.get("baseline") or {}).get("test_" + primary),
            "teacher": r["teacher"].get("test_" + primary), "torch": torch.__version__,
            "cuda": torch.version.cuda}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", help="recipe file (default: the built-in WordNet token classifier)")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--precision", default=None, help="training precision on the non-CPU devices (fp32, bf16, fp16)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    a = ap.parse_args(argv)
    import torch

    from ondevice.io import atomic_write_json, atomic_write_text, machine_record

    work = Path(tempfile.mkdtemp(prefix="ondevice-gpu-check-"))
    recipe = Path(a.recipe) if a.recipe else work / "recipe.toml"
    if not a.recipe:
        recipe.write_text(DEFAULT_RECIPE)
    rows, skipped = [], {}
    for dev in a.devices.split(","):
        if dev.startswith("cuda") and not torch.cuda.is_available():
            skipped[dev] = "not available on this machine (no CUDA device)"
            continue
        prec = a.precision if dev != "cpu" else None
        rows.append(run_on(recipe, dev, prec, work / dev.replace(":", "_"), a.overrides))
    cpu = next((r for r in rows if r["device"] == "cpu"), None)
    for r in rows:
        if cpu is not None and r is not cpu and r["student"] is not None and cpu["student"] is not None:
            r["student_minus_cpu"] = r["student"] - cpu["student"]
            r["speedup_over_cpu"] = cpu["seconds"] / r["seconds"]
    result = {"what": "the same distillation recipe per device, measured", "rows": rows, "skipped": skipped,
              "recipe": recipe.read_text(), "overrides": a.overrides, "measured_on": machine_record()}
    out = Path(a.out)
    atomic_write_json(out, result)
    md = ["| device | name | precision | seconds | student | hard-label | teacher |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['device']} | {r['device_name']} | {r['precision']} | {r['seconds']:.1f} | {r['student']} | "
           f"{r['hard_label']} | {r['teacher']} |" for r in rows]
    md += [f"| {d} | - | - | - | {why} | | |" for d, why in skipped.items()]
    atomic_write_text(out.with_suffix(".md"), "# GPU check (measured)\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
