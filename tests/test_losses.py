"""Distillation losses: hand-computed values, mathematical properties, and config/shape errors."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ondevice.errors import ConfigError
from ondevice.losses import (
    LOSSES,
    ATLoss,
    CombinedLoss,
    CrossEntropyLoss,
    DKDLoss,
    FitNetsLoss,
    KDLoss,
    LossInputs,
    attention_map,
    build_loss,
    dkd_terms,
    kd_kl,
    masked_mean,
)

LN2 = math.log(2.0)


def inputs(s, t=None, y=None, sf=None, tf=None) -> LossInputs:
    s = torch.as_tensor(s, dtype=torch.float32)
    t = None if t is None else torch.as_tensor(t, dtype=torch.float32)
    y = torch.zeros(s.shape[0], dtype=torch.long) if y is None else torch.as_tensor(y, dtype=torch.long)
    return LossInputs(s, t, y, sf or {}, tf or {})


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:  # row-wise KL(p || q)
    return (p * np.log(p / q)).sum(axis=1)


# ---------------------------------------------------------------------------------------------------------------- KD
def test_kd_hand_computed_two_samples_three_classes():
    # T = 2.  Sample 1: teacher t/T = [ln2, 0, 0] -> p_t = [1/2, 1/4, 1/4]; student s = 0 -> p_s = [1/3, 1/3, 1/3]
    #   KL_1 = 1/2 ln(3/2) + 2 * 1/4 ln(3/4) = 1/2 ln(9/8)
    # Sample 2: roles swapped, p_t = uniform, p_s = [1/2, 1/4, 1/4]
    #   KL_2 = 1/3 (ln(2/3) + 2 ln(4/3)) = 1/3 ln(32/27)
    # KD = T^2 * (KL_1 + KL_2) / 2 = 2 * (1/2 ln(9/8) + 1/3 ln(32/27)) = ln(9/8) + 2/3 ln(32/27) = 0.2310491...
    expected = math.log(9 / 8) + (2 / 3) * math.log(32 / 27)
    assert expected == pytest.approx(0.2310491, abs=1e-7)
    s = [[0.0, 0.0, 0.0], [2 * LN2, 0.0, 0.0]]
    t = [[2 * LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # the same number from NumPy, straight from the definition
    ref = 4 * np_kl(np_softmax(np.array(t) / 2), np_softmax(np.array(s) / 2)).mean()
    assert ref == pytest.approx(expected, rel=1e-12)
    got = KDLoss(temperature=2)(inputs(s, t)).item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 100.0])
def test_kd_is_zero_when_student_equals_teacher(T):
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(1)) * 5
    assert abs(KDLoss(T)(inputs(z, z.clone())).item()) < 1e-7


def test_kd_is_nonnegative():
    g = torch.Generator().manual_seed(2)
    for T in (1.0, 3.0, 10.0):
        for _ in range(20):
            v = KDLoss(T)(inputs(torch.randn(4, 7, generator=g) * 3, torch.randn(4, 7, generator=g) * 3)).item()
            assert v >= 0.0, f"KD={v} < 0 at T={T}"


def test_kd_t_squared_keeps_gradient_magnitude_independent_of_temperature():
    g = torch.Generator().manual_seed(0)
    s0, t0 = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g) * 2
    temps = [2.0, 4.0, 8.0, 16.0]
    scaled, unscaled = [], []
    for T in temps:
        s = s0.clone().requires_grad_()
        KDLoss(T)(inputs(s, t0)).backward()
        scaled.append(s.grad.norm().item())
        s = s0.clone().requires_grad_()
        # the unscaled term, written out independently of ondevice.losses
        F.kl_div(F.log_softmax(s / T, 1), F.softmax(t0 / T, 1), reduction="batchmean").backward()
        unscaled.append(s.grad.norm().item())
    assert max(scaled) / min(scaled) < 1.25, f"scaled grad norms vary too much across T={temps}: {scaled}"
    for (a, b) in zip(unscaled, unscaled[1:]):  # doubling T divides the unscaled gradient by ~4
        assert 3.0 < a / b < 4.5, unscaled
    assert 0.8 * 64 < unscaled[0] / unscaled[-1] < 1.25 * 64, unscaled  # (16/2)^2 = 64


def test_kd_needs_teacher_logits():
    with pytest.raises(ConfigError, match=r"loss 'kd' needs teacher logits but LossInputs\.teacher_logits is None"):
        KDLoss()(inputs([[1.0, 2.0]]))


def test_kd_mismatched_class_counts():
    with pytest.raises(ConfigError, match=r"student logits \(1, 2\) and teacher logits \(1, 3\) differ in shape"):
        KDLoss()(inputs([[1.0, 2.0]], [[1.0, 2.0, 3.0]]))


# ---------------------------------------------------------------------------------------------------------------- CE
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ce_matches_torch_and_numpy(smoothing):
    g = torch.Generator().manual_seed(3)
    s, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    got = CrossEntropyLoss(label_smoothing=smoothing)(inputs(s, y=y)).item()
    assert got == pytest.approx(F.cross_entropy(s, y, label_smoothing=smoothing).item(), rel=1e-6)
    logp = np.log(np_softmax(s.double().numpy()))
    target = (1 - smoothing) * np.eye(5)[y.numpy()] + smoothing / 5
    assert got == pytest.approx(-(target * logp).sum(1).mean(), rel=1e-5)
    assert CrossEntropyLoss.needs_teacher is False


# --------------------------------------------------------------------------------------------------------------- DKD
def np_dkd(s, t, y, alpha, beta, T):
    """TCKD/NCKD straight from Zhao et al. 2022 (exact renormalisation over the non-target classes)."""
    ps, pt = np_softmax(s / T), np_softmax(t / T)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    tckd = np_kl(bt, bs)
    keep = np.ones_like(ps, dtype=bool)
    keep[rows, y] = False
    C = s.shape[1]
    ps_nt = ps[keep].reshape(-1, C - 1)
    pt_nt = pt[keep].reshape(-1, C - 1)
    nckd = np_kl(pt_nt / pt_nt.sum(1, keepdims=True), ps_nt / ps_nt.sum(1, keepdims=True))
    return T**2 * (alpha * tckd + beta * nckd).mean(), tckd, nckd


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.0, 3.0)])
def test_dkd_equals_numpy_tckd_plus_nckd(alpha, beta, T):
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(5, 6, generator=g) * 3, torch.randn(5, 6, generator=g) * 3
    y = torch.tensor([0, 5, 2, 2, 3])
    ref, tckd_ref, nckd_ref = np_dkd(s.double().numpy(), t.double().numpy(), y.numpy(), alpha, beta, T)
    got = DKDLoss(alpha, beta, T)(inputs(s, t, y)).item()
    assert got == pytest.approx(ref, rel=1e-5)
    tckd, nckd = dkd_terms(s, t, y, T)
    np.testing.assert_allclose(tckd.numpy(), tckd_ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(nckd.numpy(), nckd_ref, rtol=1e-4, atol=1e-7)


def test_dkd_decomposition_recovers_kd():
    # Zhao et al. eq. (4): KL(p_t || p_s) = TCKD + (1 - p_t[gt]) * NCKD, per sample
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(7, 9, generator=g) * 2, torch.randn(7, 9, generator=g) * 2
    y = torch.randint(0, 9, (7,), generator=g)
    T = 3.0
    tckd, nckd = dkd_terms(s, t, y, T)
    pt_gt = F.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(tckd + (1 - pt_gt) * nckd, kd_kl(s, t, T), rtol=1e-5, atol=1e-6)
    # and through the public losses: a single sample with alpha = 1, beta = 1 - p_t[gt] is exactly KD
    for i in range(3):
        one = inputs(s[i : i + 1], t[i : i + 1], y[i : i + 1])
        dkd = DKDLoss(alpha=1.0, beta=1 - pt_gt[i].item(), temperature=T)(one).item()
        assert dkd == pytest.approx(KDLoss(T)(one).item(), rel=1e-5)


def test_dkd_is_stable_for_confident_logits():
    s = torch.tensor([[60.0, -60.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-60.0, 60.0, 0.0]])
    loss = DKDLoss(temperature=1.0)(inputs(s, t, [0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all() and loss.item() > 100


# ---------------------------------------------------------------------------------------------------------------- AT
def test_at_hand_computed_tiny_maps():
    # sample 1: student channels [[1,0],[0,1]] twice -> Q = [1,0,0,1] -> /sqrt2 -> [.707, 0, 0, .707]
    #           teacher one channel [[2,0],[0,0]]   -> Q = [4,0,0,0] -> [1, 0, 0, 0]
    #           ||diff||^2 = (1 - 1/sqrt2)^2 + 1/2 = 2 - sqrt2  -> distance sqrt(2 - sqrt2)
    # sample 2: student all ones, teacher all threes -> both normalise to [.5,.5,.5,.5] -> distance 0
    # loss = (sqrt(2 - sqrt2) + 0) / 2 = sin(22.5 deg) = 0.3826834
    expected = math.sqrt(2 - math.sqrt(2)) / 2
    assert expected == pytest.approx(0.3826834, abs=1e-7)
    eye = [[1.0, 0.0], [0.0, 1.0]]
    a_s = torch.tensor([[eye, eye], [[[1.0, 1.0], [1.0, 1.0]]] * 2], requires_grad=True)  # (2, 2, 2, 2)
    a_t = torch.tensor([[[[2.0, 0.0], [0.0, 0.0]]], [[[3.0, 3.0], [3.0, 3.0]]]], requires_grad=True)  # (2, 1, 2, 2)
    loss = ATLoss([("s", "t")])(inputs(torch.zeros(2, 3), sf={"s": a_s}, tf={"t": a_t}))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert a_s.grad is not None and a_s.grad.abs().sum() > 0
    assert a_t.grad is None  # the teacher is detached


def test_at_pools_larger_attention_map_and_sums_pairs():
    g = torch.Generator().manual_seed(6)
    a_s, a_t = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 8, 2, 2, generator=g)
    b_s, b_t = torch.randn(3, 2, 2, 2, generator=g), torch.randn(3, 5, 2, 2, generator=g)

    def manual(x, y):  # x larger (4x4 -> 2x2 by exact 2x2 block means), then L2-normalised distance
        qx = (x**2).mean(1).reshape(3, 2, 2, 2, 2).mean((2, 4)).reshape(3, -1)
        qy = (y**2).mean(1).reshape(3, -1)
        return (qx / qx.norm(dim=1, keepdim=True) - qy / qy.norm(dim=1, keepdim=True)).norm(dim=1).mean()

    def plain(x, y):
        qx, qy = (x**2).mean(1).reshape(3, -1), (y**2).mean(1).reshape(3, -1)
        return (qx / qx.norm(dim=1, keepdim=True) - qy / qy.norm(dim=1, keepdim=True)).norm(dim=1).mean()

    loss = build_loss([{"name": "at", "pairs": [["s1", "t1"], ["s2", "t2"]]}])
    inp = inputs(torch.zeros(3, 2), sf={"s1": a_s, "s2": b_s}, tf={"t1": a_t, "t2": b_t})
    total, parts = loss(inp)
    assert total.item() == pytest.approx((manual(a_s, a_t) + plain(b_s, b_t)).item(), rel=1e-5)
    assert parts == {"at": pytest.approx(total.item())}


def test_attention_map_exponent():
    a = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(attention_map(a, p=1), torch.tensor([[[2.0, 1.0]]]))
    torch.testing.assert_close(attention_map(a, p=2), torch.tensor([[[5.0, 2.0]]]))


def test_at_strict_shapes_raises_naming_both_layers():
    loss = build_loss([{"name": "at", "student_layer": "layer1", "teacher_layer": "layer3", "strict_shapes": True}])
    with pytest.raises(ConfigError, match=r"strict_shapes=true: student 'layer1' per-sample shape \(16, 8, 8\) vs "
                                          r"teacher 'layer3' per-sample shape \(64, 4, 4\)"):
        loss.build({"layer1": torch.Size([16, 8, 8])}, {"layer3": torch.Size([64, 4, 4])})
    # without strict_shapes the same pair builds fine
    build_loss([{"name": "at", "student_layer": "layer1", "teacher_layer": "layer3"}]).build(
        {"layer1": torch.Size([16, 8, 8])}, {"layer3": torch.Size([64, 4, 4])})


def test_at_layer_forms_are_exclusive():
    with pytest.raises(ConfigError, match=r"losses\[0\]\.pairs: expected either pairs=.*not both forms"):
        build_loss([{"name": "at", "pairs": [["a", "b"]], "student_layer": "a"}])
    with pytest.raises(ConfigError, match=r"losses\[0\]\.pairs: expected either .*neither form is complete"):
        build_loss([{"name": "at", "student_layer": "a"}])
    with pytest.raises(ConfigError, match=r"losses\[0\]\.pairs: expected a non-empty list of \[student_path, "
                                          r"teacher_path\] string pairs, got \[\['a'\]\] \(list\)"):
        build_loss([{"name": "at", "pairs": [["a"]]}])


# ----------------------------------------------------------------------------------------------------------- FitNets
def test_fitnets_regressor_learns_on_fixed_features():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    u = torch.randn(8, 4, 6, 6, generator=g)  # student features (B, Cs=4, 6, 6)
    w_true = torch.randn(6, 4, 1, 1, generator=g)
    v = F.conv2d(F.adaptive_avg_pool2d(u, 3), w_true)  # teacher features (B, Ct=6, 3, 3)
    loss = build_loss([{"name": "fitnets", "student_layer": "s", "teacher_layer": "t"}])
    loss.build({"s": u.shape[1:]}, {"t": v.shape[1:]})
    params = list(loss.parameters())
    assert [tuple(p.shape) for p in params] == [(6, 4, 1, 1), (6,)]  # conv1x1 weight + bias
    opt = torch.optim.SGD(params, lr=0.5)
    inp = inputs(torch.zeros(8, 2), sf={"s": u}, tf={"t": v})
    history = []
    for _ in range(30):
        opt.zero_grad()
        total, _ = loss(inp)
        total.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
        history.append(total.item())
        opt.step()
    assert history[-1] < 0.1 * history[0], history


def test_fitnets_pools_whichever_side_is_larger():
    g = torch.Generator().manual_seed(8)
    u, v = torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 4, 4, generator=g)  # teacher is larger
    m = FitNetsLoss("s", "t")
    m.build({"s": u.shape[1:]}, {"t": v.shape[1:]})
    with torch.no_grad():  # identity regressor so the loss is plain MSE(u, pool(v))
        m.regressor.weight.copy_(torch.eye(3)[:, :, None, None])
        m.regressor.bias.zero_()
    v_pooled = v.reshape(2, 3, 2, 2, 2, 2).mean((3, 5))  # exact 2x2 block means
    got = m(inputs(torch.zeros(2, 2), sf={"s": u}, tf={"t": v})).item()
    assert got == pytest.approx(((u - v_pooled) ** 2).mean().item(), rel=1e-6)


def test_fitnets_linear_regressor_for_vectors():
    m = FitNetsLoss("s.fc", "t.fc")
    m.build({"s.fc": torch.Size([5])}, {"t.fc": torch.Size([7])})
    assert isinstance(m.regressor, torch.nn.Linear) and m.regressor.weight.shape == (7, 5)
    out = m(inputs(torch.zeros(3, 2), sf={"s.fc": torch.randn(3, 5)}, tf={"t.fc": torch.randn(3, 7)}))
    assert out.shape == () and out.item() > 0


def test_fitnets_rank_mismatch_names_both_layers_and_shapes():
    loss = build_loss([{"name": "fitnets", "student_layer": "features.3", "teacher_layer": "classifier.1"}])
    with pytest.raises(ConfigError, match=r"rank mismatch, student 'features\.3' per-sample shape \(16, 8, 8\) vs "
                                          r"teacher 'classifier\.1' per-sample shape \(32,\)"):
        loss.build({"features.3": torch.Size([16, 8, 8])}, {"classifier.1": torch.Size([32])})


def test_fitnets_wrong_regressor_and_unbuilt():
    m = FitNetsLoss("a", "b", regressor="conv1x1")
    with pytest.raises(ConfigError, match=r"regressor 'conv1x1' does not fit student 'a' per-sample shape \(4,\).*"
                                          r"use regressor='linear'"):
        m.build({"a": torch.Size([4])}, {"b": torch.Size([4])})
    with pytest.raises(RuntimeError, match=r"fitnets: regressor not built; call build"):
        FitNetsLoss("a", "b")(inputs(torch.zeros(1, 2), sf={"a": torch.zeros(1, 4)}, tf={"b": torch.zeros(1, 4)}))


def test_missing_feature_names_the_path():
    m = FitNetsLoss("features.3", "layer2")
    m.build({"features.3": torch.Size([4, 2, 2])}, {"layer2": torch.Size([4, 2, 2])})
    inp = inputs(torch.zeros(1, 2), sf={"features.2": torch.zeros(1, 4, 2, 2)}, tf={"layer2": torch.zeros(1, 4, 2, 2)})
    with pytest.raises(ConfigError, match=r"needs student feature 'features\.3', but LossInputs\.student_features "
                                          r"has no such key \(present: 'features\.2'\)"):
        m(inp)
    with pytest.raises(ConfigError, match=r"loss 'at' needs teacher feature 'layer9'.*present: \(none\)"):
        ATLoss([("s", "layer9")])(inputs(torch.zeros(1, 2), sf={"s": torch.zeros(1, 1, 2, 2)}))
    with pytest.raises(ConfigError, match=r"no teacher feature shape for 'layer9' \(shapes were given for: 'layer2'\)"):
        FitNetsLoss("features.3", "layer9").build({"features.3": torch.Size([4, 2, 2])},
                                                  {"layer2": torch.Size([4, 2, 2])})


# ------------------------------------------------------------------------------------------------ registry / combine
def test_registry_lists_every_loss():
    # the original five stay registered; every registered loss names its paper in its docstring
    assert {"at", "ce", "dkd", "fitnets", "kd"} <= set(LOSSES.names())
    for name in LOSSES.names():
        doc = LOSSES.get(name).__doc__ or ""
        assert name == "ce" or re.search(r"(19|20)\d\d", doc), f"loss {name!r} must cite its paper and year"


def test_unknown_loss_name_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"losses\[1\]\.name: unknown loss 'kdd'; valid losses: "
                                          + re.escape(", ".join(LOSSES.names())) + r"\. Did you mean 'kd'\?"):
        build_loss([{"name": "ce"}, {"name": "kdd", "weight": 1.0}])


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"name": "kd", "temperature": "hot"}, r"losses\[0\]\.temperature: expected a finite number > 0, got 'hot' \(str\)"),
        ({"name": "kd", "temperature": 0}, r"losses\[0\]\.temperature: expected a finite number > 0, got 0 \(int\)"),
        ({"name": "kd", "temperature": True}, r"losses\[0\]\.temperature: expected a finite number > 0, got True"),
        ({"name": "dkd", "beta": -1.0}, r"losses\[0\]\.beta: expected a finite number >= 0, got -1\.0 \(float\)"),
        ({"name": "kd", "weight": "0.5"}, r"losses\[0\]\.weight: expected a finite number >= 0, got '0\.5' \(str\)"),
        ({"name": "kd", "temprature": 4}, r"losses\[0\]\.temprature: unknown parameter for loss 'kd'; valid "
                                          r"parameters: name, standardize, temperature, top_k, weight"),
        ({"name": "fitnets", "teacher_layer": "x"}, r"losses\[0\]\.student_layer: expected a module path string.*"
                                                    r"got nothing \(required by loss 'fitnets'\)"),
        ({"name": "fitnets", "student_layer": "a", "teacher_layer": "b", "regressor": "mlp"},
         r"losses\[0\]\.regressor: expected one of 'conv1x1', 'linear'.*got 'mlp' \(str\)"),
        ({"name": "at", "pairs": [["a", "b"]], "strict_shapes": "yes"},
         r"losses\[0\]\.strict_shapes: expected true or false, got 'yes' \(str\)"),
        ({"weight": 1.0}, r"losses\[0\]\.name: expected one of " + re.escape(", ".join(LOSSES.names())) + ", got None"),
    ],
)
def test_bad_params_raise_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_loss([spec])


def test_empty_or_non_list_specs():
    with pytest.raises(ConfigError, match=r"losses: expected at least one loss"):
        build_loss([])
    with pytest.raises(ConfigError, match=r"losses: expected a list of loss specs.*got 'kd' \(str\)"):
        build_loss("kd")


def test_combined_loss_weighted_sum_parts_layers_and_parameters():
    g = torch.Generator().manual_seed(9)
    specs = [
        {"name": "ce", "weight": 0.1},
        {"name": "kd", "weight": 0.9, "temperature": 2},
        {"name": "fitnets", "weight": 2.0, "student_layer": "s1", "teacher_layer": "t1"},
        {"name": "fitnets", "weight": 1.0, "student_layer": "s2", "teacher_layer": "t2"},
        {"name": "at", "weight": 500.0, "pairs": [["s1", "t1"], ["s2", "t2"]]},
    ]
    loss = build_loss(specs)
    assert isinstance(loss, CombinedLoss) and loss.needs_teacher
    assert loss.feature_layers() == [("s1", "t1"), ("s2", "t2")]
    # AT on the vector pair (s2, t2) is refused by build, naming the pair
    with pytest.raises(ConfigError, match=r"attention transfer needs conv feature maps \(C, H, W\) on both sides; "
                                          r"got student 's2' per-sample shape \(8,\) vs teacher 't2'"):
        loss.build({"s1": torch.Size([4, 4, 4]), "s2": torch.Size([8])}, {"t1": torch.Size([6, 4, 4]), "t2": torch.Size([3])})
    loss = build_loss(specs[:4])  # drop AT (it cannot take the vector pair)
    loss.build({"s1": torch.Size([4, 4, 4]), "s2": torch.Size([8])}, {"t1": torch.Size([6, 4, 4]), "t2": torch.Size([3])})
    assert sum(p.numel() for p in loss.parameters()) == (4 * 6 + 6) + (8 * 3 + 3)  # conv1x1 4->6 + linear 8->3
    s = torch.randn(5, 10, generator=g, requires_grad=True)
    t, y = torch.randn(5, 10, generator=g), torch.randint(0, 10, (5,), generator=g)
    sf = {"s1": torch.randn(5, 4, 4, 4, generator=g), "s2": torch.randn(5, 8, generator=g)}
    tf = {"t1": torch.randn(5, 6, 4, 4, generator=g), "t2": torch.randn(5, 3, generator=g)}
    inp = LossInputs(s, t, y, sf, tf)
    total, parts = loss(inp)
    assert list(parts) == ["ce", "kd", "fitnets[2]", "fitnets[3]"]
    assert parts["ce"] == pytest.approx(0.1 * F.cross_entropy(s, y).item(), rel=1e-6)
    assert parts["kd"] == pytest.approx(0.9 * KDLoss(2)(inp).item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(parts.values()), rel=1e-6)
    total.backward()
    assert s.grad is not None and all(p.grad is not None for p in loss.parameters())


def test_student_only_training_needs_no_teacher():
    loss = build_loss([{"name": "ce"}])
    assert loss.needs_teacher is False and loss.feature_layers() == []
    total, parts = loss(inputs([[2.0, 0.0]], None, [0]))
    assert total.item() == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    assert parts == {"ce": pytest.approx(total.item())}


def test_standardized_kd_matches_shape_not_scale():
    """Sun et al. 2024: after per-sample z-scoring, a student whose logits are a positive affine map of the teacher's
    has zero loss, and scaling/shifting the teacher's logits changes nothing; plain KD sees both as different."""
    torch.manual_seed(0)
    t = torch.randn(8, 10) * 30.0  # an over-confident teacher (logit spread ~30, like the ccexam MNIST CNN)
    s = 0.1 * t + 2.0  # same shape, a tenth of the scale
    std_kd = build_loss([{"name": "kd", "weight": 1.0, "temperature": 4.0, "standardize": True}])
    plain = build_loss([{"name": "kd", "weight": 1.0, "temperature": 4.0}])
    y = t.argmax(1)
    assert std_kd(LossInputs(s, t, y))[0].item() < 1e-6
    assert plain(LossInputs(s, t, y))[0].item() > 1.0
    s2 = torch.randn(8, 10)
    a = std_kd(LossInputs(s2, t, y))[0]
    b = std_kd(LossInputs(s2, 3.0 * t - 7.0, y))[0]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match=r"losses\[0\]\.standardize: expected true or false, got 'yes'"):
        build_loss([{"name": "kd", "standardize": "yes"}])


