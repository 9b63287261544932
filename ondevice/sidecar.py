"""The artifact record `<artifact>.json`: the one place that writes, reads and validates it, and decides whether the
status it records still applies to the file beside it.

Schema (version 2; `ondevice.artifact`): what was made (target, precision, path, options), from what (the sha256 of
the student weights and of the verification arrays), the artifact's own sha256 and size (a directory artifact such
as .mlpackage is hashed over its sorted files), how it was judged (status, error, verification statistics, the
precision check against the weights' stored dtypes), what it contains (inspect, runtime_memory), and with what
(ondevice and library versions, machine). `input_spec` is reserved for the model's input spec (None until set).

A status is only believed while the file still has the recorded sha256: `check()` re-hashes it, and a file that
changed since verification is "unverified" until it is verified again on real data.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import SidecarError
from .io import atomic_write_json, library_versions, read_json, sha256_file

SCHEMA = "ondevice.artifact"
SCHEMA_VERSION = 2
STATUSES = ("verified", "failed", "error", "unverified", "degenerate reference")


def _model():
    """The pydantic model of a schema-2 record (built on first use: pydantic stays out of `import ondevice`)."""
    global _RECORD
    if _RECORD is None:
        from pydantic import BaseModel, ConfigDict, Field

        def hex64():
            return Field(None, pattern=r"^[0-9a-f]{64}$")

        class SidecarRecord(BaseModel):
            model_config = ConfigDict(extra="forbid", strict=True)
            schema_: Literal["ondevice.artifact"] = Field(alias="schema")
            schema_version: Literal[2]
            target: str
            precision: str
            path: str
            status: Literal["verified", "failed", "error", "unverified", "degenerate reference"]
            error: str | None = None
            sha256: str | None = hex64()
            size_bytes: int | None = Field(None, ge=0)
            hash_method: Literal["file", "tree"] | None = None
            student_sha256: str | None = hex64()
            verify_data_sha256: str | None = hex64()
            verification: dict[str, Any] | None = None
            precision_check: dict[str, Any] | None = None
            inspect: dict[str, Any] | None = None
            runtime_memory: dict[str, Any] | None = None
            options: dict[str, Any] = Field(default_factory=dict)
            seconds: dict[str, Any] = Field(default_factory=dict)
            machine: dict[str, Any] | None = None
            input_spec: dict[str, Any] | None = None
            ondevice_version: str
            libraries: dict[str, str | None] = Field(default_factory=dict)
            created_utc: str

        _RECORD = SidecarRecord
    return _RECORD


_RECORD = None


# --- hashes ----------------------------------------------------------------------------------------------------
def digest(path: str | os.PathLike) -> tuple[str, int, str]:
    """(sha256, size in bytes, method) of an artifact: a file's bytes, or for a directory (.mlpackage) a hash over
    its files in sorted order (relative path, NUL, the file's sha256, newline)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        size = 0
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
            size += f.stat().st_size
        return h.hexdigest(), size, "tree"
    return sha256_file(p), p.stat().st_size, "file"


def array_digest(*arrays: Any) -> str:
    """sha256 over the dtype, shape and bytes of each array (None entries count as absent)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none;")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


# --- write / read ----------------------------------------------------------------------------------------------
def record_path(artifact: str | os.PathLike) -> Path:
    return Path(str(artifact).rstrip("/") + ".json")


def make_record(fields: dict[str, Any]) -> dict[str, Any]:
    """A validated schema-2 record from an Artifact's fields (adds schema, versions, creation time)."""
    from . import __version__

    rec = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **fields, "ondevice_version": __version__,
           "libraries": library_versions(),
           "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    return validate(rec, "new record")


def write(fields: dict[str, Any]) -> Path:
    """Validate and atomically write `<fields['path']>.json`."""
    rec = make_record(fields)
    return atomic_write_json(record_path(rec["path"]), rec)


def validate(rec: Any, where: str) -> dict[str, Any]:
    """The record as a plain dict, or SidecarError naming the field; schema 1 (no schema_version) is returned as is."""
    from . import io

    if not isinstance(rec, dict):
        raise SidecarError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    version = rec.get("schema_version", 1)
    if version == 1 and "schema" not in rec:
        return {**rec, "schema_version": 1}
    if version != SCHEMA_VERSION:
        raise SidecarError(f"{where}: schema_version {version!r} is not one this ondevice reads ({SCHEMA_VERSION}); "
                           f"re-export the artifact with this version, or upgrade ondevice")
    from pydantic import ValidationError

    try:
        m = _model().model_validate(io._jsonable(rec))
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "(top level)"
        raise SidecarError(f"{where}: {field}: {first['msg']} (got {str(first.get('input'))[:80]!r}); the record "
                           f"is damaged: re-export the artifact") from None
    return m.model_dump(by_alias=True)


def read(artifact: str | os.PathLike) -> dict[str, Any] | None:
    """The validated record beside `artifact`, None when there is none; SidecarError when it is unreadable."""
    p = record_path(artifact)
    if not p.is_file():
        return None
    try:
        rec = read_json(p)
    except (OSError, ValueError, RecursionError) as e:
        raise SidecarError(f"{p}: not readable JSON ({type(e).__name__}: {str(e)[:120]}); the record is damaged: "
                           f"re-export the artifact") from None
    return validate(rec, str(p))


# --- trust ------------------------------------------------------------------------------------------------------
@dataclass
class Trust:
    """The status to believe for an artifact file, and why.

    hash: "match" (the file is what was verified) | "changed" | "not recorded" (a schema-1 record) | "no record" |
          "invalid record" | "missing file"
    """

    status: str
    reason: str | None
    hash: str
    recorded_sha256: str | None = None
    actual_sha256: str | None = None
    reverified: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "hash": self.hash, "reverified": self.reverified,
                "recorded_sha256": self.recorded_sha256, "actual_sha256": self.actual_sha256}

    def after_reverify(self, comparison: dict[str, Any], n: int) -> "Trust":
        """This trust after a fresh verification on real data (a Comparison.to_dict())."""
        passed = bool(comparison.get("passed"))
        why = "; ".join(comparison.get("failures") or [])
        return Trust("verified" if passed else "failed",
                     f"re-verified on {n} samples after: {self.reason}" + ("" if passed else f"; failed: {why}"),
                     self.hash, self.recorded_sha256, self.actual_sha256, reverified=True)


