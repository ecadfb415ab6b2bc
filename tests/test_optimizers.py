"""Per-slice optimizers against the vectors of Monolith's ``*_optimizer_test.cc``, plus learning-rate schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monolith import learning_rate_functions
from monolith.optim import (
    AdadeltaOptimizer,
    AdaGradWithGroupLassoOptimizer,
    AdagradOptimizer,
    AdamOptimizer,
    AmsgradOptimizer,
    BatchSoftmaxOptimizer,
    DynamicWdAdagradOptimizer,
    FtrlOptimizer,
    FTRLWithGroupSparsityOptimizer,
    GroupAdaGradOptimizer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    PolynomialDecay,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    SliceOptimizer,
    StochasticRoundingFloat16OptimizerWrapper,
    make_optimizer,
)

TOL = 1e-6
CAPACITY = 3
ROW = 1  # the row the vectors update; rows 0 and 2 must stay untouched


def make_store(opt: SliceOptimizer, dim: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.zeros((CAPACITY, dim), np.float32)
    state = np.zeros((CAPACITY, opt.state_width(dim)), np.float32)
    opt.init_state(state)
    return weights, state


def step(opt: SliceOptimizer, weights, state, rows, grads, lr: float) -> None:
    opt.apply(weights, state, np.asarray(rows, np.int64), np.asarray(grads, np.float32), lr, 0)


# (id, optimizer factory, dim, learning rate passed to apply, [(grads, expected weights after the step), ...])
# Hyper-parameters and values are those of Monolith's C++ tests.
VECTORS = [
    ("sgd", lambda: SgdOptimizer(learning_rate=0.1), 1, 0.1, [([1.0], [-0.1])]),
    (
        "adagrad",
        lambda: AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0),
        2,
        0.1,
        [([1.0, 2.0], [-0.07071067, -0.08944272])],
    ),
    (
        "adagrad_weight_decay",
        lambda: AdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0, weight_decay_factor=0.1),
        2,
        0.1,
        [([1.0, 2.0], [-0.07071067, -0.08944272]), ([1.0, 2.0], [-0.128173, -0.155943])],
    ),
    ("ftrl", FtrlOptimizer, 1, 0.01, [([10.0], [-0.009995]), ([10.0], [-0.0170643])]),
    (
        "ftrl_list",
        FtrlOptimizer,
        2,
        0.01,
        [([10.0, 1.0], [-0.009995, -0.00953463]), ([10.0, 1.0], [-0.0170643, -0.0164353])],
    ),
    (
        "adam",
        lambda: AdamOptimizer(learning_rate=0.01, beta1=0.9, beta2=0.99, epsilon=0.01),
        1,
        0.01,
        [([10.0], [-0.00990099]), ([10.0], [-0.01983060])],
    ),
    (
        "adam_list",
        AdamOptimizer,
        2,
        0.01,
        [([10.0, 1.0], [-0.00990099, -0.00909091]), ([10.0, 1.0], [-0.01983060, -0.01842895])],
    ),
    (
        "amsgrad",
        lambda: AmsgradOptimizer(learning_rate=0.01, beta1=0.9, beta2=0.99, epsilon=0.01),
        1,
        0.01,
        [([10.0], [-0.00990099]), ([10.0], [-0.01983060])],
    ),
    (
        "amsgrad_list",
        AmsgradOptimizer,
        2,
        0.01,
        [([10.0, 1.0], [-0.00990099, -0.00909091]), ([10.0, 1.0], [-0.01983060, -0.01842895])],
    ),
    ("momentum", MomentumOptimizer, 1, 0.01, [([10.0], [-0.1]), ([10.0], [-0.29])]),
    ("momentum_list", MomentumOptimizer, 2, 0.01, [([10.0, 1.0], [-0.1, -0.01]), ([10.0, 1.0], [-0.29, -0.029])]),
    ("moving_average", MovingAverageOptimizer, 1, 0.01, [([10.0], [1.0]), ([10.0], [1.9])]),
    ("moving_average_list", MovingAverageOptimizer, 2, 0.01, [([10.0, 1.0], [1.0, 0.1]), ([10.0, 1.0], [1.9, 0.19])]),
    ("rmsprop", RmspropOptimizer, 1, 0.01, [([10.0], [-0.024025]), ([10.0], [-0.042686])]),
    (
        "rmspropv2",
        RmspropV2Optimizer,
        2,
        0.01,
        [([10.0, 1.0], [-0.0090909, -0.005]), ([10.0, 1.0], [-0.0158549, -0.0092045])],
    ),
    ("adadelta", AdadeltaOptimizer, 1, 0.01, [([10.0], [-0.0031607]), ([10.0], [-0.0064035])]),
    (
        "adadelta_list",
        AdadeltaOptimizer,
        2,
        0.01,
        [([10.0, 1.0], [-0.0031607, -0.0030151]), ([10.0, 1.0], [-0.0064035, -0.0061047])],
    ),
    (
        "group_adagrad",
        lambda: GroupAdaGradOptimizer(l2_regularization=1.0, beta=1.0, initial_accumulator_value=0.0),
        1,
        0.01,
        [([10.0], [-0.008182]), ([10.0], [-0.014125])],
    ),
    (
        "group_adagrad_list",
        lambda: GroupAdaGradOptimizer(l2_regularization=0.5, beta=1.0, initial_accumulator_value=0.0),
        2,
        0.01,
        [([10.0, 1.0], [-0.008639, -0.000864]), ([1.0, 5.0], [-0.009096, -0.004778])],
    ),
    (
        "group_adagrad_zero_lambda",
        lambda: GroupAdaGradOptimizer(l2_regularization=0.0, beta=1.0, initial_accumulator_value=0.0),
        2,
        0.01,
        [([10.0, 1.0], [-0.009091, -0.000909])],
    ),
    (
        "group_adagrad_set_zero",
        lambda: GroupAdaGradOptimizer(l2_regularization=1000.0, beta=1.0, initial_accumulator_value=0.0),
        2,
        0.01,
        [([10.0, 1.0], [0.0, 0.0])],
    ),
    # Monolith has no group-FTRL or dynamic-wd test vectors; on one element without L1, group FTRL is
    # FTRL, and dynamic-wd Adagrad with coupled decay is Adagrad, so their vectors apply.
    (
        "group_ftrl_dim1_is_ftrl",
        lambda: FTRLWithGroupSparsityOptimizer(initial_accumulator_value=0.1, beta=0.0),
        1,
        0.01,
        [([10.0], [-0.009995]), ([10.0], [-0.0170643])],
    ),
    (
        "dynamic_wd_adagrad_coupled_is_adagrad",
        lambda: DynamicWdAdagradOptimizer(
            learning_rate=0.1,
            initial_accumulator_value=1.0,
            weight_decay_factor=0.1,
            decouple_weight_decay=False,
            enable_dynamic_wd=False,
        ),
        2,
        0.1,
        [([1.0, 2.0], [-0.07071067, -0.08944272]), ([1.0, 2.0], [-0.128173, -0.155943])],
    ),
    (
        "dynamic_wd_adagrad_no_decay_is_adagrad",
        lambda: DynamicWdAdagradOptimizer(learning_rate=0.1, initial_accumulator_value=1.0),
        2,
        0.1,
        [([1.0, 2.0], [-0.07071067, -0.08944272])],
    ),
]


@pytest.mark.parametrize("factory, dim, lr, steps", [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_monolith_vectors(factory, dim, lr, steps):
    opt = factory()
    weights, state = make_store(opt, dim)
    untouched = state[[0, 2]].copy()
    for grads, expected in steps:
        step(opt, weights, state, [ROW], [grads], lr)
        np.testing.assert_allclose(weights[ROW], expected, rtol=0, atol=TOL)
    np.testing.assert_array_equal(weights[[0, 2]], 0)
    np.testing.assert_array_equal(state[[0, 2]], untouched)


# One instance per optimizer, with non-trivial hyper-parameters so that every code path is exercised.
ALL = [
    SgdOptimizer(),
    AdagradOptimizer(weight_decay_factor=0.1),
    FtrlOptimizer(l1_regularization=0.01, l2_regularization=0.1, beta=0.5),
    AdamOptimizer(weight_decay_factor=0.1),
    AdamOptimizer(use_nesterov=True),
    AmsgradOptimizer(use_nesterov=True, weight_decay_factor=0.1),
    MomentumOptimizer(weight_decay_factor=0.1),
    MomentumOptimizer(use_nesterov=True),
    MovingAverageOptimizer(),
    RmspropOptimizer(weight_decay_factor=0.1),
    RmspropV2Optimizer(weight_decay_factor=0.1),
    AdadeltaOptimizer(weight_decay_factor=0.1),
    GroupAdaGradOptimizer(l2_regularization=0.01, weight_decay_factor=0.1),
    FTRLWithGroupSparsityOptimizer(l1_regularization=0.01, l2_regularization=0.1, beta=0.5),
    DynamicWdAdagradOptimizer(weight_decay_factor=0.1, enable_dynamic_wd=False),
    DynamicWdAdagradOptimizer(weight_decay_factor=0.1, decouple_weight_decay=False, enable_dynamic_wd=False),
]


@pytest.mark.parametrize("opt", ALL, ids=repr)
def test_repeated_rows_apply_sequential_updates(opt):
    dim = 5
    rng = np.random.default_rng(7)
    grads = rng.normal(size=(4, dim)).astype(np.float32)
    rows = [2, 0, 2, 2]

    batched_w, batched_s = make_store(opt, dim)
    batched_w[:] = rng.normal(size=batched_w.shape)
    one_by_one_w, one_by_one_s = batched_w.copy(), batched_s.copy()

    step(opt, batched_w, batched_s, rows, grads, 0.05)
    for row, grad in zip(rows, grads):
        step(opt, one_by_one_w, one_by_one_s, [row], [grad], 0.05)

    np.testing.assert_array_equal(batched_w, one_by_one_w)
    np.testing.assert_array_equal(batched_s, one_by_one_s)
    assert not np.array_equal(batched_w[2], batched_w[1])  # the repeated row really moved
    np.testing.assert_array_equal(batched_w[1], one_by_one_w[1])


def test_repeated_row_matches_two_monolith_steps():
    opt = FtrlOptimizer()
    weights, state = make_store(opt, 1)
    step(opt, weights, state, [ROW, ROW], [[10.0], [10.0]], 0.01)
    assert weights[ROW, 0] == pytest.approx(-0.0170643, abs=TOL)


@pytest.mark.parametrize("opt", ALL, ids=repr)
def test_empty_batch_is_a_no_op(opt):
    weights, state = make_store(opt, 3)
    before_w, before_s = weights.copy(), state.copy()
    step(opt, weights, state, np.zeros(0, np.int64), np.zeros((0, 3), np.float32), 0.1)
    np.testing.assert_array_equal(weights, before_w)
    np.testing.assert_array_equal(state, before_s)


STATE_LAYOUT = [
    (SgdOptimizer(), 0, []),
    (AdagradOptimizer(initial_accumulator_value=0.3), 4, [0.3] * 4),
    (FtrlOptimizer(initial_accumulator_value=0.2), 8, [0.2] * 4 + [0.0] * 4),
    (AdamOptimizer(beta1=0.8, beta2=0.95), 10, [0.0] * 8 + [0.8, 0.95]),
    (AmsgradOptimizer(beta1=0.8, beta2=0.95), 14, [0.0] * 12 + [0.8, 0.95]),
    (MomentumOptimizer(), 4, [0.0] * 4),
    (MovingAverageOptimizer(), 0, []),
    (RmspropOptimizer(), 4, [0.0] * 4),
    (RmspropV2Optimizer(), 4, [0.0] * 4),
    (AdadeltaOptimizer(), 8, [0.0] * 8),
    (GroupAdaGradOptimizer(initial_accumulator_value=0.4), 1, [0.4]),
    (FTRLWithGroupSparsityOptimizer(initial_accumulator_value=0.2), 8, [0.2] * 4 + [0.0] * 4),
    (DynamicWdAdagradOptimizer(initial_accumulator_value=0.3), 4, [0.3] * 4),
    (StochasticRoundingFloat16OptimizerWrapper(FtrlOptimizer(initial_accumulator_value=0.2)), 8, [0.2] * 4 + [0.0] * 4),
]


@pytest.mark.parametrize("opt, width, initial", STATE_LAYOUT, ids=[type(o).__name__ for o, _, _ in STATE_LAYOUT])
def test_state_width_and_init_state(opt, width, initial):
    assert opt.state_width(4) == width
    state = np.full((2, width), 123.0, np.float32)
    opt.init_state(state)
    np.testing.assert_allclose(state, [initial, initial], rtol=1e-7)


def test_proto_defaults_and_config():
    assert AdagradOptimizer().learning_rate == 0.001
    assert AdagradOptimizer().initial_accumulator_value == 0.1
    assert AdagradOptimizer(learning_rate=None, weight_decay_factor=None).weight_decay_factor == 0.0
    assert SgdOptimizer().learning_rate == 0.01
    ftrl = FtrlOptimizer(l1_regularization=0.5, l2_regularization=0.25)
    assert (ftrl.learning_rate, ftrl.beta, ftrl.initial_accumulator_value) == (0.01, 0.0, 0.1)
    assert (ftrl.l1_regularization_strength, ftrl.l2_regularization_strength) == (0.5, 0.25)
    group = AdaGradWithGroupLassoOptimizer()
    assert (group.learning_rate, group.beta, group.initial_accumulator_value, group.l2_regularization_strength) == (
        0.01,
        0.0,
        0.1,
        0.0,
    )
    adam = AdamOptimizer()
    assert (adam.learning_rate, adam.beta1, adam.beta2, adam.epsilon) == (0.01, 0.9, 0.99, 0.01)
    assert AdadeltaOptimizer().averaging_ratio == 0.9
    assert RmspropOptimizer().momentum == 0.9
    config = AdagradOptimizer(learning_rate=0.2).config()
    assert config["type"] == "AdagradOptimizer"
    assert config["learning_rate"] == 0.2
    assert config["initial_accumulator_value"] == 0.1


def test_make_optimizer_maps_proto_names():
    names = {
        "sgd": SgdOptimizer,
        "adagrad": AdagradOptimizer,
        "ftrl": FtrlOptimizer,
        "adam": AdamOptimizer,
        "amsgrad": AmsgradOptimizer,
        "momentum": MomentumOptimizer,
        "moving_average": MovingAverageOptimizer,
        "rmsprop": RmspropOptimizer,
        "rmspropv2": RmspropV2Optimizer,
        "adadelta": AdadeltaOptimizer,
        "group_adagrad": AdaGradWithGroupLassoOptimizer,
        "group_ftrl": FTRLWithGroupSparsityOptimizer,
        "dynamic_wd_adagrad": DynamicWdAdagradOptimizer,
        "batch_softmax": BatchSoftmaxOptimizer,
    }
    for name, cls in names.items():
        opt = make_optimizer(name)
        assert type(opt) is cls and opt.name == name
    assert make_optimizer("adagrad", learning_rate=0.5).learning_rate == 0.5
    assert GroupAdaGradOptimizer is AdaGradWithGroupLassoOptimizer


def test_make_optimizer_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"'lamb'.*adagrad.*group_adagrad.*sgd"):
        make_optimizer("lamb")


@pytest.mark.parametrize(
    "build, param",
    [
        (lambda: SgdOptimizer(learning_rate=-0.1), "learning_rate"),
        (lambda: AdagradOptimizer(learning_rate="fast"), "learning_rate"),
        (lambda: AdagradOptimizer(learning_rate=True), "learning_rate"),
        (lambda: AdagradOptimizer(learning_rate=float("nan")), "learning_rate"),
        (lambda: AdagradOptimizer(initial_accumulator_value=-0.1), "initial_accumulator_value"),
        (lambda: AdagradOptimizer(hessian_compression_times=0), "hessian_compression_times"),
        (lambda: AdagradOptimizer(warmup_steps=-1), "warmup_steps"),
        (lambda: AdagradOptimizer(weight_decay_factor=-1.0), "weight_decay_factor"),
        (lambda: FtrlOptimizer(learning_rate=0.0), "learning_rate"),
        (lambda: FtrlOptimizer(l1_regularization=-1.0), "l1_regularization"),
        (lambda: FtrlOptimizer(beta=-0.5), "beta"),
        (lambda: AdamOptimizer(beta1=1.0), "beta1"),
        (lambda: AmsgradOptimizer(beta2=-0.1), "beta2"),
        (lambda: AdamOptimizer(epsilon=0.0), "epsilon"),
        (lambda: AdamOptimizer(use_nesterov="yes"), "use_nesterov"),
        (lambda: MomentumOptimizer(momentum=1.5), "momentum"),
        (lambda: MovingAverageOptimizer(momentum=-0.1), "momentum"),
        (lambda: RmspropOptimizer(momentum=2.0), "momentum"),
        (lambda: AdadeltaOptimizer(averaging_ratio=1.1), "averaging_ratio"),
        (lambda: GroupAdaGradOptimizer(l2_regularization=-1.0), "l2_regularization"),
        (lambda: FTRLWithGroupSparsityOptimizer(learning_rate=0.0), "learning_rate"),
        (lambda: FTRLWithGroupSparsityOptimizer(l1_regularization=-0.1), "l1_regularization"),
        (lambda: FTRLWithGroupSparsityOptimizer(beta=-1.0), "beta"),
        (lambda: FTRLWithGroupSparsityOptimizer(beta=0.0), "one of beta, initial_accumulator_value and l2_"),
        (lambda: DynamicWdAdagradOptimizer(initial_accumulator_value=0.0), "initial_accumulator_value"),
        (lambda: DynamicWdAdagradOptimizer(weight_decay_factor=-0.1), "weight_decay_factor"),
        (lambda: DynamicWdAdagradOptimizer(decouple_weight_decay=1), "decouple_weight_decay"),
        (lambda: DynamicWdAdagradOptimizer(flip_direction="no"), "flip_direction"),
        (lambda: DynamicWdAdagradOptimizer(dynamic_wd_temperature=0.0), "dynamic_wd_temperature"),
        (lambda: BatchSoftmaxOptimizer(learning_rate=1.5), "learning_rate"),
        (lambda: BatchSoftmaxOptimizer(learning_rate=-0.1), "learning_rate"),
        (lambda: StochasticRoundingFloat16OptimizerWrapper("sgd"), "optimizer"),
    ],
)
def test_invalid_hyper_parameters(build, param):
    with pytest.raises(ValueError, match=param) as info:
        build()
    assert "got" in str(info.value) and "must be" in str(info.value)


def test_error_message_names_value_and_expectation():
    with pytest.raises(ValueError, match=r"SgdOptimizer: learning_rate must be a finite number >= 0.0, got -1"):
        SgdOptimizer(learning_rate=-1)
    with pytest.raises(ValueError, match=r"beta1 must be a finite number in \[0.0, 1.0\), got 1.0"):
        AdamOptimizer(beta1=1.0)


def test_bad_batches_are_rejected():
    opt = AdagradOptimizer()
    weights, state = make_store(opt, 2)
    with pytest.raises(IndexError):
        step(opt, weights, state, [CAPACITY], [[1.0, 1.0]], 0.1)
    with pytest.raises(IndexError):
        step(opt, weights, state, [-1], [[1.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="grads"):
        step(opt, weights, state, [0], [[1.0, 1.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="state"):
        step(opt, weights, np.zeros((CAPACITY, 3), np.float32), [0], [[1.0, 1.0]], 0.1)
    with pytest.raises(ValueError, match="grads"):
        opt.apply(weights, state, np.array([0]), np.ones((1, 2), np.float64), 0.1, 0)


def test_adagrad_decays_every_element():
    # Monolith's AVX path leaves the first floor(dim / 8) * 8 elements undecayed; all must be decayed here.
    dim, lr, decay, acc0 = 10, 0.1, 0.5, 1.0
    opt = AdagradOptimizer(initial_accumulator_value=acc0, weight_decay_factor=decay)
    weights, state = make_store(opt, dim)
    weights[ROW] = w0 = np.linspace(-1.0, 1.0, dim)
    grads = np.linspace(0.5, 2.0, dim)
    step(opt, weights, state, [ROW], [grads], lr)
    g = grads + decay * w0
    np.testing.assert_allclose(weights[ROW], w0 - lr / np.sqrt(acc0 + g * g) * g, rtol=0, atol=TOL)


def test_adagrad_with_zero_accumulator_matches_torch():
    # torch.optim.Adagrad starts its accumulator at 0; a zero gradient then moves nothing (no 0 / 0).
    import torch

    dim, lr = 3, 0.1
    opt = AdagradOptimizer(learning_rate=lr, initial_accumulator_value=0.0)
    weights, state = make_store(opt, dim)
    weights[:] = w0 = np.random.default_rng(0).normal(size=(CAPACITY, dim)).astype(np.float32)
    reference = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    torch_opt = torch.optim.Adagrad([reference], lr=lr, initial_accumulator_value=0.0)
    grads = np.random.default_rng(1).normal(size=(4, CAPACITY, dim)).astype(np.float32)
    grads[0, 0] = 0.0  # row 0's first gradient is zero: its accumulator stays 0
    grads[:, 2, 1] = 0.0  # one column never gets a gradient
    for g in grads:
        step(opt, weights, state, np.arange(CAPACITY), g, lr)
        reference.grad = torch.from_numpy(g.copy())
        torch_opt.step()
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights, reference.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert weights[2, 1] == w0[2, 1]


@pytest.mark.parametrize("grad", [10.0, -10.0])
def test_ftrl_l1_shrinks_by_sign(grad):
    # Monolith multiplies l1 by signbit(z) (0/1); the proximal FTRL step uses sign(z).
    lr, l1, acc0 = 0.01, 1.0, 0.1
    opt = FtrlOptimizer(l1_regularization=l1)
    weights, state = make_store(opt, 1)
    step(opt, weights, state, [ROW], [[grad]], lr)
    z = grad  # the first z is the gradient, because the weight starts at 0
    expected = -lr * (z - math.copysign(l1, z)) / math.sqrt(acc0 + grad * grad)
    assert weights[ROW, 0] == pytest.approx(expected, abs=TOL)


def test_ftrl_l1_zeroes_small_accumulators():
    opt = FtrlOptimizer(l1_regularization=5.0)
    weights, state = make_store(opt, 2)
    step(opt, weights, state, [ROW], [[1.0, -4.0]], 0.01)
    np.testing.assert_array_equal(weights[ROW], [0.0, 0.0])


def test_adam_nesterov_first_step():
    lr, b1, b2, eps, g = 0.01, 0.9, 0.99, 0.01, 3.0
    opt = AdamOptimizer(use_nesterov=True)
    weights, state = make_store(opt, 1)
    step(opt, weights, state, [ROW], [[g]], lr)
    m, v = (1 - b1) * g, (1 - b2) * g * g
    corrected_lr = lr * math.sqrt(1 - b2) / (1 - b1)
    expected = -((g * (1 - b1) + b1 * m) * corrected_lr) / (math.sqrt(v) + eps)
    assert weights[ROW, 0] == pytest.approx(expected, abs=TOL)
    np.testing.assert_allclose(state[ROW, 2:], [b1 * b1, b2 * b2], rtol=1e-6)


def test_momentum_nesterov_two_steps():
    lr, mom, g = 0.01, 0.9, 10.0
    opt = MomentumOptimizer(use_nesterov=True)
    weights, state = make_store(opt, 1)
    w, n = 0.0, 0.0
    for _ in range(2):
        step(opt, weights, state, [ROW], [[g]], lr)
        prev, n = n, mom * n - lr * g
        w += -mom * prev + (1 + mom) * n
        assert weights[ROW, 0] == pytest.approx(w, abs=TOL)


def test_rmsprop_v1_ignores_passed_learning_rate():
    opt = RmspropOptimizer()
    weights, state = make_store(opt, 1)
    step(opt, weights, state, [ROW], [[10.0]], 0.5)
    assert weights[ROW, 0] == pytest.approx(-0.024025, abs=TOL)


def test_sgd_uses_passed_learning_rate():
    opt = SgdOptimizer(learning_rate=0.1)
    weights, state = make_store(opt, 1)
    step(opt, weights, state, [ROW], [[1.0]], 0.5)
    assert weights[ROW, 0] == pytest.approx(-0.5, abs=TOL)


@pytest.mark.parametrize("beta, acc0", [(1.0, 0.1), (0.0, 0.0)])
def test_group_adagrad_zero_row_zero_grad_is_not_nan(beta, acc0):
    opt = GroupAdaGradOptimizer(l2_regularization=0.0, beta=beta, initial_accumulator_value=acc0)
    weights, state = make_store(opt, 3)
    step(opt, weights, state, [ROW], [[0.0, 0.0, 0.0]], 0.01)
    np.testing.assert_array_equal(weights[ROW], [0.0, 0.0, 0.0])
    assert state[ROW, 0] == np.float32(acc0)


def test_group_adagrad_accumulates_max_squared_gradient():
    opt = GroupAdaGradOptimizer(initial_accumulator_value=0.5)
    weights, state = make_store(opt, 3)
    step(opt, weights, state, [ROW], [[1.0, -3.0, 2.0]], 0.01)
    assert state[ROW, 0] == pytest.approx(0.5 + 9.0)


# --- learning-rate schedules


def test_polynomial_decay_monolith_vector():
    fn = learning_rate_functions.PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.11)
    assert fn(1) == pytest.approx(0.02, abs=TOL)
    assert fn(2) == pytest.approx(0.03, abs=TOL)
    same = PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.11)
    assert str(fn) == str(same)
    assert str(fn) != str(PolynomialDecay(initial_learning_rate=0.01, decay_steps=20, end_learning_rate=0.11))


def test_polynomial_decay_bounds_power_and_cycle():
    fn = PolynomialDecay(initial_learning_rate=1.0, decay_steps=10, end_learning_rate=0.0, power=2.0)
    assert fn(0) == pytest.approx(1.0)
    assert fn(5) == pytest.approx(0.25)
    assert fn(10) == pytest.approx(0.0)
    assert fn(25) == pytest.approx(0.0)  # capped at decay_steps
    cyc = PolynomialDecay(initial_learning_rate=0.01, decay_steps=10, end_learning_rate=0.11, cycle=True)
    assert cyc(0) == pytest.approx(0.01, abs=TOL)
    assert cyc(15) == pytest.approx(0.01 + 0.1 * 15 / 20, abs=TOL)  # decay_steps stretched to 20
    assert cyc(20) == pytest.approx(0.11, abs=TOL)
    assert PolynomialDecay(0.5, 10)(10) == pytest.approx(0.0001)  # Monolith's default end rate


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"initial_learning_rate": 0.1, "decay_steps": 0}, "decay_steps"),
        ({"initial_learning_rate": 0.1, "decay_steps": 2.5}, "decay_steps"),
        ({"initial_learning_rate": -0.1, "decay_steps": 10}, "initial_learning_rate"),
        ({"initial_learning_rate": 0.1, "decay_steps": 10, "power": "one"}, "power"),
        ({"initial_learning_rate": 0.1, "decay_steps": 10, "cycle": 1}, "cycle"),
    ],
)
def test_polynomial_decay_validation(kwargs, param):
    with pytest.raises(ValueError, match=param):
        PolynomialDecay(**kwargs)


def test_polynomial_decay_rejects_negative_step():
    with pytest.raises(ValueError, match="global_step"):
        PolynomialDecay(0.1, 10)(-1)


# --- optimizers added from Monolith's entry.py: each against a plain-numpy transcription of the C++


F = np.float32
MULTI_STEP_ROWS = [3, 1, 3, 0, 3, 1]  # row 3 three times, row 1 twice per step; row 2 never


def random_batches(dim: int, steps: int = 4, seed: int = 11) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(len(MULTI_STEP_ROWS), dim)).astype(F) for _ in range(steps)]


def group_ftrl_reference(w, norm, zero, g, lr, beta, l1, l2):
    """``BaselineGroupFTRLOptimize`` of avx_utils.h, on one row (float32 arrays, updated in place)."""
    lr, beta, l1, l2 = F(lr), F(beta), F(l1), F(l2)
    new_norm = norm + g * g
    sigma = (np.sqrt(new_norm) - np.sqrt(norm)) / lr
    zero += g - sigma * w
    norm[:] = new_norm
    z_norm = abs(np.sqrt(np.sum(zero * zero, dtype=F)))  # float32 sum, in order for these small rows
    if z_norm < l1 or z_norm == 0:
        w[:] = 0
        return True
    w[:] = lr * zero * ((l1 - z_norm) / z_norm) / (beta + np.sqrt(norm) + l2 * lr)
    return False


def dynamic_wd_reference(w, norm, g, lr, wd, decouple):
    """``BaselineDynamicWdAdagradOptimize`` of dynamic_wd_avx_utils.h, on one row."""
    lr, wd = F(lr), F(wd)
    if not decouple:
        g = g + wd * w
    norm += g * g
    update = lr / np.sqrt(norm) * g
    if decouple:
        update = update + lr * wd * w
    w -= update


def run_multi_step(opt, dim, batches, lr, init_weights):
    """Rows 0-3 starting at ``init_weights``, after one step of ``MULTI_STEP_ROWS`` per batch of gradients."""
    weights = np.array(init_weights, F)
    state = np.zeros((4, opt.state_width(dim)), F)
    opt.init_state(state)
    for grads in batches:
        step(opt, weights, state, MULTI_STEP_ROWS, grads, lr)
    return weights, state


@pytest.mark.parametrize("l1, l2, beta, acc0", [(0.0, 0.0, 1.0, 0.0), (0.3, 0.1, 0.5, 0.1), (2.5, 0.0, 1.0, 0.0)])
def test_group_ftrl_matches_reference_over_steps(l1, l2, beta, acc0):
    dim, lr = 5, 0.05
    opt = FTRLWithGroupSparsityOptimizer(
        learning_rate=lr, initial_accumulator_value=acc0, beta=beta, l1_regularization=l1, l2_regularization=l2
    )
    batches = random_batches(dim)
    init = np.random.default_rng(5).normal(size=(4, dim)).astype(F) * F(0.1)
    weights, state = run_multi_step(opt, dim, batches, lr, init)

    w, norm, zero = init.copy(), np.full((4, dim), acc0, F), np.zeros((4, dim), F)
    zeroed = 0
    for grads in batches:
        for row, g in zip(MULTI_STEP_ROWS, grads):
            zeroed += group_ftrl_reference(w[row], norm[row], zero[row], g, lr, beta, l1, l2)
    np.testing.assert_allclose(weights, w, rtol=0, atol=TOL)
    np.testing.assert_allclose(state[:, :dim], norm, rtol=1e-6, atol=TOL)
    np.testing.assert_allclose(state[:, dim:], zero, rtol=1e-6, atol=TOL)
    np.testing.assert_array_equal(weights[2], init[2])  # never updated
    assert (zeroed > 0) == (l1 == 2.5)  # the group threshold zeroed whole rows on the way


def test_group_ftrl_zero_z_gives_zero_row_not_nan():
    opt = FTRLWithGroupSparsityOptimizer()  # l1 = 0, beta = 1, accumulator 0
    weights, state = make_store(opt, 3)
    step(opt, weights, state, [ROW], [[0.0, 0.0, 0.0]], 0.01)
    np.testing.assert_array_equal(weights[ROW], [0.0, 0.0, 0.0])


def test_group_ftrl_shrinks_the_row_as_a_group():
    lr, l1 = 0.01, 5.0
    opt = FTRLWithGroupSparsityOptimizer(l1_regularization=l1)
    weights, state = make_store(opt, 2)
    step(opt, weights, state, [ROW], [[3.0, 4.0]], lr)  # ||z|| = 5: not below l1, scaled by 0
    np.testing.assert_allclose(weights[ROW], [0.0, 0.0], atol=TOL)
    step(opt, weights, state, [ROW], [[3.0, 4.0]], lr)  # ||z|| = 10: half of z survives
    z, norm = state[ROW, 2:], state[ROW, :2]
    expected = -lr * z * 0.5 / (1.0 + np.sqrt(norm))
    np.testing.assert_allclose(weights[ROW], expected, rtol=1e-6, atol=TOL)


@pytest.mark.parametrize("decouple", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.2])
def test_dynamic_wd_adagrad_matches_reference_over_steps(decouple, wd):
    dim, lr, acc0 = 6, 0.1, 0.5
    opt = DynamicWdAdagradOptimizer(
        learning_rate=lr,
        initial_accumulator_value=acc0,
        weight_decay_factor=wd,
        decouple_weight_decay=decouple,
        enable_dynamic_wd=False,
    )
    batches = random_batches(dim, seed=3)
    init = np.random.default_rng(8).normal(size=(4, dim)).astype(F)
    weights, state = run_multi_step(opt, dim, batches, lr, init)

    w, norm = init.copy(), np.full((4, dim), acc0, F)
    for grads in batches:
        for row, g in zip(MULTI_STEP_ROWS, grads):
            dynamic_wd_reference(w[row], norm[row], g, lr, wd, decouple)
    np.testing.assert_allclose(weights, w, rtol=0, atol=TOL)
    np.testing.assert_allclose(state, norm, rtol=1e-6)


def test_dynamic_wd_adagrad_decoupled_differs_from_coupled():
    common = dict(learning_rate=0.1, initial_accumulator_value=1.0, weight_decay_factor=0.5, enable_dynamic_wd=False)
    results = []
    for decouple in (True, False):
        opt = DynamicWdAdagradOptimizer(decouple_weight_decay=decouple, **common)
        weights, state = make_store(opt, 1)
        weights[ROW] = 2.0
        step(opt, weights, state, [ROW], [[1.0]], 0.1)
        results.append((weights[ROW, 0], state[ROW, 0]))
    # Decoupled: the accumulator sees only g; the decay is lr * wd * w.
    assert results[0][1] == pytest.approx(2.0)
    assert results[0][0] == pytest.approx(2.0 - 0.1 / math.sqrt(2.0) - 0.1 * 0.5 * 2.0, abs=TOL)
    g = 1.0 + 0.5 * 2.0
    assert results[1][1] == pytest.approx(1.0 + g * g)
    assert results[1][0] == pytest.approx(2.0 - 0.1 / math.sqrt(1.0 + g * g) * g, abs=TOL)


def test_dynamic_wd_adagrad_defaults_and_warning(caplog):
    opt = DynamicWdAdagradOptimizer()
    # entry.py's keyword defaults; None takes the proto's.
    assert (opt.decouple_weight_decay, opt.enable_dynamic_wd, opt.flip_direction) == (True, True, True)
    assert (opt.learning_rate, opt.initial_accumulator_value, opt.dynamic_wd_temperature) == (0.001, 0.1, 1.0)
    none = DynamicWdAdagradOptimizer(decouple_weight_decay=None, enable_dynamic_wd=None, flip_direction=None)
    assert (none.decouple_weight_decay, none.enable_dynamic_wd, none.flip_direction) == (False, False, False)
    assert "dynamic weight decay" not in caplog.text  # no decay to make dynamic
    DynamicWdAdagradOptimizer(weight_decay_factor=0.01)
    assert "dynamic weight decay" in caplog.text


def batch_softmax_reference(b, a, lr, global_step):
    """``BatchSoftmaxOptimizer::Optimize``: returns the new (B, A)."""
    lr = F(lr)
    return (F(1) - lr) * b + lr * F(global_step - a), global_step


def test_batch_softmax_monolith_vector_and_restore():
    # batch_softmax_optimizer_test.cc: B starts at 0 (the test's raw entry), step 1, alpha 0.1 -> 0.1.
    opt = BatchSoftmaxOptimizer()
    weights, state = make_store(opt, 1)
    opt.apply(weights, state, np.array([ROW]), np.float32([[2.0]]), 0.1, 1)
    assert weights[ROW, 0] == np.float32(0.1)
    # Dump & restore: a copy of the row and state behaves identically (Monolith then calls Optimize
    # without a global step, i.e. at step 0).
    weights2, state2 = weights.copy(), state.copy()
    opt.apply(weights, state, np.array([ROW]), np.float32([[2.0]]), 0.1, 0)
    opt.apply(weights2, state2, np.array([ROW]), np.float32([[2.0]]), 0.1, 0)
    np.testing.assert_array_equal(weights, weights2)
    assert weights[ROW, 0] == pytest.approx(0.9 * 0.1 + 0.1 * (0 - 1), abs=TOL)


def test_batch_softmax_matches_reference_over_steps():
    opt = BatchSoftmaxOptimizer(learning_rate=0.2)
    weights = np.full((4, 1), 7.0, F)  # BatchSoftmaxInitializer(7.0)
    state = np.zeros((4, opt.state_width(1)), F)
    opt.init_state(state)
    b, a = weights[:, 0].copy(), np.zeros(4, np.int64)
    rng = np.random.default_rng(2)
    steps = [3, 4, 9, 10, 250, (1 << 30) + 17]
    for global_step in steps:
        rows = rng.integers(0, 4, size=5)
        lr = 0.2 if global_step != 9 else 0.05  # a scheduled rate is used as alpha
        opt.apply(weights, state, rows, rng.normal(size=(5, 1)).astype(F), lr, global_step)
        for row in rows:
            b[row], a[row] = batch_softmax_reference(b[row], a[row], lr, global_step)
        np.testing.assert_allclose(weights[:, 0], b, rtol=1e-6, atol=TOL)
        last_steps = state[:, 0].astype(np.int64) * (1 << 24) + state[:, 1].astype(np.int64)
        np.testing.assert_array_equal(last_steps, a)


def test_batch_softmax_repeated_id_gets_zero_interval():
    opt = BatchSoftmaxOptimizer(learning_rate=0.5)
    weights, state = make_store(opt, 1)
    weights[ROW] = 1.0
    step_rows = np.array([ROW, ROW])
    opt.apply(weights, state, step_rows, np.zeros((2, 1), F), 0.5, 10)
    assert weights[ROW, 0] == pytest.approx(((1.0 * 0.5 + 0.5 * 10) * 0.5 + 0.0))


def test_batch_softmax_checks_dim_and_step():
    with pytest.raises(ValueError, match="dim 1"):
        BatchSoftmaxOptimizer().state_width(4)
    opt = BatchSoftmaxOptimizer()
    weights, state = make_store(opt, 1)
    with pytest.raises(ValueError, match="global_step"):
        opt.apply(weights, state, np.array([ROW]), np.zeros((1, 1), F), 0.1, -1)
    np.testing.assert_array_equal(weights, 0)
    assert BatchSoftmaxOptimizer().learning_rate == 0.1


# --- stochastic rounding to float16

ALL_HALVES = np.unique(np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(F))
ALL_HALVES = ALL_HALVES[~np.isnan(ALL_HALVES)]  # sorted, with -inf and +inf


def mwc_reference(count: int, state: list[int]) -> np.ndarray:
    """``StochasticRoundingFloat16OptimizerDecorator::rand()`` with Python integers."""
    out = []
    for _ in range(count):
        state[0] = (36969 * (state[0] & 65535) + (state[0] >> 16)) & 4294967295
        state[1] = (18000 * (state[1] & 65535) + (state[1] >> 16)) & 4294967295
        out.append(F(((((state[0] & 65535) << 16) + state[1]) & 4294967295)) / F(4294967296))
    return np.asarray(out, F)


def stochastic_round_reference(values: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``stochastic_round``: fp16 neighbours found by search among all fp16 values."""
    finite = np.where(np.isnan(values), 0, values)
    down = np.where(np.isnan(values), np.nan, ALL_HALVES[np.searchsorted(ALL_HALVES, finite, side="right") - 1])
    up = np.where(np.isnan(values), np.nan, ALL_HALVES[np.searchsorted(ALL_HALVES, finite, side="left")])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p <= (values - down) / (up - down), up, down)


