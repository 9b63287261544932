"""Hugging Face ``transformers`` models from a local folder, offline, as plain ``nn.Module``s ondevice can train and
export: ``model = "hf:<folder>"`` in a recipe (``hf:minilm`` names a folder ``ondevice fetch minilm`` installed).

    [teacher]
    model = "hf:minilm"
    kwargs = { head = "classification", num_labels = 45, pooling = "mean", trainable_layers = 0 }

``head``: ``classification`` (mean/CLS-pooled encoder states -> a new linear layer: logits (B, C)), ``embedding``
(pooled, optionally L2-normalised vector (B, D), what sentence-transformers computes), ``causal_lm`` (next-token
logits (B, T, V)), ``tokens`` (last hidden states (B, T, D)). Every adapter takes ``input_ids`` and
``attention_mask`` (int64 (B, T)) and returns a tensor, so export and bench see a model with two named integer inputs.
``trainable_layers = k`` freezes the embeddings and all but the top k encoder layers (0: a frozen encoder with a
trained head; None: everything trains). ``pretrained = false`` builds the architecture from the folder's config with
random weights, ``config = {num_hidden_layers = 2}`` overrides config values. Nothing is fetched from a hub:
``HF_HUB_OFFLINE=1`` and ``local_files_only=True`` are set for every load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataNotFoundError
from .textnets import mean_pool

PIP_LINE = "pip install 'ondevice[text]'"


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"Hugging Face models need the transformers package ({e}); install it with: {PIP_LINE}"
                          ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars would flood logs and CI output
    return transformers


def resolve_folder(ref: str) -> Path:
    """``hf:<folder>`` -> the folder; a bare name such as ``minilm`` is a folder `ondevice fetch` installs."""
    name = ref.split(":", 1)[1] if ref.startswith("hf:") else ref
    path = Path(name).expanduser()
    if not path.exists() and "/" not in name:
        from . import fetch

        if name in fetch.SOURCES:
            return fetch.locate(name)  # DataNotFoundError with the fetch command when absent
    if not path.is_dir():
        raise DataNotFoundError(f"Hugging Face model folder {str(path)!r} does not exist; give a local folder with "
                                "config.json and the weights (models are never downloaded at run time)")
    if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise ConfigError(f"{path} holds no config.json (or .gguf file): not a Hugging Face model folder")
    return path


def _pool(h: Tensor, mask: Tensor, pooling: str) -> Tensor:
    return h[:, 0] if pooling == "cls" else mean_pool(h, mask)  # (B, D)


class _Adapter(nn.Module):
    """Wraps a transformers model as ``backbone``; paths for feature losses are ``backbone.encoder.layer.<i>``
    (BERT-like) or ``backbone.model.layers.<i>`` (Llama-like).

    A fully frozen backbone (``trainable_layers = 0``: a linear probe) always runs in eval mode, and while the head
    trains (the adapter in train mode) its pooled vectors are memoized per distinct token sequence, so training the
    head costs one encoder pass over the data, not one per epoch. In eval mode (validation, test, bench, export) the
    encoder always runs: a timed or exported forward is the real one, never a memo lookup."""

    MEMO_LIMIT = 300_000  # rows kept (384-d float32: about 460 MB)

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.frozen = False
        self._memo: dict[bytes, Tensor] = {}

    def thaw(self) -> None:
        """Make every layer train again and forget the memo: a copy of a frozen teacher that becomes a student
        (ondevice.shrink) must run its own encoder, not the teacher's memoized vectors."""
        self.frozen = False
        self._memo = {}
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen encoder: its outputs are fixed features
        return self

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
        """Pooled encoder output (B, D), memoized per row when the backbone is frozen and the head is training."""
        if not self.frozen or not self.training or torch.compiler.is_compiling():
            return _pool(self.states(input_ids, attention_mask), attention_mask, pooling)
        lengths = attention_mask.sum(1).tolist()
        ids = input_ids.cpu().numpy()
        keys = [ids[i, : int(n)].tobytes() + bytes([pooling == "cls"]) for i, n in enumerate(lengths)]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        if todo:
            idx = torch.tensor(todo, device=input_ids.device)
            with torch.no_grad():
                new = _pool(self.states(input_ids[idx], attention_mask[idx]), attention_mask[idx], pooling)  # (b, D)
            for j, i in enumerate(todo):
                if len(self._memo) < self.MEMO_LIMIT:
                    self._memo[keys[i]] = new[j]
                else:
                    return _pool(self.states(input_ids, attention_mask), attention_mask, pooling)
        return torch.stack([self._memo[k] for k in keys])  # (B, D)

    @property
    def config(self):
        return self.backbone.config

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) \
            if getattr(self.backbone.config, "is_decoder", False) else \
            self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state  # (B, T, D)


