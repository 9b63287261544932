from ondevice.target import TargetSpec

SPEC = TargetSpec(
    name="tflite",
    extra="tflite",
    requires=("litert_torch", "ai_edge_litert", "ai_edge_quantizer", "torchao"),
    precisions=("fp32", "fp16", "int8_dynamic", "int8_static", "int8_weight_only"),
    suffix=".tflite",
    factory="ondevice.targets.tflite.target:TFLiteTarget",
    quiet_loggers=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
    runtime_modules=("ai_edge_litert.interpreter",),
    dynamic_axes=(),  # litert_torch traces static shapes: batch 1, sequence length fixed from the samples
    description="TFLite / LiteRT flatbuffer via litert-torch (PT2E for full-integer int8, ai-edge-quantizer "
                "recipes for fp16 / dynamic-range / weight-only), run with ai_edge_litert.interpreter.Interpreter",
    options={
        "nhwc": "bool; the artifact takes NHWC input (as Android camera pipelines deliver it) via "
                "litert_torch.to_channel_last_io; run() still accepts NCHW float input and transposes",
    },
)
