"""What each int8 rule of the ONNX Runtime and Core ML targets buys on a real transformer, variant by variant.

    .venv/bin/python benchmarks/int8_transformer_variants.py            # after benchmarks/minilm_wordnet.py's export

The MiniLM teacher and 3-layer student of benchmarks/minilm_wordnet.py (their fp32 ONNX and Core ML files under
runs/minilm-<mode>/artifacts, the same calibration and held-out glosses as its export step) are quantized once per
variant: the target's shipped scheme, the scheme it replaced, and the rules taken away one at a time. Each file is run
in its real runtime (Core ML: the target's reference evaluator) against the fp32 file on the held-out glosses (SQNR,
top-1 agreement) and, for ONNX Runtime, timed at batch 1 on one thread, every variant in the same run, rounds
interleaved. The targets' READMEs quote this file.

Writes benchmarks/results/int8_transformer_variants.json (+ .md).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from ondevice.io import atomic_write_json, atomic_write_text, machine_record, read_json, temp_dir  # noqa: E402
from ondevice.verify import sqnr_db  # noqa: E402

OUT = HERE / "results" / "int8_transformer_variants.json"


def samples(base: Path, n_calibration: int, n_verify: int) -> tuple[dict, dict]:
    """The export step's calibration (training) and held-out (test) glosses, by input name."""
    from ondevice.cli import export_samples
    from ondevice.config import recipe_from_dict
    from ondevice.data import load_data

    resolved = base / "students" / "recipe.resolved.json"
    recipe = recipe_from_dict(read_json(resolved), str(resolved))
    s = export_samples(load_data(recipe.data, recipe.seed), n_calibration, n_verify)
    return s["calibration"], s["verify_data"][0]


def score(reference: np.ndarray, y: np.ndarray) -> dict:
    """SQNR (dB) and top-1 agreement of `y` against the fp32 file's (N, classes) outputs."""
    sq = sqnr_db(reference, y)
    return {"sqnr_db": None if math.isinf(sq) else sq, "n": len(y),
            "top1_agreement": float((y.argmax(1) == reference.argmax(1)).mean())}


# -- ONNX Runtime ------------------------------------------------------------------------------------------------
def ort_variants(fp32: Path, work: Path, cal: dict) -> dict[str, Path]:
    """{variant: .onnx file} for one model: int8_dynamic and int8_static as the target ships them and as they were,
    plus the ablations (each built from the target's own pieces on the same pre-processed graph)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import QDQRegistry

    from ondevice.targets.onnxruntime.target import (CALIBRATION_BATCH, STATIC_SKIP, OnnxRuntimeTarget,
                                                     fine_grained_matmuls, outlier_matmuls)

    pre = work / "pre.onnx"
    OnnxRuntimeTarget._pre_process(fp32, pre)
    dyn = outlier_matmuls(pre, work, cal, CALIBRATION_BATCH)
    out: dict[str, Path] = {"fp32": fp32}

    def dynamic(name: str, exclude: list[str], then=None) -> None:
        path = work / f"{name}.onnx"
        quantize_dynamic(str(pre), str(path if then is None else work / "d.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
        if then is not None:
            then(work / "d.onnx", path)
        out[name] = path

    dynamic("int8_dynamic, every MatMul per tensor (before)", [])
    dynamic("int8_dynamic, outlier MatMuls float", dyn)
    dynamic("int8_dynamic, outlier MatMuls MatMulNBits (shipped)", dyn,
            lambda src, dst: fine_grained_matmuls(src, dst, dyn))
    dynamic("int8_dynamic, outlier MatMuls MatMulNBits, float compute", dyn,
            lambda src, dst: _nbits_float_compute(src, dst, dyn))
    registry = sorted(QDQRegistry)
    for name, ops, exclude, then in (
            ("int8_static, ONNX Runtime's default op set", None, [], None),
            ("int8_static, every QDQ op", registry, [], None),
            ("int8_static, LayerNormalization float", sorted(set(registry) - STATIC_SKIP), [], None),
            ("int8_static, outlier MatMuls per tensor at run time (before)", sorted(set(registry) - STATIC_SKIP), dyn,
             lambda src, dst: quantize_dynamic(str(src), str(dst), nodes_to_quantize=dyn,
                                               op_types_to_quantize=["MatMul"], per_channel=True,
                                               weight_type=QuantType.QInt8)),
            ("int8_static, outlier MatMuls MatMulNBits (shipped)", sorted(set(registry) - STATIC_SKIP), dyn,
             lambda src, dst: fine_grained_matmuls(src, dst, dyn))):
        out[name] = _static(pre, work / f"s{len(out)}.onnx", cal, ops, exclude, then)
    return out


def _static(pre: Path, path: Path, cal: dict, ops, exclude: list[str], then) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from ondevice.targets.onnxruntime.target import CALIBRATION_BATCH, _Reader

    first = path if then is None else path.with_suffix(".qdq.onnx")
    quantize_static(str(pre), str(first), _Reader(cal, CALIBRATION_BATCH), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ops, nodes_to_exclude=exclude, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    if then is not None:
        then(first, path)
    return path


def _nbits_float_compute(src: Path, dst: Path, nodes: list[str]) -> None:
    """fine_grained_matmuls with accuracy_level left unset (the input stays float: dequantized weights)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from ondevice.targets.onnxruntime.target import OUTLIER_BLOCK

    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=OUTLIER_BLOCK, is_symmetric=True,
                             nodes_to_include=list(nodes))
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_outputs(sess, x: dict, batch: int = 64) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(x.values())))
    return np.concatenate([sess.run(None, {k: x[k][i:i + batch] for k in names})[0] for i in range(0, n, batch)])


