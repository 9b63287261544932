"""Text data: tokenizers and the WordNet datasets (real English text with real labels, offline).

Datasets (``data.dataset`` in a recipe; options in ``data.kwargs``):

``wordnet``      WordNet 3.0 glosses (Debian ``wordnet-base``, sha256-verified; ``ondevice fetch wordnet``): 117,659
                 synsets, each gloss labelled with its *supersense* (the lexicographer file: 45 classes such as
                 noun.animal, verb.motion, adj.all) and its part of speech (noun, verb, adj, adv). Inputs
                 ``{"input_ids", "attention_mask"}`` int64 (N, max_length), right-padded with 0.
                 kwargs: ``tokenizer`` (see below, default "words"), ``max_length`` (32), ``labels``
                 ("supersense" | "pos" | ["supersense", "pos"] for a two-head dict target).
``wordnet-lm``   the same glosses as a causal language-modelling corpus: ``input_ids`` = [BOS] + tokens, targets the
                 next token at each position (-100 at padding). kwargs ``tokenizer`` (default "bytes"),
                 ``max_length`` (64).

Splits are fixed by a hash of each synset's part of speech and offset (80% train, 10% validation, 10% test;
``val_fraction`` does not apply), independent of ``seed`` and of the file order: the same gloss is always in the same
split. Within a split, samples are in hash order, so ``limit_*`` keeps a random sample of every class and part of
speech.

Tokenizers (``tokenizer = ...``): ``"bytes"`` (UTF-8 bytes + 3 specials: pad 0, bos 1, eos 2; vocabulary 259; any
text, non-ASCII included), ``"words"`` (a word-level vocabulary learnt from the training split with the
``tokenizers`` library, lower-cased, 8,000 entries), a path to a ``tokenizer.json``, or ``hf:<folder>`` /
``minilm`` (a Hugging Face model folder's tokenizer.json). Texts longer than ``max_length`` are truncated and counted
(``info.preprocessing["truncated"]``); an empty text is refused with its index.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from . import fetch as _fetch
from .errors import ConfigError
from .io import atomic_write_bytes, atomic_write_text

SUPERSENSES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl")  # lexicographer file numbers 0..44 (lexnames(5WN))
POS = ("noun", "verb", "adj", "adv")
_POS_OF = {"n": 0, "v": 1, "a": 2, "s": 2, "r": 3}
PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Gloss:
    pos: str  # n v a s r
    offset: int
    supersense: int  # 0..44
    text: str


def read_wordnet(folder: Path) -> list[Gloss]:
    """Every synset of data.{noun,verb,adj,adv}: offset, ss_type, lexicographer file number and gloss."""
    out: list[Gloss] = []
    for part in ("noun", "verb", "adj", "adv"):
        path = folder / f"data.{part}"
        for ln, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
            if line.startswith("  ") or not line.strip():
                continue  # the licence header
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 4 or not fields[0].isdigit():
                raise ConfigError(f"{path}:{ln}: not a WordNet data line (expected 'offset lex_filenum ss_type ... |"
                                  f" gloss'); the file is corrupt: {_fetch.how_to_get('wordnet')}")
            out.append(Gloss(fields[2], int(fields[0]), int(fields[1]), gloss.strip()))
    return out


def _digest(g: Gloss) -> str:
    return hashlib.sha256(f"{g.pos}{g.offset:08d}".encode()).hexdigest()


def split_of(g: Gloss) -> str:
    """train / val / test by a hash of (pos, offset): 80 / 10 / 10, stable across runs, seeds and file order."""
    h = int(_digest(g)[:8], 16) % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


# ------------------------------------------------------------------------------------------------ tokenizers
class Tokenizer:
    """A text -> ids map with a padding id and (for the deployer) a file describing it."""

    name: str = ""
    vocab_size: int = 0
    pad_id: int = 0
    file: str | None = None

    def encode(self, texts: Sequence[str]) -> list[list[int]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {"tokenizer": self.name, "tokenizer_file": self.file, "vocab_size": self.vocab_size,
                "pad_id": self.pad_id}


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes shifted by 3 (pad 0, bos 1, eos 2): every text encodes, nothing is unknown."""

    name, vocab_size, pad_id = "bytes", 259, PAD

    def encode(self, texts):
        return [[b + 3 for b in t.encode("utf-8")] for t in texts]


class HFTokenizer(Tokenizer):
    """A ``tokenizers`` tokenizer.json (WordPiece, BPE, word-level ...), padding/truncation left to ondevice."""

    def __init__(self, path: Path, name: str | None = None):
        try:
            from tokenizers import Tokenizer as _T
        except ImportError as e:
            raise ImportError(f"tokenizer {path} needs the tokenizers package ({e}); install it with: "
                              "pip install 'ondevice[text]'") from None
        self.tok = _T.from_file(str(path))
        self.tok.no_padding()
        self.tok.no_truncation()
        self.name, self.file = name or str(path), str(path)
        self.vocab_size = self.tok.get_vocab_size()
        pad = self.tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else int(pad)

    def encode(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts))]


