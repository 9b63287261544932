"""Device profiles: what a target device can sustain, loaded from TOML and validated.

Built-in profiles live in `ondevice/profiles/<name>.toml`; a user file is passed by path. Every number in a
profile is an assumption about a class of device (documented with its source in the file), so everything
computed from one is labelled *estimated* with the profile's name.

Schema (units in the key names):

    name = "midrange_phone_cpu"            # required, str
    description = "..."                    # str
    kind = "cpu"                           # cpu | gpu | npu | mcu
    sustained_power_w = 2.0                # required, > 0: power the workload may draw indefinitely (thermal)
    target_inferences_per_s = 30.0         # the rate the application needs (default 30)
    memory_capacity_bytes = 2e9            # required, > 0: RAM the model may use (weights + activations)
    weight_storage_bytes = 2e6             # optional: separate storage the weights execute from (MCU flash)
    sram_bytes = 2e6                       # on-chip SRAM / last-level cache that can hold weights/activations
    memory_bandwidth_bytes_per_s = 17e9    # required, > 0: sustained DRAM bandwidth
    sources = ["..."]                      # citations
    [peak_macs_per_s]                      # required: float32 / float16 / int8, >= 0 (0 or absent: unsupported)
    [energy_pj.mult]                       # pJ per multiply: float32 / float16 / int8 / int32
    [energy_pj.add]                        # pJ per add:      float32 / float16 / int8 / int32
    [energy_pj.memory]                     # pJ per 64-bit access: dram_per_64bit, sram_per_64bit (required)
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ondevice.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "profiles"
COMPUTE_KINDS = ("float32", "float16", "int8")
ARITH_KINDS = ("float32", "float16", "int8", "int32")
DEVICE_KINDS = ("cpu", "gpu", "npu", "mcu")

# A tiny declarative schema: key -> (type, required). Types: "str", "number", "positive", "nonneg",
# "str_list", ("enum", values) or a nested dict (a TOML table).
_NUM_TABLE = lambda keys, req=(): {k: ("nonneg", k in req) for k in keys}  # noqa: E731
SCHEMA: dict[str, tuple[Any, bool]] = {
    "name": ("str", True),
    "description": ("str", False),
    "kind": (("enum", DEVICE_KINDS), False),
    "sustained_power_w": ("positive", True),
    "target_inferences_per_s": ("positive", False),
    "memory_capacity_bytes": ("positive", True),
    "weight_storage_bytes": ("positive", False),
    "sram_bytes": ("nonneg", False),
    "memory_bandwidth_bytes_per_s": ("positive", True),
    "sources": ("str_list", False),
    "peak_macs_per_s": (_NUM_TABLE(COMPUTE_KINDS), True),
    "energy_pj": ({
        "mult": (_NUM_TABLE(ARITH_KINDS), True),
        "add": (_NUM_TABLE(ARITH_KINDS), True),
        "memory": (_NUM_TABLE(("dram_per_64bit", "sram_per_64bit"), req=("dram_per_64bit", "sram_per_64bit")), True),
    }, True),
}


def _type_name(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "table"}.get(type(v),
                                                                                                  type(v).__name__)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _validate(data: Any, schema: dict, path: str, problems: list[tuple[str, str]]) -> None:
    where = path or "<top level>"
    if not isinstance(data, dict):
        problems.append((where, f"expected a table, got {_type_name(data)} ({_show(data)})"))
        return
    for key in data:
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append((f"{path}.{key}" if path else key,
                             f"unknown key {key!r} in {where}; valid keys: {', '.join(schema)}{hint}"))
    for key, (typ, required) in schema.items():
        kp = f"{path}.{key}" if path else key
        if key not in data:
            if required:
                problems.append((kp, f"missing required key {key!r} in {where}"))
            continue
        v = data[key]
        if isinstance(typ, dict):
            _validate(v, typ, kp, problems)
        elif typ == "str":
            if not isinstance(v, str):
                problems.append((kp, f"expected a string, got {_type_name(v)} ({_show(v)})"))
        elif typ == "str_list":
            if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                problems.append((kp, f"expected an array of strings, got {_type_name(v)} ({_show(v)})"))
        elif isinstance(typ, tuple) and typ[0] == "enum":
            if v not in typ[1]:
                problems.append((kp, f"expected one of {', '.join(typ[1])}, got {_type_name(v)} ({_show(v)})"))
        else:  # numbers
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                problems.append((kp, f"expected a number, got {_type_name(v)} ({_show(v)})"))
            elif not math.isfinite(v):
                problems.append((kp, f"expected a finite number, got {v}"))
            elif typ == "positive" and v <= 0:
                problems.append((kp, f"expected a number > 0, got {v}"))
            elif typ == "nonneg" and v < 0:
                problems.append((kp, f"expected a number >= 0, got {v}"))


@dataclass(frozen=True)
class Profile:
    name: str
    sustained_power_w: float
    memory_capacity_bytes: float
    memory_bandwidth_bytes_per_s: float
    peak_macs_per_s: dict[str, float]
    mult_pj: dict[str, float]
    add_pj: dict[str, float]
    dram_pj_per_64bit: float
    sram_pj_per_64bit: float
    description: str = ""
    kind: str = "cpu"
    target_inferences_per_s: float = 30.0
    sram_bytes: float = 0.0
    weight_storage_bytes: float | None = None
    sources: tuple[str, ...] = ()
    path: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def dram_pj_per_byte(self) -> float:
        return self.dram_pj_per_64bit / 8.0

    @property
    def sram_pj_per_byte(self) -> float:
        return self.sram_pj_per_64bit / 8.0

    def to_dict(self) -> dict:
        d = dict(self.raw)
        d["path"] = self.path
        return d


def profile_from_dict(data: dict, source: str = "<dict>") -> Profile:
    problems: list[tuple[str, str]] = []
    _validate(data, SCHEMA, "", problems)
    if not problems and not any(data["peak_macs_per_s"].get(k, 0) > 0 for k in COMPUTE_KINDS):
        problems.append(("peak_macs_per_s", "expected at least one of float32, float16, int8 to be > 0"))
    if problems:
        lines = "\n".join(f"  {kp}: {msg}" for kp, msg in problems)
        raise ConfigError(f"invalid device profile {source}:\n{lines}", problems)
    e = data["energy_pj"]
    return Profile(
        name=data["name"],
        description=data.get("description", ""),
        kind=data.get("kind", "cpu"),
        sustained_power_w=float(data["sustained_power_w"]),
        target_inferences_per_s=float(data.get("target_inferences_per_s", 30.0)),
        memory_capacity_bytes=float(data["memory_capacity_bytes"]),
        weight_storage_bytes=(float(data["weight_storage_bytes"]) if "weight_storage_bytes" in data else None),
        sram_bytes=float(data.get("sram_bytes", 0.0)),
        memory_bandwidth_bytes_per_s=float(data["memory_bandwidth_bytes_per_s"]),
        peak_macs_per_s={k: float(v) for k, v in data["peak_macs_per_s"].items()},
        mult_pj={k: float(v) for k, v in e["mult"].items()},
        add_pj={k: float(v) for k, v in e["add"].items()},
        dram_pj_per_64bit=float(e["memory"]["dram_per_64bit"]),
        sram_pj_per_64bit=float(e["memory"]["sram_per_64bit"]),
        sources=tuple(data.get("sources", ())),
        path=source,
        raw=data,
    )


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"device profile {path} is not valid TOML: {e}", [("<file>", str(e))]) from None


def builtin_profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A built-in profile by name (see `builtin_profile_names()`) or a user TOML file by path."""
    s = str(name_or_path)
    p = Path(s).expanduser()
    if s.endswith(".toml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"device profile file {p} does not exist")
        return profile_from_dict(_read_toml(p), str(p))
    names = builtin_profile_names()
    if s not in names:
        close = difflib.get_close_matches(s, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown device profile {s!r}; built-in profiles: {', '.join(names)}, or pass a path to "
                          f"a .toml file.{hint}", [("profiles", s)])
    return profile_from_dict(_read_toml(PROFILE_DIR / f"{s}.toml"), str(PROFILE_DIR / f"{s}.toml"))


def load_profiles(spec: str | Path | list | tuple | None = "all") -> list[Profile]:
    """"all" (every built-in), a comma-separated string, or a list of names/paths; duplicates dropped."""
    if spec is None or spec == "all":
        items: list = builtin_profile_names()
    elif isinstance(spec, (str, Path)):
        items = [s.strip() for s in str(spec).split(",") if s.strip()]
    else:
        items = list(spec)
    out: list[Profile] = []
    for it in items:
        if it == "all":
            out.extend(load_profile(n) for n in builtin_profile_names())
        else:
            out.append(load_profile(it))
    seen, uniq = set(), []
    for p in out:
        if p.name not in seen:
            seen.add(p.name)
            uniq.append(p)
    return uniq
