"""MMoE, SNR, AutoInt, iRazor, SeNet, DIN, DIEN, AGRUCell, DMR_U2I: Monolith's multi_task_test,
feature_trans_test, feature_seq_test and agru_test (instantiate, serde, call), with values checked
against plain torch and gradient checks."""

import math

import pytest
import torch

from monolith.layers import DIEN, DIN, DMR_U2I, SNR, AGRUCell, AutoInt, MMoE, SeNet, initializers, iRazor
from monolith.layers.agru import dynamic_rnn_with_attention, static_rnn_with_attention
from monolith.mode_keys import ModeKeys


def _roundtrip(layer):
    again = type(layer).from_config(layer.get_config())
    assert again.get_config() == layer.get_config()


def test_mmoe():
    p = MMoE.params().copy()
    p.name, p.num_tasks, p.num_experts = "test_mmoe", 2, 3
    p.expert_output_dims, p.expert_activations = [128, 64, 64], "relu"
    p.expert_initializers = initializers.GlorotNormal()
    _roundtrip(p.instantiate())
    layer = MMoE(num_tasks=2, num_experts=3, gate_type="topk", top_k=2,
                 expert_output_dims=[[128, 64, 64], [64, 64], [128, 64]], expert_activations="relu",
                 expert_initializers=initializers.GlorotNormal())
    x = torch.rand(100, 128)
    outs = layer(x)
    assert [o.shape for o in outs] == [(100, 64), (100, 64)]
    # Zero gate weights: softmax gates all 1/3, top-2 keeps all three (ties), so each task averages the experts.
    mean_expert = torch.stack([expert(x) for expert in layer.experts]).mean(0)
    torch.testing.assert_close(outs[0], mean_expert)
    (cv,) = layer.losses
    torch.testing.assert_close(cv, torch.zeros(2))
    sum(o.sum() for o in outs).backward()
    assert layer.gate_weight.grad is not None
    with pytest.raises(ValueError, match="num_experts not set"):
        MMoE(num_tasks=1, expert_output_dims=[4], expert_activations="relu", expert_initializers="zeros")


def test_snr():
    p = SNR.params().copy()
    p.name, p.num_out_subnet, p.out_subnet_dim, p.use_ste = "test_snr", 3, 128, False
    _roundtrip(p.instantiate())
    layer = SNR(num_out_subnet=3, out_subnet_dim=128, snr_type="aver", use_ste=False, mode=ModeKeys.PREDICT)
    data = [torch.rand(100, 128) for _ in range(4)]
    outs = layer(data)
    assert [o.shape for o in outs] == [(100, 128)] * 3
    # PREDICT: z = clip(sigmoid(0) * 1.2 - 0.1) = 0.5 on every route of identity blocks.
    torch.testing.assert_close(outs[1], 0.5 * sum(data))
    l0 = torch.sigmoid(torch.tensor(0.0) - 0.5 * math.log(0.1 / 1.1)) * 12
    torch.testing.assert_close(layer.losses[0], l0)
    trained = SNR(num_out_subnet=2, out_subnet_dim=4, use_ste=True)
    outs = trained([torch.rand(5, 3), torch.rand(5, 3)])
    sum(o.sum() for o in outs).backward()
    assert trained.weight.grad.shape == (4, 12) and trained.log_alpha.grad is not None


def test_autoint():
    p = AutoInt.params().copy()
    p.layer_num = 1
    _roundtrip(p.instantiate())
    layer = AutoInt(layer_num=2)
    x = torch.rand(100, 10, 10)
    y = x
    for _ in range(2):
        y = torch.softmax(y @ y.transpose(1, 2), -1) @ y
    torch.testing.assert_close(layer(x), y.reshape(100, 100))


def test_senet():
    p = SeNet.params().copy()
    p.num_feature, p.cmp_dim, p.initializer = 10, 4, initializers.GlorotNormal()
    layer = p.instantiate()
    _roundtrip(layer)
    x = torch.rand(100, 10, 10)
    out = layer(x)
    weight = layer.cmp_tower(x.mean(2))
    torch.testing.assert_close(out, (x * weight.unsqueeze(2)).reshape(100, 100))
    listed = layer([x[:, i] for i in range(10)])
    torch.testing.assert_close(listed, out)