# ------------------------------------------------------------------------------------------------------- KD top-k
def test_kd_top_k_equal_to_vocabulary_is_full_kd():
    g = torch.Generator().manual_seed(10)
    s, t = torch.randn(6, 7, generator=g) * 3, torch.randn(6, 7, generator=g) * 3
    full = KDLoss(2.0)(inputs(s, t))
    for k in (7, 50):  # k = V, and k > V (cut to V)
        torch.testing.assert_close(KDLoss(2.0, top_k=k)(inputs(s, t)), full, rtol=1e-6, atol=1e-7)


def test_kd_top_k_hand_computed_three_classes_k2():
    # T = 2, teacher t = [2 ln3, 0, -10]: top-2 values [2 ln3, 0] at classes [0, 1]; t/T = [ln3, 0]
    #   -> p_t = [3/4, 1/4] renormalised over the two kept classes
    # student s = 0: softmax over all 3 classes, log p_s = -ln3 each
    # KL = 3/4 (ln 3/4 + ln3) + 1/4 (ln 1/4 + ln3) = 3/4 ln(9/4) + 1/4 ln(3/4)
    # L = T^2 KL = 3 ln(9/4) + ln(3/4) = ln(2187/256) = 2.1451086...
    expected = math.log(2187 / 256)
    assert expected == pytest.approx(3 * math.log(9 / 4) + math.log(3 / 4), rel=1e-12)
    assert expected == pytest.approx(2.1451086, abs=1e-7)
    got = KDLoss(2.0, top_k=2)(inputs([[0.0, 0.0, 0.0]], [[2 * math.log(3), 0.0, -10.0]]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_top_k_from_cache_equals_live_top_k():
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(6, 10, generator=g, requires_grad=True), torch.randn(6, 10, generator=g) * 2
    y = torch.randint(0, 10, (6,), generator=g)
    loss = build_loss([{"name": "kd", "temperature": 3.0, "top_k": 3}])
    assert loss.teacher_top_k() == 3  # what the teacher cache is asked to keep
    live, _ = loss(LossInputs(s, t, y))
    vals, idx = t.topk(3, dim=-1)  # (6, 3) each: what the cache stores
    cached, _ = loss(LossInputs(s, None, y, teacher_topk=(vals, idx)))
    torch.testing.assert_close(cached, live, rtol=0, atol=0)
    cached.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------- token features: helpers
def seq_inputs(sf, tf, mask=None, logits=None) -> LossInputs:
    """Sequence-feature inputs: no logits to speak of, (B, T) bool mask (None = every token real)."""
    b = next(iter(sf.values())).shape[0]
    m = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    return LossInputs(torch.zeros(b, 2) if logits is None else logits, None, None, sf, tf, m)


def built(spec: dict, sf: dict, tf: dict):
    """The one member of build_loss([spec]), built on the per-sample shapes of the given features."""
    loss = build_loss([spec])
    loss.build({k: v.shape[1:] for k, v in sf.items()}, {k: v.shape[1:] for k, v in tf.items()})
    return loss.members[0]


def t_(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_masked_mean_ignores_masked_entries_even_nan():
    v = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 0.0]], requires_grad=True)
    m = torch.tensor([[True, True, False], [True, False, True]])
    out = masked_mean(v, m)  # (1 + 2 + 4 + 0) / 4
    assert out.item() == pytest.approx(7 / 4)
    out.backward()
    torch.testing.assert_close(v.grad, m.float() / 4)
    assert masked_mean(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0


# ------------------------------------------------------------------------------------------- FitNets on tokens
def test_fitnets_token_states_hand_computed_masked_mean():
    # regressor r(u) = [u, 2u] (Linear 1 -> 2, bias 0); D_t = 2
    # sample 0, mask [T, T, F]: u = [1, 2, (99)], v = [[1, 0], [0, 4], (pad)]
    #   r = [[1, 2], [2, 4]] -> squared errors tok0 (0, 4), tok1 (4, 0): sums 4, 4
    # sample 1, mask [T, F, F]: u = [0, (7), (7)], v = [[1, 1], ...] -> r = [0, 0], squared (1, 1): sum 2
    # L = (4 + 4 + 2) / (N_real = 3 tokens * D_t = 2) = 10 / 6 = 5/3
    u = t_([[[1.0], [2.0], [99.0]], [[0.0], [7.0], [7.0]]])  # (B=2, T=3, Ds=1)
    v = t_([[[1, 0], [0, 4], [5, 5]], [[1, 1], [8, 8], [9, 9]]])  # (2, 3, Dt=2)
    m = built({"name": "fitnets", "student_layer": "encoder.layer.1", "teacher_layer": "encoder.layer.3"},
              {"encoder.layer.1": u}, {"encoder.layer.3": v})
    assert isinstance(m.regressor, torch.nn.Linear) and m.regressor.weight.shape == (2, 1)  # D_s -> D_t
    with torch.no_grad():
        m.regressor.weight.copy_(t_([[1.0], [2.0]]))
        m.regressor.bias.zero_()
    got = m(seq_inputs({"encoder.layer.1": u}, {"encoder.layer.3": v}, [[1, 1, 0], [1, 0, 0]]))
    assert got.item() == pytest.approx(5 / 3, rel=1e-6)
    # without a mask every token counts: the plain MSE of r(u) against v
    r = torch.cat([u, 2 * u], dim=-1)
    assert m(seq_inputs({"encoder.layer.1": u}, {"encoder.layer.3": v})).item() == pytest.approx(
        F.mse_loss(r, v).item(), rel=1e-6)


def test_fitnets_token_states_need_the_same_length():
    loss = build_loss([{"name": "fitnets", "student_layer": "s", "teacher_layer": "t"}])
    with pytest.raises(ConfigError, match=r"fitnets: student 's' per-sample shape \(5, 8\) vs teacher 't' per-sample "
                                          r"shape \(7, 16\); expected token states \(T, D\) with the same T"):
        loss.build({"s": torch.Size([5, 8])}, {"t": torch.Size([7, 16])})


# -------------------------------------------------------------------------------------------------- hidden_mse
def test_hidden_mse_hand_computed_two_layer_pairs():
    # layer_map [[0, 1], [1, 3]] -> pairs (s.0, t.1) and (s.1, t.3); one sample, mask [T, T, F]
    # pair (s.0, t.1), D_s = D_t = 2, so no W_h: hs = [[1, 2], [3, 4]], ht = [[1, 0], [3, 3]]
    #   per-token MSE: tok0 (0^2 + 2^2) / 2 = 2, tok1 (0 + 1^2) / 2 = 1/2 -> mean over 2 real tokens 5/4
    # pair (s.1, t.3), D_s = 1 -> D_t = 2, W_h = [[1, -1]] so H^S W_h = [h, -h]: hs = [2, 1], ht = [[2, -2], [0, 0]]
    #   tok0: [2, -2] vs [2, -2] -> 0; tok1: [1, -1] vs [0, 0] -> (1 + 1) / 2 = 1 -> mean 1/2
    # L = 5/4 + 1/2 = 7/4 (pairs are summed)
    sf = {"s.0": t_([[[1, 2], [3, 4], [9, 9]]]), "s.1": t_([[[2], [1], [5]]])}
    tf = {"t.1": t_([[[1, 0], [3, 3], [0, 0]]]), "t.3": t_([[[2, -2], [0, 0], [7, 7]]])}
    m = built({"name": "hidden_mse", "layer_map": [[0, 1], [1, 3]], "student_template": "s.{}",
               "teacher_template": "t.{}"}, sf, tf)
    assert m.feature_layers() == [("s.0", "t.1"), ("s.1", "t.3")]
    assert isinstance(m.proj[0], torch.nn.Identity)  # project="auto": only where the widths differ
    assert [tuple(p.shape) for p in m.parameters()] == [(2, 1)]  # W_h (no bias, as in H^S W_h)
    with torch.no_grad():
        m.proj[1].weight.copy_(t_([[1.0], [-1.0]]))
    assert m(seq_inputs(sf, tf, [[1, 1, 0]])).item() == pytest.approx(7 / 4, rel=1e-6)


def test_hidden_mse_project_modes_and_vectors():
    shapes = ({"s": torch.Size([4, 8])}, {"t": torch.Size([4, 8])})
    m = build_loss([{"name": "hidden_mse", "student_layer": "s", "teacher_layer": "t", "project": True}])
    m.build(*shapes)
    assert sum(p.numel() for p in m.parameters()) == 8 * 8  # learned even for equal widths
    m = build_loss([{"name": "hidden_mse", "pairs": [["s", "t"]], "project": False}])
    with pytest.raises(ConfigError, match=r"hidden_mse: project=false but the widths differ, student 's' per-sample "
                                          r"shape \(4, 8\) vs teacher 't' per-sample shape \(4, 16\); set "
                                          r"project='auto' to learn W_h \(8 -> 16\)"):
        m.build({"s": torch.Size([4, 8])}, {"t": torch.Size([4, 16])})
    with pytest.raises(ConfigError, match=r"losses\[0\]\.project: expected 'auto', true or false, got 1 \(int\)"):
        build_loss([{"name": "hidden_mse", "pairs": [["s", "t"]], "project": 1}])
    # (B, D) vectors (a pooler output) are one "token" per sample: the plain MSE
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    m = built({"name": "hidden_mse", "pairs": [["s", "t"]]}, {"s": a}, {"t": b})
    assert m(seq_inputs({"s": a}, {"t": b})).item() == pytest.approx(F.mse_loss(a, b).item(), rel=1e-6)


def test_hidden_mse_learns_projection():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(12)
    hs = torch.randn(4, 6, 3, generator=g)  # (B, T, d'=3)
    ht = hs @ torch.randn(3, 5, generator=g)  # (B, T, d=5): reachable by some W_h
    m = built({"name": "hidden_mse", "pairs": [["s", "t"]]}, {"s": hs}, {"t": ht})
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    inp = seq_inputs({"s": hs}, {"t": ht}, torch.rand(4, 6, generator=g) > 0.3)
    first = m(inp).item()
    for _ in range(200):
        opt.zero_grad()
        m(inp).backward()
        opt.step()
    assert m(inp).item() < 1e-3 * first


# -------------------------------------------------------------------------------------------------- hidden_cos
def test_hidden_cos_hand_computed():
    # sample 0, mask [T, T, F]: tok0 [1, 0] vs [0, 2] -> cos 0 -> 1; tok1 [1, 1] vs [3, 3] -> cos 1 -> 0
    # sample 1, mask [T, F, F]: tok0 [1, 1] vs [1, 0] -> cos 1/sqrt2 -> 1 - 1/sqrt2
    # L = (1 + 0 + 1 - 1/sqrt2) / 3 = (2 - 1/sqrt2) / 3 = 0.4309644...
    expected = (2 - 1 / math.sqrt(2)) / 3
    assert expected == pytest.approx(0.4309644, abs=1e-7)
    hs = t_([[[1, 0], [1, 1], [5, -5]], [[1, 1], [0, 1], [2, 2]]])
    ht = t_([[[0, 2], [3, 3], [1, 1]], [[1, 0], [-1, 0], [0, 3]]])
    m = built({"name": "hidden_cos", "student_layer": "encoder.layer.5", "teacher_layer": "encoder.layer.11"},
              {"encoder.layer.5": hs}, {"encoder.layer.11": ht})
    inp = seq_inputs({"encoder.layer.5": hs}, {"encoder.layer.11": ht}, [[1, 1, 0], [1, 0, 0]])
    assert m(inp).item() == pytest.approx(expected, rel=1e-6)
    # only directions count: rescaling either side per token changes nothing
    scale = torch.rand(2, 3, 1) + 0.5
    inp2 = seq_inputs({"encoder.layer.5": hs * scale}, {"encoder.layer.11": 7 * ht}, [[1, 1, 0], [1, 0, 0]])
    assert m(inp2).item() == pytest.approx(expected, rel=1e-5)


def test_hidden_cos_width_mismatch_names_both_shapes_and_hidden_mse():
    loss = build_loss([{"name": "hidden_cos", "pairs": [["encoder.layer.2", "encoder.layer.5"]]}])
    with pytest.raises(ConfigError, match=r"hidden_cos: the widths differ, student 'encoder\.layer\.2' per-sample "
                                          r"shape \(16, 384\) vs teacher 'encoder\.layer\.5' per-sample shape "
                                          r"\(16, 768\);.*Use 'hidden_mse', which learns a projection W_h"):
        loss.build({"encoder.layer.2": torch.Size([16, 384])}, {"encoder.layer.5": torch.Size([16, 768])})


# ------------------------------------------------------------------------------------------------------ MiniLM
def qkv_feats(prefix: str, q, k, v) -> dict:
    return {f"{prefix}.query": t_(q), f"{prefix}.key": t_(k), f"{prefix}.value": t_(v)}


def test_minilm_hand_computed_one_head():
    # heads = 1, D = 1 (d_k = 1); one sample, mask [T, T, F]; the padded position holds junk on both sides
    # student Q = K = V = 0 at the real tokens -> A^S = VR^S = [1/2, 1/2] on every real row
    # teacher Q = [1, 0], K = [ln3, 0]: scores row0 [ln3, 0] -> A^T = [3/4, 1/4]; row1 [0, 0] -> [1/2, 1/2]
    # teacher V = [sqrt(ln3), 0]: V V^T row0 [ln3, 0], row1 [0, 0] -> VR^T = A^T
    # KL row0 = 3/4 ln(3/2) + 1/4 ln(1/2) = 3/4 ln3 - ln2 = 0.1308120; row1 0
    # L_AT = L_VR = (0.1308120 + 0) / (1 head * 2 real queries) = 0.0654060
    # attention_weight 2, value_weight 0.5: L = 2.5 * 0.0654060 = 0.1635150
    kl0 = 0.75 * math.log(3) - math.log(2)
    assert kl0 == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-12)
    expected = 2.5 * kl0 / 2
    assert expected == pytest.approx(0.1635150, abs=1e-7)
    sf = qkv_feats("s.attn", [[[0.0], [0.0], [4.0]]], [[[0.0], [0.0], [-3.0]]], [[[0.0], [0.0], [6.0]]])
    tf = qkv_feats("t.attn", [[[1.0], [0.0], [2.0]]], [[[math.log(3)], [0.0], [9.0]]],
                   [[[math.sqrt(math.log(3))], [0.0], [-8.0]]])
    spec = {"name": "minilm", "student_layer": "s.attn", "teacher_layer": "t.attn", "heads": 1}
    m = built({**spec, "attention_weight": 2, "value_weight": 0.5}, sf, tf)
    assert m.feature_layers() == [("s.attn.query", "t.attn.query"), ("s.attn.key", "t.attn.key"),
                                  ("s.attn.value", "t.attn.value")]
    assert m(seq_inputs(sf, tf, [[1, 1, 0]])).item() == pytest.approx(expected, rel=1e-6)
    assert built(spec, sf, tf)(seq_inputs(sf, tf, [[1, 1, 0]])).item() == pytest.approx(kl0, rel=1e-6)  # 1, 1


