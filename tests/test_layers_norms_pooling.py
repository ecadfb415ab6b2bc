"""LayerNorm, GradNorm and the poolings: Monolith's norms_test and pooling_test, with values
checked against plain torch."""

import pytest
import torch

from monolith.layers import AvgPooling, GradNorm, LayerNorm, MaxPooling, SumPooling, initializers


def test_layer_norm():
    p = LayerNorm.params().copy()
    p.initializer = initializers.GlorotNormal()
    ln = p.instantiate()
    assert LayerNorm.from_config(ln.get_config()).get_config() == ln.get_config()
    layer = LayerNorm(initializer="ones")
    x = torch.rand(100, 100)
    torch.testing.assert_close(layer(x), torch.nn.functional.layer_norm(x, (100,), eps=1e-6))
    assert layer.gamma.shape == (100,) and layer.beta.shape == (100,)


def test_grad_norm():
    p = GradNorm.params().copy()
    p.loss_names = ["abc", "defg"]
    gn = p.instantiate()
    assert GradNorm.from_config(gn.get_config()).get_config() == gn.get_config()
    shared = torch.tensor([[1.0, 2.0]], requires_grad=True)
    losses = [(3 * shared).sum(), (shared ** 2).sum()]  # gradients (3, 3) and (2, 4)
    gnorm_loss, weighted_loss = GradNorm(loss_names=["a", "b"], relative_diff=False)((losses, shared))
    g = torch.tensor([18.0 ** 0.5, 20.0 ** 0.5])
    w = torch.tensor([0.5, 0.5])  # softmax of zero weights
    avg = (g * w).sum() / 2
    torch.testing.assert_close(gnorm_loss, ((g * w - avg).abs() ** 2).sum())
    torch.testing.assert_close(weighted_loss, 0.5 * (losses[0] + losses[1]))
    with pytest.raises(ValueError, match="2 losses for loss_names"):
        GradNorm(loss_names=["a"])((losses, shared))


@pytest.mark.parametrize("cls,reduce", [
    (SumPooling, lambda s: s.sum(0)), (AvgPooling, lambda s: s.mean(0)), (MaxPooling, lambda s: s.max(0).values)])
def test_pooling(cls, reduce):
    p = cls.params().copy()
    p.name = "test_dense0"
    layer = p.instantiate()
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()
    data = [torch.rand(100, 10) for _ in range(5)]
    torch.testing.assert_close(layer(data), reduce(torch.stack(data)))
    assert layer(data[:1]) is data[0]
    with pytest.raises(ValueError, match="non-empty list"):
        layer([])