def test_stochastic_rounding_generator_is_monoliths():
    opt = StochasticRoundingFloat16OptimizerWrapper(SgdOptimizer())
    drawn = opt._draw(5000)
    np.testing.assert_array_equal(drawn, mwc_reference(5000, [0, 1]))
    np.testing.assert_array_equal(drawn[:3], np.float32([18000 / 2**32, 324000000 / 2**32, drawn[2]]))
    # Monolith seeds the first word with 0, where it stays: p never reaches 0.275.
    assert drawn.min() >= 0 and drawn.max() < 0.2747


@pytest.mark.parametrize("inner", [lambda: SgdOptimizer(0.1), lambda: AdagradOptimizer(initial_accumulator_value=0.5)])
def test_stochastic_rounding_matches_reference_over_steps(inner):
    dim, lr = 5, 0.07
    opt = StochasticRoundingFloat16OptimizerWrapper(inner())
    batches = random_batches(dim, seed=21)
    init = stochastic_round_reference(np.random.default_rng(4).normal(size=(4, dim)).astype(F), np.zeros((4, dim), F))
    weights, state = run_multi_step(opt, dim, batches, lr, init)

    w, acc = init.copy(), np.full((4, dim), 0.5, F)
    stream = [0, 1]
    for grads in batches:
        p = mwc_reference(len(MULTI_STEP_ROWS) * dim, stream).reshape(-1, dim)
        for i, (row, g) in enumerate(zip(MULTI_STEP_ROWS, grads)):
            if isinstance(opt.optimizer, SgdOptimizer):
                w[row] -= F(lr) * g
            else:
                acc[row] += g * g
                w[row] -= F(lr) / np.sqrt(acc[row]) * g
            w[row] = stochastic_round_reference(w[row], p[i])
    np.testing.assert_allclose(weights, w, rtol=0, atol=TOL)
    assert np.array_equal(weights, weights.astype(np.float16).astype(F))  # every weight is an fp16 value
    if not isinstance(opt.optimizer, SgdOptimizer):
        np.testing.assert_allclose(state, acc, rtol=1e-6)  # the state is not rounded
        assert not np.array_equal(state, state.astype(np.float16).astype(F))