def np_relations(x: np.ndarray, y: np.ndarray, heads: int) -> list[np.ndarray]:
    """Per-head x_a y_a^T / sqrt(d_k) of one sample's real tokens, x (n, D), y (n, D)."""
    d = x.shape[1] // heads
    return [x[:, a * d:(a + 1) * d] @ y[:, a * d:(a + 1) * d].T / np.sqrt(d) for a in range(heads)]


def np_minilm(sf: dict, tf: dict, mask: np.ndarray, heads: int) -> float:
    """MiniLM straight from the definition, on each sample's unpadded tokens (padding cut away, not masked)."""
    kl_sum, n_queries = 0.0, 0
    for b in range(mask.shape[0]):
        real = np.flatnonzero(mask[b])
        q_s, k_s, v_s = (sf[f"s.{n}"][b, real].double().numpy() for n in ("query", "key", "value"))
        q_t, k_t, v_t = (tf[f"t.{n}"][b, real].double().numpy() for n in ("query", "key", "value"))
        for st, tt in ((np_relations(q_s, k_s, heads), np_relations(q_t, k_t, heads)),
                       (np_relations(v_s, v_s, heads), np_relations(v_t, v_t, heads))):
            for a_s, a_t in zip(st, tt):
                kl_sum += np_kl(np_softmax(a_t), np_softmax(a_s)).sum() / heads
        n_queries += len(real)
    return kl_sum / n_queries  # L_AT + L_VR, each averaged over heads and real queries


