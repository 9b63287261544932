"""Any model, any task: four token-input models distil end to end on real text (WordNet glosses) through the public
API and recipes -- a token classifier (input_ids + attention_mask), a causal language model (per-token KD with top-k
teacher logits), a sentence-embedding student of the pretrained all-MiniLM-L6-v2, and a two-head model -- each with
the teacher cache on and off, resumed after a kill, and with torchrun on 2 processes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ondevice.config import load_recipe
from ondevice.distill import distill, load_student

from helpers import cli

PY = sys.executable
SMALL = "limit_train = 1536\nlimit_val = 128\nlimit_test = 128\n"
TINY = "limit_train = 256\nlimit_val = 64\nlimit_test = 64\n"  # runs compared with each other, not judged

# name -> (recipe body, the task's primary test metric, a floor it must reach: accuracy well above the 12% majority
# class, perplexity far below the 259 of a uniform byte model, cosine well above unrelated vectors', a weighted score)
RECIPES = {
    "tokens": ("""
[teacher]
model = "text_encoder"
kwargs = { vocab_size = 8000, dim = 32, layers = 2, heads = 2, ffn = 64, max_len = 32, num_classes = 45 }
[teacher.train]
epochs = 4
batch_size = 64
lr = 5e-3
[student]
model = "text_encoder"
kwargs = { vocab_size = 8000, dim = 16, layers = 1, heads = 2, ffn = 32, max_len = 32, num_classes = 45 }
[data]
dataset = "wordnet"
%(small)s
kwargs = { max_length = 32 }
[train]
epochs = 4
batch_size = 64
lr = 5e-3
[[distill.losses]]
name = "kd"
weight = 0.8
temperature = 4.0
[[distill.losses]]
name = "ce"
weight = 0.1
[[distill.losses]]
name = "minilm"
weight = 0.1
student_layer = "layers.0.attention"
teacher_layer = "layers.1.attention"
heads = 2
""", "acc", 0.08),
    "lm": ("""
task = "token_lm"
[teacher]
model = "causal_lm"
kwargs = { vocab_size = 259, dim = 32, layers = 2, heads = 2, ffn = 64, max_len = 48 }
[teacher.train]
epochs = 3
batch_size = 32
lr = 5e-3
[student]
model = "causal_lm"
kwargs = { vocab_size = 259, dim = 16, layers = 1, heads = 2, ffn = 32, max_len = 48 }
[data]
dataset = "wordnet-lm"
%(small)s
kwargs = { max_length = 48 }
[train]
epochs = 3
batch_size = 32
lr = 5e-3
[[distill.losses]]
name = "kd"
weight = 0.9
temperature = 2.0
top_k = 16
[[distill.losses]]
name = "ce"
weight = 0.1
""", "neg_ppl", -60.0),
    "embedding": ("""
[task]
name = "embedding"
k = [1, 10]
[teacher]
model = "hf:minilm"
kwargs = { head = "embedding" }
[student]
model = "text_encoder"
kwargs = { vocab_size = 30522, dim = 32, layers = 1, heads = 2, ffn = 64, max_len = 32, head = "embedding", embed_dim = 384, normalize = true }
[data]
dataset = "wordnet"
%(small)s
kwargs = { tokenizer = "minilm", max_length = 32 }
[train]
epochs = 3
batch_size = 32
lr = 5e-3
[distill]
baseline = false
[[distill.losses]]
name = "embed_mse"
weight = 1.0
[[distill.losses]]
name = "embed_cos"
weight = 1.0
""", "cosine", 0.1),
    "two_heads": ("""
