"""Small real models for the cross-target conformance suite, each trained briefly on real data.

Every model takes one float32 tensor (N, 1, H, W) and returns logits (N, 10). The four digits models use
scikit-learn's 8x8 digits (through ``ondevice.data.load_dataset("digits")``); the example student is the project's
``mnist_small_cnn`` trained on real MNIST. Training is seeded and single-threaded, so the same weights come out on
every run; quantization is therefore judged on meaningful weights, not random ones.

Names (``MODEL_NAMES``):
  mlp          Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 10)
  conv_bn      two 3x3 conv + BatchNorm + ReLU, max-pool, Linear
  dw_separable 3x3 conv, depthwise 3x3 + pointwise 1x1 (BatchNorm, ReLU6), global average pool, Linear
  transformer  one pre-norm encoder block written with plain ops (LayerNorm, softmax attention, GELU MLP);
               the 8x8 image is read as 8 tokens (rows) of 8 features
  student      ondevice.models.build_model("mnist_small_cnn") on 28x28 MNIST
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIGITS_MODELS = ("mlp", "conv_bn", "dw_separable", "transformer")
MODEL_NAMES = DIGITS_MODELS + ("student",)

SEED = 0
N_CALIBRATION = 256  # real training samples used to calibrate int8 activation ranges
N_VERIFY_MNIST = 1000  # held-out MNIST test samples used to verify the student's artifacts


# ------------------------------------------------------------------------------------------------------ models
class MLP(nn.Module):
    def __init__(self, hidden: int = 64, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        return self.net(x)


class ConvBN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),   # (N, 16, 8, 8)
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),  # (N, 32, 8, 8)
            nn.MaxPool2d(2),                                                             # (N, 32, 4, 4)
        )
        self.classifier = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        return self.classifier(torch.flatten(self.features(x), 1))


class DWSeparable(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),              # (N, 16, 8, 8)
            nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),  # depthwise
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),                        # (N, 32, 8, 8)
            nn.AdaptiveAvgPool2d(1),                                                                 # (N, 32, 1, 1)
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        return self.classifier(torch.flatten(self.features(x), 1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block with explicit attention ops (no fused nn.MultiheadAttention)."""

    def __init__(self, dim: int = 32, heads: int = 2, mlp_dim: int = 64):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, T, D) -> (N, T, D)
        n, t, d = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(n, t, 3, self.heads, self.head_dim)  # (N, T, 3, H, Dh)
        qkv = qkv.permute(2, 0, 3, 1, 4)                                          # (3, N, H, T, Dh)
        q, k, v = qkv[0], qkv[1], qkv[2]                                          # each (N, H, T, Dh)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (N, H, T, T)
        attn = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(attn, v).permute(0, 2, 1, 3).reshape(n, t, d)          # (N, T, D)
        x = x + self.proj(ctx)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """An 8x8 digit as a sequence of 8 tokens (rows) of 8 features -> one encoder block -> mean-pool -> logits."""

    def __init__(self, dim: int = 32, num_classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, dim))
        self.block = EncoderBlock(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (N, 1, 8, 8) -> (N, 10)
        tokens = self.embed(x.reshape(x.shape[0], 8, 8)) + self.pos  # (N, 8 tokens, D)
        h = self.norm(self.block(tokens))                            # (N, 8, D)
        return self.head(h.mean(dim=1))                              # (N, 10)


DIGITS_BUILDERS = {"mlp": MLP, "conv_bn": ConvBN, "dw_separable": DWSeparable, "transformer": TinyTransformer}


# ------------------------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class ModelCase:
    """A trained model plus the real samples to calibrate and verify it with (NumPy float32, labels int64)."""

    name: str
    model: nn.Module
    calibration: np.ndarray  # (256, 1, H, W) training samples
    x_verify: np.ndarray  # (N, 1, H, W) held-out test samples
    y_verify: np.ndarray  # (N,)
    train_accuracy: float
    test_accuracy: float


@lru_cache(maxsize=None)
def _dataset(name: str):
    from ondevice.data import load_dataset

    return load_dataset(name, seed=SEED, val_fraction=0.0)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float = 3e-3,
          batch_size: int = 64, seed: int = SEED) -> nn.Module:
    """Seeded Adam + cross-entropy on in-memory tensors; x (N, ...) float32, y (N,) int64. Returns the eval model."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * math.ceil(len(x) / batch_size))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _case(name: str, model: nn.Module, ds, n_verify: int | None) -> ModelCase:
    test = ds.test.take(n_verify)
    return ModelCase(
        name=name, model=model,
        calibration=ds.train.x[:N_CALIBRATION].numpy().astype(np.float32),
        x_verify=test.x.numpy().astype(np.float32), y_verify=test.y.numpy(),
        train_accuracy=_accuracy(model, ds.train.x, ds.train.y),
        test_accuracy=_accuracy(model, test.x, test.y),
    )


@lru_cache(maxsize=None)
def digits_case(name: str, epochs: int = 30) -> ModelCase:
    """Build `name` (one of DIGITS_MODELS) with a fixed seed and train it on the digits train split (seconds)."""
    if name not in DIGITS_BUILDERS:
        raise ValueError(f"unknown conformance model {name!r}; valid: {', '.join(DIGITS_BUILDERS)}")
    ds = _dataset("digits")
    torch.manual_seed(SEED)
    model = train(DIGITS_BUILDERS[name](), ds.train.x, ds.train.y, epochs=epochs)
    return _case(name, model, ds, None)


@lru_cache(maxsize=None)
def student_case(n_train: int = 12000, epochs: int = 2) -> ModelCase:
    """The example student (mnist_small_cnn) trained briefly on the first `n_train` real MNIST training images,
    verified on the first 1000 MNIST test images."""
    from ondevice.models import build_model

    ds = _dataset("mnist")
    torch.manual_seed(SEED)
    model = build_model("mnist_small_cnn")
    model = train(model, ds.train.x[:n_train], ds.train.y[:n_train], epochs=epochs)
    return _case("student", model, ds, N_VERIFY_MNIST)


def make_case(name: str) -> ModelCase:
    return student_case() if name == "student" else digits_case(name)
