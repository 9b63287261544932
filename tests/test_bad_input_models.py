"""Bad input for any-model distillation is a clear error at load time -- naming the key, the value and the fix --
before any training starts: a model that does not take the data's inputs, a task/loss mismatch, labels outside the
class range, a layer map naming a missing module, cuda where there is none, a tokenizer that does not fit the model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ondevice.config import check_references, load_recipe
from ondevice.distill import distill
from ondevice.errors import ConfigError

from helpers import cli

BASE = """seed = 0
threads = 1
output_dir = "{out}"
{top}
[teacher]
model = "text_encoder"
kwargs = {{ vocab_size = 8000, dim = 16, layers = 2, heads = 2, ffn = 32, max_len = 32, num_classes = 45 }}
[teacher.train]
epochs = 1
batch_size = 64
[student]
model = "{student}"
kwargs = {student_kwargs}
[data]
dataset = "wordnet"
limit_train = 256
limit_val = 64
limit_test = 64
kwargs = {data_kwargs}
[train]
epochs = 1
batch_size = 64
{extra}
"""
STUDENT = "{ vocab_size = 8000, dim = 16, layers = 1, heads = 2, ffn = 32, max_len = 32, num_classes = 45 }"


def write(tmp: Path, *, student="text_encoder", student_kwargs=STUDENT, data_kwargs="{ max_length = 32 }", top="",
          extra="") -> Path:
    p = tmp / "r.toml"
    p.write_text(BASE.format(out=tmp / "out", top=top, student=student, student_kwargs=student_kwargs,
                             data_kwargs=data_kwargs, extra=extra))
    return p


def fails_before_training(tmp: Path, match: str, **kw) -> None:
    with pytest.raises(ConfigError, match=match):
        distill(load_recipe(write(tmp, **kw)))
    ckpts = tmp / "out" / "checkpoints"
    assert not ckpts.exists() or not any(ckpts.iterdir()), "training started before the error"


def test_model_that_does_not_take_the_inputs(tmp_path):
    fails_before_training(tmp_path, r"student\.model: the student \(MLP\) cannot take the dataset's inputs\. It was "
                          r"called as model\(input_ids=int64\[2, \d+\], attention_mask=int64\[2, \d+\]\) and raised "
                          r"TypeError: .*Its forward\(x.*Fix: make the dataset yield inputs",
                          student="mlp", student_kwargs="{ in_features = 32, hidden = [8], num_classes = 45 }")


def test_task_loss_mismatch_is_refused_at_load(tmp_path):
    p = write(tmp_path, top='task = "embedding"', extra='[distill]\nbaseline = false\n[[distill.losses]]\nname = "kd"\n')
    with pytest.raises(ConfigError, match=r"distill\.losses\[0\]\.name: loss 'kd' does not apply to task 'embedding'; "
                                          r"valid losses for it: .*embed_cos.*embed_mse"):
        check_references(load_recipe(p))
    p = write(tmp_path, top='task = "embedding"', extra='[[distill.losses]]\nname = "embed_mse"\n')
    with pytest.raises(ConfigError, match=r"distill\.baseline: task 'embedding' has no labels to train a hard-label "
                                          r"baseline on; set distill\.baseline = false"):
        check_references(load_recipe(p))
    r = cli("distill", str(write(tmp_path, top='task = "nope"')))
    assert r.returncode == 2 and "unknown task 'nope'; valid tasks: classification, embedding, multi_output, " \
                                 "token_lm" in r.stderr


def test_labels_outside_the_class_range(tmp_path):
    fails_before_training(tmp_path, r"data \(train split\): labels span \[0, (\d+)\] but the student predicts 10 classes; "
                          r"give the model num_classes >= \d+",
                          student_kwargs=STUDENT.replace("num_classes = 45", "num_classes = 10"))


def test_layer_map_naming_a_missing_module(tmp_path):
    loss = ('[[distill.losses]]\nname = "hidden_mse"\nlayer_map = [[0, 1], [3, 1]]\nstudent_template = "layers.{}"\n'
            'teacher_template = "layers.{}"\n')
    fails_before_training(tmp_path, r"student has no module 'layers\.3' to take features from; its modules: "
                          r"embeddings, .*layers\.0", extra=loss)


def test_cuda_where_there_is_none(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")  # (the GPU check script covers that case)
    p = write(tmp_path, extra='device = "cuda"')
    with pytest.raises(ConfigError, match=r"train\.device = 'cuda' but no CUDA device is available \(torch .*\); set "
                                          r"train\.device = \"cpu\" or \"auto\""):
        distill(load_recipe(p))
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match=r"train\.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"):
        load_recipe(write(tmp_path, extra='device = "gpu"'))


def test_tokenizer_that_does_not_fit_the_model(tmp_path):
    fails_before_training(tmp_path, r"teacher\.model: minilm has 30522 tokens but the teacher's embedding table has "
                          r"8000 rows; use the tokenizer the teacher was trained with",
                          data_kwargs='{ max_length = 32, tokenizer = "minilm" }')


def test_multi_head_targets_must_match_the_heads(tmp_path):
    top = ('[task]\nname = "multi_output"\nheads = { supersense = { task = "classification" }, '
           'mood = { task = "classification" } }\n')
    kw = STUDENT.replace("num_classes = 45", 'head = "multi", heads_out = { supersense = 45, pos = 4 }')
    fails_before_training(tmp_path, r"teacher\.model: task 'multi_output': the model output must be a dict with the "
                          r"heads \['mood', 'supersense'\], got Tensor", top=top, student_kwargs=kw,
                          data_kwargs='{ max_length = 32, labels = ["supersense", "pos"] }')
