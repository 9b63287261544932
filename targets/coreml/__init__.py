"""Core ML target metadata (imports no SDK; the implementation is in target.py, the Linux evaluator in mil_eval.py)."""
from ondevice.target import TargetSpec

SPEC = TargetSpec(
    name="coreml",
    extra="coreml",
    requires=("coremltools",),
    precisions=("fp32", "fp16", "int8_weight_only", "int4_weight_only", "palettize4", "prune50"),
    suffix=".mlpackage",
    factory="ondevice.targets.coreml.target:CoreMLTarget",
    quiet_loggers=("coremltools",),
    runtime_modules=("coremltools",),
    runtime_platforms=("darwin",),
    no_runtime_reason=("Core ML runs only on Apple platforms; outputs here come from ondevice's NumPy reference "
                       "evaluator, whose speed says nothing about a device"),
    dynamic_axes=(),  # static shapes: the reference evaluator checks every op against the declared shapes
    description=("Core ML ML Program (.mlpackage) via torch.export + coremltools; weight compression with "
                 "coremltools.optimize.coreml. Runs with MLModel.predict on macOS and with a NumPy reference "
                 "evaluator of the saved program elsewhere (latency not measurable there)."),
    options={
        "deployment_target": ("minimum OS of the package: 'iOS17' (default) or 'iOS18'; int4_weight_only "
                              "needs iOS18 and selects it automatically"),
    },
)
