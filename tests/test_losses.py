import math

import pytest
import torch
import torch.nn.functional as F

from monolith.losses import batch_softmax_loss, get_sigmoid_loss_and_pred, get_softmax_loss_and_pred
from monolith.mode_keys import ModeKeys


def _bce(z, y):
    """Cross-entropy from its definition (inputs float64, moderate logits)."""
    p = 1 / (1 + torch.exp(-z))
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p))


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 1, generator=gen, dtype=torch.float64) * 2
    label = (torch.rand(8, 1, generator=gen) > 0.5).double()
    sample_rate = torch.rand(8, generator=gen, dtype=torch.float64) * 0.9 + 0.1
    weight = torch.rand(8, 1, generator=gen, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True, False, True, True, True])
    return logits, label, sample_rate, weight, mask


def test_default_float_sample_rate(data):
    logits, label, *_ = data
    loss, pred = get_sigmoid_loss_and_pred("ctr", logits, label, batch_size=999)
    torch.testing.assert_close(loss, _bce(logits.reshape(-1), label.reshape(-1)).sum())
    torch.testing.assert_close(pred, torch.sigmoid(logits.reshape(-1)))
    assert pred.shape == (8,)
    # A rate of 1 samples nothing out: with fast-emit bias only the log-sigmoid correction is left.
    loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=1.0, sample_bias=True)
    torch.testing.assert_close(loss, _bce(F.logsigmoid(logits.reshape(-1)), label.reshape(-1)).sum())


def test_float_and_none_sample_rate(data):
    logits, label, *_ = data
    z, y = logits.reshape(-1), label.reshape(-1)
    loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=0.25)
    torch.testing.assert_close(loss, _bce(z - math.log(0.25), y).sum())
    loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=None)
    torch.testing.assert_close(loss, _bce(z, y).sum())


def test_everything_together(data):
    logits, label, sample_rate, weight, mask = data
    loss, pred = get_sigmoid_loss_and_pred(
        "ctr",
        logits,
        label,
        8,
        sample_rate=sample_rate.reshape(8, 1),
        sample_bias=True,
        mode=ModeKeys.EVAL,
        instance_weight=weight,
        mask=mask.reshape(8, 1),
        logit_clip_threshold=0.05,
        predict_before_correction=False,
    )
    z, y = logits.reshape(-1), label.reshape(-1)
    biased = torch.log(1 / (1 + torch.exp(-z))) - torch.log(sample_rate)
    t = math.log(0.95 / 0.05)
    clipped = torch.clamp(biased, -t, t)
    expected = (_bce(clipped, y) * weight.reshape(-1))[mask].sum()
    torch.testing.assert_close(loss, expected)
    # Prediction uses the corrected logits but not the clipping.
    torch.testing.assert_close(pred, 1 / (1 + torch.exp(-biased)))


def test_clip_is_active(data):
    logits, label, *_ = data
    big = logits * 100
    loss, _ = get_sigmoid_loss_and_pred("ctr", big, label, 8, logit_clip_threshold=0.1)
    t = math.log(0.9 / 0.1)
    torch.testing.assert_close(loss, _bce(big.reshape(-1).clamp(-t, t), label.reshape(-1)).sum())


def test_mask_without_weight_and_weight_without_mask(data):
    logits, label, _, weight, mask = data
    z, y = logits.reshape(-1), label.reshape(-1)
    loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, mask=mask)
    torch.testing.assert_close(loss, _bce(z, y)[mask].sum())
    loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, instance_weight=weight)
    torch.testing.assert_close(loss, (_bce(z, y) * weight.reshape(-1)).sum())


def test_gradient_flows(data):
    logits, label, sample_rate, *_ = data
    x = logits.clone().requires_grad_()
    loss, _ = get_sigmoid_loss_and_pred("ctr", x, label, 8, sample_rate=sample_rate)
    loss.backward()
    z = logits.reshape(-1) - torch.log(sample_rate)
    # d/dz of BCE is sigmoid(z) - y.
    torch.testing.assert_close(x.grad.reshape(-1), torch.sigmoid(z) - label.reshape(-1))


def test_predict_mode(data):
    logits, label, *_ = data
    loss, pred = get_sigmoid_loss_and_pred(
        "ctr", logits, label, 8, sample_rate=0.1, mode=ModeKeys.PREDICT, predict_before_correction=False
    )
    assert loss is None
    torch.testing.assert_close(pred, torch.sigmoid(logits.reshape(-1)))


