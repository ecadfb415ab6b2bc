import math
import pickle

import numpy as np
import pytest
import torch

from monolith.metrics import AUC, MeanSquaredError


def _pairwise_auc(labels, preds):
    """Fraction of (positive, negative) pairs ordered correctly, ties counting half."""
    pos = preds[labels == 1][:, None]
    neg = preds[labels == 0][None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 500
    labels = (rng.random(n) < 0.3).astype(np.int64)
    preds = np.round(rng.random(n) + 0.3 * labels, 1)  # rounding creates many ties
    auc = AUC()
    for chunk in np.array_split(np.arange(n), 7):
        auc.update(torch.from_numpy(labels[chunk]).float(), torch.from_numpy(preds[chunk]))
    assert len(auc) == n
    assert auc.compute() == pytest.approx(_pairwise_auc(labels, preds), abs=1e-12)


def test_auc_known_values():
    auc = AUC()
    auc.update([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert auc.compute() == pytest.approx(0.75)  # sklearn's documented example
    auc.reset()
    auc.update([0, 1], [0.5, 0.5])
    assert auc.compute() == 0.5


def test_auc_single_class_and_empty_is_nan():
    auc = AUC()
    assert math.isnan(auc.compute())
    auc.update(np.ones(4), np.arange(4.0))
    assert math.isnan(auc.compute())


def test_auc_merge_equals_single_stream():
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 2, 300)
    preds = np.round(rng.random(300), 2)
    whole, a, b = AUC(), AUC(), AUC()
    whole.update(labels, preds)
    a.update(labels[:120], preds[:120])
    b.update(labels[120:], preds[120:])
    a.merge(pickle.loads(pickle.dumps(b.state())))  # states travel between workers
    assert a.compute() == pytest.approx(whole.compute(), abs=1e-15)
    c = AUC()
    c.merge(whole)
    assert c.compute() == whole.compute()
    with pytest.raises(ValueError, match="'labels' and 'preds'"):
        c.merge({"labels": np.zeros(2)})


def test_auc_validation():
    auc = AUC()
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auc.update([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="same number of elements, got 2 and 3"):
        auc.update([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="finite"):
        auc.update([0, 1], [0.1, float("nan")])
    assert len(auc) == 0


def test_mse_streaming_merge_reset():
    rng = np.random.default_rng(3)
    y, p = rng.random((10, 2)), rng.random((10, 2))
    mse = MeanSquaredError()
    assert math.isnan(mse.compute())
    mse.update(torch.from_numpy(y[:4]), torch.from_numpy(p[:4]).requires_grad_())
    other = MeanSquaredError()
    other.update(y[4:], p[4:])
    mse.merge(other.state())
    assert mse.compute() == pytest.approx(float(np.mean((y - p) ** 2)))
    fresh = MeanSquaredError()
    fresh.merge(mse)
    assert fresh.compute() == mse.compute()
    mse.reset()
    assert math.isnan(mse.compute())
    with pytest.raises(ValueError, match="'sum_squared_error' and 'count'"):
        mse.merge({"count": 1})
    with pytest.raises(ValueError, match="same number of elements"):
        mse.update([1.0], [1.0, 2.0])
