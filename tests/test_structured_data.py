"""Structured samples: input trees (tuples, dicts), targets of any shape, a real collate step that pads to the longest
sequence with a mask, lazily read data (memory-mapped arrays, map-style datasets), user datasets as recipe references
seen by every command, and the input spec inferred from a batch."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from ondevice.data import (ArraySplit, SampleSplit, from_torch_dataset, load_dataset, memmap_split, pad_collate,
                           trim_padding)
from ondevice.errors import ConfigError
from ondevice.spec import InputSpec, TensorSpec, infer_spec
from ondevice.tree import call_model

from helpers import cli


class Ragged(torch.utils.data.Dataset):
    """Token sequences of different lengths (real-looking ids), labels 0..2."""

    def __len__(self):
        return 7

    def __getitem__(self, i):
        return {"input_ids": torch.arange(1, 3 + i), "labels": i % 3}


def test_pad_collate_pads_to_the_longest_and_builds_the_mask():
    split = SampleSplit(Ragged())
    x, y = split.batch(torch.tensor([0, 3, 1]))
    assert x["input_ids"].tolist() == [[1, 2, 0, 0, 0], [1, 2, 3, 4, 5], [1, 2, 3, 0, 0]]
    assert x["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert y.tolist() == [0, 0, 1]
    # token targets are padded with the ignore index, not with a real token id
    _, yy = pad_collate([(torch.tensor([5]), torch.tensor([7, 8])), (torch.tensor([5]), torch.tensor([9]))])
    assert yy.tolist() == [[7, 8], [9, -100]]
    with pytest.raises(ValueError, match=r"cannot batch float inputs of different shapes"):
        pad_collate([(torch.zeros(3), 0), (torch.zeros(4), 1)])


def test_from_torch_dataset_keeps_dtypes_and_forms():
    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):  # ((ids, mask), label): a tuple input, not one float tensor
            return (torch.tensor([i, i + 1]), torch.tensor([1, 1])), i

    s = from_torch_dataset(Pairs(), num_classes=4)
    assert isinstance(s.x, tuple) and s.x[0].dtype == torch.int64 and s.x[0].shape == (4, 2)
    d = from_torch_dataset(Ragged())
    assert set(d.x) == {"input_ids", "attention_mask"} and d.x["input_ids"].shape == (7, 8)
    with pytest.raises(TypeError, match=r"dataset item 0 is a str; expected an \(inputs, target\) pair or a dict"):
        from_torch_dataset(["not a pair"])
    with pytest.raises(TypeError, match=r"item 0 input \(object\) is not a tensor, array or number .* tokenizer for "
                                        r"text, ToTensor for PIL images"):
        from_torch_dataset([(object(), 1)])


def test_trim_padding_cuts_to_the_longest_real_sequence():
    x = {"input_ids": torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0, 0],
                                                                                                   [1, 0, 0, 0]])}
    y = torch.tensor([[6, -100, -100, -100], [-100, -100, -100, -100]])
    tx, ty = trim_padding(x, y)
    assert tx["input_ids"].shape == (2, 2) and ty.shape == (2, 2) and ty.tolist() == [[6, -100], [-100, -100]]
    img = torch.zeros(2, 1, 4, 4)
    assert trim_padding(img, torch.zeros(2))[0] is img


def test_memmap_split_reads_lazily(tmp_path):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(1000, 16)).astype(np.int64)
    np.save(tmp_path / "x.input_ids.npy", ids)
    np.save(tmp_path / "x.attention_mask.npy", np.ones_like(ids))
    np.save(tmp_path / "y.npy", rng.integers(0, 5, size=1000).astype(np.int64))
    s = memmap_split(tmp_path)
    assert len(s) == 1000 and set(s.x) == {"attention_mask", "input_ids"}
    x, y = s.batch(torch.tensor([3, 999]))
    assert x["input_ids"].tolist() == ids[[3, 999]].tolist() and y.shape == (2,)
    # read lazily from the file: a row changed on disk after the split was opened is what the next batch sees
    disk = np.load(tmp_path / "x.input_ids.npy", mmap_mode="r+")
    disk[3] = 77
    disk.flush()
    assert s.batch(torch.tensor([3]))[0]["input_ids"].tolist() == [[77] * 16]
    with pytest.raises(Exception, match=r"holds no x\.npy or x\.<name>\.npy"):
        memmap_split(tmp_path / "empty")


def test_array_split_any_targets():
    x = {"a": torch.zeros(5, 3), "b": torch.ones(5, 2, dtype=torch.long)}
    s = ArraySplit(x, {"head1": torch.arange(5), "head2": torch.rand(5, 4)})
    xb, yb = s.batch(torch.tensor([4, 0]))
    assert yb["head2"].shape == (2, 4) and xb["b"].dtype == torch.long
    assert ArraySplit(x, None).take(2).batch(torch.tensor([1]))[1] is None
    with pytest.raises(ValueError, match=r"x has 5 samples and y 4"):
        ArraySplit(x, torch.zeros(4))


def test_infer_spec_names_dtypes_and_dynamic_axes():
    x = {"input_ids": torch.zeros(2, 9, dtype=torch.long), "attention_mask": torch.ones(2, 9, dtype=torch.long)}
    spec = infer_spec(x, torch.zeros(2, 9, 50), preprocessing={"max_length": 9})
    assert spec.names == ["input_ids", "attention_mask"]
    assert spec.inputs[0].shape == ("batch", "seq") and spec.outputs[0].shape == ("batch", "seq", 50)
    assert InputSpec.from_dict(spec.to_dict()) == spec
    img = infer_spec(torch.zeros(4, 1, 28, 28))
    assert img.inputs[0] == TensorSpec("x", "float32", ("batch", 1, 28, 28))
    named = {"input_ids": np.zeros((1, 9), np.int64), "attention_mask": np.ones((1, 9), np.int64)}
    assert set(spec.unflatten(named)) == {"input_ids", "attention_mask"}
    with pytest.raises(ConfigError, match=r"missing input\(s\) 'attention_mask'.*The model takes exactly: input_ids "
                                          r"\(int64 \['batch', 'seq'\]\), attention_mask"):
        spec.unflatten({"input_ids": named["input_ids"]})
    fixed = spec.fixed(seq=8)
    with pytest.raises(ConfigError, match=r"input 'input_ids': axis 1 must be 8 \(fixed when exported\), got 9; the "
                                          r"sequence is longer than the exported length"):
        fixed.check(named)
    with pytest.raises(ConfigError, match=r"input 'input_ids': expected dtype int64, got float32"):
        spec.check({**named, "input_ids": named["input_ids"].astype(np.float32)})
    tup = infer_spec((torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long)))
    assert tup.names == ["input_0", "input_1"] and tup.structure == ["tuple", ["tensor", "tensor"]]
    m = torch.nn.Bilinear(3, 4, 2)
    assert call_model(m, tup.unflatten({"input_0": torch.zeros(1, 3), "input_1": torch.zeros(1, 4)})).shape == (1, 2)


USER_DATA = '''
import torch
from ondevice.data import ArraySplit


def make(*, root, seed, val_fraction, n=300, length=12):
    """Structured data the registry does not know: (ids, mask) tuples; class c draws most of its ids from its own
    range [1 + 12c, 12 + 12c], the rest uniformly (a bag of ids can learn it)."""
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 4, (n,), generator=g)
    own = 1 + 12 * y[:, None] + torch.randint(0, 12, (n, length), generator=g)
    noise = torch.randint(1, 50, (n, length), generator=g)
    ids = torch.where(torch.rand(n, length, generator=g) < 0.6, own, noise)
    splits = [ArraySplit((ids[a:b], torch.ones_like(ids[a:b])), y[a:b]) for a, b in ((0, 200), (200, 250), (250, 300))]
    return {"train": splits[0], "val": splits[1], "test": splits[2]}
'''

USER_MODEL = '''
import torch
from torch import nn


class BagOfIds(nn.Module):
    def __init__(self, vocab=50, dim=16, classes=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, ids, mask):  # (B, T) int64 each -> (B, classes)
        m = mask.unsqueeze(-1).float()
        return self.out((self.emb(ids) * m).sum(1) / m.sum(1))
'''


def test_user_dataset_reference_is_seen_by_distill_and_export(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(USER_DATA)
    (pkg / "nets.py").write_text(USER_MODEL)
    recipe = tmp_path / "r.toml"
    recipe.write_text(textwrap.dedent(f"""
        seed = 0
        threads = 1
        output_dir = "{tmp_path / 'out'}"
        [teacher]
        model = "userpkg.nets:BagOfIds"
        kwargs = {{ dim = 32 }}
        [teacher.train]
        epochs = 8
        lr = 1e-2
        batch_size = 50
        [student]
        model = "userpkg.nets:BagOfIds"
        kwargs = {{ dim = 8 }}
        [data]
        dataset = "userpkg.data:make"
        kwargs = {{ n = 300 }}
        [train]
        epochs = 8
        lr = 1e-2
        batch_size = 50
        """))
    env = {"PYTHONPATH": str(tmp_path)}
    p = cli("distill", str(recipe), env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    import json

    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [t["name"] for t in r["input_spec"]["inputs"]] == ["input_0", "input_1"]
    assert r["teacher"]["test_acc"] > 0.5  # learnable from the first token
    p = cli("export", str(tmp_path / "out"), "-t", "onnxruntime", "-p", "fp32", env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]  # the run's own data, (ids, mask) inputs
    monkeypatch.syspath_prepend(str(tmp_path))
    splits = load_dataset("userpkg.data:make", kwargs={"n": 300})
    assert len(splits.train) == 200 and isinstance(splits.test.x, tuple)
    with pytest.raises(ConfigError, match=r"dataset 'userpkg\.data:make' does not take data\.kwargs \['bogus'\]"):
        load_dataset("userpkg.data:make", kwargs={"bogus": 1})
    with pytest.raises(ConfigError, match=r"dataset reference 'userpkg\.data:nothing': module 'userpkg\.data' has no "
                                          r"attribute 'nothing'"):
        load_dataset("userpkg.data:nothing")


def test_sample_split_through_the_trainer(tmp_path):
    """A lazily read, ragged map-style dataset trains through ondevice.distill (padding per batch)."""
    from ondevice.config import recipe_from_dict
    from ondevice.data import DatasetInfo, DatasetSplits, register_dataset
    from ondevice.distill import distill

    class Seqs(torch.utils.data.Dataset):
        def __init__(self, n, offset):
            g = torch.Generator().manual_seed(offset)
            self.lengths = torch.randint(3, 12, (n,), generator=g)
            self.first = torch.randint(1, 40, (n,), generator=g)

        def __len__(self):
            return len(self.lengths)

        def __getitem__(self, i):
            ids = torch.full((int(self.lengths[i]),), int(self.first[i]))
            return {"input_ids": ids, "labels": int(self.first[i]) % 3}

    @register_dataset("test-ragged", overwrite=True)
    def _ragged(*, root, seed, val_fraction):
        info = DatasetInfo("test-ragged", 3, (None,), source="memory (ragged)")
        return DatasetSplits(SampleSplit(Seqs(240, 0)), SampleSplit(Seqs(60, 1)), SampleSplit(Seqs(60, 2)), info)

    kw = {"vocab_size": 40, "dim": 16, "layers": 1, "heads": 2, "ffn": 32, "max_len": 16, "num_classes": 3}
    r = recipe_from_dict({"output_dir": str(tmp_path / "out"), "threads": 1,
                          "teacher": {"model": "text_encoder", "kwargs": {**kw, "dim": 32},
                                      "train": {"epochs": 6, "batch_size": 30, "lr": 5e-3}},
                          "student": {"model": "text_encoder", "kwargs": kw},
                          "data": {"dataset": "test-ragged"}, "train": {"epochs": 6, "batch_size": 30, "lr": 5e-3}})
    res = distill(r)
    assert res.results["teacher_outputs"] == "cached"
    assert res.results["teacher"]["test_acc"] > 0.6 and res.results["student"]["test_acc"] > 0.5
