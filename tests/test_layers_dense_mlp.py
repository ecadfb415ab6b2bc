"""Dense, MLP, LHUCTower, AddBias, activations and initializers: Monolith's dense_test, mlp_test,
lhuc_test, add_bias_test and advanced_activations_test, with values checked against plain torch."""

import math

import pytest
import torch

from monolith.layers import MLP, AddBias, Dense, LHUCTower, PReLU, activations, initializers


def test_dense_instantiate_and_serde():
    p = Dense.params().copy()
    p.name, p.units, p.activation = "test_dense0", 100, torch.sigmoid
    p.kernel_initializer = initializers.GlorotNormal()
    ins1 = p.instantiate()
    assert ins1.name == "test_dense0" and ins1.units == 100
    ins2 = Dense.from_config(ins1.get_config())
    assert ins2.get_config() == ins1.get_config()
    assert Dense.params().kernel_initializer == "glorot_uniform"


def test_dense_call_is_x_kernel_plus_bias():
    torch.manual_seed(0)
    layer = Dense(units=100, activation=torch.sigmoid, kernel_initializer=initializers.GlorotNormal())
    data = torch.rand(100, 30)
    out = layer(data)
    assert layer.kernel.shape == (30, 100) and out.shape == (100, 100)
    torch.testing.assert_close(out, torch.sigmoid(data @ layer.kernel + layer.bias))
    assert torch.count_nonzero(layer.bias) == 0
    out.sum().backward()
    assert layer.kernel.grad is not None and layer.bias.grad.shape == (100,)


def test_dense_kernel_starts_glorot_uniform():
    """Monolith's kernel: uniform in ±sqrt(6 / (fan_in + fan_out)); torch.nn.Linear's differs."""
    torch.manual_seed(0)
    layer = Dense(units=200)
    layer(torch.ones(2, 300))
    limit = math.sqrt(6 / (300 + 200))
    assert layer.kernel.abs().max() <= limit
    assert layer.kernel.abs().max() > 0.99 * limit
    torch.testing.assert_close(layer.kernel.var().item(), limit ** 2 / 3, rtol=0.03, atol=0)


def test_dense_kernel_norm_call():
    torch.manual_seed(0)
    layer = Dense(units=10, allow_kernel_norm=True, kernel_norm_trainable=True, activation="sigmoid")
    data = torch.rand(4, 6)
    out = layer(data)
    kernel = layer.kernel
    # At the start the trainable norm is the initial column norm: the layer computes x @ kernel.
    torch.testing.assert_close(out, torch.sigmoid(data @ kernel + layer.bias))
    with torch.no_grad():
        layer.trainable_kernel_norm.fill_(2.0)
    normed = kernel / kernel.norm(dim=0, keepdim=True)
    torch.testing.assert_close(layer(data), torch.sigmoid(data @ (2.0 * normed) + layer.bias))
    plain = Dense(units=10, allow_kernel_norm=True, kernel_norm_trainable=False)
    out = plain(data)
    torch.testing.assert_close(out, data @ (plain.kernel / plain.kernel.norm(dim=0, keepdim=True)))


def test_inactive_relu_monitor():
    layer = Dense(units=3, activation="relu", inactive_relu_monitor=True, kernel_initializer="ones")
    x = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # one example active, one inactive on every unit
    layer(x)
    torch.testing.assert_close(layer.inactive_relu_count_moving_avg, torch.full((3,), 0.1))
    layer(x)
    torch.testing.assert_close(layer.inactive_relu_count_moving_avg, torch.full((3,), 0.19))


def test_mlp_instantiate_serde_call():
    p = MLP.params().copy()
    p.name, p.output_dims, p.activations = "test_dense0", [1, 3, 4, 5], None
    p.initializers = initializers.GlorotNormal()
    mlp1 = p.instantiate()
    mlp2 = MLP.from_config(mlp1.get_config())
    assert mlp2.get_config() == mlp1.get_config()

    p = MLP.params().copy()
    p.output_dims = [100, 50, 10, 1]
    p.enable_batch_normalization = True
    p.activations = ["relu", torch.tanh, PReLU, None]
    p.initializers = initializers.GlorotNormal()
    layer = p.instantiate()
    out = layer(torch.rand(100, 100))
    assert out.shape == (100, 1)
    assert len(layer._stacked_layers) == 11  # Monolith's count: BN, 4 Dense, 3 BN, 3 activations
    out.sum().backward()
    assert all(param.grad is not None for param in layer.parameters())


def test_mlp_is_its_dense_stack():
    torch.manual_seed(0)
    mlp = MLP(output_dims=[8, 3], use_weight_norm=False)
    x = torch.rand(5, 4)
    out = mlp(x)
    d0, d1 = mlp.get_layer(0), mlp.get_layer(2)
    torch.testing.assert_close(out, torch.relu(x @ d0.kernel + d0.bias) @ d1.kernel + d1.bias)


