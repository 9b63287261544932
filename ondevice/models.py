"""Model registry: built-in teachers and students, user factories (``package.module:factory``) and weight loading.

Every built-in is a plain ``nn.Module`` with stable submodule names (``features.<i>``, ``classifier.<i>``) so that
feature-based losses (FitNets, attention transfer) can address layers by path, e.g. ``model.get_submodule("features.3")``.
Parameter counts in the docstrings are exact for the default arguments (checked by tests/test_models.py).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from . import fetch as _fetch
from .errors import CheckpointError, ConfigError
from .registry import Registry

__all__ = [
    "MODELS", "build_model", "register_model", "load_weights", "param_count", "model_names",
    "CCExamMNISTCNN", "SmallCNN", "MLP", "FashionCNN", "FashionCNNStudent", "MNIST1DCNN",
]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str, *, overwrite: bool = False):
    """Decorator: ``@register_model("my_net")`` on a factory (or nn.Module class) taking keyword arguments."""
    return MODELS.register(name, overwrite=overwrite)


def model_names() -> list[str]:
    return MODELS.names()


def param_count(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (buffers such as BatchNorm running stats are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------------- building
def _import_file(path_str: str, ref: str):
    """Import a user's model file given as 'path/to/file.py' (the `file.py:factory` form of a model reference)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(path_str).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"reference {ref!r}: file {path} does not exist")
    name = f"_ondevice_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def resolve_reference(ref: str, kind: str = "model") -> Callable:
    """Import a user's callable given as ``package.module:attr`` or ``path/to/file.py:attr``.

    Used for model factories and dataset factories alike; every error names the reference and the fix.
    """
    mod_name, _, attr = ref.rpartition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{kind} reference {ref!r} must look like 'package.module:factory' or 'path/file.py:factory'")
    try:
        module = _import_file(mod_name, ref) if mod_name.endswith(".py") else importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{kind} reference {ref!r}: cannot import module {mod_name!r} ({e}); check the spelling "
                          "and that its folder is on PYTHONPATH or the package is installed") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ConfigError(f"{kind} reference {ref!r}: module {mod_name!r} has no attribute {attr!r}; "
                              f"it defines: {', '.join(public[:20]) or '(nothing public)'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{kind} reference {ref!r}: {attr!r} is a {type(obj).__name__}, not a callable factory")
    return obj


_VISION_PIP = "pip install 'ondevice[vision]'"


def _vision_factory(ref: str) -> Callable[..., nn.Module]:
    """``torchvision:<name>`` / ``timm:<name>``: their model constructors, imported on demand."""
    lib, _, name = ref.partition(":")
    try:
        if lib == "torchvision":
            import torchvision.models as tvm

            return lambda **kw: tvm.get_model(name, **kw)
        import timm

        return lambda **kw: timm.create_model(name, **kw)
    except ImportError as e:
        raise ImportError(f"model {ref!r} needs {lib} ({e}); install it with: {_VISION_PIP}") from None
    except RuntimeError as e:  # e.g. a CUDA torchvision wheel against a CPU torch: "operator torchvision::nms ..."
        raise ImportError(f"model {ref!r}: {lib} is installed but does not import against torch "
                          f"{torch.__version__} ({str(e).splitlines()[0]}); install the {lib} build that matches "
                          f"this torch ({_VISION_PIP} on a machine whose torch it matches), or use ondevice's own "
                          "mobile architectures (e.g. mobilenet_v3_small)") from None


def _resolve_factory(ref: str) -> Callable[..., nn.Module]:
    if ref.startswith("hf:"):
        from .hf import hf_model

        return lambda **kw: hf_model(ref, **kw)
    if ref.startswith(("torchvision:", "timm:")):
        return _vision_factory(ref)
    if ref.startswith("distilled:"):  # a model of an `ondevice distill` folder, rebuilt by its recipe (hash-checked)
        from .distill import load_student

        return lambda which="student": load_student(ref[len("distilled:"):], which)
    if ":" not in ref:
        return MODELS.get(ref)  # unknown names list the valid ones
    return resolve_reference(ref, "model")


