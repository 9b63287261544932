"""Energy, latency and fit estimates under a device profile, and measured host energy where the host allows.

Counting (per inference of ONE sample, batch 1), from the source PyTorch model (`count_graph`):
  - MACs: `torch.utils.flop_counter.FlopCounterMode` over one forward pass; it counts the matmul and convolution
    family (mm, addmm, bmm, convolution, attention...), MACs = FLOPs / 2. Element-wise ops (ReLU, add, pooling,
    normalisation) are not counted: for conv/linear networks they are a few percent of the work.
  - activations: forward hooks on every leaf module record the elements of its input and output.
    activation traffic = input elements + 2 x sum(leaf output elements) (each output written once, read once);
    peak activation = max over leaf modules of (input + output elements), the live set one layer needs.
An artifact is costed with its source model's counts (the student it was exported from) and its own precision:
weight bytes come from the artifact's weight dtypes (`inspect()["weight_bytes"]` when the target reports it,
else parameters x bits-per-weight of the precision on its target: `precision_cost`), activation bytes from the
precision.

Model (`estimate`), all *estimated* and labelled with the profile name:
  - weights are resident on chip when there is no separate weight storage and weights + peak activation fit
    `sram_bytes`; otherwise they are read from DRAM (flash on an MCU) once per inference.
  - activations stay on chip when the peak activation fits `sram_bytes`, else they go to DRAM.
  - energy = MACs x (mult[kind] + add[accumulator]) + DRAM bytes x E_dram/8 + on-chip bytes x E_sram/8
    (Horowitz's per-64-bit figures; int8 accumulates in int32). Static/leakage power is not modelled.
  - latency = max(MACs / peak_macs[kind], DRAM bytes / bandwidth) (roofline; on-chip bandwidth assumed ample).
  - highest sustainable rate = min(1 / latency, sustained_power / energy).
  - passes when it fits memory, meets the power budget at `target_inferences_per_s` and reaches that rate.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .profiles import Profile

ACCUMULATOR = {"float32": "float32", "float16": "float16", "int8": "int32"}


def precision_cost(precision: str | None, compute_precision: str | None = None,
                   target: str | None = None) -> tuple[str, float, int, bool]:
    """(compute kind, weight bits, activation bits, assumed?) of `precision` on `target`: the target's TargetSpec
    cost where it declares one, else the precision's own (ondevice.precision.Cost); unknown -> fp32, assumed.

    compute_precision (an artifact's own float compute type, e.g. Core ML's "fp16") overrides a float compute
    kind and the float activation width."""
    from ondevice.precision import get_precision

    if target and target != "pytorch":
        from ondevice.target import get_spec

        cost, assumed = get_spec(target).cost(precision)
    else:
        try:
            cost, assumed = get_precision(precision).cost, False
        except (ValueError, TypeError):
            cost, assumed = get_precision("fp32").cost, True
    k, wb, ab = cost.compute, cost.weight_bits, cost.activation_bits
    cp = str(compute_precision or "").lower()
    if k != "int8" and cp:
        if "16" in cp:
            k, ab = "float16", 16
        elif "32" in cp:
            k, ab = "float32", 32
    return k, wb, ab, assumed


# --- counting from the source model ------------------------------------------------------------------------
def count_graph(model, example) -> dict:
    """MACs and activation elements of one forward pass of `model` on `example`: one sample as the model takes it
    (a (1, ...) tensor, or a tuple / dict of them: token ids and mask, state tensors). Input elements count every
    input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ondevice.tree import call_model, tree_leaves

    leaves = [m for m in model.modules() if not list(m.children())]
    records: list[tuple[str, int, int]] = []  # (module type, input elements, output elements)

    def _numel(t) -> int:
        if isinstance(t, torch.Tensor):
            return t.numel()
        if isinstance(t, (tuple, list)):
            return sum(_numel(v) for v in t)
        if isinstance(t, dict):
            return sum(_numel(v) for v in t.values())
        return 0

    def hook(mod, args, out):
        records.append((type(mod).__name__, _numel(args), _numel(out)))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            out = call_model(model.eval(), example)
    finally:
        for h in handles:
            h.remove()
    flops_by_op = {getattr(k, "__name__", str(k)): int(v) for k, v in fc.get_flop_counts().get("Global", {}).items()}
    in_elems = int(sum(t.numel() for t in tree_leaves(example)))
    out_elems = _numel(out)
    act = sum(o for _, _, o in records) if records else out_elems
    peak = max((i + o for _, i, o in records), default=in_elems + out_elems)
    params = sum(p.numel() for p in model.parameters())
    return {
        "macs": int(fc.get_total_flops() // 2),
        "macs_by_op": {k: v // 2 for k, v in flops_by_op.items()},
        "parameters": int(params),
        "input_elements": in_elems,
        "output_elements": int(out_elems),
        "activation_elements": int(act),
        "peak_activation_elements": int(peak),
        "leaf_modules": len(records),
        "inputs": len(tree_leaves(example)),
        "method": "torch FlopCounterMode (matmul/conv family; MACs = FLOPs/2) + forward hooks on leaf modules, "
                  "one sample (every input)",
    }


def weight_bytes_for(graph: dict, precision: str | None, inspect: dict | None,
                     target: str | None = None) -> tuple[int, str]:
    """Stored weight bytes of an artifact: its inspection's `weight_bytes` (bytes per dtype, the same for every
    target: ondevice.target.Inspection), else parameters x bits-per-weight of the precision on the target."""
    wb = (inspect or {}).get("weight_bytes")
    if isinstance(wb, dict) and wb and all(isinstance(v, (int, float)) for v in wb.values()):
        wb = sum(wb.values())
    if isinstance(wb, (int, float)) and not isinstance(wb, bool) and wb > 0:
        return int(wb), "the artifact's stored weights by dtype (inspect: weight_bytes)"
    _, wbits, _, assumed = precision_cost(precision, target=target)
    expected = int(math.ceil(graph["parameters"] * wbits / 8))
    src = f"{graph['parameters']} parameters x {wbits:g} bits ({precision or 'unknown precision, fp32 assumed'})"
    return expected, src


def estimate(profile: Profile, graph: dict, precision: str | None, weight_bytes: int,
             compute_precision: str | None = None, target: str | None = None) -> dict:
    """Energy / latency / rate / fit of one inference (batch 1) on `profile`. See the module docstring."""
    kind, _, abits, assumed = precision_cost(precision, compute_precision, target)
    out = {"label": f"estimated ({profile.name})", "profile": profile.name, "compute_kind": kind,
           "precision_assumed": assumed, **_placement(profile, graph, weight_bytes, abits / 8.0)}
    mac_pj = profile.mult_pj.get(kind, math.nan) + profile.add_pj.get(ACCUMULATOR[kind], math.nan)
    compute_j = out["macs"] * mac_pj * 1e-12
    memory_j = (out["dram_bytes"] * profile.dram_pj_per_byte + out["onchip_bytes"] * profile.sram_pj_per_byte) * 1e-12
    out.update({"mac_energy_pj": mac_pj, "compute_energy_j": compute_j, "memory_energy_j": memory_j,
                "energy_per_inference_j": compute_j + memory_j})
    peak = profile.peak_macs_per_s.get(kind, 0.0)
    out["supported"] = bool(peak > 0 and math.isfinite(mac_pj))
    if not out["supported"]:
        supported = ", ".join(k for k, v in profile.peak_macs_per_s.items() if v > 0)
        out.update({
            "latency_s": None, "bound": None, "max_rate_latency_per_s": None, "max_rate_power_per_s": None,
            "sustainable_rate_per_s": None, "power_at_target_rate_w": None, "meets_power": False,
            "meets_rate": False, "passes": False,
            "reason": f"profile {profile.name} has no {kind} compute (peak_macs_per_s.{kind} = 0 or missing); "
                      f"use a precision it supports ({supported})",
        })
        return out
    out.update(_rate_and_budget(profile, out, peak))
    return out


def _placement(profile: Profile, graph: dict, weight_bytes: int, abytes: float) -> dict:
    """Where weights and activations live (on-chip SRAM or DRAM), the bytes moved from each, and whether the model
    fits the profile's memory."""
    act_traffic = (graph["input_elements"] + 2 * graph["activation_elements"]) * abytes
    peak_act = graph["peak_activation_elements"] * abytes
    separate_storage = profile.weight_storage_bytes is not None
    weights_on_chip = (not separate_storage) and weight_bytes + peak_act <= profile.sram_bytes
    acts_on_chip = peak_act <= profile.sram_bytes
    if separate_storage:
        fits = weight_bytes <= profile.weight_storage_bytes and peak_act <= profile.memory_capacity_bytes
    else:
        fits = weight_bytes + peak_act <= profile.memory_capacity_bytes
    return {
        "macs": int(graph["macs"]), "weight_bytes": int(weight_bytes),
        "activation_traffic_bytes": float(act_traffic), "peak_activation_bytes": float(peak_act),
        "weights_on_chip": bool(weights_on_chip), "activations_on_chip": bool(acts_on_chip),
        "dram_bytes": float((0 if weights_on_chip else weight_bytes) + (0 if acts_on_chip else act_traffic)),
        "onchip_bytes": float((weight_bytes if weights_on_chip else 0) + (act_traffic if acts_on_chip else 0)),
        "fits_memory": bool(fits),
    }


def _rate_and_budget(profile: Profile, e: dict, peak_macs_per_s: float) -> dict:
    """Roofline latency (compute vs memory bound), the sustainable rate under the latency and the power budget, and
    the verdict against the profile's target rate; `e` holds the placement and energy of one inference."""
    compute_s = e["macs"] / peak_macs_per_s
    memory_s = e["dram_bytes"] / profile.memory_bandwidth_bytes_per_s
    latency = max(compute_s, memory_s)
    energy_j = e["energy_per_inference_j"]
    rate_lat = 1.0 / latency if latency > 0 else math.inf
    rate_pow = profile.sustained_power_w / energy_j if energy_j > 0 else math.inf
    sustainable = min(rate_lat, rate_pow)
    target = profile.target_inferences_per_s
    power_at_target = energy_j * target
    meets_power = power_at_target <= profile.sustained_power_w
    meets_rate = sustainable >= target
    out = {"compute_s": compute_s, "memory_s": memory_s, "latency_s": latency,
           "bound": "compute" if compute_s >= memory_s else "memory",
           "max_rate_latency_per_s": rate_lat, "max_rate_power_per_s": rate_pow, "sustainable_rate_per_s": sustainable,
           "target_rate_per_s": target, "power_at_target_rate_w": power_at_target, "meets_power": bool(meets_power),
           "meets_rate": bool(meets_rate), "passes": bool(e["fits_memory"] and meets_power and meets_rate)}
    if not e["fits_memory"]:
        out["reason"] = "does not fit the profile's memory"
    elif not meets_power:
        out["reason"] = f"needs {power_at_target:.3g} W at {target:g}/s > budget {profile.sustained_power_w:g} W"
    elif not meets_rate:
        out["reason"] = f"sustains only {sustainable:.3g}/s < target {target:g}/s"
    return out


# --- measured host energy ----------------------------------------------------------------------------------
_POWERCAP = Path("/sys/class/powercap")


def host_energy_source() -> tuple[list[Path], str | None]:
    """Top-level RAPL package counters readable here, or ([], why not)."""
    if not _POWERCAP.exists():
        return [], "no /sys/class/powercap on this host (no RAPL driver exposed: a container, VM or non-Intel CPU)"
    zones = sorted(p for p in _POWERCAP.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not zones:
        return [], "no intel-rapl package zones under /sys/class/powercap"
    readable = []
    for z in zones:
        try:
            int((z / "energy_uj").read_text())
            readable.append(z)
        except (OSError, ValueError):
            pass
    if not readable:
        return [], ("intel-rapl energy_uj exists but is not readable by this user (root only since Linux 5.10, "
                    "CVE-2020-8694)")
    return readable, None


def read_host_energy_uj(zones: list[Path]) -> list[int]:
    return [int((z / "energy_uj").read_text()) for z in zones]


def energy_delta_uj(before: list[int], after: list[int], zones: list[Path]) -> int:
    total = 0
    for b, a, z in zip(before, after, zones):
        d = a - b
        if d < 0:  # counter wrapped
            try:
                d += int((z / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                d = 0
        total += d
    return total
