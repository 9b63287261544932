"""Device profiles (validation) and the energy / roofline estimates, hand-checked on tiny models."""
from __future__ import annotations

import copy
import math

import pytest

from ondevice.bench.energy import count_graph, estimate, host_energy_source, weight_bytes_for
from ondevice.bench.profiles import builtin_profile_names, load_profile, load_profiles, profile_from_dict
from ondevice.errors import ConfigError

BASE = {
    "name": "tiny_device",
    "sustained_power_w": 1e-9,
    "target_inferences_per_s": 10.0,
    "memory_capacity_bytes": 1e6,
    "sram_bytes": 1e6,
    "memory_bandwidth_bytes_per_s": 100.0,
    "peak_macs_per_s": {"float32": 1200.0, "float16": 0.0, "int8": 2400.0},
    "energy_pj": {
        "mult": {"float32": 3.7, "float16": 1.1, "int8": 0.2, "int32": 3.1},
        "add": {"float32": 0.9, "float16": 0.4, "int8": 0.03, "int32": 0.1},
        "memory": {"dram_per_64bit": 1300.0, "sram_per_64bit": 10.0},
    },
}


def _profile(**changes):
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        d[k] = v
    return profile_from_dict(d, "test")


# --- profiles --------------------------------------------------------------------------------------------
def test_builtin_profiles_load_with_horowitz_numbers():
    names = builtin_profile_names()
    for required in ("midrange_phone_cpu", "flagship_phone_cpu", "npu_1w", "mcu"):
        assert required in names
    for p in load_profiles("all"):
        assert p.sustained_power_w > 0 and p.memory_bandwidth_bytes_per_s > 0 and p.memory_capacity_bytes > 0
        # Horowitz, ISSCC 2014 (45 nm): the per-op figures every built-in profile uses
        assert (p.mult_pj["float32"], p.add_pj["float32"], p.mult_pj["int8"], p.add_pj["int8"]) == (3.7, 0.9, 0.2, 0.03)
        assert 1300.0 <= p.dram_pj_per_64bit <= 2600.0 or p.kind == "mcu"
        assert any("Horowitz" in s for s in p.sources)
    assert load_profile("npu_1w").peak_macs_per_s["float32"] == 0.0  # fp32 unsupported on the NPU
    assert [p.name for p in load_profiles("mcu,npu_1w,mcu")] == ["mcu", "npu_1w"]


def test_profile_unknown_key_names_the_key_path():
    d = copy.deepcopy(BASE)
    d["energy_pj"]["mult"]["float64"] = 9.9
    d["sustained_power"] = 2.0
    with pytest.raises(ConfigError, match=r"energy_pj\.mult\.float64: unknown key 'float64'") as ei:
        profile_from_dict(d, "x.toml")
    msg = str(ei.value)
    assert "did you mean 'sustained_power_w'?" in msg
    assert ("energy_pj.mult.float64", ) == tuple(kp for kp, _ in ei.value.problems if kp.startswith("energy"))


def test_profile_wrong_type_says_expected_and_got():
    d = copy.deepcopy(BASE)
    d["sustained_power_w"] = "2W"
    d["peak_macs_per_s"]["int8"] = [1, 2]
    d["energy_pj"]["memory"] = 5
    with pytest.raises(ConfigError) as ei:
        profile_from_dict(d, "bad.toml")
    msg = str(ei.value)
    assert "sustained_power_w: expected a number, got str ('2W')" in msg
    assert "peak_macs_per_s.int8: expected a number, got array ([1, 2])" in msg
    assert "energy_pj.memory: expected a table, got int (5)" in msg
    assert "invalid device profile bad.toml" in msg


def test_profile_missing_and_negative_values():
    d = copy.deepcopy(BASE)
    del d["memory_bandwidth_bytes_per_s"]
    d["memory_capacity_bytes"] = -1
    d["kind"] = "toaster"
    with pytest.raises(ConfigError) as ei:
        profile_from_dict(d)
    msg = str(ei.value)
    assert "memory_bandwidth_bytes_per_s: missing required key" in msg
    assert "memory_capacity_bytes: expected a number > 0, got -1" in msg
    assert "kind: expected one of cpu, gpu, npu, mcu, got str ('toaster')" in msg
    with pytest.raises(ConfigError, match="at least one of float32, float16, int8"):
        _profile(peak_macs_per_s={"float32": 0.0})


