"""Text data: WordNet glosses with real labels, tokenizers, truncation counted, bad text refused clearly."""
from __future__ import annotations

import pytest
import torch

from ondevice.data import load_dataset
from ondevice.errors import ConfigError
from ondevice.text import (SUPERSENSES, ByteTokenizer, HFTokenizer, build_tokenizer, encode_texts, read_wordnet,
                           split_of)


def test_wordnet_glosses_labels_and_splits():
    from ondevice.fetch import locate

    glosses = read_wordnet(locate("wordnet"))
    assert len(glosses) == 117_659  # every synset of WordNet 3.0
    counts = torch.bincount(torch.tensor([g.supersense for g in glosses]), minlength=45)
    assert len(SUPERSENSES) == 45 and counts[0] == 14_435 and counts[6] == 11_587 and counts[18] == 11_087
    splits = [split_of(g) for g in glosses]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.01 and abs(share["test"] - 0.1) < 0.01
    s = load_dataset("wordnet", limit_train=2000)
    assert s.sizes()["test"] == splits.count("test") and s.info.num_classes == 45
    bal = s.info.preprocessing["class_balance_train"]
    assert bal["majority_class"] == "adj.all" and 0.1 < bal["majority_baseline_accuracy"] < 0.14
    assert len(set(s.train.y.tolist())) > 30  # a prefix of the hash order samples every kind of synset


def test_truncation_is_counted_and_keeps_the_closing_token():
    tok = build_tokenizer("minilm", [], cache=None)
    enc = encode_texts(["a dog", "a very " * 40 + "long gloss"], tok, max_length=8)
    assert enc.truncated == 1
    sep = tok.tok.token_to_id("[SEP]")
    assert enc.input_ids[1, -1] == sep and enc.attention_mask[1].sum() == 8  # cut, [SEP] kept
    assert enc.input_ids[0, 3] == sep and enc.attention_mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    s = load_dataset("wordnet", kwargs={"tokenizer": "minilm", "max_length": 32})
    assert s.info.preprocessing["truncated"]["test"] > 0  # counted per split, reported


def test_empty_and_non_ascii_text():
    tok = ByteTokenizer()
    with pytest.raises(ConfigError, match=r"text 1 is empty \('  '\); remove it or give it content"):
        encode_texts(["fine", "  "], tok, 8)
    enc = encode_texts(["café 東京"], tok, 16)
    ids = [int(i) - 3 for i, m in zip(enc.input_ids[0], enc.attention_mask[0]) if m]
    assert bytes(ids).decode("utf-8") == "café 東京"  # every byte survives, nothing is unknown
    wp = build_tokenizer("minilm", [], cache=None)
    e = encode_texts(["naïve café"], wp, 12)
    unk = wp.tok.token_to_id("[UNK]")
    assert unk not in e.input_ids[0][e.attention_mask[0] == 1].tolist()


def test_tokenizer_specs():
    assert isinstance(build_tokenizer("bytes", [], None), ByteTokenizer)
    assert isinstance(build_tokenizer("minilm", [], None), HFTokenizer)
    with pytest.raises(ConfigError, match=r"data\.kwargs\.tokenizer: expected 'bytes', 'words', a tokenizer\.json "
                                          r"path or hf:<folder>, got 'gpt9'"):
        build_tokenizer("gpt9", [], None)


def test_corrupt_wordnet_file_is_named(tmp_path):
    for part in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{part}").write_text("  licence header\n00001740 03 n 01 entity 0 000 | that which exists\n")
    (tmp_path / "data.adv").write_text("garbage line without a gloss\n")
    with pytest.raises(ConfigError, match=r"(?s)data\.adv:1: not a WordNet data line .*ondevice fetch wordnet"):
        read_wordnet(tmp_path)
