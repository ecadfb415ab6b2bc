"""LogitCorrection as a layer: Monolith's logit_correction_test.py (instantiate, serde, call) and the
correction table."""

import math

import torch

from monolith.layers import LogitCorrection
from monolith.native_model import LogitCorrection as NativeModelLogitCorrection


def test_sr_instantiate():
    p = LogitCorrection.params().copy()
    p.activation = torch.relu
    ins1 = p.instantiate()
    ins2 = LogitCorrection(activation=torch.relu)
    x, sr = torch.tensor([-2.0, 1.0]), torch.tensor([0.5, 0.5])
    torch.testing.assert_close(ins1((x, sr)), ins2((x, sr)))
    torch.testing.assert_close(ins1((x, sr)), torch.relu(x - math.log(0.5)))
    assert NativeModelLogitCorrection is LogitCorrection


def test_sr_serde():
    p = LogitCorrection.params().copy()
    p.activation = "sigmoid"
    p.sample_bias = True
    ins1 = p.instantiate()
    cfg = ins1.get_config()
    assert cfg == {"name": "LogitCorrection", "activation": "sigmoid", "sample_bias": True}
    ins2 = LogitCorrection.from_config(cfg)
    x = torch.tensor([0.3, -4.0])
    torch.testing.assert_close(ins2((x, None)), torch.sigmoid(torch.nn.functional.logsigmoid(x)))
    torch.testing.assert_close(ins1((x, None)), ins2((x, None)))


def test_sr_call():
    p = LogitCorrection.params().copy()
    p.name = "test_dense0"
    p.activation = "tanh"
    layer = p.instantiate()
    assert layer.name == "test_dense0"
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(100, 10, generator=gen, dtype=torch.float64)
    sr = torch.rand(100, 1, generator=gen, dtype=torch.float64).clamp(min=1e-10)
    out = layer((x, sr))
    assert out.shape == (100, 10)
    torch.testing.assert_close(out, torch.tanh(x - torch.log(sr)))


def test_logit_correction_cases():
    x = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    sr = torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)
    log_sig = torch.log(1 / (1 + torch.exp(-x)))
    torch.testing.assert_close(LogitCorrection()((x, sr)), x - torch.log(sr))
    torch.testing.assert_close(LogitCorrection(sample_bias=True)((x, sr)), log_sig - torch.log(sr))
    torch.testing.assert_close(LogitCorrection(sample_bias=True)((x, None)), log_sig)
    torch.testing.assert_close(LogitCorrection()((x, None)), x)
    torch.testing.assert_close(LogitCorrection(activation=torch.sigmoid)((x, None)), torch.sigmoid(x))
    # log_sigmoid stays finite where log(sigmoid(x)) underflows.
    assert torch.isfinite(LogitCorrection(sample_bias=True)((torch.tensor([-200.0]), None))).all()


def test_logit_correction_takes_monolith_name_argument():
    layer = LogitCorrection(activation=None, sample_bias=False, name="sample_rate_correction")
    x = torch.tensor([0.5, -1.0])
    torch.testing.assert_close(layer((x, torch.tensor([0.5, 0.5]))), x - math.log(0.5))