def test_minilm_matches_numpy_with_different_widths_and_padding():
    g = torch.Generator().manual_seed(13)
    # student width 4, teacher width 6, both split into 2 relation heads (d_k = 2 and 3): MiniLMv2-style
    sf = {f"s.{n}": torch.randn(3, 5, 4, generator=g) * 2 for n in ("query", "key", "value")}
    tf = {f"t.{n}": torch.randn(3, 5, 6, generator=g) * 2 for n in ("query", "key", "value")}
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    m = built({"name": "minilm", "student_layer": "s", "teacher_layer": "t", "heads": 2}, sf, tf)
    got = m(seq_inputs(sf, tf, mask)).item()
    assert got == pytest.approx(np_minilm(sf, tf, mask, 2), rel=1e-5)
    # a student that reproduces the teacher's relations has zero loss
    same = {k.replace("t.", "s.", 1): v for k, v in tf.items()}
    assert abs(built({"name": "minilm", "student_layer": "s", "teacher_layer": "t", "heads": 3}, same, tf)(
        seq_inputs(same, tf, mask)).item()) < 1e-6


def test_minilm_llama_names_and_config_errors():
    spec = {"name": "minilm", "student_layer": "model.layers.1.self_attn", "teacher_layer": "model.layers.7.self_attn",
            "qkv": ["q_proj", "k_proj", "v_proj"], "heads": 4}
    loss = build_loss([spec])
    assert loss.feature_layers()[0] == ("model.layers.1.self_attn.q_proj", "model.layers.7.self_attn.q_proj")
    s = {f"model.layers.1.self_attn.{n}": torch.Size([10, 64]) for n in ("q_proj", "k_proj", "v_proj")}
    t = {f"model.layers.7.self_attn.{n}": torch.Size([10, 128]) for n in ("q_proj", "k_proj", "v_proj")}
    loss.build(s, t)
    with pytest.raises(ConfigError, match=r"minilm: teacher attention 'model\.layers\.7\.self_attn': query and key "
                                          r"widths differ .*'model\.layers\.7\.self_attn\.k_proj' \(10, 32\).*"
                                          r"grouped-query attention"):
        build_loss([spec]).build(s, {**t, "model.layers.7.self_attn.k_proj": torch.Size([10, 32])})
    with pytest.raises(ConfigError, match=r"minilm: heads=3 does not divide the student "
                                          r"'model\.layers\.1\.self_attn\.q_proj' width 64"):
        build_loss([{**spec, "heads": 3}]).build(s, t)
    with pytest.raises(ConfigError, match=r"minilm: student 'model\.layers\.1\.self_attn' has 10 positions but "
                                          r"teacher 'model\.layers\.7\.self_attn' has 12"):
        build_loss([spec]).build(s, {k: torch.Size([12, 128]) for k in t})
    with pytest.raises(ConfigError, match=r"losses\[0\]\.heads: expected an integer >= 1 dividing .* got nothing "
                                          r"\(required by loss 'minilm'\)"):
        build_loss([{k: v for k, v in spec.items() if k != "heads"}])
    with pytest.raises(ConfigError, match=r"losses\[0\]\.qkv: expected a list of the 3 query, key, value module "
                                          r"names .* got \['q', 'k'\] \(list\)"):
        build_loss([{**spec, "qkv": ["q", "k"]}])