def test_stochastic_round_edge_values():
    from monolith.optim.optimizers import _stochastic_round_fp16

    values = np.float32([1.0, -2.5, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-9, -1e-9, 65510.0, 7e4, -7e4,
                         1.0 + 2.0**-12, 0.1, -0.1, 3e-6])
    for p in (0.0, 0.1, 0.2747, 0.5, 1.0):
        got = _stochastic_round_fp16(values, np.full(values.shape, p, F))
        expected = stochastic_round_reference(values, np.full(values.shape, p, F))
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got[:6], values[:6])  # fp16 values and infinities stay
        assert np.isnan(got[6])
    rng = np.random.default_rng(0)
    sweep = np.concatenate([
        rng.normal(size=20000) * 10.0 ** rng.integers(-9, 6, size=20000),  # subnormal fp16 to overflow
        rng.uniform(-1, 1, size=2000) * 2.0**-14,
        rng.uniform(6.5e4, 6.6e4, size=200) * rng.choice([-1, 1], size=200),
    ]).astype(F)
    p = rng.uniform(0, 1, size=sweep.size).astype(F)
    np.testing.assert_array_equal(_stochastic_round_fp16(sweep, p), stochastic_round_reference(sweep, p))
    half = np.float32(1.0 + 2.0**-11)  # halfway between 1 and the next fp16 value 1 + 2**-10
    assert _stochastic_round_fp16(np.float32([half]), np.float32([0.5]))[0] == np.float32(1.0 + 2.0**-10)
    assert _stochastic_round_fp16(np.float32([half]), np.float32([0.51]))[0] == np.float32(1.0)
    assert _stochastic_round_fp16(np.float32([7e4]), np.float32([0.0]))[0] == np.inf  # p <= 0 only at 0
    assert _stochastic_round_fp16(np.float32([7e4]), np.float32([0.1]))[0] == np.float32(65504.0)