[task]
name = "multi_output"
heads = { supersense = { task = "classification", weight = 1.0 }, pos = { task = "classification", weight = 0.5 } }
[teacher]
model = "text_encoder"
kwargs = { vocab_size = 8000, dim = 32, layers = 2, heads = 2, ffn = 64, max_len = 32, head = "multi", heads_out = { supersense = 45, pos = 4 } }
[teacher.train]
epochs = 4
batch_size = 64
lr = 5e-3
[student]
model = "from_teacher"
kwargs = { layers = 1 }
[data]
dataset = "wordnet"
%(small)s
kwargs = { max_length = 32, labels = ["supersense", "pos"] }
[train]
epochs = 4
batch_size = 64
lr = 5e-3
[[distill.losses]]
name = "kd"
weight = 0.8
temperature = 4.0
[[distill.losses]]
name = "ce"
weight = 0.2
[[distill.losses]]
name = "hidden_cos"
weight = 0.1
pairs = [["layers.0", "layers.1"]]
""", "score", 0.2),
}


def recipe(tmp: Path, kind: str, out: str, extra: str = "", name: str | None = None, small: str = SMALL) -> Path:
    body = RECIPES[kind][0] % {"small": small}
    top, _, rest = body.partition("[")  # top-level keys (task = ...) must precede the first table
    p = tmp / (name or f"{kind}-{out}.toml")
    p.write_text(f'seed = 0\nthreads = 1\noutput_dir = "{tmp / out}"\n{top}{extra}\n[{rest}')
    return p


@pytest.fixture(scope="module", params=list(RECIPES))
def cached_run(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    res = distill(load_recipe(recipe(tmp, request.param, "cached")))
    return request.param, tmp, res


def test_distils_with_the_matching_task(cached_run):
    kind, tmp, res = cached_run
    r = res.results
    metric, floor = RECIPES[kind][1], RECIPES[kind][2]
    assert r["teacher_outputs"] == "cached"
    assert r["task"]["name"] == {"tokens": "classification", "lm": "token_lm", "embedding": "embedding",
                                 "two_heads": "multi_output"}[kind]
    assert r["student"]["test_" + metric] >= floor, r["student"]
    spec = r["input_spec"]
    assert [t["name"] for t in spec["inputs"]] == ["input_ids", "attention_mask"]
    assert all(t["dtype"] == "int64" and t["shape"] == ["batch", "seq"] for t in spec["inputs"])
    pre = spec["preprocessing"]
    assert pre["max_length"] in (32, 48) and pre["vocab_size"] in (8000, 259, 30522)
    # the saved student reloads and reproduces its recorded test metric
    from ondevice.data import load_data
    from ondevice.train import evaluate

    rec = load_recipe(tmp / f"{kind}-cached.toml")
    splits = load_data(rec.data, rec.seed)
    task = rec.task.build()
    teacher = load_student(res.output_dir, "teacher") if task.eval_with_teacher else None
    again = evaluate(load_student(res.output_dir), splits.test, task=task, teacher=teacher)
    assert again[metric] == pytest.approx(r["student"]["test_" + metric], rel=1e-5, abs=1e-6)


def test_task_specific_metrics(cached_run):
    kind, _, res = cached_run
    s = res.results["student"]
    if kind == "lm":
        assert s["test_ppl"] > 1 and 0 < s["test_teacher_agreement"] <= 1
        assert res.results["teacher"]["test_ppl"] < s["test_ppl"] * 1.5
    if kind == "embedding":
        assert 0 <= s["test_nn_agreement@1"] <= s["test_nn_agreement@10"] <= 1
        assert res.results["teacher"]["test_cosine"] == pytest.approx(1.0, abs=1e-5)
        assert "baseline" not in res.results
    if kind == "two_heads":
        assert {"test_supersense.acc", "test_pos.acc"} <= set(s)
        assert s["test_pos.acc"] > 0.4  # 4 parts of speech: well above chance after two epochs
    if kind == "tokens":
        lines = [json.loads(x) for x in (res.output_dir / "metrics.jsonl").read_text().splitlines()]
        parts = [x["loss_parts"] for x in lines if x["phase"] == "distill"]
        assert parts and all(set(p) == {"kd", "ce", "minilm"} and p["minilm"] > 0 for p in parts)


@pytest.mark.parametrize("kind", list(RECIPES))
def test_teacher_cache_off_gives_the_same_student(tmp_path, kind):
    """Live teacher outputs (cache_teacher = never) train the same student as the cache, up to float rounding
    of differently padded batches."""
    a = distill(load_recipe(recipe(tmp_path, kind, "on")))
    b = distill(load_recipe(recipe(tmp_path, kind, "off"), ['distill.cache_teacher="never"']))
    assert a.results["teacher_outputs"] == "cached" and b.results["teacher_outputs"] == "live"
    metric = RECIPES[kind][1]
    assert b.results["student"]["test_" + metric] == pytest.approx(a.results["student"]["test_" + metric],
                                                                    abs=0.03)


def _states_equal(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RECIPES))
def test_kill_and_resume_gives_the_same_weights(tmp_path, kind):
    straight, killed = recipe(tmp_path, kind, "a", small=TINY), recipe(tmp_path, kind, "b", small=TINY)
    assert cli("distill", str(straight)).returncode == 0
    p = cli("distill", str(killed), env={"ONDEVICE_KILL_AFTER": "distill:1"})
    assert p.returncode == 137, p.stderr[-2000:]
    p = cli("distill", str(killed))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming from" in p.stderr and "after epoch 1/" in p.stderr
    assert _states_equal(tmp_path / "a" / "student.pt", tmp_path / "b" / "student.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RECIPES))
def test_torchrun_two_processes_match_one(tmp_path, kind):
    one, two = recipe(tmp_path, kind, "one", small=TINY), recipe(tmp_path, kind, "two", small=TINY)
    assert cli("distill", str(one)).returncode == 0
    env = {**os.environ, "ONDEVICE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(Path(PY).with_name("torchrun")), "--nnodes", "1", "--nproc-per-node", "2",
                        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "ondevice.cli",
                        "distill", str(two)], capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["world_size"] == 2
    # Compared by what the students compute, not weight by weight: a parameter whose true gradient is zero (an
    # attention key bias: softmax ignores a per-query constant) is moved by Adam on float noise alone, differently in
    # each run. Sample-averaged losses, and token_lm's token-averaged ones (weighted by the global token count), give
    # the single-process update up to summation order; feature losses averaged over each process's own real tokens
    # (minilm, hidden_cos) are averaged per process, then across processes.
    from ondevice.data import load_data
    from ondevice.tasks import model_output
    from ondevice.tree import call_model

    rec = load_recipe(one)
    x, _ = load_data(rec.data, rec.seed).test.batch(torch.arange(32))
    outs = []
    for run in ("one", "two"):
        with torch.no_grad():
            y = model_output(call_model(load_student(tmp_path / run), x))
        outs.append(torch.cat([v.flatten() for v in y.values()]) if isinstance(y, dict) else y.flatten())
    rel = float((outs[0] - outs[1]).norm() / outs[0].norm())
    assert rel < (0.01 if kind in ("lm", "embedding") else 0.03), rel
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())["student"]
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())["student"]
    metric = RECIPES[kind][1]
    assert r2["test_" + metric] == pytest.approx(r1["test_" + metric], abs=0.03)


@pytest.mark.slow
def test_readme_hugging_face_recipe_runs(tmp_path):
    """The README's "bring your own model" recipe, verbatim, on a few glosses: a local Hugging Face teacher (MiniLM),
    a DistilBERT-style student of every other teacher layer, and the cosine hidden-state loss through its layer map."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### Bring your own model")[1].split("```toml")[1].split("```")[0]
    p = tmp_path / "readme.toml"
    p.write_text(f'output_dir = "{tmp_path / "out"}"\nthreads = 1\n' + block)
    small = ["data.limit_train=64", "data.limit_val=32", "data.limit_test=32", "teacher.train.epochs=1",
             "train.epochs=1", 'train.precision="fp32"', "train.batch_size=32", "teacher.train.batch_size=32"]
    res = distill(load_recipe(p, small))
    r = res.results
    assert r["teacher"]["params"] > 22_000_000 and r["student"]["params"] < r["teacher"]["params"]
    assert r["teacher"]["trained_by_ondevice"] and r["losses"][1]["name"] == "hidden_cos"
    layers = res.student.backbone.encoder.layer
    assert len(layers) == 3 and res.student.backbone.config.num_hidden_layers == 3
    assert res.student.ondevice_layer_map["map"] == [[0, 0], [1, 2], [2, 4]]
