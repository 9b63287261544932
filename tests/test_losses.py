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
