"""ondevice's own token-input architectures: a BERT-style encoder and a GPT-style causal LM, small enough for tests
and conformance runs on 2 CPU cores, built only from ops every mobile converter knows (embedding gather, matmul,
softmax, layer norm, GELU). Registered as ``text_encoder`` and ``causal_lm``.

Module paths follow Hugging Face's BERT naming where a loss needs them: ``layers.<i>`` is block i (output (B, T, D)),
``layers.<i>.attention.query|key|value`` its projections (for MiniLM / TinyBERT attention losses).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models import register_model

NEG = -1e4  # additive mask value: large enough to zero a softmax term, finite in fp16 (no NaN when a row is all pad)


def mean_pool(h: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of the real tokens' states: h (B, T, D), mask (B, T) -> (B, D)."""
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with explicit ops (exportable): x (B, T, D) -> (B, T, D)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # noqa: E731 (B, H, T, hd)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias  # (B, H, T, T)
        att = self.drop(F.softmax(scores, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out(y)


class Block(nn.Module):
    """A transformer block. post_norm=True: BERT (x = LN(x + attn(x)); x = LN(x + ffn(x))); False: GPT pre-norm."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.0, post_norm: bool = True):
        super().__init__()
        self.attention = SelfAttention(dim, heads, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Linear(ffn, dim))
        self.drop = nn.Dropout(dropout)
        self.post_norm = post_norm

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:  # (B, T, D) -> (B, T, D)
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attention(x, bias)))
            return self.norm2(x + self.drop(self.ffn(x)))
        x = x + self.drop(self.attention(self.norm1(x), bias))
        return x + self.drop(self.ffn(self.norm2(x)))


class _Embed(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_len: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim)
        self.max_len = max_len

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) int64 -> (B, T, D)
        pos = torch.arange(ids.shape[1], device=ids.device)  # (T,)
        return self.norm(self.tokens(ids) + self.positions(pos))


class TextEncoder(nn.Module):
    """BERT-style encoder: forward(input_ids int64 (B, T), attention_mask int64/bool (B, T)) -> per ``head``:

    - ``"classification"``: logits (B, num_classes) from the mean of the real tokens' final states;
    - ``"embedding"``: the pooled vector (B, dim) -- or (B, embed_dim) through a linear projection, e.g. to match a
      teacher's width -- L2-normalised when ``normalize``;
    - ``"multi"``: a dict {head name: logits (B, n)} for ``heads = {"name": n, ...}``;
    - ``"tokens"``: the final token states (B, T, dim).
    """

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128,
                 max_len: int = 64, num_classes: int | None = None, head: str = "classification",
                 heads_out: dict[str, int] | None = None, normalize: bool = False, dropout: float = 0.0,
                 embed_dim: int | None = None):
        super().__init__()
        if head not in ("classification", "embedding", "multi", "tokens"):
            raise ValueError(f"head must be classification, embedding, multi or tokens, got {head!r}")
        if head == "classification" and not num_classes:
            raise ValueError("head='classification' needs num_classes")
        if head == "multi" and not heads_out:
            raise ValueError("head='multi' needs heads_out={'name': classes, ...}")
        self.embeddings = _Embed(vocab_size, dim, max_len)
        self.layers = nn.ModuleList(Block(dim, heads, ffn, dropout) for _ in range(layers))
        self.head, self.normalize = head, normalize
        if head == "classification":
            self.classifier = nn.Linear(dim, num_classes)
        elif head == "multi":
            self.heads = nn.ModuleDict({k: nn.Linear(dim, int(n)) for k, n in heads_out.items()})
        elif head == "embedding" and embed_dim:
            self.project = nn.Linear(dim, int(embed_dim))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tokens

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * NEG  # (B, 1, 1, T): 0 real, -1e4 padding
        x = self.embeddings(input_ids)  # (B, T, D)
        for block in self.layers:
            x = block(x, bias)
        if self.head == "tokens":
            return x
        pooled = mean_pool(x, attention_mask)  # (B, D)
        if self.head == "classification":
            return self.classifier(pooled)  # (B, C)
        if self.head == "multi":
            return {k: h(pooled) for k, h in self.heads.items()}  # name -> (B, n)
        if hasattr(self, "project"):
            pooled = self.project(pooled)  # (B, embed_dim)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled  # (B, D)


class CausalLM(nn.Module):
    """GPT-style decoder: forward(input_ids (B, T), attention_mask (B, T) optional) -> next-token logits (B, T, V).

    Pre-norm blocks, learned positions, output projection tied to the token embedding (``tie=True``).
    """

    def __init__(self, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128,
                 max_len: int = 128, tie: bool = True, dropout: float = 0.0):
        super().__init__()
        self.embeddings = _Embed(vocab_size, dim, max_len)
        self.layers = nn.ModuleList(Block(dim, heads, ffn, dropout, post_norm=False) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        if tie:
            self.lm_head.weight = self.embeddings.tokens.weight
        self.register_buffer("causal", torch.triu(torch.full((max_len, max_len), NEG), diagonal=1), persistent=False)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.tokens

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        t = input_ids.shape[1]
        bias = self.causal[:t, :t][None, None]  # (1, 1, T, T): -1e4 above the diagonal
        if attention_mask is not None:
            bias = bias + (1.0 - attention_mask[:, None, None, :].float()) * NEG  # (B, 1, T, T)
        x = self.embeddings(input_ids)  # (B, T, D)
        for block in self.layers:
            x = block(x, bias)
        return self.lm_head(self.norm(x))  # (B, T, V)


@register_model("text_encoder")
def text_encoder(vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128, max_len: int = 64,
                 num_classes: int | None = None, head: str = "classification",
                 heads_out: dict[str, int] | None = None, normalize: bool = False,
                 dropout: float = 0.0, embed_dim: int | None = None) -> TextEncoder:
    """BERT-style encoder over token ids + attention mask (see TextEncoder)."""
    return TextEncoder(vocab_size, dim, layers, heads, ffn, max_len, num_classes, head, heads_out, normalize, dropout,
                       embed_dim)


@register_model("causal_lm")
def causal_lm(vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4, ffn: int = 128, max_len: int = 128,
              tie: bool = True, dropout: float = 0.0) -> CausalLM:
    """GPT-style causal language model (see CausalLM)."""
    return CausalLM(vocab_size, dim, layers, heads, ffn, max_len, tie, dropout)


__all__: Sequence[str] = ("TextEncoder", "CausalLM", "SelfAttention", "Block", "mean_pool", "text_encoder",
                          "causal_lm")
