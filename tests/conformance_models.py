"""Small real models for the cross-target conformance suite, each trained briefly on real data.

The image models take one float32 tensor (N, 1, H, W) and return logits (N, 10): the four digits models use
scikit-learn's 8x8 digits (through ``ondevice.data.load_dataset("digits")``); the example student is the project's
``mnist_small_cnn`` trained on real MNIST. The any-model cases take what real models take: int64 token ids with a
padding mask (WordNet glosses), a recurrent state in and out, two inputs and two outputs. Training is seeded and
single-threaded, so the same weights come out on every run; quantization is therefore judged on meaningful weights,
not random ones.

Names (``MODEL_NAMES``):
  mlp            Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 10)
  conv_bn        two 3x3 conv + BatchNorm + ReLU, max-pool, Linear
  dw_separable   3x3 conv, depthwise 3x3 + pointwise 1x1 (BatchNorm, ReLU6), global average pool, Linear
  transformer    one pre-norm encoder block written with plain ops (LayerNorm, softmax attention, GELU MLP);
                 the 8x8 image is read as 8 tokens (rows) of 8 features
  student        ondevice.models.build_model("mnist_small_cnn") on 28x28 MNIST
  token_encoder  ondevice's BERT-style text_encoder (token + position embeddings, padding mask, one block) on
                 {"input_ids", "attention_mask"} int64 (N, 16) WordNet glosses -> 45 supersense logits
  causal_lm      ondevice's GPT-style causal_lm on byte-tokenised WordNet glosses -> (N, 16, 259) next-byte logits
  lstm_stream    one step of a streaming LSTM: {"x": a digit row (N, 8), "h", "c": (N, 32) state} -> {"logits",
                 "h_next", "c_next"}; h and c are state inputs fed by h_next and c_next
  two_in_two_out {"image": (N, 1, 8, 8), "stats": (N, 4)} -> {"digit": (N, 10) logits, "ink": (N, 1) regression}
  mobilenet_v3   ondevice's MobileNetV3-Small, first 4 blocks at width 0.5 (hardswish, squeeze-excitation,
                 depthwise) on 8x8 digits
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIGITS_MODELS = ("mlp", "conv_bn", "dw_separable", "transformer")
ANY_MODELS = ("token_encoder", "causal_lm", "lstm_stream", "two_in_two_out", "mobilenet_v3")
MODEL_NAMES = DIGITS_MODELS + ("student",) + ANY_MODELS

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
    """A trained model plus the real samples to calibrate and verify it with: one array (N, ...) or a dict of named
    arrays in the form the model takes; labels (N,) int64 where the task has class labels."""

    name: str
    model: nn.Module
    calibration: Any  # (256, 1, H, W) training samples, or {name: (n, ...)}
    x_verify: Any  # (N, 1, H, W) held-out test samples, or {name: (N, ...)}
    y_verify: np.ndarray | None  # (N,)
    train_accuracy: float | None
    test_accuracy: float | None
    task: str = "classification"
    input_spec: Any = None  # an InputSpec when the samples cannot say it all (state inputs)


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
    if name == "student":
        return student_case()
    if name in ANY_BUILDERS:
        return any_case(name)
    return digits_case(name)


# ------------------------------------------------------------------------------------------------ any-model cases
N_TEXT_TRAIN = 3000  # WordNet glosses the text models train on (seconds on 2 cores)
N_ANY_CALIBRATION = 64
N_ANY_VERIFY = 128
TEXT_LENGTH = 16


@lru_cache(maxsize=None)
def _text(name: str):
    from ondevice.data import load_dataset

    kw = {"tokenizer": "words", "max_length": TEXT_LENGTH} if name == "wordnet" else {"max_length": TEXT_LENGTH}
    return load_dataset(name, seed=SEED, val_fraction=0.0, kwargs=kw)


def _arrays(tree) -> Any:
    return {k: v.numpy() for k, v in tree.items()} if isinstance(tree, dict) else tree.numpy()


def _train_steps(model: nn.Module, batches, loss_fn, *, steps: int, lr: float = 3e-3) -> nn.Module:
    """Seeded Adam for `steps` steps over an iterator of (inputs, targets) batches; returns the eval model."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _, (x, y) in zip(range(steps), batches):
        loss = loss_fn(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _cycle(split, batch_size: int):
    g = torch.Generator().manual_seed(SEED)
    while True:
        yield from split.batches(batch_size, shuffle=True, generator=g)


def token_encoder_case() -> ModelCase:
    from ondevice.textnets import text_encoder

    ds = _text("wordnet")
    train = ds.train.take(N_TEXT_TRAIN)
    torch.manual_seed(SEED)
    model = text_encoder(vocab_size=8000, dim=32, layers=1, heads=2, ffn=64, max_len=TEXT_LENGTH,
                         num_classes=ds.info.num_classes)
    model = _train_steps(model, _cycle(train, 64), lambda m, x, y: F.cross_entropy(m(**x), y), steps=150)
    cal, ver = train.take(N_ANY_CALIBRATION), ds.test.take(N_ANY_VERIFY)
    with torch.no_grad():
        acc = float((model(**ver.x).argmax(1) == ver.y).float().mean())
    return ModelCase("token_encoder", model, _arrays(cal.x), _arrays(ver.x), ver.y.numpy(), None, acc)


def causal_lm_case() -> ModelCase:
    from ondevice.textnets import causal_lm

    ds = _text("wordnet-lm")
    train = ds.train.take(N_TEXT_TRAIN)
    torch.manual_seed(SEED)
    model = causal_lm(vocab_size=259, dim=32, layers=1, heads=2, ffn=64, max_len=TEXT_LENGTH)

    def loss(m, x, y):  # next-byte cross-entropy over the real positions (targets -100 elsewhere)
        return F.cross_entropy(m(**x).flatten(0, 1), y.flatten(), ignore_index=-100)

    model = _train_steps(model, _cycle(train, 64), loss, steps=150)
    cal, ver = train.take(N_ANY_CALIBRATION), ds.test.take(N_ANY_VERIFY)
    with torch.no_grad():
        keep = ver.y != -100
        acc = float((model(**ver.x).argmax(-1)[keep] == ver.y[keep]).float().mean())
    return ModelCase("causal_lm", model, _arrays(cal.x), _arrays(ver.x), None, None, acc, task="token_lm")


class LSTMStream(nn.Module):
    """One step of a streaming LSTM classifier: reads a digit row by row, carrying (h, c) between calls."""

    def __init__(self, features: int = 8, hidden: int = 32, num_classes: int = 10):
        super().__init__()
        self.cell = nn.LSTMCell(features, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> dict:  # (N, 8), (N, H), (N, H)
        h2, c2 = self.cell(x, (h, c))  # (N, H) each
        return {"logits": self.head(h2), "h_next": h2, "c_next": c2}


def _stream(model: LSTMStream, rows: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run rows 0..upto-1 of (N, 8, 8) images; returns (logits, h, c) after `upto` steps."""
    n = len(rows)
    h = c = torch.zeros(n, model.cell.hidden_size)
    out = None
    for t in range(upto):
        out = model(rows[:, t], h, c)
        h, c = out["h_next"], out["c_next"]
    return out["logits"], h, c


def lstm_stream_case() -> ModelCase:
    """Trained to classify a digit after reading its 8 rows; verified one step mid-stream (rows 0-4 read, the
    state of step 5 and row 5 given), so the state inputs carry real values."""
    from ondevice.spec import infer_spec

    ds = _dataset("digits")
    rows = ds.train.x.reshape(-1, 8, 8)  # (N, 8 rows, 8 features)
    torch.manual_seed(SEED)
    model = LSTMStream()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(100):
        idx = torch.randint(0, len(rows), (128,), generator=g)
        loss = F.cross_entropy(_stream(model, rows[idx], 8)[0], ds.train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    def step_inputs(x: torch.Tensor) -> dict:
        with torch.no_grad():
            _, h, c = _stream(model, x.reshape(-1, 8, 8), 5)
        return {"x": x.reshape(-1, 8, 8)[:, 5].numpy(), "h": h.numpy(), "c": c.numpy()}

    cal, ver = step_inputs(ds.train.x[:N_ANY_CALIBRATION]), step_inputs(ds.test.x[:N_ANY_VERIFY])
    with torch.no_grad():
        acc = float((_stream(model, ds.test.x.reshape(-1, 8, 8), 8)[0].argmax(1) == ds.test.y).float().mean())
        example = {k: torch.from_numpy(v[:2]) for k, v in ver.items()}
        spec = infer_spec(example, model(**example), states={"h": "h_next", "c": "c_next"})
    return ModelCase("lstm_stream", model, cal, ver, None, None, acc, input_spec=spec)


class TwoInTwoOut(nn.Module):
    """{"image": (N, 1, 8, 8), "stats": (N, 4)} -> {"digit": (N, 10) logits, "ink": (N, 1) mean ink (regression)}."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())  # (N, 128)
        self.mix = nn.Linear(128 + 4, 32)
        self.digit, self.ink = nn.Linear(32, 10), nn.Linear(32, 1)

    def forward(self, image: torch.Tensor, stats: torch.Tensor) -> dict:
        h = F.relu(self.mix(torch.cat([self.conv(image), stats], 1)))  # (N, 32)
        return {"digit": self.digit(h), "ink": self.ink(h)}


def _stats(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 8, 8) -> (N, 4): mean ink of the top, bottom, left and right halves."""
    return torch.stack([x[..., :4, :].mean((1, 2, 3)), x[..., 4:, :].mean((1, 2, 3)), x[..., :4].mean((1, 2, 3)),
                        x[..., 4:].mean((1, 2, 3))], 1)


def two_in_two_out_case() -> ModelCase:
    ds = _dataset("digits")
    torch.manual_seed(SEED)
    model = TwoInTwoOut()
    x, y = ds.train.x, ds.train.y
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(8):
        for idx in torch.randperm(len(x), generator=g).split(64):
            out = model(x[idx], _stats(x[idx]))
            loss = F.cross_entropy(out["digit"], y[idx]) + F.mse_loss(out["ink"][:, 0], x[idx].mean((1, 2, 3)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()

    def inputs(xs: torch.Tensor) -> dict:
        return {"image": xs.numpy(), "stats": _stats(xs).numpy()}

    with torch.no_grad():
        acc = float((model(ds.test.x, _stats(ds.test.x))["digit"].argmax(1) == ds.test.y).float().mean())
    return ModelCase("two_in_two_out", model, inputs(x[:N_CALIBRATION]), inputs(ds.test.x), ds.test.y.numpy(),
                     None, acc)


def mobilenet_v3_case() -> ModelCase:
    from ondevice.models import build_model

    ds = _dataset("digits")
    torch.manual_seed(SEED)
    model = build_model("mobilenet_v3_small", num_classes=10, in_channels=1, width_mult=0.5, blocks=4, hidden=64,
                        dropout=0.0)
    model = train(model, ds.train.x, ds.train.y, epochs=15)
    return _case("mobilenet_v3", model, ds, None)


ANY_BUILDERS = {"token_encoder": token_encoder_case, "causal_lm": causal_lm_case, "lstm_stream": lstm_stream_case,
                "two_in_two_out": two_in_two_out_case, "mobilenet_v3": mobilenet_v3_case}


@lru_cache(maxsize=None)
def any_case(name: str) -> ModelCase:
    """Build and briefly train one of ANY_MODELS (seeded; seconds each)."""
    if name not in ANY_BUILDERS:
        raise ValueError(f"unknown conformance model {name!r}; valid: {', '.join(ANY_BUILDERS)}")
    return ANY_BUILDERS[name]()
