"""ondevice: distil a large teacher into a small student, quantize and convert it for Core ML, ExecuTorch,
TFLite (LiteRT) and ONNX Runtime, and measure that it fits the device.

    import ondevice
    recipe = ondevice.load_recipe("examples/mnist.toml")
    result = ondevice.distill(recipe)
    art = ondevice.export(result.student, target="onnxruntime", precision="int8_static",
                          calibration=x_train[:256], verify_data=(x_test, y_test))

`import ondevice` is cheap: it imports neither torch nor any backend SDK; the names below load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "export": ("ondevice.export", "export"),
    "export_many": ("ondevice.export", "export_many"),
    "Artifact": ("ondevice.export", "Artifact"),
    "distill": ("ondevice.distill", "distill"),
    "load_student": ("ondevice.distill", "load_student"),
    "load_recipe": ("ondevice.config", "load_recipe"),
    "recipe_from_dict": ("ondevice.config", "recipe_from_dict"),
    "Recipe": ("ondevice.config", "Recipe"),
    "load_dataset": ("ondevice.data", "load_dataset"),
    "build_model": ("ondevice.models", "build_model"),
    "register_model": ("ondevice.models", "register_model"),
    "build_loss": ("ondevice.losses", "build_loss"),
    "get_target": ("ondevice.target", "get_target"),
    "target_names": ("ondevice.target", "target_names"),
    "register_target": ("ondevice.target", "register_target"),
    "bench": ("ondevice.bench", "bench"),
    "run": ("ondevice.pipeline", "run"),
    "check_gates": ("ondevice.gates", "check_gates"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ondevice' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