def check(artifact: str | os.PathLike, rec: dict[str, Any] | None = None, *, load: bool = True) -> Trust:
    """Re-hash `artifact` and compare with its record (read from disk when `rec` is None and `load`)."""
    p = Path(artifact)
    if rec is None and load:
        try:
            rec = read(p)
        except SidecarError as e:
            return Trust("unverified", f"unverified: {e}", "invalid record")
    if not p.exists():
        return Trust("error", f"artifact {p} does not exist", "missing file", (rec or {}).get("sha256"))
    if rec is None:
        return Trust("unverified", f"unverified: no record {record_path(p).name} beside {p.name}: nothing says it "
                                   f"was compared with its PyTorch model", "no record")
    if not rec.get("sha256"):
        return Trust("unverified", "unverified: its record carries no sha256 (written before ondevice recorded "
                                   "artifact hashes); re-export it to verify it", "not recorded")
    actual, size, _ = digest(p)
    if actual != rec["sha256"]:
        return Trust("unverified", f"unverified: file changed since verification (sha256 recorded "
                                   f"{rec['sha256'][:12]}..., now {actual[:12]}...; size {rec.get('size_bytes')} -> "
                                   f"{size} bytes)", "changed", rec["sha256"], actual)
    return Trust(rec.get("status") or "unverified", rec.get("error"), "match", rec["sha256"], actual)
