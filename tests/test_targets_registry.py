"""The target registry: helpful errors, lazy SDK imports, and a fifth target added from outside the package."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

import ondevice.target as target_mod
from conformance_models import digits_case
from ondevice.errors import MissingBackendError, UnsupportedPrecisionError
from ondevice.export import export
from ondevice.registry import UnknownNameError
from ondevice.target import TargetSpec, artifact_target, get_target, register_target, target_names

BUILTIN = ("coreml", "executorch", "onnxruntime", "tflite")
SDK_MODULES = ("onnxruntime", "onnx", "executorch", "torchao", "coremltools", "litert_torch", "ai_edge_litert",
               "ai_edge_quantizer", "tensorflow")


@pytest.fixture
def scratch_registry(monkeypatch):
    """Targets registered inside a test disappear afterwards (the registry and instance cache are restored)."""
    target_names()  # discover the built-in targets first
    monkeypatch.setattr(target_mod.SPECS, "_items", dict(target_mod.SPECS._items))
    monkeypatch.setattr(target_mod, "_INSTANCES", dict(target_mod._INSTANCES))
    monkeypatch.setenv(target_mod.REGISTERED_ENV, "")  # what register_target tells worker processes


def test_builtin_targets_are_discovered():
    assert set(BUILTIN) <= set(target_names())


def test_unknown_target_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown target 'onnx'; valid targets: .*coreml, executorch, "
                                               r"onnxruntime, tflite"):
        get_target("onnx")
    with pytest.raises(UnknownNameError, match=r"unknown target 'tflit'; .*Did you mean 'tflite'\?"):
        get_target("tflit")


def test_unsupported_precision_lists_the_targets_precisions(tmp_path):
    with pytest.raises(UnsupportedPrecisionError, match=r"target 'executorch' cannot produce precision 'fp16'; "
                                                        r"it can do: fp32, int8_dynamic, int8_static"):
        get_target("executorch").precision("fp16")
    case = digits_case("mlp")
    with pytest.raises(UnsupportedPrecisionError, match=r"it can do: fp32, fp16, int8_dynamic, int8_static$"):
        export(case.model, "onnxruntime", "palettize4", out=tmp_path / "m", verify_data=(case.x_verify, None))
    with pytest.raises(ValueError, match=r"unknown precision 'int3'; valid precisions: fp32, fp16, .*"):
        get_target("onnxruntime").precision("int3")


def test_missing_sdk_raises_with_the_pip_line(scratch_registry):
    register_target(TargetSpec(name="ghost", extra="ghost", requires=("ondevice_no_such_sdk_4f2a",),
                               precisions=("fp32",), suffix=".ghost", factory="ondevice_no_such_sdk_4f2a:Target"))
    assert "ghost" in target_names()
    with pytest.raises(MissingBackendError, match=re.escape(
            "target 'ghost' needs ondevice_no_such_sdk_4f2a, which is not installed. "
            "Install it with: pip install 'ondevice[ghost]'")):
        get_target("ghost")
    assert issubclass(MissingBackendError, ImportError)


def test_ghost_target_is_gone_after_the_test():
    assert "ghost" not in target_names()


def test_import_ondevice_imports_no_backend_sdk():
    code = textwrap.dedent(f"""
        import json, sys
        import ondevice
        names = ondevice.target_names()
        specs = [ondevice.target.get_spec(n) for n in names]
        import ondevice.export, ondevice.verify, ondevice.precision
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {SDK_MODULES!r})
        print(json.dumps({{"targets": names, "sdk_modules": loaded}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(BUILTIN) <= set(result["targets"])
    assert result["sdk_modules"] == []


# --- a fifth target, defined outside ondevice/targets ------------------------------------------------------
FIFTH_TARGET = '''
"""A torch.export (.pt2) target: the program is saved with torch.export.save and run by torch.export.load."""
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ondevice.target import IOTensor, Inspection, Signature, Target, TargetSpec, named_like_spec

SPEC = TargetSpec(name="pt2", extra="pt2", requires=("torch",), precisions=("fp32",), suffix=".pt2",
                  factory="ondevice_pt2_target:Pt2Target", description="torch.export program (.pt2)",
                  runtime_modules=("torch",))


@dataclass
class Runner:
    module: object
    signature: Signature


def _io(ep):
    user_inputs = set(ep.graph_signature.user_inputs)
    inputs = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    outputs = [a for n in ep.graph.nodes if n.op == "output" for a in n.args[0]]
    one = lambda n, name: IOTensor(name, str(n.meta["val"].dtype).replace("torch.", ""), tuple(n.meta["val"].shape))
    return Signature(tuple(one(n, n.name) for n in inputs), tuple(one(n, f"output_{i}") for i, n in enumerate(outputs)))


class Pt2Target(Target):
    def quantize(self, model, precision, example_inputs, calibration, **options):
        return model

    def export(self, prepared, precision, example_inputs, out, calibration=None, **options):
        import torch

        torch.export.save(torch.export.export(prepared.eval(), example_inputs), str(out))  # batch-1 program
        return Path(out)

    def load(self, path, spec=None):
        import torch

        ep = torch.export.load(str(path))
        sig = _io(ep)
        return Runner(ep.module(), named_like_spec(sig, spec, str(path)) if spec is not None else sig)

    def call(self, runner, feeds):  # one batch of the program's static batch (run() splits and pads)
        import torch

        with torch.no_grad():
            ys = runner.module(*[torch.from_numpy(feeds[t.name]) for t in runner.signature.inputs])
        ys = ys if isinstance(ys, tuple) else (ys,)
        return {t.name: y.numpy() for t, y in zip(runner.signature.outputs, ys)}

    def inspect(self, path):
        import torch

        ep = torch.export.load(str(path))
        ops = Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")
        tensors = Counter(str(t.dtype).replace("torch.", "") for t in ep.state_dict.values())
        nbytes = Counter()
        for t in ep.state_dict.values():
            nbytes[str(t.dtype).replace("torch.", "")] += t.numel() * t.element_size()
        sig = _io(ep)
        io = lambda ts: [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]
        return Inspection(format="pt2", ops=dict(ops), weight_bytes=dict(nbytes), weight_tensors=dict(tensors),
                          inputs=io(sig.inputs), outputs=io(sig.outputs))
'''


def test_a_fifth_target_works_through_the_export_verb(scratch_registry, tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "ondevice_pt2_target.py").write_text(FIFTH_TARGET)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    import ondevice_pt2_target

    register_target(ondevice_pt2_target.SPEC)
    case = digits_case("mlp")
    art = export(case.model, "pt2", "fp32", out=tmp_path / "out" / "mlp", calibration=case.calibration,
                 verify_data=(case.x_verify, case.y_verify))
    assert art.status == "verified", art.error
    assert art.path.endswith("mlp.pt2") and artifact_target(art.path) == "pt2"
    assert art.verification["top1_agreement"] == 1.0 and art.verification["max_abs_err"] < 1e-5
    assert art.inspect["ops"]["aten.linear.default"] == 2
    assert art.inspect["weight_dtypes"] == {"float32": 4}
    assert art.inspect["inputs"] == [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert art.inspect["outputs"][0]["shape"] == [1, 10]
    assert json.loads((tmp_path / "out" / "mlp.pt2.json").read_text())["status"] == "verified"
    with pytest.raises(UnsupportedPrecisionError, match=r"target 'pt2' cannot produce precision 'int8_static'; "
                                                        r"it can do: fp32"):
        export(case.model, "pt2", "int8_static", out=tmp_path / "q", calibration=case.calibration)
    # bench workers are other processes: they find the target registered here, and time it through the protocol
    from ondevice.bench import BenchConfig, bench
    from test_bench_common import FAST

    report = bench([art.path], data=(case.x_verify[:64], case.y_verify[:64]), config=BenchConfig(**FAST),
                   out_dir=None)
    item = report["items"][0]
    assert item["target"] == "pt2" and item["status"] == "ok", item["errors"]
    assert item["runs"][0]["latency"]["n"] >= 16 and item["accuracy"]["accuracy"] > 0.9
    assert item["verification"]["hash"] == "match" and item["verification"]["status"] == "verified"
    sys.modules.pop("ondevice_pt2_target", None)


def test_import_ondevice_is_cheap():
    """`import ondevice` (and the CLI's argument parser) load neither torch nor numpy nor any backend: the
    heavy imports happen on first use. Checked by what is imported, not by a wall-clock time."""
    code = ("import sys, ondevice, ondevice.cli; ondevice.cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'onnxruntime', 'executorch', "
            "'coremltools', 'litert_torch', 'ai_edge_litert', 'tensorflow', 'jax', 'matplotlib', 'pydantic'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