def word_tokenizer(train_texts: Sequence[str], cache: Path, vocab: int = 8000) -> HFTokenizer:
    """A lower-cased word-level tokenizer learnt from `train_texts` (saved as tokenizer.json under `cache`)."""
    key = hashlib.sha256(("\n".join(train_texts) + f"|{vocab}").encode()).hexdigest()[:16]
    path = cache / f"words-{key}.json"
    if not path.is_file():
        from tokenizers import Tokenizer as _T
        from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

        tok = _T(models.WordLevel(unk_token="[UNK]"))
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(vocab_size=vocab, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"])
        tok.train_from_iterator(train_texts, trainer)
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        atomic_write_text(path, tok.to_str())
    return HFTokenizer(path, name=f"words ({vocab} word-level vocabulary of the training split)")


def build_tokenizer(spec: str, train_texts: Sequence[str], cache: Path) -> Tokenizer:
    if spec == "bytes":
        return ByteTokenizer()
    if spec == "words":
        return word_tokenizer(train_texts, cache)
    if spec.startswith("hf:") or spec in _fetch.SOURCES:
        from .hf import resolve_folder

        folder = resolve_folder(spec)
        if not (folder / "tokenizer.json").is_file():
            raise ConfigError(f"data.kwargs.tokenizer: {folder} has no tokenizer.json")
        return HFTokenizer(folder / "tokenizer.json", name=spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return HFTokenizer(path)
    raise ConfigError(f"data.kwargs.tokenizer: expected 'bytes', 'words', a tokenizer.json path or hf:<folder>, got "
                      f"{spec!r}")


@dataclass
class Encoded:
    input_ids: np.ndarray  # (N, L) int64, right-padded
    attention_mask: np.ndarray  # (N, L) int64
    truncated: int


def encode_texts(texts: Sequence[str], tok: Tokenizer, max_length: int, *, lm: bool = False) -> Encoded:
    """Tokenize, truncate to `max_length` (counted) and right-pad. For `lm`, sequences are [BOS] + ids + [EOS] (byte
    tokenizer) and one longer than `max_length` so inputs and next-token targets can both be cut from them."""
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ConfigError(f"text {i} is empty ({t!r}); remove it or give it content before tokenizing")
    ids = tok.encode(texts)
    if lm and isinstance(tok, ByteTokenizer):
        ids = [[BOS, *x, EOS] for x in ids]
    width = max_length + 1 if lm else max_length
    truncated = sum(len(x) > width for x in ids)
    if not lm:  # keep a closing special token (e.g. BERT's [SEP]) when cutting
        ids = [x if len(x) <= width else x[: width - 1] + x[-1:] for x in ids]
    out = np.full((len(ids), width), tok.pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, x in enumerate(ids):
        x = x[:width]
        out[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return Encoded(out, mask, truncated)


# ------------------------------------------------------------------------------------------------ datasets
def _glosses(root: Path | None) -> tuple[dict[str, list[Gloss]], Path]:
    folder = _fetch.locate("wordnet", root=root)  # sha256-verified, else the fetch command
    by: dict[str, list[Gloss]] = {"train": [], "val": [], "test": []}
    for g in sorted(read_wordnet(folder), key=_digest):  # hash order: any prefix (limit_*) is a random sample
        by[split_of(g)].append(g)
    return by, folder


def _labels(gs: list[Gloss], labels: Any) -> Any:
    sup = torch.tensor([g.supersense for g in gs], dtype=torch.long)  # (N,)
    pos = torch.tensor([_POS_OF[g.pos] for g in gs], dtype=torch.long)  # (N,)
    if labels == "supersense":
        return sup
    if labels == "pos":
        return pos
    if isinstance(labels, (list, tuple)) and set(labels) <= {"supersense", "pos"} and labels:
        return {k: (sup if k == "supersense" else pos) for k in labels}
    raise ConfigError(f"data.kwargs.labels: expected 'supersense', 'pos' or a list of them, got {labels!r}")


def _cached_encode(texts: list[str], tok: Tokenizer, max_length: int, lm: bool, cache: Path, tag: str) -> Encoded:
    key = hashlib.sha256(json.dumps([tok.name, tok.vocab_size, tok.file and _fetch.sha256_decompressed(tok.file),
                                     max_length, lm, tag, len(texts)]).encode()).hexdigest()[:16]
    path = cache / f"enc-{tag}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return Encoded(z["ids"], z["mask"], int(z["truncated"]))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt
    enc = encode_texts(texts, tok, max_length, lm=lm)
    buf = io.BytesIO()
    np.savez(buf, ids=enc.input_ids, mask=enc.attention_mask, truncated=enc.truncated)
    atomic_write_bytes(path, buf.getvalue())
    return enc


def _class_balance(y: torch.Tensor, names: Sequence[str]) -> dict:
    counts = torch.bincount(y, minlength=len(names)).tolist()
    top = max(range(len(counts)), key=counts.__getitem__)
    return {"counts": dict(zip(names, counts)), "majority_class": names[top],
            "majority_baseline_accuracy": counts[top] / max(1, len(y))}


def _encoded_splits(root: Path | None, tokenizer: str, max_length: int, lm: bool, limit: int | None, make):
    """Tokenize every split of the glosses once (cached) and build each split with `make(glosses, encoded)`.

    Returns (splits, tokenizer, truncated count per split, WordNet folder)."""
    by, folder = _glosses(root)
    cache = _fetch.data_dir() / "wordnet"
    tok = build_tokenizer(tokenizer, [g.text for g in by["train"]], cache)
    splits, truncated = {}, {}
    for name, gs in by.items():
        gs = gs[:limit] if limit else gs
        enc = _cached_encode([g.text for g in gs], tok, int(max_length), lm, cache, f"{'wnlm' if lm else 'wn'}-{name}")
        splits[name] = make(gs, enc)
        truncated[name] = enc.truncated
    return splits, tok, truncated, folder


def _info(name: str, folder: Path, tok: Tokenizer, max_length: int, truncated: dict, task: str, num_classes,
          **pre):
    from .data import DatasetInfo

    pre = {**tok.describe(), "max_length": int(max_length), "padding": f"right, id {tok.pad_id}",
           "truncated": truncated, **pre}
    return DatasetInfo(name=name, num_classes=num_classes, input_shape=(int(max_length),),
                       source=f"WordNet 3.0 glosses, {folder}", checksums=dict(_fetch.WORDNET_FILES), task=task,
                       preprocessing=pre)


def load_wordnet(*, root: Path | None, seed: int, val_fraction: float, tokenizer: str = "words",
                 max_length: int = 32, labels: Any = "supersense", limit_per_split: int | None = None):
    """The ``wordnet`` supersense dataset (see the module docstring)."""
    from .data import ArraySplit, DatasetSplits

    def make(gs: list[Gloss], enc: Encoded) -> ArraySplit:
        x = {"input_ids": torch.from_numpy(enc.input_ids), "attention_mask": torch.from_numpy(enc.attention_mask)}
        return ArraySplit(x, _labels(gs, labels))

    splits, tok, truncated, folder = _encoded_splits(root, tokenizer, max_length, False, limit_per_split, make)
    y_train = splits["train"].y if isinstance(splits["train"].y, torch.Tensor) else splits["train"].y["supersense"]
    names = POS if labels == "pos" else SUPERSENSES
    info = _info("wordnet", folder, tok, max_length, truncated,
                 "classification" if not isinstance(labels, (list, tuple)) else "multi_output", len(names),
                 truncation=f"to {max_length} tokens (the last special token kept)", labels=labels,
                 class_names=list(names), class_balance_train=_class_balance(y_train, names))
    return DatasetSplits(splits["train"], splits["val"], splits["test"], info)


def load_wordnet_lm(*, root: Path | None, seed: int, val_fraction: float, tokenizer: str = "bytes",
                    max_length: int = 64, limit_per_split: int | None = None):
    """The ``wordnet-lm`` causal-LM corpus: next-token targets over the glosses."""
    from .data import ArraySplit, DatasetSplits

    def make(gs: list[Gloss], enc: Encoded) -> ArraySplit:
        ids, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)  # (N, L+1)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (N, L): the next token, -100 at padding
        return ArraySplit({"input_ids": ids[:, :-1].contiguous(), "attention_mask": mask[:, :-1].contiguous()},
                          targets.contiguous())

    splits, tok, truncated, folder = _encoded_splits(root, tokenizer, max_length, True, limit_per_split, make)
    info = _info("wordnet-lm", folder, tok, max_length, truncated, "token_lm", None,
                 framing="[BOS] text [EOS]" if isinstance(tok, ByteTokenizer) else "tokenizer's own")
    return DatasetSplits(splits["train"], splits["val"], splits["test"], info)


def register() -> None:
    from .data import DATASETS

    if "wordnet" not in DATASETS:
        DATASETS.register("wordnet", load_wordnet)
        DATASETS.register("wordnet-lm", load_wordnet_lm)


__all__ = ["load_wordnet", "load_wordnet_lm", "encode_texts", "build_tokenizer", "ByteTokenizer", "HFTokenizer",
           "SUPERSENSES", "POS", "read_wordnet", "split_of"]