def test_lhuc_instantiate_serde_call():
    p = LHUCTower.params().copy()
    p.name, p.output_dims, p.activations = "test_dense0", [1, 3, 4, 5], None
    lhuc1 = p.instantiate()
    assert LHUCTower.from_config(lhuc1.get_config()).get_config() == lhuc1.get_config()

    layer = LHUCTower(output_dims=[50, 20, 1], activations=None,
                      lhuc_output_dims=[[50, 50], [50, 50, 20], [100, 1]], use_bias=True, lhuc_use_bias=False,
                      initializers=initializers.HeUniform())
    out = layer([torch.ones(100, 100), torch.ones(100, 50)])
    assert out.shape == (100, 1)
    assert not layer.lhuc_layers[0].get_layer(0).use_bias and layer.dense_layers[0][0].use_bias
    assert layer.get_config()["lhuc_use_bias"] is False
    with pytest.raises(TypeError, match="lhuc_"):
        LHUCTower(output_dims=[1], lhuc_typo=1)


def test_lhuc_layer_is_dense_times_gate():
    torch.manual_seed(0)
    tower = LHUCTower(output_dims=[4], use_weight_norm=False, lhuc_use_weight_norm=False)
    x = torch.rand(3, 5)
    out = tower(x)
    dense = tower.dense_layers[0][0]
    gate = tower.lhuc_layers[0].get_layer(0)
    # One layer: no activation after the last dense; the LHUC gate ends in 2 * sigmoid.
    torch.testing.assert_close(out, (x @ dense.kernel + dense.bias) * 2 * torch.sigmoid(x @ gate.kernel + gate.bias))


def test_add_bias():
    p = AddBias.params().copy()
    p.name, p.initializer = "test_dense0", initializers.Constant(0.5)
    layer = p.instantiate()
    data = torch.rand(100, 10)
    torch.testing.assert_close(layer(data), data + 0.5)
    assert AddBias.from_config(layer.get_config()).get_config() == layer.get_config()
    assert layer.bias.shape == (10,)
    layer3 = AddBias()
    layer3(torch.zeros(2, 3, 4))
    assert layer3.bias.shape == (3, 4)


ALL_ACTS = ["relu", "leakyrelu", "elu", "softmax", "thresholdedrelu", "prelu", "exponential", "gelu",
            "hardsigmoid", "linear", "selu", "sigmoid", "softplus", "softsign", "swish", "tanh"]


@pytest.mark.parametrize("name", ALL_ACTS)
def test_activation_serde_and_params(name):
    act = activations.get(name)
    again = activations.get(activations.serialize(act))
    assert type(again) is type(act)
    assert type(act).params().cls is type(act)


def test_activation_values():
    x = torch.linspace(-3, 3, 13)
    expected = {
        "relu": torch.relu(x), "leakyrelu": torch.where(x > 0, x, 0.3 * x), "elu": torch.nn.functional.elu(x),
        "softmax": torch.softmax(x, -1), "thresholdedrelu": torch.where(x > 1, x, 0 * x),
        "prelu": torch.relu(x), "exponential": torch.exp(x), "gelu": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "hardsigmoid": torch.clamp(0.2 * x + 0.5, 0, 1), "linear": x, "selu": torch.nn.functional.selu(x),
        "sigmoid": torch.sigmoid(x), "softplus": torch.log1p(torch.exp(x)), "softsign": x / (1 + x.abs()),
        "swish": x * torch.sigmoid(x), "tanh": torch.tanh(x), "sigmoid2": 2 * torch.sigmoid(x),
    }
    for name, want in expected.items():
        torch.testing.assert_close(activations.get(name)(x), want, msg=name)
    torch.testing.assert_close(activations.get("{'name': 'ReLU', 'max_value': 1.0}")(x), torch.clamp(x, 0, 1))
    assert isinstance(activations.get(torch.relu), activations.ReLU)
    assert isinstance(activations.get(activations.LeakyReLU), activations.LeakyReLU)
    with pytest.raises(ValueError, match="unknown activation 'relux'"):
        activations.get("relux")


@pytest.mark.parametrize("name,limit_or_std,uniform", [
    ("glorot_uniform", math.sqrt(6 / 500), True), ("he_uniform", math.sqrt(6 / 300), True),
    ("lecun_uniform", math.sqrt(3 / 300), True), ("glorot_normal", math.sqrt(2 / 500), False),
    ("he_normal", math.sqrt(2 / 300), False), ("lecun_normal", math.sqrt(1 / 300), False),
])
def test_keras_initializers(name, limit_or_std, uniform):
    """Keras's fans: a [300, 200] kernel has fan_in 300 and fan_out 200."""
    torch.manual_seed(0)
    w = initializers.get(name)((300, 200))
    if uniform:
        assert w.abs().max() <= limit_or_std
        torch.testing.assert_close(w.std().item(), limit_or_std / math.sqrt(3), rtol=0.03, atol=0)
    else:  # truncated at two deviations of the untruncated normal, scaled so its deviation is as named
        assert w.abs().max() <= 2 * limit_or_std / 0.87962566103423978
        torch.testing.assert_close(w.std().item(), limit_or_std, rtol=0.03, atol=0)
    with pytest.raises(ValueError, match="unknown initializer"):
        initializers.get("glorot")