class PythonSgd(SliceOptimizer):
    """A SliceOptimizer that is not one of this package's numba kernels."""

    name = "python_sgd"
    learning_rate = 0.1

    def state_width(self, dim):
        return 0

    def init_state(self, state):
        pass

    def apply(self, weights, state, rows, grads, learning_rate, global_step):
        for row, grad in zip(rows, grads):
            weights[row] -= F(learning_rate) * grad


def test_stochastic_rounding_of_any_slice_optimizer():
    dim = 3
    grads = np.random.default_rng(6).normal(size=(len(MULTI_STEP_ROWS), dim)).astype(F)
    results = []
    for inner in (PythonSgd(), SgdOptimizer()):
        opt = StochasticRoundingFloat16OptimizerWrapper(inner)
        weights = np.full((4, dim), 0.3, F)
        state = np.zeros((4, 0), F)
        for _ in range(3):
            step(opt, weights, state, MULTI_STEP_ROWS, grads, 0.1)
        results.append(weights)
    np.testing.assert_array_equal(results[0], results[1])


def test_stochastic_rounding_wrapper_delegates_and_round_trips():
    from monolith.optim import SliceOptimizer, from_config

    inner = AdamOptimizer(learning_rate=0.02, warmup_steps=5)
    opt = StochasticRoundingFloat16OptimizerWrapper(inner)
    assert opt.optimizer is inner and opt.name == "adam"
    assert opt.learning_rate == 0.02 and opt.warmup_steps == 5
    assert opt.state_width(3) == inner.state_width(3)
    assert StochasticRoundingFloat16OptimizerWrapper(opt).optimizer is inner  # one flag in Monolith's proto
    config = opt.config()
    assert config == {"type": "StochasticRoundingFloat16OptimizerWrapper", "optimizer": inner.config()}
    restored = from_config(config, SliceOptimizer)
    assert type(restored) is StochasticRoundingFloat16OptimizerWrapper and restored.config() == config