def build_model(ref: str, *, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a model from a registry name, ``package.module:factory``, ``path/file.py:factory``, ``hf:<folder>`` (a
    local Hugging Face model, see ondevice.hf), ``torchvision:<name>``, ``timm:<name>`` or ``distilled:<folder>``
    (the student, or ``which = "baseline"``/``"teacher"``, of an ``ondevice distill`` output folder: its recipe
    rebuilds it, e.g. a ``from_teacher`` student), optionally loading a state dict.

    ``kwargs`` go to the factory. ``weights`` is a file saved with ``torch.save(model.state_dict(), path)`` (also
    accepted: a dict holding it under "state_dict" or "model"); it is read with ``weights_only=True``.
    """
    factory = _resolve_factory(ref)
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {ref!r} rejected the arguments {sorted(kwargs)}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights, what=ref)
    return model


def _first(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def load_weights(model: nn.Module, path: str | os.PathLike, *, what: str = "model") -> nn.Module:
    """Load a state dict file into `model` (strict), with a message listing the first offending keys on mismatch."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} for {what} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with arbitrary objects, not a torch file at all
        raise CheckpointError(f"cannot read weights {path} for {what} with torch.load(weights_only=True): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Save weights with "
                              "torch.save(model.state_dict(), path)") from e
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors (got {type(state).__name__}); save "
                              "weights with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the file ({len(missing)}): {_first(missing)}")
        if unexpected:
            parts.append(f"not in the model ({len(unexpected)}): {_first(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {_first(shapes, 3)}")
        raise CheckpointError(f"weights {path} do not fit {what} ({type(model).__name__}): " + "; ".join(parts)
                              + ". Were they saved from a different architecture or with different arguments?")
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------------------------------------- shared blocks
def _conv_block(cin: int, cout: int, *, bn: bool = False) -> list[nn.Module]:
    """3x3 same-padding conv (+BatchNorm) + ReLU."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    return layers + [nn.ReLU()]


class _FeaturesClassifier(nn.Module):
    """forward: classifier(flatten(features(x))). x (B, ...) -> logits (B, num_classes)."""

    features: nn.Sequential
    classifier: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---------------------------------------------------------------------------------------------------- MNIST CNNs
class CCExamMNISTCNN(_FeaturesClassifier):
    """The ccexam MNIST teacher, input (B, 1, 28, 28) normalised with mean 0.1307 / std 0.3081. 421,642 params.

    features: 0 Conv2d(1,32,3,p1) 1 ReLU 2 MaxPool2 | 3 Conv2d(32,64,3,p1) 4 ReLU 5 MaxPool2 -> (B, 64, 7, 7)
    classifier: 0 Linear(3136,128) 1 ReLU 2 Linear(128,10)
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))


@register_model("ccexam_mnist_cnn")
def ccexam_mnist_cnn(pretrained: bool = True, num_classes: int = 10) -> nn.Module:
    """The ccexam teacher; ``pretrained=True`` loads <data_dir>/ccexam/mnist.pth (sha256-verified; measured 95 test
    errors = 99.05% on the MNIST test set). Raises DataNotFoundError with ``ondevice fetch ccexam`` if absent."""
    if pretrained and num_classes != 10:
        raise ConfigError("ccexam_mnist_cnn: the pretrained weights have 10 classes; pass pretrained=False to "
                          f"build it with num_classes={num_classes}")
    model = CCExamMNISTCNN(num_classes)
    if pretrained:
        load_weights(model, _fetch.locate("ccexam"), what="ccexam_mnist_cnn")
    return model