def test_predict_mode_neither_needs_a_label_nor_checks_the_clip(data):
    logits, *_ = data
    loss, pred = get_sigmoid_loss_and_pred("ctr", logits, None, 8, mode=ModeKeys.PREDICT, logit_clip_threshold=5)
    assert loss is None
    torch.testing.assert_close(pred, torch.sigmoid(logits.reshape(-1)))
    with pytest.raises(ValueError, match="label is None"):
        get_sigmoid_loss_and_pred("ctr", logits, None, 8)


def test_sample_rate_as_list_or_array_equals_tensor(data):
    logits, label, sample_rate, *_ = data
    want, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=sample_rate)
    for given in (sample_rate.tolist(), sample_rate.numpy()):
        loss, _ = get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=given)
        torch.testing.assert_close(loss, want)
    with pytest.raises(ValueError, match="sample_rate has 3 values for a batch of 8"):
        get_sigmoid_loss_and_pred("ctr", logits, label, 8, sample_rate=[0.5, 0.5, 1.0])


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 2.0])
def test_bad_clip_threshold(data, p):
    logits, label, *_ = data
    with pytest.raises(ValueError, match=f"logit_clip_threshold must satisfy 0 < p < 1, got {p}"):
        get_sigmoid_loss_and_pred("ctr", logits, label, 8, logit_clip_threshold=p)


def test_bad_mode(data):
    logits, label, *_ = data
    with pytest.raises(ValueError, match="mode must be one of"):
        get_sigmoid_loss_and_pred("ctr", logits, label, 8, mode="predict")


def test_mode_keys_values():
    assert (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT) == ("train", "eval", "infer")


def test_softmax_loss_and_pred():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    label = torch.nn.functional.one_hot(torch.tensor([0, 3, 1, 1, 2]), 4).double()
    label[0] = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)  # soft labels allowed
    loss, pred = get_softmax_loss_and_pred("cls", logits, label, ModeKeys.TRAIN)
    probs = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    torch.testing.assert_close(loss, -(label * torch.log(probs)).sum(1))
    assert loss.shape == (5,)
    assert pred.tolist() == logits.argmax(1).tolist()
    loss, pred = get_softmax_loss_and_pred("cls", logits, label, ModeKeys.PREDICT)
    assert loss is None and pred.tolist() == logits.argmax(1).tolist()
    with pytest.raises(ValueError, match="label must have the logits' shape \\(5, 4\\)"):
        get_softmax_loss_and_pred("cls", logits, torch.tensor([0, 3, 1, 1, 2]), ModeKeys.TRAIN)
    with pytest.raises(ValueError, match="\\[batch, classes\\]"):
        get_softmax_loss_and_pred("cls", logits.reshape(-1), label, ModeKeys.TRAIN)


def test_batch_softmax_loss_is_monolith_formula():
    gen = torch.Generator().manual_seed(4)
    query, item = torch.rand(4, 3, generator=gen, dtype=torch.float64), torch.rand(4, 3, generator=gen, dtype=torch.float64)
    interval = torch.tensor([0.0, 2.0, 5.0, 9.0], dtype=torch.float64)  # 0: a first lookup, read as 1
    r = torch.tensor([1.0, 0.5, 2.0, 1.0], dtype=torch.float64)
    # Monolith's steps literally: normalise, exp(s - log f), diagonal over row sums.
    q, i = query / query.norm(dim=1, keepdim=True), item / item.norm(dim=1, keepdim=True)
    similarity = torch.exp(q @ i.T / 0.5 - torch.log(1 / torch.clamp(interval, min=1.0)))
    want = -(r * torch.log(torch.diagonal(similarity) / similarity.sum(dim=1))).sum()
    torch.testing.assert_close(batch_softmax_loss(query, item, interval, r, temperature=0.5), want)
    raw = torch.exp(query @ item.T - torch.log(1 / torch.clamp(interval, min=1.0)))
    torch.testing.assert_close(batch_softmax_loss(query, item, interval, r, normalize=False),
                               -(r * torch.log(torch.diagonal(raw) / raw.sum(dim=1))).sum())
    with pytest.raises(ValueError, match="temperature should be positive"):
        batch_softmax_loss(query, item, interval, r, temperature=0.0)