def test_stochastic_rounding_repeated_rows_match_one_by_one():
    import copy

    opt = StochasticRoundingFloat16OptimizerWrapper(MomentumOptimizer(weight_decay_factor=0.1))
    twin = copy.deepcopy(opt)
    dim = 4
    grads = np.random.default_rng(9).normal(size=(5, dim)).astype(F)
    rows = [2, 0, 2, 2, 1]
    w1, s1 = make_store(opt, dim)
    w1[:] = np.random.default_rng(1).normal(size=w1.shape)
    w2, s2 = w1.copy(), s1.copy()
    step(opt, w1, s1, rows, grads, 0.05)
    for row, grad in zip(rows, grads):
        step(twin, w2, s2, [row], [grad], 0.05)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(s1, s2)


def test_new_optimizers_in_a_table():
    import torch

    from monolith.optim import BatchSoftmaxInitializer
    from monolith.table import EmbeddingHashTable
    from monolith.table.config import SliceConfig

    table = EmbeddingHashTable(
        [
            SliceConfig("freq", 1, initializer=BatchSoftmaxInitializer(4.0), optimizer=BatchSoftmaxOptimizer()),
            SliceConfig(
                "vec", 3, optimizer=StochasticRoundingFloat16OptimizerWrapper(FTRLWithGroupSparsityOptimizer())
            ),
            SliceConfig("wd", 2, optimizer=DynamicWdAdagradOptimizer(enable_dynamic_wd=False)),
        ]
    )
    ids = np.array([5, 9, 5])
    table.apply_gradients(ids, torch.ones(3, 6), global_step=10)
    table.apply_gradients(ids[:1], torch.ones(1, 6), global_step=14)
    rows = table.lookup(np.array([5, 9])).numpy()
    b5 = 0.9 * (0.9 * 4.0 + 0.1 * 10) + 0.1 * 4  # steps 10 (its two occurrences, one update), 14
    b9 = 0.9 * 4.0 + 0.1 * 10
    np.testing.assert_allclose(rows[:, 0], [b5, b9], rtol=1e-6)
    np.testing.assert_array_equal(rows[:, 1:4], rows[:, 1:4].astype(np.float16).astype(F))
    restored = EmbeddingHashTable(table.slices)
    restored.load_state_dict(table.state_dict())
    np.testing.assert_array_equal(restored.lookup(np.array([5, 9])).numpy(), rows)


