"""`ondevice bench`: latency, memory, accuracy retention and estimated energy of artifacts and eager models.

Wired into `ondevice/cli.py` through `add_parser(subparsers)`; `main(args) -> int` runs it.
Exit codes: 0 report written and every item ok; 1 an item failed (its benchmark, or its verification: a changed
artifact not verified again, a re-verification that failed) unless --keep-going; 2 usage or input error (also an
item whose file or inputs are bad, e.g. a damaged artifact, unless --keep-going: the others are still benchmarked and
reported); 3 internal error (ondevice.exits).
"""
from __future__ import annotations

import argparse
import logging
import sys

from ondevice.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE

DESCRIPTION = """\
Benchmark exported artifacts (.onnx, .pte, .tflite, .mlpackage; or a folder of them, e.g. the output folder of
`ondevice export`) and eager PyTorch models side by side, and write report.json (with a JSON Schema),
report.md and a self-contained report.html (plots: accuracy vs p50 latency with the Pareto front, size per
target and precision, the retention chain teacher -> student -> artifacts, estimated energy).

latency   each (item, thread count) runs in its own worker process (threads set before loading; BLAS/OpenMP
          threads pinned to the same count); warm-up by count and time; variants timed in interleaved rounds
          until each has >= N queries and >= T seconds (quick: 64 / 2 s, full: 1024 / 60 s, MLPerf
          single-stream style); p50/p90/p99, mean, std, bootstrap 95% CI of p50. Core ML has no runtime on
          Linux: its latency is reported as not measurable, its accuracy comes from the reference evaluator.
memory    peak RSS of the worker above its baseline after loading and after running, the file size, and the
          runtime's own planned-memory figures.
accuracy  every model on the same test set: accuracy, retention (/ teacher), top-1 agreement, KL(teacher||model).
energy    estimated per device profile (built-in: midrange_phone_cpu, flagship_phone_cpu, npu_1w, mcu; or your
          own TOML): energy per inference, roofline latency, highest sustainable rate within the power budget,
          fits memory / meets power. MACs are counted on the student (--student) the artifacts came from.
          Measured host energy (RAPL) where the host exposes it.
Every number is labelled measured (with the machine) or estimated (with the profile).
trust     an artifact's status comes from its <artifact>.json record only while the file still has the sha256
          recorded at verification; a changed file is verified again against --student on --data (both needed),
          otherwise its item fails."""

EPILOG = """\
examples:
  ondevice bench runs/mnist/artifacts --data mnist \\
      --teacher ccexam_mnist_cnn --student mnist_small_cnn --student-weights runs/mnist/student.pt
  ondevice bench model.onnx model_int8.onnx --data test.npz --threads 1,2 --mode full --out bench_full
  ondevice bench model.tflite                                  # no data: inputs synthesised from the file
  ondevice bench encoder.onnx --vocab 30522 --input-shape input_ids=1,128 --input-shape attention_mask=1,128
  ondevice bench encoder.tflite --inputs samples.npz           # real samples: one array per input name
  ondevice bench gru.onnx --state h_in=h_out                   # state carried from call to call
  ondevice bench --list-profiles
exit codes: 0 report written and every item ok, 1 an item failed (unless --keep-going), 2 usage or input error,
            3 internal error (one-line summary + the path of a log with the traceback), 130/143 interrupted"""


