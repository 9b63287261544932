"""Output folders ondevice owns: it never writes over, or deletes, a file it did not write.

Every output folder ondevice creates (a distill/run `output_dir`, an `ondevice export --out` folder, a bench report
folder) gets a marker file, `.ondevice-owner.json`: the ondevice version, the recipe hash and a manifest of every
file ondevice wrote there (each atomic write is recorded as it lands, so the manifest is complete even after a
killed run). Rules:

- a folder that exists, is not empty and carries no marker belongs to someone else: it is refused with the files
  found and the `--force` flag that adopts it (ondevice then overwrites the files it writes, and still never
  deletes one it did not write);
- system locations (`/`, `/etc`, `/usr`, the home folder itself, ...) are refused always; a relative path that
  climbs out of the working directory (`../../x`) is refused unless it was given explicitly on the command line;
- `--fresh` deletes only files listed in the manifest;
- temporary files of a killed run (`.<name>.ondevice-tmp-<pid>.*`, see ondevice.io) are removed when the folder is
  claimed again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import OutputDirError
from .io import atomic_write_json, is_leftover, on_write, read_json, sweep_leftovers

MARKER = ".ondevice-owner.json"
MARKER_FORMAT = "ondevice.output-dir"
MARKER_VERSION = 1

# refused as output folders themselves; the first group also refuses anything inside it
_SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run", "/sbin",
                 "/sys", "/usr")
_SYSTEM_ROOTS = ("/", "/home", "/mnt", "/media", "/opt", "/root", "/srv", "/tmp", "/var", "/var/tmp", "/snap")

_OWNED: dict[Path, "OwnedDir"] = {}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def recipe_hash(recipe_dict: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]


class OwnedDir:
    """A claimed output folder and its manifest (paths relative to the folder, '/'-separated)."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path = path
        self.data = data

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def files(self) -> list[str]:
        return list(self.data.get("files", []))

    def save(self) -> None:
        self.data["updated_utc"] = _now()
        atomic_write_json(self.marker, self.data)

    def record(self, written: Path) -> None:
        """Add a file ondevice just wrote under this folder to the manifest (called by the io write hook)."""
        rel = written.relative_to(self.path).as_posix()
        if rel == MARKER or rel in self.data["files"]:
            return
        if not self.marker.exists():  # the folder was deleted or emptied behind our back: stop recording
            _OWNED.pop(self.path, None)
            return
        self.data["files"].append(rel)
        self.save()

    def remove_written(self, under: str = "") -> list[str]:
        """Delete the files ondevice wrote (optionally only those under the subfolder `under`); returns them."""
        prefix = under.strip("/") + "/" if under else ""
        gone = [rel for rel in self.files() if rel.startswith(prefix) and rel != MARKER]
        for rel in gone:
            p = self.path / rel
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.data["files"] = [rel for rel in self.files() if rel not in gone]
        self._remove_empty_dirs(gone)
        self.save()
        return gone

    def _remove_empty_dirs(self, removed: list[str]) -> None:
        for rel in sorted({str(Path(r).parent) for r in removed if "/" in r}, key=len, reverse=True):
            d = self.path / rel
            while d != self.path and d.is_dir() and not any(d.iterdir()):
                d.rmdir()
                d = d.parent


def _record_write(path: Path) -> None:
    if not _OWNED:
        return
    p = Path(os.path.abspath(path))
    for root, owned in list(_OWNED.items()):
        if p != root and root in p.parents:
            owned.record(p)


on_write(_record_write)


