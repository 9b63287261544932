"""Students initialised from their teacher (DistilBERT-style): a subset of layers kept, widths optionally narrowed,
embeddings and heads copied, the layer map recorded."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ondevice.errors import ConfigError
from ondevice.models import build_model
from ondevice.shrink import find_layer_stack, pick_layers, student_from_teacher


def test_pick_layers():
    assert pick_layers(6, "every_other") == [0, 2, 4]
    assert pick_layers(6, 2) == [0, 5] and pick_layers(6, 3) == [0, 2, 5] and pick_layers(6, 1) == [5]
    assert pick_layers(4, [3, 1]) == [3, 1]
    with pytest.raises(ConfigError, match=r"indices must be distinct and in 0\.\.5, got \[0, 6\]"):
        pick_layers(6, [0, 6])
    with pytest.raises(ConfigError, match=r"expected 1\.\.6 layers, got 7"):
        pick_layers(6, 7)


def test_hugging_face_encoder_every_other_layer():
    teacher = build_model("hf:minilm", head="embedding").eval()
    student = student_from_teacher(teacher, layers="every_other").eval()
    assert len(student.backbone.encoder.layer) == 3 and student.backbone.config.num_hidden_layers == 3
    assert student.ondevice_layer_map == {"stack": "backbone.encoder.layer", "map": [[0, 0], [1, 2], [2, 4]]}
    assert len(teacher.backbone.encoder.layer) == 6  # the teacher is untouched
    for i, j in ((0, 0), (1, 2), (2, 4)):  # weights copied, not shared
        a, b = student.backbone.encoder.layer[i], teacher.backbone.encoder.layer[j]
        assert torch.equal(a.output.dense.weight, b.output.dense.weight)
        assert a.output.dense.weight.data_ptr() != b.output.dense.weight.data_ptr()
    assert torch.equal(student.backbone.embeddings.word_embeddings.weight,
                       teacher.backbone.embeddings.word_embeddings.weight)
    ids = torch.tensor([[101, 3899, 2003, 102]])
    with torch.no_grad():
        s, t = student(ids, torch.ones_like(ids)), teacher(ids, torch.ones_like(ids))
    assert s.shape == t.shape == (1, 384)
    assert 0.3 < float((s * t).sum()) < 0.9999  # a real (different, related) network


def test_student_of_a_frozen_teacher_runs_and_trains_its_own_layers():
    """A linear-probe teacher (frozen encoder) memoizes its pooled vectors; its student must not inherit the memo:
    it ran the teacher's 6-layer vectors while its 3 layers went untrained, and a reloaded student.pt then scored
    differently from what distillation recorded (found by the MiniLM recipe run end to end)."""
    teacher = build_model("hf:minilm", head="classification", num_labels=5, trainable_layers=0,
                          config={"num_hidden_layers": 2}).eval()
    ids = torch.tensor([[101, 3899, 2003, 102], [101, 4937, 102, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        teacher.eval()(ids, mask)  # eval mode (validation, bench): the encoder runs, nothing memoized
        assert teacher._memo == {}
        teacher.train()(ids, mask)  # the head training: the frozen encoder's vectors are memoized
    assert teacher.frozen and len(teacher._memo) == 2 and not teacher.backbone.training
    with torch.no_grad():  # the memo answers in train mode only: change the encoder and eval mode sees it
        memo_out = teacher(ids, mask)
        teacher.backbone.encoder.layer[1].output.LayerNorm.bias.add_(1.0)
        assert torch.equal(teacher(ids, mask), memo_out)
        assert not torch.allclose(teacher.eval()(ids, mask), memo_out, atol=1e-3)
        teacher.backbone.encoder.layer[1].output.LayerNorm.bias.sub_(1.0)
    student = student_from_teacher(teacher, layers=1).train()
    assert not student.frozen and student._memo == {} and student.backbone.training
    fresh = student_from_teacher(build_model("hf:minilm", head="classification", num_labels=5, trainable_layers=0,
                                             config={"num_hidden_layers": 2}), layers=1)
    fresh.load_state_dict(student.state_dict())
    student.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.allclose(student(ids, mask), fresh(ids, mask), atol=1e-6)  # what a reload of student.pt gives
        assert not torch.allclose(student(ids, mask), teacher(ids, mask), atol=1e-3)  # its own (1-layer) encoder
    student.train()
    student(ids, mask).sum().backward()
    assert student.backbone.encoder.layer[0].output.dense.weight.grad.abs().sum() > 0
    assert teacher.frozen  # the teacher keeps its memo and stays a linear probe


def test_ffn_narrowing_keeps_the_most_important_units():
    torch.manual_seed(0)
    teacher = build_model("text_encoder", vocab_size=50, dim=16, layers=4, heads=2, ffn=32, num_classes=3)
    student = student_from_teacher(teacher, layers=2, ffn=8)
    up, down = student.layers[0].ffn[0], student.layers[0].ffn[2]
    assert up.weight.shape == (8, 16) and down.weight.shape == (16, 8) and up.out_features == 8
    t_up, t_down = teacher.layers[0].ffn[0], teacher.layers[0].ffn[2]
    score = t_up.weight.norm(dim=1) * t_down.weight.norm(dim=0)
    keep = score.topk(8).indices.sort().values
    assert torch.equal(up.weight, t_up.weight[keep]) and torch.equal(down.weight, t_down.weight[:, keep])
    out = student(torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    assert out.shape == (2, 3)


def test_causal_lm_decoder_stack():
    teacher = build_model("causal_lm", vocab_size=60, layers=4)
    student = student_from_teacher(teacher, layers=[1, 3])
    assert len(student.layers) == 2 and student.ondevice_layer_map["map"] == [[0, 1], [1, 3]]
    assert student(torch.randint(0, 60, (2, 7))).shape == (2, 7, 60)


def test_sequential_cnn_keeps_shape_preserving_blocks():
    teacher = nn.Sequential()
    teacher.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                                     nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    student = student_from_teacher(teacher, layers=[0, 1, 4, 5], stack="features")
    assert [type(m).__name__ for m in student.features] == ["Conv2d", "ReLU", "Conv2d", "ReLU"]
    assert student.features(torch.randn(1, 1, 8, 8)).shape == (1, 4, 8, 8)
    with pytest.raises(ConfigError, match=r"'nope' is not a ModuleList/Sequential of the teacher; candidates: "
                                          r"features"):
        student_from_teacher(teacher, stack="nope")


def test_no_layer_stack_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"cannot find a stack of layers in Linear .*give student\.kwargs\.stack"):
        find_layer_stack(nn.Linear(2, 2))
