from ondevice.target import TargetSpec

SPEC = TargetSpec(
    name="executorch",
    extra="executorch",
    requires=("executorch", "torchao"),
    precisions=("fp32", "int8_dynamic", "int8_static"),
    suffix=".pte",
    factory="ondevice.targets.executorch.target:ExecuTorchTarget",
    quiet_loggers=("executorch",),
    runtime_modules=("executorch.runtime",),
    dynamic_axes=(),  # a static program: batch from the `batch` option, sequence length fixed from the samples
    description="ExecuTorch program lowered to the XNNPACK delegate (to_edge_transform_and_lower + "
                "XnnpackPartitioner); int8 by PT2E (torchao prepare/convert with the XNNPACKQuantizer, symmetric "
                "per-channel weights); run with executorch.runtime.Runtime",
    options={
        "batch": "static batch size of the exported program (int, default 1, what a phone app runs); run() "
                 "splits larger inputs into chunks of this size and pads the last one",
        "embeddings": "int8 precisions: 'int8' (default) stores every embedding table as uint8 per row with a "
                      "float scale and zero point (torchao's EmbeddingQuantizer; the runtime's "
                      "quantized_decomposed::embedding_byte kernel reads it), 'fp32' leaves the tables in fp32",
    },
)