def check_location(path: str | os.PathLike, *, explicit: bool = False) -> Path:
    """The absolute folder for `path`, or OutputDirError for a system location or (unless `explicit`) a relative
    path that leaves the working directory."""
    raw = str(path)
    if not raw.strip():
        raise OutputDirError("the output folder is empty (''); set output_dir to a folder such as runs/my-run")
    lexical = Path(os.path.abspath(os.path.expanduser(raw)))
    for p in {lexical, lexical.resolve()}:
        s = p.as_posix()
        home = Path.home().resolve().as_posix()
        if s in _SYSTEM_ROOTS or s in _SYSTEM_TREES or s == home or any(s.startswith(t + "/") for t in _SYSTEM_TREES):
            raise OutputDirError(f"refusing to write into {s}{' (via ' + raw + ')' if raw != s else ''}: it is a system "
                                 f"location{' (your home folder itself)' if s == home else ''}; choose a folder of "
                                 f"its own, e.g. runs/my-run")
    cwd = Path.cwd()
    if not explicit and not os.path.isabs(os.path.expanduser(raw)) and cwd != lexical and cwd not in lexical.parents:
        raise OutputDirError(f"output folder {raw!r} resolves to {lexical}, outside the working directory {cwd}; use "
                             f"a folder inside it, an absolute path, or give it explicitly on the command line "
                             f"(--set output_dir={raw} or --out {raw})")
    return lexical


def _foreign_listing(path: Path) -> list[str]:
    names = sorted(e.name for e in path.iterdir() if e.name != MARKER)
    return [n for n in names if not is_leftover(n)]


def _read_marker(path: Path) -> dict[str, Any] | None:
    m = path / MARKER
    if not m.exists():
        return None
    try:
        data = read_json(m)
    except (OSError, ValueError) as e:
        raise OutputDirError(f"{m} is unreadable ({type(e).__name__}: {e}); delete it and pass --force to let "
                             f"ondevice adopt {path} again") from None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(data.get("files"), list):
        raise OutputDirError(f"{m} is not an ondevice ownership marker; delete it and pass --force to adopt {path}")
    data["files"] = [f for f in data["files"] if isinstance(f, str) and ".." not in Path(f).parts
                     and not os.path.isabs(f)]
    return data


def claim(path: str | os.PathLike, *, recipe: str | None = None, force: bool = False, explicit: bool = False,
          purpose: str = "output") -> OwnedDir:
    """Make `path` an ondevice-owned output folder (see the module docstring) and return it.

    recipe:   the recipe hash recorded in the marker; force: adopt a non-empty folder without a marker;
    explicit: the path was given on the command line (may then leave the working directory).
    """
    p = check_location(path, explicit=explicit)
    if p.exists() and not p.is_dir():
        raise OutputDirError(f"output folder {p} is a file; choose another output folder")
    data = _read_marker(p) if p.is_dir() else None
    if data is None:
        found = _foreign_listing(p) if p.is_dir() else []
        if found and not force:
            shown = ", ".join(found[:8]) + (f", ... ({len(found) - 8} more)" if len(found) > 8 else "")
            raise OutputDirError(
                f"output folder {p} already holds files ondevice did not write ({shown}) and has no {MARKER} "
                f"marker. Choose an empty or new folder, or pass --force to let ondevice write there (it overwrites "
                f"only the files it writes and never deletes one it did not write)")
        data = {"format": MARKER_FORMAT, "version": MARKER_VERSION, "created_utc": _now(), "files": [],
                "adopted_with_force": found or None}
    sweep_leftovers(p)
    p.mkdir(parents=True, exist_ok=True)
    from . import __version__

    data.update(ondevice_version=__version__, purpose=purpose, recipe_hash=recipe or data.get("recipe_hash"))
    owned = _OWNED.get(p) or OwnedDir(p, data)
    owned.data = data
    owned.save()
    _OWNED[p] = owned
    return owned


def owner_of(path: str | os.PathLike) -> OwnedDir | None:
    """The claimed folder `path` lies in (innermost), if any, in this process."""
    p = Path(os.path.abspath(path))
    roots = [r for r in _OWNED if r == p or r in p.parents]
    return _OWNED[max(roots, key=lambda r: len(r.parts))] if roots else None


def claim_recipe_dir(recipe, *, force: bool = False, fresh: bool = False, explicit: bool = False,
                     purpose: str = "distill") -> OwnedDir:
    """Claim a recipe's output_dir (marker with the recipe hash); `fresh` deletes the checkpoints ondevice wrote."""
    owned = claim(recipe.output_dir, recipe=recipe_hash(recipe.to_dict()), force=force, explicit=explicit,
                  purpose=purpose)
    if fresh:
        owned.remove_written("checkpoints")
    return owned
