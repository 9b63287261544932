"""Verification by task: every criterion used can fail for the output's shape, every output is judged by SQNR (or
allclose), and each task's default floors gate the verdict. Outputs here are hand-built NumPy arrays whose right
answers are known, so each test states exactly what a broken artifact looks like and that it is caught."""
from __future__ import annotations

import numpy as np
import pytest

from ondevice.precision import get_precision
from ondevice.verify import compare, thresholds_for

INT8 = thresholds_for(get_precision("int8_static"))
FP32 = thresholds_for(get_precision("fp32"))


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_classification_uses_top1_and_sqnr():
    ref = _rng().standard_normal((200, 10))
    good = compare(ref, ref + 0.01 * _rng(1).standard_normal(ref.shape), None, INT8, task="classification")
    assert good.passed and good.top1_agreement > 0.98 and good.criteria["top1_agreement"] == good.top1_agreement
    swapped = ref.copy()
    swapped[:10] = swapped[:10, ::-1]  # 10 of 200 samples now predict another class
    bad = compare(ref, swapped, None, INT8, task="classification")
    assert not bad.passed and any(f.startswith("top1_agreement 0.9500 < 0.98") for f in bad.failures)


def test_a_single_logit_is_never_judged_by_top1():
    """(N, 1): the arg-max is always 0, so top-1 agreement would be 1.0 for any artifact. It is not used; SQNR is."""
    ref = _rng().standard_normal((100, 1))
    broken = np.zeros_like(ref)  # an artifact that outputs nothing useful
    c = compare(ref, broken, None, INT8, task="classification")
    assert c.top1_agreement is None and "top1_agreement" not in c.criteria
    assert any("top-1 agreement not used: output 'output' has shape (1,)" in n for n in c.notes)
    assert not c.passed and c.failures[0].startswith("SQNR")


def test_every_output_is_judged_by_sqnr():
    """A model with two outputs: the classification head agrees, the regression head is broken -> fails."""
    ref = {"digit": _rng().standard_normal((100, 10)), "ink": _rng(1).standard_normal((100, 1))}
    act = {"digit": ref["digit"].copy(), "ink": ref["ink"] + 0.5}
    c = compare(ref, act, None, INT8, task="classification")
    assert c.top1_agreement == 1.0 and c.outputs["digit"]["sqnr_db"] == float("inf")
    assert c.failures == [f"SQNR of 'ink' {c.outputs['ink']['sqnr_db']:.2f} dB < 20 dB"]
    f = compare(ref, act, None, FP32, task="classification")
    assert any(x.startswith("output 'ink' not within rtol") for x in f.failures)


def test_embeddings_use_cosine_and_nearest_neighbours():
    ref = _rng().standard_normal((64, 32))
    noisy = ref + 0.02 * _rng(1).standard_normal(ref.shape)
    good = compare(ref, noisy, None, INT8, task="embedding")
    assert good.passed and good.criteria["cosine"] > 0.99 and good.criteria["nn_agreement@1"] >= 0.9
    assert good.top1_agreement is None  # arg-max of an embedding means nothing: not used
    shuffled = noisy[_rng(2).permutation(64)]  # right vectors for the wrong inputs
    bad = compare(ref, shuffled, None, INT8, task="embedding")
    assert not bad.passed and any(f.startswith("cosine") for f in bad.failures)
    assert any(f.startswith("nn_agreement@1") for f in bad.failures)


def test_language_model_logits_use_next_token_agreement_and_kl_on_real_tokens():
    ref = 3 * _rng().standard_normal((8, 6, 50))  # (B, T, V)
    mask = np.ones((8, 6), np.int64)
    mask[:, 4:] = 0  # the last two positions are padding
    act = ref.copy()
    act[:, 4:] = -act[:, 4:]  # garbage where nothing is predicted: must not count
    c = compare(ref, act, None, INT8, task="token_lm", inputs={"attention_mask": mask})
    assert c.criteria["next_token_agreement"] == 1.0 and c.criteria["kl"] == pytest.approx(0.0, abs=1e-12)
    assert any(f.startswith("SQNR") for f in c.failures)  # ... although SQNR sees every position
    wrong = ref.copy()
    wrong[:, :4] = np.roll(wrong[:, :4], 1, axis=-1)  # every real position predicts the next vocabulary entry
    d = compare(ref, wrong, None, INT8, task="token_lm", inputs={"attention_mask": mask})
    assert d.criteria["next_token_agreement"] < 0.2 and d.criteria["kl"] > INT8.max_kl
    assert any(f.startswith("next_token_agreement") for f in d.failures) and any(f.startswith("kl ") for f in d.failures)


def test_multi_output_heads_each_by_their_task():
    from ondevice.tasks import build_task

    task = build_task("multi_output", {"heads": {"sense": {"task": "classification"}, "vec": {"task": "embedding"}}})
    ref = {"sense": _rng().standard_normal((50, 5)), "vec": _rng(1).standard_normal((50, 16))}
    act = {"sense": ref["sense"], "vec": ref["vec"][::-1].copy()}
    c = compare(ref, act, None, INT8, task=task)
    assert c.criteria["sense.top1_agreement"] == 1.0 and c.criteria["vec.cosine"] < 0.5
    assert any(f.startswith("cosine of 'vec'") for f in c.failures)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8_static", "int4_weight_only", "prune50"])
def test_every_precision_has_a_floor_for_every_task_criterion(precision):
    th = thresholds_for(get_precision(precision))
    for field in ("min_top1_agreement", "min_cosine", "min_nn_agreement", "max_kl"):
        assert getattr(th, field) is not None, (precision, field)
    assert (th.min_sqnr_db is not None) or (th.rtol is not None and th.atol is not None)


def test_floors_are_documented_where_users_read_them():
    import ondevice.verify as v

    for words in ("classification", "top-1 agreement (min_top1_agreement)", "embedding", "min_cosine",
                  "min_nn_agreement", "token_lm", "max_kl", "not used when"):
        assert words in v.__doc__, words