def test_minilm_sample_without_real_tokens_stays_finite():
    g = torch.Generator().manual_seed(14)
    sf = {f"s.{n}": torch.randn(2, 3, 4, generator=g, requires_grad=True) for n in ("query", "key", "value")}
    tf = {f"t.{n}": torch.randn(2, 3, 4, generator=g) for n in ("query", "key", "value")}
    m = built({"name": "minilm", "student_layer": "s", "teacher_layer": "t", "heads": 2}, sf, tf)
    loss = m(seq_inputs(sf, tf, [[1, 1, 0], [0, 0, 0]]))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v.grad).all() for v in sf.values())
    assert all(v.grad[1].abs().sum() == 0 for v in sf.values())  # the all-padding sample has no say


# ----------------------------------------------------------------------------------------------- tinybert_attn
def test_tinybert_attn_hand_computed():
    # heads = 1, D = 1 (d_k = 1); one sample, mask [T, T, F]
    # student Q = [1, 2], K = [1, 1] -> A^S = [[1, 1], [2, 2]]; teacher Q = [1, 0], K = [3, 1] -> A^T = [[3, 1], [0, 0]]
    # A^S - A^T = [[-2, 0], [2, 2]] -> squares 4, 0, 4, 4 -> mean over the 4 real (query, key) pairs = 3
    sf = {"s.query": t_([[[1.0], [2.0], [5.0]]]), "s.key": t_([[[1.0], [1.0], [-5.0]]])}
    tf = {"t.query": t_([[[1.0], [0.0], [7.0]]]), "t.key": t_([[[3.0], [1.0], [7.0]]])}
    m = built({"name": "tinybert_attn", "pairs": [["s", "t"]], "heads": 1}, sf, tf)
    assert m.feature_layers() == [("s.query", "t.query"), ("s.key", "t.key")]  # no value projection
    assert m(seq_inputs(sf, tf, [[1, 1, 0]])).item() == pytest.approx(3.0, rel=1e-6)