def _ints(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2 or 1,1,28,28, got {s!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _shape_arg(s: str) -> tuple[str | None, tuple[int, ...]]:
    """`1,1,28,28` (the only input) or `NAME=1,32` (one named input)."""
    name, _, dims = s.rpartition("=")
    return (name or None), _ints(dims)


def _state_arg(s: str) -> tuple[str, str]:
    inp, eq, out = s.partition("=")
    if not eq or not inp or not out:
        raise argparse.ArgumentTypeError(f"expected STATE_INPUT=STATE_OUTPUT (e.g. h_in=h_out), got {s!r}")
    return inp, out


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("artifacts", nargs="*", metavar="ARTIFACT",
                   help="artifact files (.onnx .pte .tflite .mlpackage) or folders of them; an artifact's "
                        "<artifact>.json record (written by `ondevice export`) supplies its precision and verification")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="test data: a dataset name from ondevice.data (mnist, digits, fashion-mnist, "
                                  "wordnet, ...) or a .npz file (see --inputs)")
    g.add_argument("--inputs", metavar="FILE.npz",
                   help="real samples for a model with any inputs: one array (N, ...) per input name, in the dtype "
                        "the model takes (token ids as integers), plus optional labels y (N,)")
    g.add_argument("--limit", type=int, metavar="N", help="use only the first N test samples for accuracy")
    g.add_argument("--input-shape", type=_shape_arg, action="append", default=[], metavar="[NAME=]1,...",
                   help="without data, inputs are synthesised from the artifact's own signature (its fixed sizes and "
                        "layout, e.g. NHWC for a channels-last .tflite, are read from the file); give the size of "
                        "each dynamic dimension as NAME=1,32 (batch first, repeatable), or 1,C,H,W for a "
                        "one-input model")
    g.add_argument("--input-dtype", default="float32", help="dtype of synthetic inputs of eager models without "
                                                            "artifacts (default float32)")
    g.add_argument("--vocab", type=int, metavar="N", help="synthetic token ids are drawn from [0, N) (the "
                                                          "tokenizer's vocabulary size); never negative")
    g.add_argument("--state", type=_state_arg, action="append", default=[], metavar="IN=OUT",
                   help="a stateful model: the output OUT is fed back into the input IN on the next call while "
                        "timing (repeatable; synthetic state starts at zeros)")
    g = p.add_argument_group("eager PyTorch models (references: ondevice.models name, pkg.module:factory, or "
                             "path/to/file.py:factory)")
    g.add_argument("--teacher", metavar="REF", help="the teacher: the reference for retention, agreement and KL")
    g.add_argument("--teacher-weights", metavar="FILE", help="state-dict file for --teacher")
    g.add_argument("--student", metavar="REF", help="the fp32 student the artifacts were exported from (its MACs are "
                                                    "used for the artifacts' energy estimates)")
    g.add_argument("--student-weights", metavar="FILE", help="state-dict file for --student")
    g.add_argument("--model", action="append", default=[], metavar="REF[@WEIGHTS]",
                   help="another eager model to measure (repeatable)")
    g = p.add_argument_group("measurement")
    g.add_argument("--mode", choices=["quick", "full"], default="quick",
                   help="quick: >= 64 queries and 2 s per variant; full: >= 1024 queries and 60 s (default quick)")
    g.add_argument("--threads", type=_ints, default=(1,), metavar="1,2",
                   help="thread counts, each in its own worker (default 1)")
    g.add_argument("--batch-size", type=int, default=1, help="samples per query (default 1)")
    g.add_argument("--min-queries", type=int, help="override the mode's minimum queries per variant")
    g.add_argument("--min-seconds", type=float, help="override the mode's minimum measured seconds per variant")
    g.add_argument("--max-seconds", type=float, help="override the mode's cap on measured seconds per variant")
    g.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for any one worker step (default 600)")
    g.add_argument("--max-workers", type=int, default=16,
                   help="worker processes alive at once (default 16); more items are measured in groups, "
                        "interleaved within each group")
    g.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of synthetic inputs (default 0)")
    g.add_argument("--no-accuracy", action="store_true", help="skip the accuracy pass")
    g = p.add_argument_group("energy")
    g.add_argument("--profiles", default="all", metavar="all|NAME,...|FILE.toml",
                   help="device profiles for the energy estimates: 'all' built-ins (default), names, or TOML files")
    g.add_argument("--list-profiles", action="store_true", help="list the built-in device profiles and exit")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="bench_out", help="report folder (default ./bench_out)")
    g.add_argument("--no-plots", action="store_true", help="write report.html without plots")
    g.add_argument("--keep-going", action="store_true",
                   help="exit 0 even when an item failed or had bad input (the report still records it)")
    g.add_argument("--strict", action="store_true", help="exit 1 when any item failed (the default; kept for old "
                                                         "scripts, overrides --keep-going)")
    g.add_argument("--force", action="store_true",
                   help="write the report into a non-empty --out folder ondevice does not own")
    p.set_defaults(func=main)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="latency / memory / accuracy retention / energy report",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return configure(p)


def _model_ref(spec: str, label: str | None = None):
    from .config import TorchModelRef

    ref, _, weights = spec.partition("@")
    return TorchModelRef(label or ref.rsplit(":", 1)[-1], ref, weights or None)