# --- entry.py


MONOLITH_ENTRY_NAMES = [
    "Optimizer", "StochasticRoundingFloat16OptimizerWrapper", "SgdOptimizer", "AdagradOptimizer",
    "AdadeltaOptimizer", "AdamOptimizer", "AmsgradOptimizer", "BatchSoftmaxOptimizer", "MomentumOptimizer",
    "MovingAverageOptimizer", "RmspropOptimizer", "RmspropV2Optimizer", "FTRLWithGroupSparsityOptimizer",
    "AdaGradWithGroupLassoOptimizer", "DynamicWdAdagradOptimizer", "FtrlOptimizer", "Initializer",
    "ZerosInitializer", "ConstantsInitializer", "RandomUniformInitializer", "BatchSoftmaxInitializer",
    "Compressor", "OneBitCompressor", "FixedR8Compressor", "Fp16Compressor", "Fp32Compressor",
    "HashTableConfig", "CuckooHashTableConfig", "HashTableConfigInstance",
]


def test_entry_has_monoliths_names():
    from monolith import entry

    missing = [name for name in MONOLITH_ENTRY_NAMES if not hasattr(entry, name)]
    assert missing == []
    assert set(MONOLITH_ENTRY_NAMES) <= set(entry.__all__)


def test_entry_constructs_as_monoliths_entry_test():
    from monolith import entry

    # entry_test.py's calls, positional arguments included.
    entry.DynamicWdAdagradOptimizer(0.01, 0.1, 1)
    entry.BatchSoftmaxOptimizer(0.01)
    entry.BatchSoftmaxInitializer(1.0)
    entry.OneBitCompressor()
    entry.FTRLWithGroupSparsityOptimizer(0.01, 0.1, 1)
    entry.StochasticRoundingFloat16OptimizerWrapper(entry.SgdOptimizer(0.01))