def p50_ms(sessions: dict, x: dict, runs: int, rounds: int = 3) -> dict[str, float]:
    """Median batch-1 latency per session, `rounds` rounds of `runs` calls each, the sessions interleaved per round
    (a machine slower in one round slows every variant alike). The first 10 calls of a round are warm-up."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    n = len(next(iter(x.values())))
    for _ in range(rounds):
        for name, sess in sessions.items():
            feeds = [{k: v[j % n:j % n + 1] for k, v in x.items() if k in {i.name for i in sess.get_inputs()}}
                     for j in range(runs + 10)]
            for j, f in enumerate(feeds):
                t = time.perf_counter()
                sess.run(None, f)
                if j >= 10:
                    times[name].append(time.perf_counter() - t)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


# -- Core ML -------------------------------------------------------------------------------------------------------
def coreml_variants(fp32: Path, work: Path) -> dict[str, Path]:
    """int8_weight_only as shipped (single-channel consts float) and with every const per channel (before)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from ondevice.targets.coreml.mil_eval import load_program
    from ondevice.targets.coreml.target import _global_compression, single_channel_consts

    model = ct.models.MLModel(str(fp32), skip_model_load=True)
    model._mil_program = load_program(fp32)  # what the target's converted model carries (a loaded package has none)
    fn, op = _global_compression("int8_weight_only")
    keep = single_channel_consts(model)
    out = {"fp32": fp32}
    for name, names in (("int8_weight_only, every const per channel (before)", None),
                        ("int8_weight_only, single-channel consts float (shipped)", {k: None for k in keep})):
        path = work / f"c{len(out)}.mlpackage"
        fn(model, cto.OptimizationConfig(global_config=op, op_name_configs=names)).save(str(path))
        out[name] = path
    return out


def coreml_outputs(path: Path, x: dict) -> np.ndarray:
    from ondevice.export import run_target
    from ondevice.target import get_target

    tgt = get_target("coreml")
    return np.asarray(next(iter(run_target(tgt, tgt.load(path), x).values())), np.float64)


# -- the run -------------------------------------------------------------------------------------------------------
def measure(base: Path, models: tuple[str, ...], n_verify: int, runs: int) -> dict:
    cal, ver = samples(base, 128, n_verify)
    arts = base / "artifacts"
    rows = []
    with temp_dir("variants") as td:
        for model in models:
            work = Path(td) / model
            work.mkdir(parents=True)
            files = ort_variants(arts / "onnxruntime" / f"{model}_fp32.onnx", work, cal)
            sessions = {k: ort_session(p) for k, p in files.items()}
            ref = ort_outputs(sessions["fp32"], ver).astype(np.float64)
            lat = p50_ms(sessions, ver, runs)
            for name, path in files.items():
                rows.append({"model": model, "target": "onnxruntime", "variant": name,
                             **score(ref, ort_outputs(sessions[name], ver)), "size_bytes": path.stat().st_size,
                             "size_ratio_vs_fp32": path.stat().st_size / files["fp32"].stat().st_size,
                             "p50_ms_batch1": lat[name]})
        cml = coreml_variants(arts / "coreml" / f"{models[0]}_fp32.mlpackage", Path(td))
        ref = coreml_outputs(cml["fp32"], ver)
        for name, path in list(cml.items())[1:]:
            rows.append({"model": models[0], "target": "coreml", "variant": name,
                         **score(ref, coreml_outputs(path, ver)), "size_bytes": _tree_bytes(path),
                         "size_ratio_vs_fp32": _tree_bytes(path) / _tree_bytes(cml["fp32"]), "p50_ms_batch1": None})
    return {"what": "int8 variants of the MiniLM teacher and student against their fp32 files on held-out WordNet "
                    "glosses (measured)", "run_folder": str(base.relative_to(ROOT)), "verify_n": n_verify,
            "calibration_n": 128, "latency": f"p50 at batch 1, 1 thread, {runs} calls x 3 interleaved rounds",
            "rows": rows, "machine": machine_record()}


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# int8 variants on MiniLM ({r['run_folder']}; {r['verify_n']} held-out glosses; {r['latency']}; "
             f"measured on {m.get('cpu_model')}, flags {', '.join(m.get('cpu_flags') or [])})", "",
             "| model | target | variant | SQNR dB | top-1 agreement | size vs fp32 | p50 ms b1 |",
             "|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        sq = "-" if x["sqnr_db"] is None else f"{x['sqnr_db']:.1f}"
        lat = "-" if x["p50_ms_batch1"] is None else f"{x['p50_ms_batch1']:.2f}"
        lines.append(f"| {x['model']} | {x['target']} | {x['variant']} | {sq} | {x['top1_agreement']:.4f} | "
                     f"{x['size_ratio_vs_fp32']:.2f} | {lat} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", default="full",
                    help="which benchmarks/minilm_wordnet.py run folder (runs/minilm-<mode>; the committed file was "
                         "measured on the full run's models when their folder was still named runs/minilm-quick)")
    ap.add_argument("--verify", type=int, default=512, help="held-out glosses (default 512)")
    ap.add_argument("--runs", type=int, default=100, help="timed batch-1 calls per variant and round")
    a = ap.parse_args(argv)
    base = ROOT / "runs" / f"minilm-{a.mode}"
    missing = [p for p in (base / "artifacts/onnxruntime/teacher_fp32.onnx", base / "students/recipe.resolved.json")
               if not p.exists()]
    if missing:
        ap.error(f"{', '.join(map(str, missing))} missing: run benchmarks/minilm_wordnet.py --mode {a.mode} first")
    r = measure(base, ("teacher", "student_3"), a.verify, a.runs)
    atomic_write_json(OUT, r)
    atomic_write_text(OUT.with_suffix(".md"), markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