def test_tinybert_attn_matches_numpy_over_a_layer_map():
    g = torch.Generator().manual_seed(15)
    heads, mask = 2, np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=bool)
    sf = {f"s.{i}.attn.{n}": torch.randn(2, 4, 4, generator=g) for i in (0, 1) for n in ("query", "key")}
    tf = {f"t.{j}.attn.{n}": torch.randn(2, 4, 6, generator=g) for j in (1, 3) for n in ("query", "key")}
    m = built({"name": "tinybert_attn", "layer_map": [[0, 1], [1, 3]], "student_template": "s.{}.attn",
               "teacher_template": "t.{}.attn", "heads": heads}, sf, tf)
    assert m.pairs == [("s.0.attn", "t.1.attn"), ("s.1.attn", "t.3.attn")]
    ref = 0.0
    for i, j in ((0, 1), (1, 3)):  # L_attn per pair: 1/h sum_a MSE(A^S_a, A^T_a) over the real (query, key) pairs
        se, n = 0.0, 0
        for b in range(2):
            real = np.flatnonzero(mask[b])
            a_s = np_relations(*(sf[f"s.{i}.attn.{x}"][b, real].double().numpy() for x in ("query", "key")), heads)
            a_t = np_relations(*(tf[f"t.{j}.attn.{x}"][b, real].double().numpy() for x in ("query", "key")), heads)
            se += sum(((x - y) ** 2).sum() for x, y in zip(a_s, a_t))
            n += heads * len(real) ** 2
        ref += se / n
    assert m(seq_inputs(sf, tf, mask)).item() == pytest.approx(ref, rel=1e-5)


