"""Precision names shared by every target, and the default verification thresholds for each.

A precision is a *name* (the same across targets) plus a *kind* that decides how its outputs are judged:
float exports by rtol/atol, quantized ones by SQNR (dB) and top-1 agreement on real data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria for an artifact compared with its PyTorch source on held-out real samples.

    Float kinds use `rtol`/`atol` (numpy.allclose semantics) *and* the task's floors; quantized kinds use
    `min_sqnr_db` (every output) and the task's floors. `None` disables a criterion. Which task uses which floor:
    `ondevice.verify` (classification: min_top1_agreement; token_lm: max_kl and min_next_token_agreement; embedding:
    min_cosine and min_nn_agreement).

    Language models have their own, lower agreement floor: a next-token argmax over hundreds or thousands of tokens
    flips on near-ties (two tokens within the artifact's rounding error of each other) far more often than a 10-class
    argmax, while the distribution barely moves. Measured on the conformance byte-level LM: int8 weights at SQNR
    43-45 dB and KL 3-4e-4 nats/token agreed on 97.3-97.8% of next tokens. KL per token is the primary LM floor;
    agreement is the backstop that catches a broken artifact.
    """

    rtol: float | None = None
    atol: float | None = None
    min_sqnr_db: float | None = None
    min_top1_agreement: float | None = None
    min_cosine: float | None = None  # embeddings: mean cosine similarity to the reference vectors
    min_nn_agreement: float | None = None  # embeddings: nearest-neighbour agreement@1 within the verified samples
    max_kl: float | None = None  # language models: mean KL(reference || artifact) per real token, nats
    min_next_token_agreement: float | None = None  # language models: top-1 next-token agreement on real tokens

    def override(self, **kw) -> "Thresholds":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


@dataclass(frozen=True)
class Cost:
    """What one inference costs at a precision, for the energy model: the arithmetic (compute kind), the bits of one
    stored weight and of one activation element between layers. A target overrides it where its runtime differs
    (TargetSpec.precision_costs: Core ML computes palettized and pruned models in fp16)."""

    compute: str  # "float32" | "float16" | "int8"
    weight_bits: float
    activation_bits: int


@dataclass(frozen=True)
class Precision:
    name: str
    kind: str  # "float32" | "float16" | "int8" | "int4" | "lut4" | "sparse"
    description: str
    needs_calibration: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    cost: Cost = Cost("float32", 32, 32)


_F32 = Thresholds(rtol=1e-3, atol=1e-4, min_top1_agreement=0.999, min_cosine=0.9999, min_nn_agreement=0.99,
                  max_kl=1e-4, min_next_token_agreement=0.99)
_F16 = Thresholds(min_sqnr_db=35.0, min_top1_agreement=0.99, min_cosine=0.999, min_nn_agreement=0.95, max_kl=1e-3,
                  min_next_token_agreement=0.97)
_INT8 = Thresholds(min_sqnr_db=20.0, min_top1_agreement=0.98, min_cosine=0.99, min_nn_agreement=0.9, max_kl=0.02,
                   min_next_token_agreement=0.95)
_LOW = Thresholds(min_sqnr_db=12.0, min_top1_agreement=0.95, min_cosine=0.95, min_nn_agreement=0.8, max_kl=0.1,
                  min_next_token_agreement=0.85)
# Post-training pruning without fine-tuning is lossy on small models; these floors catch a broken artifact, not a
# merely pruned one. Fine-tune after pruning (or override the thresholds) when you need more.
_SPARSE = Thresholds(min_sqnr_db=10.0, min_top1_agreement=0.90, min_cosine=0.9, min_nn_agreement=0.7, max_kl=0.3,
                     min_next_token_agreement=0.75)

PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in [
        Precision("fp32", "float32", "32-bit float weights and activations", thresholds=_F32),
        Precision("fp16", "float16", "16-bit float weights (and activations where the runtime computes in fp16)",
                  thresholds=_F16, cost=Cost("float16", 16, 16)),
        # activations stay float between layers; quantized inside each op
        Precision("int8_dynamic", "int8", "int8 weights; activations quantized at run time per batch", thresholds=_INT8,
                  cost=Cost("int8", 8, 32)),
        Precision("int8_static", "int8", "int8 weights (per-channel) and activations, scales calibrated on real samples",
                  needs_calibration=True, thresholds=_INT8, cost=Cost("int8", 8, 8)),
        # weights dequantized, float arithmetic
        Precision("int8_weight_only", "int8", "int8 weights (per-channel), float activations", thresholds=_INT8,
                  cost=Cost("float32", 8, 32)),
        Precision("int4_weight_only", "int4", "4-bit weights quantized per block, float activations", thresholds=_LOW,
                  cost=Cost("float32", 4, 32)),
        # 4-bit indices into a 16-entry LUT
        Precision("palettize4", "lut4", "4-bit k-means palettized weights (16-entry lookup table per tensor)",
                  thresholds=_LOW, cost=Cost("float32", 4, 32)),
        # half the weights kept + a 1-bit mask per weight; MACs counted dense
        Precision("prune50", "sparse", "50% of weights magnitude-pruned (unstructured, no fine-tuning), stored sparse",
                  thresholds=_SPARSE, cost=Cost("float32", 17, 32)),
    ]
}


def get_precision(name: str) -> Precision:
    if name not in PRECISIONS:
        import difflib

        close = difflib.get_close_matches(name, list(PRECISIONS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown precision {name!r}; valid precisions: {', '.join(PRECISIONS)}.{hint}")
    return PRECISIONS[name]