def _print_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import fmt, fmt_bytes, fmt_pct

    threads = report["config"]["threads"]
    t = Table(title=f"ondevice bench: {report['measured_on']}", title_justify="left")
    t.add_column("item", no_wrap=True)
    for h in ["status", "size", "accuracy", "retention", "agreement"] + [f"p50 ms @{n}t" for n in threads]:
        t.add_column(h, overflow="fold")
    for it in report["items"]:
        a = it.get("accuracy") or {}
        cells = []
        for n in threads:
            run = next((r for r in it["runs"] if r["threads"] == n), None)
            if not it["latency"]["measurable"]:
                cells.append("n/a here")
            elif run and run.get("latency"):
                cells.append(fmt(run["latency"]["p50_ms"], ".4g"))
            else:
                cells.append(run["status"] if run else "-")
        t.add_row(it["label"], it["status"], fmt_bytes(it["size_bytes"]), fmt_pct(a.get("accuracy")),
                  fmt_pct(a.get("retention")), fmt_pct(a.get("top1_agreement")), *cells)
    con = Console()
    con.print(t)
    for w in report.get("warnings", []):
        con.print(f"warning: {w}", markup=False, highlight=False)
    for it in report["items"]:
        if not it["latency"]["measurable"]:
            con.print(f"{it['label']}: latency not measurable here: {it['latency']['reason']}", markup=False,
                      highlight=False)
        for e in it["errors"]:
            con.print(f"{it['label']} failed ({e['stage']}, threads {e.get('threads')}): {e['message'][:300]}",
                      markup=False, highlight=False)
    f = report.get("files", {})
    print(f"energy estimates per device profile, latency CIs and memory: {f.get('markdown')}, {f.get('html')}, "
          f"{f.get('json')}")


def main(args: argparse.Namespace) -> int:
    from ondevice.errors import ConfigError, OndeviceError
    from ondevice.registry import UnknownNameError

    from .profiles import builtin_profile_names, load_profile

    if not logging.getLogger().handlers and not logging.getLogger("ondevice").handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.list_profiles:
        for n in builtin_profile_names():
            p = load_profile(n)
            print(f"{n:20s} {p.description}")
        return EXIT_OK
    try:
        from .config import BenchConfig
        from .harness import bench

        if not args.artifacts and not (args.teacher or args.student or args.model):
            raise ValueError("nothing to benchmark: give ARTIFACT files or folders, or --teacher/--student/--model")
        if args.data and args.inputs:
            raise ValueError("give either --data or --inputs, not both")
        legacy = [dims for name, dims in args.input_shape if name is None]
        config = BenchConfig(
            mode=args.mode, threads=args.threads, batch_size=args.batch_size, min_queries=args.min_queries,
            min_seconds=args.min_seconds, max_seconds=args.max_seconds, profiles=args.profiles,
            accuracy=not args.no_accuracy, accuracy_samples=args.limit,
            input_shape=legacy[-1] if legacy else None,
            input_shapes={name: dims for name, dims in args.input_shape if name is not None},
            vocab=args.vocab, state=dict(args.state),
            input_dtype=args.input_dtype, seed=args.seed, timeout_s=args.timeout, max_workers=args.max_workers,
            plots=not args.no_plots)
        teacher = _model_ref(args.teacher, "teacher") if args.teacher else None
        if teacher and args.teacher_weights:
            teacher.weights = args.teacher_weights
        student = _model_ref(args.student, "student") if args.student else None
        if student and args.student_weights:
            student.weights = args.student_weights
        items = list(args.artifacts) + [_model_ref(m) for m in args.model]
        report = bench(items, data=args.data or args.inputs, teacher=teacher, student=student, config=config, out_dir=args.out,
                       force=args.force)
    except (OndeviceError, ConfigError, UnknownNameError, ValueError, FileNotFoundError,
            ImportError) as e:
        print(f"ondevice bench: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _print_summary(report)
    failed = [it["label"] for it in report["items"] if it["status"] != "ok"]
    bad_input = [it["label"] for it in report["items"] if any(e.get("input_error") for e in it["errors"])]
    if failed:
        print(f"ondevice bench: failed items: {', '.join(failed)}", file=sys.stderr)
    if bad_input:  # the report is written; the inputs or files, not the runtimes, are at fault
        print(f"ondevice bench: error: bad input for {', '.join(bad_input)} (see the messages above)",
              file=sys.stderr)
    if args.keep_going and not args.strict:
        return EXIT_OK
    return EXIT_USAGE if bad_input else EXIT_FAIL if failed else EXIT_OK


def run(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: `python -m ondevice.bench.cli ...`."""
    from ondevice.exits import guarded

    p = configure(argparse.ArgumentParser(prog="ondevice bench", description=DESCRIPTION, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter))
    return guarded("bench", main, p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(run())