# ----------------------------------------------------------------------------------------- masks and gradients
def _seq_case(name: str, g: torch.Generator):
    """(spec, student features, teacher features) for each sequence loss, B = 2, T = 5."""
    def rand(*shape):
        return torch.randn(*shape, generator=g)

    if name in ("fitnets", "hidden_mse", "hidden_cos"):
        d_s = 6 if name == "hidden_cos" else 4
        spec = ({"student_layer": "s", "teacher_layer": "t"} if name == "fitnets" else
                {"layer_map": [[0, 1], [2, 3]], "student_template": "s.{}", "teacher_template": "t.{}"})
        sf = {"s": rand(2, 5, d_s)} if name == "fitnets" else {"s.0": rand(2, 5, d_s), "s.2": rand(2, 5, d_s)}
        tf = {"t": rand(2, 5, 6)} if name == "fitnets" else {"t.1": rand(2, 5, 6), "t.3": rand(2, 5, 6)}
        return {"name": name, **spec}, sf, tf
    names = ("query", "key", "value") if name == "minilm" else ("query", "key")
    spec = ({"student_layer": "s", "teacher_layer": "t"} if name == "minilm" else {"pairs": [["s", "t"]]})
    return ({"name": name, "heads": 2, **spec}, {f"s.{n}": rand(2, 5, 4) for n in names},
            {f"t.{n}": rand(2, 5, 6) for n in names})


SEQUENCE_LOSSES = ["fitnets", "hidden_mse", "hidden_cos", "minilm", "tinybert_attn"]


@pytest.mark.parametrize("name", SEQUENCE_LOSSES)
def test_sequence_loss_ignores_padding_and_trains_only_the_student(name):
    g = torch.Generator().manual_seed(16)
    spec, sf, tf = _seq_case(name, g)
    m = built(spec, sf, tf)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    pad = ~mask[:, :, None]  # (B, T, 1)
    before = m(seq_inputs(sf, tf, mask))
    junk = {k: torch.where(pad, 100 * torch.randn(v.shape, generator=g), v) for k, v in {**sf, **tf}.items()}
    sf2 = {k: junk[k].requires_grad_() for k in sf}
    tf2 = {k: junk[k].requires_grad_() for k in tf}
    after = m(seq_inputs(sf2, tf2, mask))
    assert before.item() > 0 and after.item() == pytest.approx(before.item(), rel=1e-6, abs=1e-7)
    after.backward()
    for k, v in sf2.items():  # the student learns at the real tokens and nowhere else
        assert v.grad[mask].abs().sum() > 0 and v.grad[~mask].abs().sum() == 0, k
    assert all(v.grad is None for v in tf2.values())  # the teacher is detached
    assert all(p.grad is not None for p in m.parameters())  # W_h / the regressor train with the student


