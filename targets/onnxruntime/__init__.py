from ondevice.target import TargetSpec

SPEC = TargetSpec(
    name="onnxruntime",
    extra="onnx",
    requires=("onnx", "onnxruntime", "onnxscript"),
    precisions=("fp32", "fp16", "int8_dynamic", "int8_static"),
    suffix=".onnx",
    factory="ondevice.targets.onnxruntime.target:OnnxRuntimeTarget",
    quiet_loggers=("onnxruntime", "onnxscript", "torch.onnx"),
    runtime_modules=("onnxruntime",),
    dynamic_axes=("batch", "seq"),  # symbolic batch and sequence length in one graph
    description="ONNX via torch.onnx.export(dynamo=True), run with ONNX Runtime's CPU execution provider; "
                "fp16 by onnxruntime.transformers.float16, int8 by onnxruntime.quantization (QDQ, per-channel)",
    options={
        "opset": "ONNX opset to export with (int, default 20: exact GELU stays one Gelu node)",
        "dynamic_batch": "export a symbolic batch dimension (bool, default True; falls back to batch 1 if the "
                         "exporter cannot keep it symbolic)",
        "activations": "int8_static activation type: 'int8' (default, symmetric-friendly, what ARM kernels prefer) "
                       "or 'uint8' (uint8 activations + 7-bit weights, ORT's advice for x86 without VNNI)",
        "calibrate_method": "int8_static range estimation: 'minmax' (default), 'entropy' or 'percentile'",
        "reduce_range": "7-bit int8 weights: 'auto' (default: on for x86 CPUs without VNNI, whose int8 kernels "
                        "saturate with 8-bit weights, and for uint8 activations), true or false",
        "outliers": "int8: a weight MatMul whose calibrated input has outliers becomes 'blockwise' (default: "
                    "MatMulNBits, int8 weights and input per block of 32: accurate, slower on CPU) or keeps "
                    "'per_tensor' activation scales at run time (fastest; the outlier swamps the input's small values)",
    },
)
