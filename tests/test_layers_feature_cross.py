"""GroupInt, AllInt, CDot, CAN, DCN, CIN: Monolith's feature_cross_test (instantiate, serde, call)
and layer_ops_test's FFM shapes, with values checked against plain torch."""

import pytest
import torch

from monolith.layers import CAN, CIN, DCN, AllInt, CDot, GroupInt
from monolith.layers.feature_cross import ffm


def _roundtrip(layer):
    again = type(layer).from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_ffm_matches_pairwise_products():
    torch.manual_seed(0)
    left, right = torch.rand(8, 10 * 4) * 10, torch.rand(8, 12 * 4) * 10
    out = ffm(left, right, dim_size=4)
    assert out.shape == (8, 480)
    l3, r3 = left.reshape(8, 10, 4), right.reshape(8, 12, 4)
    torch.testing.assert_close(out[:, (2 * 12 + 5) * 4:(2 * 12 + 6) * 4], l3[:, 2] * r3[:, 5])
    dot = ffm(left, right, dim_size=4, int_type="dot")
    assert dot.shape == (8, 120)
    torch.testing.assert_close(dot[:, 2 * 12 + 5], (l3[:, 2] * r3[:, 5]).sum(-1))
    left.requires_grad_(True)
    ffm(left, right, dim_size=4).sum().backward()
    torch.testing.assert_close(left.grad, r3.sum(1).repeat(1, 10))


def test_groupint():
    p = GroupInt.params().copy()
    p.interaction_type, p.use_attention, p.attention_units = "dot", False, [128, 256, 1]
    _roundtrip(p.instantiate())
    _roundtrip(GroupInt(interaction_type="multiply", use_attention=True, attention_units=[128, 256, 1]))
    left = [torch.rand(100, 10) for _ in range(5)]
    right = [torch.rand(100, 10) for _ in range(3)]
    out = GroupInt()((left, right))
    torch.testing.assert_close(out, ffm(torch.cat(left, 1), torch.cat(right, 1), 10))
    att = GroupInt(interaction_type="multiply", use_attention=True, attention_units=[15, 10, 1])
    out = att((left, right))
    assert out.shape == (100, 150)
    out.sum().backward()
    with pytest.raises(ValueError, match="attention_units"):
        GroupInt(interaction_type="dot", use_attention=True, attention_units=[1])


def test_allint():
    p = AllInt.params().copy()
    p.cmp_dim = 4
    layer = p.instantiate()
    _roundtrip(layer)
    x = torch.rand(100, 10, 8)
    out = layer(x)
    want = x @ (x.transpose(1, 2) @ layer.allint_kernel + layer.allint_bias)
    torch.testing.assert_close(out, want.reshape(100, 40))


def test_cdot():
    p = CDot.params().copy()
    p.project_dim, p.compress_units, p.activation = 8, [128, 256], "tanh"
    _roundtrip(p.instantiate())
    layer = CDot(project_dim=8, compress_units=[128, 256], activation="tanh")
    x = torch.rand(100, 10, 6)
    out = layer(x)
    assert out.shape == (100, 10 * 8 + 6 * 8)
    compressed = out[:, 80:]
    torch.testing.assert_close(out[:, :80], (x @ compressed.reshape(100, 6, 8)).reshape(100, 80))
    out.sum().backward()
    assert layer.project_weight.grad is not None


def test_can():
    p = CAN.params().copy()
    p.layer_num, p.activation, p.is_seq, p.is_stacked = 8, "sigmoid", False, True
    _roundtrip(p.instantiate())
    layer = CAN(layer_num=2, activation="relu", is_seq=True, is_stacked=True)
    assert layer((torch.ones(128, 10, 12, 10), torch.ones(128, 220))).shape == (128, 10, 10)
    layer = CAN(layer_num=2, activation="relu", is_seq=False, is_stacked=True)
    user, item = torch.rand(4, 3, 2), torch.rand(4, 12)
    out = layer((user, item))
    x = user
    for i in range(2):  # item: [w (2x2), b (2)] per layer
        w, b = item[:, 6 * i:6 * i + 4].reshape(4, 2, 2), item[:, 6 * i + 4:6 * i + 6].reshape(4, 1, 2)
        x = torch.relu(x @ w + b)
    torch.testing.assert_close(out, x)
    flat = CAN(layer_num=2, is_seq=False, is_stacked=False)((user[:, 0], item))
    torch.testing.assert_close(flat, x[:, 0])
    with pytest.raises(ValueError, match="item_emb width"):
        layer((user, torch.rand(4, 11)))


def test_dcn():
    p = DCN.params().copy()
    p.layer_num, p.dcn_type, p.use_dropout, p.keep_prob = 8, "matrix", True, 0.5
    _roundtrip(p.instantiate())
    x = torch.rand(128, 10, 10)
    for kind in ("vector", "matrix"):
        layer = DCN(layer_num=2, dcn_type=kind, allow_kernel_norm=True, use_dropout=True, keep_prob=0.5)
        assert layer(x).shape == (128, 10, 10)
    mixed = DCN(layer_num=2, dcn_type="mixed", num_experts=2, low_rank=5, allow_kernel_norm=True,
                use_dropout=True, keep_prob=0.5)
    out = mixed(x)
    assert out.shape == (128, 10, 10)
    out.sum().backward()
    assert mixed.U_1_1.grad is not None and mixed.U_1_1_trainable_norm.grad is not None
    layer = DCN(layer_num=2, dcn_type="matrix")
    x2 = torch.rand(5, 6)
    out = layer(x2)
    x1 = x2 * (x2 @ layer.kernel_0 + layer.bias_0) + x2
    torch.testing.assert_close(out, x2 * (x1 @ layer.kernel_1 + layer.bias_1) + x1)
    vector = DCN(layer_num=1, dcn_type="vector", allow_kernel_norm=True)
    out = vector(x2)
    # The kernel norm starts at the initial norm: the layer starts as x0 * (x @ w) + b + x.
    torch.testing.assert_close(out, x2 * (x2 @ vector.kernel_0) + x2, atol=1e-6, rtol=1e-6)
    torch.manual_seed(0)
    dropped = DCN(layer_num=1, use_dropout=True, keep_prob=0.5)
    assert (dropped(x2) == 0).any()
    dropped.eval()
    assert not (dropped(x2) == 0).any()


def test_cin():
    p = CIN.params().copy()
    p.hidden_uints, p.activation = [10, 5], "sigmoid"
    _roundtrip(p.instantiate())
    layer = CIN(hidden_uints=[10, 5], activation="relu")
    x = torch.rand(128, 10, 6)
    out = layer(x)
    assert out.shape == (128, 15)
    x0 = x.transpose(1, 2)
    c0, c1 = layer.conv1d
    h1 = torch.relu(torch.einsum("bdh,bdm->bdhm", x0, x0).reshape(128, 6, 100) @ c0.kernel + c0.bias)
    h2 = torch.einsum("bdh,bdm->bdhm", h1, x0).reshape(128, 6, 100) @ c1.kernel + c1.bias
    torch.testing.assert_close(out, torch.cat([h1.sum(1), h2.sum(1)], 1))