def test_mask_must_match_the_token_axis():
    sf, tf = {"s": torch.zeros(2, 5, 3)}, {"t": torch.zeros(2, 5, 3)}
    m = built({"name": "hidden_cos", "pairs": [["s", "t"]]}, sf, tf)
    with pytest.raises(ConfigError, match=r"loss 'hidden_cos': feature 's' has shape \(2, 5, 3\) but the padding mask "
                                          r"is \(2, 7\)"):
        m(seq_inputs(sf, tf, torch.ones(2, 7)))


# ------------------------------------------------------------------------------------------------- layer forms
LAYER_LOSSES = {"at": {}, "hidden_mse": {}, "hidden_cos": {}, "tinybert_attn": {"heads": 2}}


@pytest.mark.parametrize("name", sorted(LAYER_LOSSES))
def test_layer_map_and_templates_make_the_same_pairs(name):
    extra = LAYER_LOSSES[name]
    by_map = build_loss([{"name": name, "layer_map": [[0, 2], [1, 5]], "student_template": "encoder.layer.{}",
                          "teacher_template": "bert.encoder.layer.{}", **extra}])
    by_pairs = build_loss([{"name": name, "pairs": [["encoder.layer.0", "bert.encoder.layer.2"],
                                                     ["encoder.layer.1", "bert.encoder.layer.5"]], **extra}])
    assert by_map.members[0].pairs == [("encoder.layer.0", "bert.encoder.layer.2"),
                                       ("encoder.layer.1", "bert.encoder.layer.5")]
    assert by_map.feature_layers() == by_pairs.feature_layers()


@pytest.mark.parametrize("name", sorted(LAYER_LOSSES))
@pytest.mark.parametrize(
    "params,message",
    [
        ({"layer_map": [[0, 2]], "student_template": "s.{}"},
         r"losses\[0\]\.teacher_template: expected either pairs=.*neither form is complete: layer_map needs both "
         r"templates\), got layer_map=\[\(0, 2\)\], student_template='s\.\{\}'"),
        ({"student_template": "s.{}", "teacher_template": "t.{}"},
         r"losses\[0\]\.layer_map: expected either .*neither form is complete"),
        ({"pairs": [["a", "b"]], "layer_map": [[0, 1]], "student_template": "s.{}", "teacher_template": "t.{}"},
         r"losses\[0\]\.pairs: expected either .*not both forms: pairs and layer_map given"),
        ({}, r"losses\[0\]\.pairs: expected either .*neither form is complete.*got nothing"),
        ({"layer_map": [[0, -1]], "student_template": "s.{}", "teacher_template": "t.{}"},
         r"losses\[0\]\.layer_map: expected a non-empty list of \[student_layer, teacher_layer\] integer pairs "
         r"\(each >= 0\), e\.g\. \[\[0, 2\], \[1, 5\]\], got \[\[0, -1\]\] \(list\)"),
        ({"layer_map": [[0, 1]], "student_template": "encoder.layer", "teacher_template": "t.{}"},
         r"losses\[0\]\.student_template: expected a module path with one '\{\}' for the layer index, e\.g\. "
         r"'encoder\.layer\.\{\}', got 'encoder\.layer' \(str\)"),
    ],
)
def test_layer_forms_are_validated_the_same_for_every_loss(name, params, message):
    with pytest.raises(ConfigError, match=message):
        build_loss([{"name": name, **LAYER_LOSSES[name], **params}])


def test_layer_map_naming_a_missing_layer_names_the_path():
    loss = build_loss([{"name": "hidden_mse", "layer_map": [[0, 7]], "student_template": "encoder.layer.{}",
                        "teacher_template": "encoder.layer.{}"}])
    with pytest.raises(ConfigError, match=r"no teacher feature shape for 'encoder\.layer\.7' \(shapes were given for: "
                                          r"'encoder\.layer\.5'\)"):
        loss.build({"encoder.layer.0": torch.Size([4, 8])}, {"encoder.layer.5": torch.Size([4, 8])})


# --------------------------------------------------------------------------------------------------- embeddings
def test_embed_mse_and_cos_hand_computed():
    # embed_mse: s = [[1, 2], [0, 0]], t = [[1, 0], [3, 4]] -> squares 0, 4, 9, 16 -> 29 / (B*D = 4) = 7.25
    s = torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    loss = build_loss([{"name": "embed_mse"}]).members[0](LossInputs(s, t, None))
    assert loss.item() == pytest.approx(7.25, rel=1e-6)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None
    # embed_cos: [1, 0] vs [0, 5] -> cos 0 -> 1; [1, 1] vs [2, 2] -> cos 1 -> 0; mean 1/2
    s, t = t_([[1, 0], [1, 1]]), t_([[0, 5], [2, 2]])
    cos = build_loss([{"name": "embed_cos"}]).members[0]
    assert cos(LossInputs(s, t, None)).item() == pytest.approx(0.5, rel=1e-6)
    assert cos(LossInputs(3 * s, 0.1 * t, None)).item() == pytest.approx(0.5, rel=1e-6)  # scale-invariant


@pytest.mark.parametrize("name", ["embed_mse", "embed_cos"])
def test_embed_losses_name_both_shapes(name):
    m = LOSSES.get(name)()
    with pytest.raises(ConfigError, match=rf"loss '{name}': student vectors \(2, 384\) and teacher vectors "
                                          r"\(2, 768\) differ in shape; the student's vectors need the teacher's width"):
        m(LossInputs(torch.zeros(2, 384), torch.zeros(2, 768), None))
    with pytest.raises(ConfigError, match=rf"loss '{name}' needs teacher vectors but LossInputs\.teacher_logits is "
                                          r"None"):
        m(LossInputs(torch.zeros(2, 384), None, None))


def test_task_loss_names_are_registered_losses():
    from ondevice.tasks import FEATURE_LOSSES, LOGIT_LOSSES, VECTOR_LOSSES

    assert LOGIT_LOSSES | VECTOR_LOSSES | FEATURE_LOSSES == set(LOSSES.names())


def test_weighted_views_scale_logit_losses_but_not_feature_losses():
    """A view's weight (a head's weight, or token_lm's global-token factor under torchrun) multiplies the logit losses
    even when it is the only view; feature losses read module outputs shared by every view and are computed once."""
    s = torch.tensor([[1.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 0.2, 0.1]])
    y = torch.tensor([0])
    inp = inputs(s, t, y)
    loss = build_loss([{"name": "ce"}, {"name": "kd", "temperature": 2.0}])
    one, parts1 = loss(inp)
    scaled, parts2 = loss([(0.25, inp)])
    assert scaled.item() == pytest.approx(0.25 * one.item(), rel=1e-6)
    assert parts2["ce"] == pytest.approx(0.25 * parts1["ce"], rel=1e-6)
    two, _ = loss([(0.5, inp), (1.5, inp)])
    assert two.item() == pytest.approx(2.0 * one.item(), rel=1e-6)