class SmallCNN(_FeaturesClassifier):
    """Small MNIST student, input (B, 1, 28, 28). Defaults: 103,018 params (4.1x fewer than the ccexam teacher,
    11x fewer multiply-accumulates: 0.38 M vs 4.3 M). A 16-unit hidden layer (13,978 params) is too narrow to take in
    what the teacher knows: distilled, it did worse than on hard labels alone (measured, MNIST).

    features: 0 Conv2d(1,c1,3,p1) 1 ReLU 2 MaxPool2 | 3 Conv2d(c1,c2,3,p1) 4 ReLU 5 MaxPool2 -> (B, c2, 7, 7)
    classifier: 0 Linear(c2*49, hidden) 1 ReLU 2 Linear(hidden, 10)  (hidden=0: a single 0 Linear(c2*49, 10))
    Same layout as the teacher, so ``features.3`` pairs with the teacher's ``features.3`` (both at 14x14).
    """

    def __init__(self, channels: Sequence[int] = (8, 16), hidden: int = 128, num_classes: int = 10,
                 in_channels: int = 1, image_size: int = 28):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        flat = c2 * (image_size // 4) ** 2
        self.classifier = (nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
                           if hidden else nn.Sequential(nn.Linear(flat, num_classes)))


register_model("mnist_small_cnn")(SmallCNN)


# ---------------------------------------------------------------------------------------------------- MLPs
class MLP(nn.Module):
    """Fully connected net that flattens its input: (B, ...) -> (B, num_classes).

    features: [Dropout(input_dropout)] then per hidden width: Linear, ReLU, [Dropout(dropout)]; classifier: Linear.
    Dropout layers are only present when their rate is > 0, so indices depend on the rates.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout > 0 else []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(torch.flatten(x, 1)))  # (B, in_features) -> (B, num_classes)


register_model("mlp")(MLP)


@register_model("hinton_teacher")
def hinton_teacher(num_classes: int = 10, dropout: float = 0.5, input_dropout: float = 0.2) -> MLP:
    """Hinton et al. 2015 MNIST teacher 784-1200-1200-10, ReLU, dropout 0.5 hidden / 0.2 input. 2,395,210 params.

    features: 0 Dropout(0.2) 1 Linear(784,1200) 2 ReLU 3 Dropout 4 Linear(1200,1200) 5 ReLU 6 Dropout; classifier.
    """
    return MLP(784, [1200, 1200], num_classes, dropout=dropout, input_dropout=input_dropout)


@register_model("hinton_student")
def hinton_student(num_classes: int = 10) -> MLP:
    """Hinton et al. 2015 MNIST student 784-800-800-10, ReLU, no dropout. 1,276,810 params.

    features: 0 Linear(784,800) 1 ReLU 2 Linear(800,800) 3 ReLU; classifier Linear(800,10).
    """
    return MLP(784, [800, 800], num_classes)


# ---------------------------------------------------------------------------------------------------- Fashion-MNIST
class FashionCNN(_FeaturesClassifier):
    """Fashion-MNIST teacher with BatchNorm, input (B, 1, 28, 28). 468,010 params with the defaults.

    features: two stages of [Conv3x3-BN-ReLU] x2 + MaxPool2 (+ Dropout2d): 32 then 64 channels -> (B, 64, 7, 7)
      0 Conv(1,32) 1 BN 2 ReLU 3 Conv(32,32) 4 BN 5 ReLU 6 MaxPool 7 Dropout2d
      8 Conv(32,64) 9 BN 10 ReLU 11 Conv(64,64) 12 BN 13 ReLU 14 MaxPool 15 Dropout2d
    classifier: 0 Linear(3136,128) 1 ReLU 2 Dropout 3 Linear(128,10)
    Target ~92% test accuracy after full training (estimated from the Fashion-MNIST benchmark table, where small
    CNNs reach 91-93%; not measured here). Measured smoke run (CPU, Adam 2e-3, 2 epochs on 8k train images):
    80.6% on 2,000 test images.
    """

    def __init__(self, widths: Sequence[int] = (32, 64), hidden: int = 128, num_classes: int = 10,
                 dropout: float = 0.25):
        super().__init__()
        w1, w2 = widths
        self.features = nn.Sequential(
            *_conv_block(1, w1, bn=True), *_conv_block(w1, w1, bn=True), nn.MaxPool2d(2), nn.Dropout2d(dropout),
            *_conv_block(w1, w2, bn=True), *_conv_block(w2, w2, bn=True), nn.MaxPool2d(2), nn.Dropout2d(dropout))
        self.classifier = nn.Sequential(nn.Linear(w2 * 49, hidden), nn.ReLU(), nn.Dropout(2 * dropout),
                                        nn.Linear(hidden, num_classes))


register_model("fashion_cnn_teacher")(FashionCNN)


class _SeparableConv(nn.Module):
    """Depthwise 3x3 + pointwise 1x1 conv + BatchNorm + ReLU: (B, cin, H, W) -> (B, cout, H, W)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.pointwise(self.depthwise(x))))