class HFClassifier(_Adapter):
    """Encoder + pooling + a linear layer: (input_ids, attention_mask) (B, T) -> logits (B, num_labels)."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "mean", dropout: float = 0.0):
        super().__init__(backbone)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.config.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.pooled(input_ids, attention_mask, self.pooling)))  # (B, C)


class HFEmbedder(_Adapter):
    """Encoder + pooling (+ L2 normalisation): (input_ids, attention_mask) -> sentence vectors (B, D)."""

    def __init__(self, backbone: nn.Module, pooling: str = "mean", normalize: bool = True):
        super().__init__(backbone)
        self.pooling, self.normalize = pooling, normalize

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        v = self.pooled(input_ids, attention_mask, self.pooling)  # (B, D)
        return F.normalize(v, dim=-1) if self.normalize else v


class HFTokens(_Adapter):
    """Encoder states: (input_ids, attention_mask) -> (B, T, D)."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.states(input_ids, attention_mask)


class HFCausalLM(_Adapter):
    """A causal LM: (input_ids, attention_mask) (B, T) -> next-token logits (B, T, V); no KV cache."""

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


HEADS = ("classification", "embedding", "causal_lm", "tokens")


def _load_backbone(folder: Path, head: str, pretrained: bool, config: dict | None, gguf_file: str | None):
    tf = _transformers()
    auto = tf.AutoModelForCausalLM if head == "causal_lm" else tf.AutoModel
    kw: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        kw["gguf_file"] = gguf_file
    cfg = tf.AutoConfig.from_pretrained(str(folder), **kw)
    for k, v in (config or {}).items():
        if not hasattr(cfg, k):
            raise ConfigError(f"kwargs.config.{k}: {cfg.model_type} configs have no {k!r}")
        setattr(cfg, k, v)
    extra = {"add_pooling_layer": False} if cfg.model_type in ("bert", "roberta", "xlm-roberta") else {}
    if head != "causal_lm":
        cfg._attn_implementation = "eager"  # explicit softmax(QK^T): exportable, and attention maps exist
    if not pretrained:
        return auto.from_config(cfg, **extra)
    return auto.from_pretrained(str(folder), config=cfg, torch_dtype=torch.float32, **kw, **extra)


def _freeze(adapter: _Adapter, trainable_layers: int | None) -> None:
    """Freeze embeddings and all but the top `trainable_layers` blocks (the head always trains)."""
    if trainable_layers is None:
        return
    from .shrink import find_layer_stack

    for p in adapter.backbone.parameters():
        p.requires_grad_(False)
    adapter.frozen = int(trainable_layers) == 0
    _, stack = find_layer_stack(adapter.backbone)
    for block in list(stack)[len(stack) - int(trainable_layers):] if trainable_layers else []:
        for p in block.parameters():
            p.requires_grad_(True)


def hf_model(ref: str, *, head: str = "classification", num_labels: int | None = None, pooling: str = "mean",
             normalize: bool = True, pretrained: bool = True, config: dict | None = None,
             trainable_layers: int | None = None, dropout: float = 0.0, gguf_file: str | None = None) -> nn.Module:
    """Build the adapter for ``hf:<folder>`` (see the module docstring for the keyword arguments)."""
    if head not in HEADS:
        raise ConfigError(f"kwargs.head: expected one of {', '.join(HEADS)}, got {head!r}")
    if pooling not in ("mean", "cls"):
        raise ConfigError(f"kwargs.pooling: expected 'mean' or 'cls', got {pooling!r}")
    if head == "classification" and not num_labels:
        raise ConfigError("kwargs.num_labels: head = 'classification' needs num_labels (the number of classes)")
    folder = resolve_folder(ref)
    backbone = _load_backbone(folder, head, pretrained, config, gguf_file)
    if head == "classification":
        model: _Adapter = HFClassifier(backbone, int(num_labels), pooling, dropout)
    elif head == "embedding":
        model = HFEmbedder(backbone, pooling, normalize)
    elif head == "causal_lm":
        model = HFCausalLM(backbone)
    else:
        model = HFTokens(backbone)
    _freeze(model, trainable_layers)
    model.ondevice_source = str(folder)
    return model


def tokenizer_files(folder: Path) -> dict[str, str]:
    """The files a deployer needs to tokenize like the model: tokenizer.json, vocab.txt, configs."""
    names = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
    return {n: str(folder / n) for n in names if (folder / n).is_file()}