def test_profile_files_and_names(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown device profile 'midrange_phone'.*Did you mean 'midrange_phone_cpu'"):
        load_profile("midrange_phone")
    f = tmp_path / "mine.toml"
    f.write_text(open(load_profile("mcu").path).read().replace('name = "mcu"', 'name = "my_mcu"'))
    assert load_profile(f).name == "my_mcu"
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nsustained_power_w = "lots"\n')
    with pytest.raises(ConfigError, match=r"sustained_power_w: expected a number, got str \('lots'\)"):
        load_profile(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(broken)
    with pytest.raises(FileNotFoundError):
        load_profile(tmp_path / "missing.toml")


# --- counting and estimates --------------------------------------------------------------------------------
def _linear():
    import torch

    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_count_graph_linear_and_conv():
    import torch

    g = count_graph(_linear(), torch.zeros(1, 4))
    assert g["macs"] == 12  # 4 inputs x 3 outputs
    assert g["parameters"] == 15  # 12 weights + 3 biases
    assert (g["input_elements"], g["output_elements"], g["activation_elements"], g["peak_activation_elements"]) \
        == (4, 3, 3, 7)
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU())
    g = count_graph(conv, torch.zeros(1, 1, 5, 5))
    assert g["macs"] == 2 * 1 * 3 * 3 * 5 * 5  # Cout * Cin * kh * kw * H * W = 450
    assert g["activation_elements"] == 50 + 50  # conv output, relu output
    assert g["peak_activation_elements"] == 50 + 50  # the ReLU: 50 in + 50 out (conv: 25 + 50)


def test_energy_hand_checked_fp32_on_chip():
    import torch

    g = count_graph(_linear(), torch.zeros(1, 4))
    p = _profile()
    wb, src = weight_bytes_for(g, "fp32", None)
    assert wb == 60 and "15 parameters x 32 bits" in src
    e = estimate(p, g, "fp32", wb)
    # weights 60 B + activations (4 in + 2 x 3 out) x 4 B = 40 B, all on chip (sram 1 MB)
    assert e["weights_on_chip"] and e["activations_on_chip"]
    assert e["dram_bytes"] == 0 and e["onchip_bytes"] == 100
    assert e["compute_energy_j"] == pytest.approx(12 * (3.7 + 0.9) * 1e-12)  # 55.2 pJ
    assert e["memory_energy_j"] == pytest.approx(100 * 10 / 8 * 1e-12)  # 125 pJ
    assert e["energy_per_inference_j"] == pytest.approx(180.2e-12)
    assert e["latency_s"] == pytest.approx(12 / 1200.0) and e["bound"] == "compute"  # 10 ms
    assert e["max_rate_latency_per_s"] == pytest.approx(100.0)
    assert e["sustainable_rate_per_s"] == pytest.approx(1e-9 / 180.2e-12)  # power-limited: 5.55 /s
    assert e["power_at_target_rate_w"] == pytest.approx(10 * 180.2e-12)
    assert e["fits_memory"] and not e["meets_power"] and not e["meets_rate"] and not e["passes"]
    assert e["label"] == "estimated (tiny_device)"
    assert "W at 10/s > budget" in e["reason"]


def test_energy_hand_checked_int8_from_dram():
    import torch

    g = count_graph(_linear(), torch.zeros(1, 4))
    p = _profile(sram_bytes=0, sustained_power_w=1.0)
    e = estimate(p, g, "int8_static", weight_bytes_for(g, "int8_static", None)[0])
    assert e["compute_kind"] == "int8" and e["weight_bytes"] == 15
    # 15 B of weights + (4 + 2 x 3) x 1 B of activations, all from DRAM at 1300 pJ / 8 B
    assert e["dram_bytes"] == 25 and e["onchip_bytes"] == 0
    assert e["energy_per_inference_j"] == pytest.approx((12 * (0.2 + 0.1) + 25 * 1300 / 8) * 1e-12)  # 4066.1 pJ
    assert e["memory_s"] == pytest.approx(25 / 100.0) and e["compute_s"] == pytest.approx(12 / 2400.0)
    assert e["bound"] == "memory" and e["latency_s"] == pytest.approx(0.25)
    assert e["sustainable_rate_per_s"] == pytest.approx(4.0)  # latency-limited below the 10/s target
    assert e["meets_power"] and not e["meets_rate"] and not e["passes"]
    ok = estimate(_profile(sram_bytes=0, sustained_power_w=1.0, target_inferences_per_s=2.0), g, "int8_static", 15)
    assert ok["passes"]
    small = estimate(_profile(memory_capacity_bytes=50), g, "fp32", 60)  # 60 B weights + 28 B peak > 50 B
    assert not small["fits_memory"] and not small["passes"]


def test_energy_unsupported_kind_and_weight_sources():
    import torch

    g = count_graph(_linear(), torch.zeros(1, 4))
    e = estimate(_profile(), g, "fp16", 30)
    assert not e["supported"] and not e["passes"] and e["latency_s"] is None
    assert "no float16 compute" in e["reason"] and "float32, int8" in e["reason"]
    # Core ML's compute precision overrides the float kind
    assert estimate(_profile(), g, "fp32", 60, compute_precision="FLOAT16")["compute_kind"] == "float16"
    assert weight_bytes_for(g, "fp32", {"weight_bytes": {"float32": 48, "int64": 16}})[0] == 64
    # every target reports bytes under weight_bytes and tensor counts under weight_dtypes (ondevice.target.Inspection):
    # counts are never taken for bytes, and no size heuristic guesses which is which
    assert weight_bytes_for(g, "fp32", {"weight_dtypes": {"float16": 30}})[0] == 60
    assert weight_bytes_for(g, "int8_static", {"weight_dtypes": {"int8": 1, "float32": 2}})[0] == 15
    assert math.isclose(weight_bytes_for(g, "int4_weight_only", None)[0], 8)  # ceil(15 x 4 / 8)


def test_precision_costs_come_from_the_target_spec(monkeypatch):
    """One table: the precision's own Cost, overridden by a target that computes differently (its TargetSpec)."""
    import torch

    import ondevice.target as target_mod
    from ondevice.bench.energy import precision_cost
    from ondevice.precision import Cost
    from ondevice.target import TargetSpec, register_target, target_names

    target_names()
    monkeypatch.setattr(target_mod.SPECS, "_items", dict(target_mod.SPECS._items))
    monkeypatch.setenv(target_mod.REGISTERED_ENV, "")
    register_target(TargetSpec(name="npu_sim", extra="x", requires=(), precisions=("palettize4",), suffix=".npu",
                               factory="ondevice_no_such:T", precision_costs={"palettize4": Cost("float16", 4, 16)}))
    assert precision_cost("palettize4") == ("float32", 4, 32, False)  # the precision's own
    assert precision_cost("palettize4", target="npu_sim") == ("float16", 4, 16, False)  # the target's override
    assert precision_cost("int3", target="npu_sim")[3] is True  # unknown: fp32, assumed
    g = count_graph(_linear(), torch.zeros(1, 4))
    assert estimate(_profile(), g, "palettize4", 8, target="npu_sim")["compute_kind"] == "float16"


def test_count_graph_counts_every_input_of_a_two_input_model():
    import torch

    from ondevice.textnets import text_encoder

    torch.manual_seed(0)
    m = text_encoder(vocab_size=50, dim=8, layers=1, heads=2, ffn=16, max_len=8, num_classes=3)
    ids, mask = torch.ones(1, 8, dtype=torch.long), torch.ones(1, 8, dtype=torch.long)
    g = count_graph(m, {"input_ids": ids, "attention_mask": mask})
    assert g["inputs"] == 2 and g["input_elements"] == 16
    # q, k, v, out projections (4 x 8 x 8) + FFN (8 x 16 x 2) per token, 8 tokens, + attention (2 x 8 x 8 x 8)
    # + the classifier (8 x 3)
    assert g["macs"] == 8 * (4 * 64 + 2 * 128) + 2 * 8 * 8 * 8 + 24


def test_host_energy_source_says_why_when_unavailable():
    zones, reason = host_energy_source()
    assert bool(zones) != bool(reason)
    if reason:
        assert "powercap" in reason or "rapl" in reason.lower()