class FashionCNNStudent(_FeaturesClassifier):
    """Small Fashion-MNIST student with depthwise-separable convs, input (B, 1, 28, 28). 8,810 params by default.

    features: 0 Conv(1,16,3,p1) 1 BN 2 ReLU 3 MaxPool2 (14x14) | 4 SepConv(16,32) 5 MaxPool2 (7x7) |
              6 SepConv(32,64) 7 SepConv(64,64) 8 AdaptiveAvgPool(1) -> (B, 64, 1, 1)
    classifier: 0 Linear(64, 10)
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10):
        super().__init__()
        w1, w2, w3 = widths
        self.features = nn.Sequential(*_conv_block(1, w1, bn=True), nn.MaxPool2d(2), _SeparableConv(w1, w2),
                                      nn.MaxPool2d(2), _SeparableConv(w2, w3), _SeparableConv(w3, w3),
                                      nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Sequential(nn.Linear(w3, num_classes))


register_model("fashion_cnn_student")(FashionCNNStudent)


# ---------------------------------------------------------------------------------------------------- MNIST-1D
class MNIST1DCNN(_FeaturesClassifier):
    """The MNIST-1D reference CNN (Greydanus 2020, ~94%), input (B, 1, 40). 5,210 params with channels=25.

    features: 0 Conv1d(1,25,5,s2,p1) 1 ReLU 2 Conv1d(25,25,3,s2,p1) 3 ReLU 4 Conv1d(25,25,3,s2,p1) 5 ReLU
              lengths 40 -> 19 -> 10 -> 5, so (B, 25, 5); classifier: 0 Linear(125, 10)
    """

    def __init__(self, channels: int = 25, num_classes: int = 10, length: int = 40):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU())
        n = (length + 2 - 5) // 2 + 1
        for _ in range(2):
            n = (n + 2 - 3) // 2 + 1
        self.classifier = nn.Sequential(nn.Linear(channels * n, num_classes))


register_model("mnist1d_cnn")(MNIST1DCNN)


@register_model("mnist1d_mlp")
def mnist1d_mlp(hidden: Sequence[int] = (100, 100), num_classes: int = 10, dropout: float = 0.0) -> MLP:
    """MNIST-1D reference MLP 40-100-100-10 (~68% in the paper), input (B, 1, 40) flattened. 15,210 params."""
    return MLP(40, list(hidden), num_classes, dropout=dropout)


# ---------------------------------------------------------------------------------------------------- MobileNetV3
def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 without dropping more than 10% (the MobileNet rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    """Hu et al. 2018 squeeze-and-excitation with MobileNetV3's hard-sigmoid gate: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))  # (B, C, 1, 1) scale


class InvertedResidual(nn.Module):
    """MobileNetV3 block (Howard et al. 2019): 1x1 expand -> kxk depthwise -> [SE] -> 1x1 project, residual when the
    shape is kept. Activation ReLU or hardswish."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, hs: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(SqueezeExcite(exp, _make_divisible(exp // 4)))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (kernel, expansion, out, SE, hardswish, stride) -- MobileNetV3-Small, Howard et al. 2019, Table 2
_MBV3_SMALL = [(3, 16, 16, True, False, 2), (3, 72, 24, False, False, 2), (3, 88, 24, False, False, 1),
               (5, 96, 40, True, True, 2), (5, 240, 40, True, True, 1), (5, 240, 40, True, True, 1),
               (5, 120, 48, True, True, 1), (5, 144, 48, True, True, 1), (5, 288, 96, True, True, 2),
               (5, 576, 96, True, True, 1), (5, 576, 96, True, True, 1)]


class MobileNetV3Small(_FeaturesClassifier):
    """MobileNetV3-Small (Howard et al. 2019, "Searching for MobileNetV3"): hardswish, squeeze-excitation,
    depthwise-separable inverted residuals. ``width_mult`` scales channels, ``blocks`` keeps the first n of the 11
    blocks (small inputs such as 28x28 need fewer stride-2 stages), ``in_channels`` 1 for grey images.

    features: 0 stem Conv3x3 s2 + BN + hardswish | 1..n InvertedResidual | n+1 Conv1x1 + BN + hardswish |
              n+2 AdaptiveAvgPool(1) -> (B, C_last, 1, 1)
    classifier: 0 Linear(C_last, hidden) 1 hardswish 2 Dropout 3 Linear(hidden, num_classes)
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, blocks: int = 11,
                 hidden: int = 1024, dropout: float = 0.2):
        super().__init__()
        if not 1 <= blocks <= len(_MBV3_SMALL):
            raise ConfigError(f"mobilenet_v3_small: blocks must be 1..{len(_MBV3_SMALL)}, got {blocks}")
        c = _make_divisible(16 * width_mult)
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c),
                                                 nn.Hardswish())]
        for k, exp, out, se, hs, s in _MBV3_SMALL[:blocks]:
            o, e = _make_divisible(out * width_mult), _make_divisible(exp * width_mult)
            layers.append(InvertedResidual(c, k, e, o, se, hs, s))
            c = o
        last = _make_divisible(6 * c)
        layers += [nn.Sequential(nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.Hardswish()),
                   nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_classes))


register_model("mobilenet_v3_small")(MobileNetV3Small)


def student_from_teacher(teacher: nn.Module, **kwargs) -> nn.Module:
    """See ondevice.shrink.student_from_teacher (DistilBERT-style layer-subset initialisation)."""
    from .shrink import student_from_teacher as _sft

    return _sft(teacher, **kwargs)


from . import textnets as _textnets  # noqa: E402,F401  (registers text_encoder and causal_lm)