@pytest.mark.parametrize(
    "opt",
    [
        FTRLWithGroupSparsityOptimizer(l1_regularization=0.5, l2_regularization=0.25),
        DynamicWdAdagradOptimizer(weight_decay_factor=0.0, flip_direction=False, dynamic_wd_temperature=2.0),
        BatchSoftmaxOptimizer(0.3),
    ],
    ids=repr,
)
def test_new_optimizer_configs_round_trip(opt):
    from monolith.optim import SliceOptimizer, from_config

    restored = from_config(opt.config(), SliceOptimizer)
    assert type(restored) is type(opt) and restored.config() == opt.config()


def test_group_ftrl_proto_defaults():
    opt = FTRLWithGroupSparsityOptimizer(l1_regularization=0.5, l2_regularization=0.25)
    assert (opt.learning_rate, opt.beta, opt.initial_accumulator_value) == (0.01, 1.0, 0.0)
    assert (opt.l1_regularization_strength, opt.l2_regularization_strength) == (0.5, 0.25)


def _decay():
    return PolynomialDecay(initial_learning_rate=0.01, decay_steps=20, end_learning_rate=0.05)


def test_hash_table_config_instance_str_as_monoliths():
    from monolith.entry import HashTableConfigInstance
    from monolith.table.config import SliceConfig

    # entry_test.py's test_hashtable_config_entrance.
    config1 = HashTableConfigInstance([], [0.1])
    config2 = HashTableConfigInstance([], [0.1])
    assert str(config1) == str(config2)
    config3 = HashTableConfigInstance([], [_decay()])
    config4 = HashTableConfigInstance([], [_decay()])
    assert str(config3) == str(config4)
    assert str(config1) != str(config3)
    sgd = HashTableConfigInstance([SliceConfig("v", 2, optimizer=SgdOptimizer(0.1))], [0.1])
    adagrad = HashTableConfigInstance([SliceConfig("v", 2)], [0.1])
    assert str(sgd) != str(adagrad)


