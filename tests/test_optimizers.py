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
    FtrlOptimizer,
    GroupAdaGradOptimizer,
    MomentumOptimizer,
    MovingAverageOptimizer,
    PolynomialDecay,
    RmspropOptimizer,
    RmspropV2Optimizer,
    SgdOptimizer,
    SliceOptimizer,
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
        (lambda: AdagradOptimizer(initial_accumulator_value=0.0), "initial_accumulator_value"),
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