def test_irazor():
    p = iRazor.params().copy()
    p.nas_space, p.initializer = [0, 2, 5, 7, 10], initializers.GlorotNormal()
    _roundtrip(p.instantiate())
    layer = iRazor(nas_space=[0, 2, 5, 7, 10], t=0.08, initializer=initializers.HeUniform(),
                   feature_weight=[1.0] * 10)
    x = torch.ones(100, 10, 10)
    out = layer(x)
    assert out.shape == (100, 100)
    probs = torch.softmax(layer.nas_weight / 0.08, 1)
    # Dimensions 0-1 belong to choice 1, 2-4 to choice 2, 5-6 to 3, 7-9 to 4.
    want = torch.cat([probs[:, 1:2].expand(10, 2), probs[:, 2:3].expand(10, 3), probs[:, 3:4].expand(10, 2),
                      probs[:, 4:5].expand(10, 3)], 1)
    torch.testing.assert_close(out[0].reshape(10, 10), want)
    torch.testing.assert_close(layer.losses[0], want.sum())


def test_agru_cell_and_rnns():
    p = AGRUCell.params().copy()
    p.name, p.units, p.activation, p.initializer = "test_dense0", 10, "sigmoid", initializers.GlorotNormal()
    cell = p.instantiate()
    _roundtrip(AGRUCell(units=10, activation="sigmoid", initializer=initializers.HeUniform()))
    x, state, att = torch.rand(100, 100), torch.rand(100, 10), torch.rand(100, 1)
    _, out = cell((x, state, att))
    gates = torch.sigmoid(torch.cat([x, state], 1) @ cell.gates_kernel + cell.gates_bias)
    r = gates[:, :10]
    c = torch.sigmoid(torch.cat([x, r * state], 1) @ cell.candidate_kernel + cell.candidate_bias)
    torch.testing.assert_close(out, (1 - att) * state + att * c)
    rnn_cell = AGRUCell(units=10, activation="sigmoid")
    data, scores = torch.rand(100, 20, 10), torch.rand(100, 20)
    outputs, final = static_rnn_with_attention(rnn_cell, data, scores)
    assert outputs.shape == (100, 20, 10)
    torch.testing.assert_close(outputs[:, -1], final)
    outputs2, final2 = dynamic_rnn_with_attention(rnn_cell, data, scores)
    torch.testing.assert_close(final2, final)
    state = torch.zeros(100, 10)
    for t in range(20):
        state, _ = rnn_cell((data[:, t], state, scores[:, t:t + 1]))
    torch.testing.assert_close(final, state)


def test_din():
    p = DIN.params().copy()
    p.hidden_units, p.initializer = [10, 1], initializers.GlorotNormal()
    _roundtrip(p.instantiate())
    layer = DIN(hidden_units=[10, 1], initializer=initializers.HeUniform())
    query, keys = torch.rand(100, 10), torch.rand(100, 15, 10)
    out = layer((query, keys))
    q = query.unsqueeze(1).expand(-1, 15, -1)
    weight = layer.dense_tower(torch.cat([q, keys, q - keys, q * keys], -1))
    torch.testing.assert_close(out, (weight * keys).sum(1))
    mask = torch.zeros(100, 15)
    mask[:, :3] = 1
    torch.testing.assert_close(layer((query, keys), mask=mask), (weight * keys)[:, :3].sum(1))


def test_dien():
    p = DIEN.params().copy()
    p.num_units, p.initializer = 10, initializers.GlorotNormal()
    _roundtrip(p.instantiate())
    layer = DIEN(num_units=10, initializer=initializers.HeUniform())
    query, keys = torch.rand(100, 10), torch.rand(100, 15, 10)
    out = layer((query, keys))
    assert out.shape == (100, 10)
    out.sum().backward()
    assert layer.gru_cell.recurrent_kernel.grad is not None and layer.attention_weight.grad is not None


def test_dmr_u2i():
    p = DMR_U2I.params().copy()
    p.cmp_dim, p.activation, p.initializer = 10, "relu", initializers.GlorotNormal()
    _roundtrip(p.instantiate())
    layer = DMR_U2I(cmp_dim=5, activation="relu", initializer=initializers.HeUniform())
    items, seq = torch.rand(100, 10), torch.rand(100, 15, 10)
    out = layer((items, seq))
    alpha = torch.softmax((layer.pos_emb + seq @ layer.emb_weight + layer.bias).sum(-1, keepdim=True), 1)
    merged = (seq * alpha).sum(1)
    torch.testing.assert_close(out, torch.relu(merged @ layer.linear.kernel + layer.linear.bias) * items)