def test_hash_table_config_instance_builds_table_and_calls_rates():
    import torch

    from monolith.entry import CuckooHashTableConfig, HashTableConfigInstance, ZerosInitializer
    from monolith.table.config import SliceConfig

    slices = [SliceConfig(name, dim, initializer=ZerosInitializer(), optimizer=SgdOptimizer(0.5))
              for name, dim in (("a", 1), ("b", 2), ("c", 1))]
    config = HashTableConfigInstance(slices, [0.1, _decay(), None], ["old_name"],
                                     hashtable_config=CuckooHashTableConfig(initial_capacity=100))
    assert config.table_config == tuple(slices) and config.extra_restore_names == ["old_name"]
    assert config.call_learning_rate_fns_fewer_ops(2) == [0.1, _decay()(2), None]
    with pytest.raises(ValueError, match="None"):
        config.call_learning_rate_fns(2)
    rates = HashTableConfigInstance(slices[:2], [0.1, _decay()]).call_learning_rate_fns(2)
    assert rates.dtype == torch.float32 and rates.tolist() == pytest.approx([0.1, 0.014])
    config.set_learning_rate_tensor(rates)
    assert config.learning_rate_tensor is rates

    table = config.build_table(name="t")
    assert table.initial_capacity == 100 and table.name == "t"
    assert [s.learning_rate(2) for s in table.slices] == pytest.approx([0.1, 0.014, 0.5])
    table.apply_gradients(np.array([1]), torch.ones(1, 4), global_step=2)
    np.testing.assert_allclose(table.lookup(np.array([1])).numpy(), [[-0.1, -0.014, -0.014, -0.5]], rtol=1e-6)

    with pytest.raises(ValueError, match="Size of learning_rate_fns and size of segments must be equal"):
        HashTableConfigInstance(slices, [0.1]).build_table()
    with pytest.raises(ValueError, match="must be not empty"):
        HashTableConfigInstance([], []).call_learning_rate_fns(0)
    with pytest.raises(ValueError, match="table_config"):
        HashTableConfigInstance([object()], [0.1])
    with pytest.raises(ValueError, match="learning rate fn"):
        HashTableConfigInstance(slices[:1], ["fast"])
