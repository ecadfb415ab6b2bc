"""Monolith's per-slice embedding optimizers (``runtime/hash_table/optimizer/*_optimizer.cc``).

Constructor keywords are those of Monolith's ``entry.py``; a keyword given as ``None`` takes the default
of ``optimizer.proto``. Hyper-parameters are kept under their proto field names (as ``entry.py`` does), so
``l1_regularization`` is stored as ``l1_regularization_strength``.

Every update rule runs in a numba kernel that walks the batch in order, so a row id that occurs twice gets
two sequential updates. Arithmetic follows the C++: float32 throughout, float64 exactly where Monolith
widens (RMSProp's explicit ``double`` casts, Adam's unqualified ``sqrt``), rounded back when stored.
Hyper-parameters reach the kernels rounded to float32, as they are when read from the proto.
``warmup_steps`` is only stored: the caller turns it into a learning-rate ramp. Monolith's slice
optimizers ignore the global step, and so do these, except :class:`BatchSoftmaxOptimizer`, whose
estimate is a number of steps. :class:`StochasticRoundingFloat16OptimizerWrapper` wraps any of them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numba
import numpy as np

from monolith.optim.base import SliceOptimizer, check_int, check_real
from monolith.prefetch import prefetch_row_ahead

_F32 = np.float32

logger = logging.getLogger(__name__)


def _f64(value: float) -> np.float64:
    """A hyper-parameter as C++ sees it after ``static_cast<double>`` of the proto's float field."""
    return np.float64(np.float32(value))


# ---------------------------------------------------------------------------------------------------------
# Kernels. ``weights`` is [capacity, dim], ``state`` [capacity, state_width], ``grads`` [m, dim] (float32);
# ``rows`` [m] indexes both stores. Scalars arrive as float32 unless a kernel says otherwise.
# error_model="numpy" gives IEEE division (x / 0 is inf or NaN, as in C++) instead of ZeroDivisionError.


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _decayed(grad, weight, weight_decay):
    """The gradient with L2 weight decay folded in, as every decaying Monolith optimizer does."""
    return grad + weight_decay * weight


# ---------------------------------------------------------------------------------------------------------
# Stochastic rounding to fp16 (Monolith's optimizer/stochastic_rounding.h). Every kernel takes draws ``p``
# ([m, dim] float32) and, when there are any, rounds each row right after updating it, so that a repeated
# row alternates updates and rounding as Monolith's per-entry calls do; ``_NO_ROUNDING`` turns it off.

_NO_ROUNDING = np.zeros((0, 1), dtype=np.float32)
_HALF_MAX = 65504.0


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _fp16_neighbours(v):
    """The fp16 values around float32 ``v`` as float32: (``v`` rounded toward -inf, toward +inf), as
    ``half_float::detail::float2half`` rounds (overflow to +-65504 or +-inf, zero keeping its sign)."""
    x = np.float64(v)
    if x == 0.0 or not np.isfinite(x):
        return v, v
    # fp16 keeps 11 significant bits down to 2**-14, then steps of 2**-24; x / spacing is exact.
    spacing = math.ldexp(1.0, max(math.frexp(x)[1] - 11, -24))
    down = np.floor(x / spacing) * spacing
    up = np.ceil(x / spacing) * spacing
    if up > _HALF_MAX:
        up = np.inf
    elif up < -_HALF_MAX:
        up = -_HALF_MAX
    if down > _HALF_MAX:
        down = _HALF_MAX
    elif down < -_HALF_MAX:
        down = -np.inf
    return np.float32(down), np.float32(up)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _stochastic_round(v, p):
    """Monolith's ``stochastic_round(vf, p)``: up when ``p <= (v - down) / (up - down)`` (float32), else down.
    fp16 values, infinities and NaN give 0/0 or NaN there, hence themselves."""
    down, up = _fp16_neighbours(v)
    if p <= (v - down) / (up - down):
        return up
    return down


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _round_row_fp16(weights, r, p, i):
    for d in range(weights.shape[1]):
        weights[r, d] = _stochastic_round(weights[r, d], p[i, d])


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _round_rows_fp16(weights, rows, p):
    for i in range(rows.shape[0]):
        _round_row_fp16(weights, rows[i], p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _stochastic_round_fp16(values, p):
    """``_stochastic_round`` of each element of 1-D float32 ``values`` with the matching ``p``."""
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        out[i] = _stochastic_round(values[i], p[i])
    return out


@numba.njit(cache=True, nogil=True)
def _mwc_uniforms(rng, out):
    """Monolith's ``StochasticRoundingFloat16OptimizerDecorator::rand()``, once per element of ``out``:
    Marsaglia's multiply-with-carry pair ``rng`` (uint64[2], advanced in place), as float32 in [0, 1]."""
    m16 = np.uint64(65535)
    m32 = np.uint64(4294967295)
    s16 = np.uint64(16)
    z = rng[0]
    w = rng[1]
    for i in range(out.shape[0]):
        z = (np.uint64(36969) * (z & m16) + (z >> s16)) & m32
        w = (np.uint64(18000) * (w & m16) + (w >> s16)) & m32
        out[i] = np.float32((((z & m16) << s16) + w) & m32) / np.float32(4294967296.0)
    rng[0] = z
    rng[1] = w


@numba.njit(cache=True, nogil=True)
def _all_within(rows, capacity):
    """Whether every row lies in ``[0, capacity)`` (one pass, where min and max took two)."""
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= capacity:
            return False
    return True


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _sgd_kernel(weights, rows, grads, lr, p):
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            weights[r, d] -= lr * grads[i, d]
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adagrad_kernel(weights, state, rows, grads, lr, weight_decay, p):
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            g = _decayed(grads[i, d], weights[r, d], weight_decay)
            state[r, d] += g * g
            # An accumulator still at 0 (initial value 0) had only zero gradients: no step, as in
            # torch.optim.Adagrad, rather than 0 / 0.
            if state[r, d] > 0:
                weights[r, d] -= lr / np.sqrt(state[r, d]) * g
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _ftrl_kernel(weights, state, rows, grads, lr, beta, l1, l2, p):
    dim = weights.shape[1]
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(dim):
            g = grads[i, d]
            norm = state[r, d]
            new_norm = norm + g * g
            sigma = (np.sqrt(new_norm) - np.sqrt(norm)) / lr
            z = state[r, dim + d] + (g - sigma * weights[r, d])
            state[r, d] = new_norm
            state[r, dim + d] = z
            if abs(z) > l1:
                signed_l1 = l1 if z > 0 else -l1
                weights[r, d] = lr * (signed_l1 - z) / (np.sqrt(new_norm) + beta + l2 * lr)
            else:
                weights[r, d] = 0
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adam_kernel(weights, state, rows, grads, lr, beta1, beta2, epsilon, weight_decay, use_nesterov, amsgrad, p):
    # State per row: m[dim], v[dim], (vhat[dim] for AMSGrad), beta1_power, beta2_power.
    dim = weights.shape[1]
    powers = 3 * dim if amsgrad else 2 * dim
    one = _F32(1.0)
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        beta1_power = state[r, powers]
        beta2_power = state[r, powers + 1]
        # Monolith calls the unqualified (double) sqrt, then stores the corrected rate as float.
        step_lr = _F32(np.float64(lr) * math.sqrt(np.float64(one - beta2_power)) / np.float64(one - beta1_power))
        for d in range(dim):
            w = weights[r, d]
            g = _decayed(grads[i, d], w, weight_decay)
            m = state[r, d] + (g - state[r, d]) * (one - beta1)
            v = state[r, dim + d] + (g * g - state[r, dim + d]) * (one - beta2)
            state[r, d] = m
            state[r, dim + d] = v
            if amsgrad:
                v = max(state[r, 2 * dim + d], v)
                state[r, 2 * dim + d] = v
            if use_nesterov:
                numerator = (g * (one - beta1) + beta1 * m) * step_lr
            else:
                numerator = m * step_lr
            denominator = math.sqrt(np.float64(v)) + np.float64(epsilon)
            weights[r, d] = _F32(np.float64(w) - np.float64(numerator) / denominator)
        state[r, powers] = beta1_power * beta1
        state[r, powers + 1] = beta2_power * beta2
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _momentum_kernel(weights, state, rows, grads, lr, momentum, weight_decay, use_nesterov, p):
    one = _F32(1.0)
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            w = weights[r, d]
            dx = lr * _decayed(grads[i, d], w, weight_decay)
            prev_n = state[r, d]
            n = momentum * prev_n - dx
            if use_nesterov:
                w += -momentum * prev_n + (one + momentum) * n
            else:
                w += n
            state[r, d] = n
            weights[r, d] = w
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _moving_average_kernel(weights, rows, grads, momentum, p):
    one = _F32(1.0)
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            weights[r, d] = momentum * weights[r, d] + (one - momentum) * grads[i, d]
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop_kernel(weights, state, rows, grads, lr, momentum, grad_square_scale, weight_decay, p):
    # lr, momentum, grad_square_scale and weight_decay are float64: Monolith computes RMSProp in double and
    # stores n and w back as float. The denominator is float because it takes std::sqrt of the float n.
    one = _F32(1.0)
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            w = weights[r, d]
            dx = _decayed(np.float64(grads[i, d]), np.float64(w), weight_decay)
            n = _F32(momentum * np.float64(state[r, d]) + grad_square_scale * dx * dx)
            eta = lr / np.float64(np.sqrt(n) + one)
            state[r, d] = n
            weights[r, d] = _F32(np.float64(w) - eta * dx)
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _adadelta_kernel(weights, state, rows, grads, lr, averaging_ratio, epsilon, weight_decay, p):
    # State per row: accum[dim], accum_update[dim].
    dim = weights.shape[1]
    one = _F32(1.0)
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(dim):
            w = weights[r, d]
            g = _decayed(grads[i, d], w, weight_decay)
            accum = state[r, d] * averaging_ratio + g * g * (one - averaging_ratio)
            update = np.sqrt(state[r, dim + d] + epsilon) / np.sqrt(accum + epsilon) * g
            weights[r, d] = w - update * lr
            state[r, d] = accum
            state[r, dim + d] = state[r, dim + d] * averaging_ratio + update * update * (one - averaging_ratio)
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _group_adagrad_kernel(weights, state, rows, grads, lr, beta, l2, weight_decay, p):
    # State per row: the accumulated sum of the row's largest squared gradient.
    dim = weights.shape[1]
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        max_square = _F32(0.0)
        for d in range(dim):
            g = _decayed(grads[i, d], weights[r, d], weight_decay)
            if g * g > max_square:
                max_square = g * g
        state[r, 0] += max_square
        row_lr = lr / (beta + np.sqrt(state[r, 0]))
        z_square_sum = _F32(0.0)
        for d in range(dim):
            z = _decayed(grads[i, d], weights[r, d], weight_decay) - weights[r, d] / row_lr
            weights[r, d] = z
            z_square_sum += z * z
        z_norm = np.sqrt(z_square_sum)
        # "<=" where Monolith has "<": identical except that z == 0 with l2 == 0 no longer divides 0 by 0.
        if z_norm <= l2:
            for d in range(dim):
                weights[r, d] = 0
        else:
            scale = -row_lr * (z_norm - l2) / z_norm
            for d in range(dim):
                weights[r, d] *= scale
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _group_ftrl_kernel(weights, state, rows, grads, lr, beta, l1, l2, p):
    # Monolith's BaselineGroupFTRLOptimize (avx_utils.h). State per row: norm[dim], zero[dim].
    dim = weights.shape[1]
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        z_square_sum = _F32(0.0)
        for d in range(dim):
            g = grads[i, d]
            norm = state[r, d]
            new_norm = norm + g * g
            sigma = (np.sqrt(new_norm) - np.sqrt(norm)) / lr
            z = state[r, dim + d] + (g - sigma * weights[r, d])
            state[r, dim + d] = z
            state[r, d] = new_norm
            z_square_sum += z * z
        z_norm = abs(np.sqrt(z_square_sum))
        # "z_norm == 0" is added: Monolith computes (l1 - 0) / 0 there (NaN rows when l1 is 0).
        if z_norm < l1 or z_norm == 0:
            for d in range(dim):
                weights[r, d] = 0
        else:
            normwise = (l1 - z_norm) / z_norm
            for d in range(dim):
                weights[r, d] = lr * state[r, dim + d] * normwise / (beta + np.sqrt(state[r, d]) + l2 * lr)
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _dynamic_wd_adagrad_kernel(weights, state, rows, grads, lr, weight_decay, decouple, p):
    # Monolith's BaselineDynamicWdAdagradOptimize (dynamic_wd_avx_utils.h). State per row: norm[dim].
    for i in range(rows.shape[0]):
        prefetch_row_ahead(weights, rows, i)
        prefetch_row_ahead(state, rows, i)
        r = rows[i]
        for d in range(weights.shape[1]):
            w = weights[r, d]
            g = grads[i, d]
            if not decouple:
                g += weight_decay * w
            state[r, d] += g * g
            update = lr / np.sqrt(state[r, d]) * g
            if decouple:
                update += lr * weight_decay * w
            weights[r, d] = w - update
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


#: The last update's global step is kept in two float32 columns, ``step // 2**24`` and ``step % 2**24``,
#: both exact in float32, so steps up to 2**48 survive any copy or cast of the state store.
_STEP_SPLIT = 1 << 24
_MAX_STEP = 1 << 48


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _batch_softmax_kernel(weights, state, rows, lr, global_step, p):
    # Monolith's BatchSoftmaxOptimizer::Optimize: B = (1 - alpha) * B + alpha * (step - A); A = step.
    one = _F32(1.0)
    step_high = _F32(global_step // _STEP_SPLIT)
    step_low = _F32(global_step % _STEP_SPLIT)
    for i in range(rows.shape[0]):
        r = rows[i]
        last_step = np.int64(state[r, 0]) * _STEP_SPLIT + np.int64(state[r, 1])
        weights[r, 0] = (one - lr) * weights[r, 0] + lr * _F32(global_step - last_step)
        state[r, 0] = step_high
        state[r, 1] = step_low
        if p.shape[0]:
            _round_row_fp16(weights, r, p, i)


# ---------------------------------------------------------------------------------------------------------
# Optimizer classes.


class _KernelOptimizer(SliceOptimizer):
    """Shared validation, batch checks and dispatch; subclasses provide :meth:`_update`."""

    _learning_rate: float

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    def init_state(self, state: np.ndarray) -> None:
        state.fill(0)

    def apply(
        self,
        weights: np.ndarray,
        state: np.ndarray,
        rows: np.ndarray,
        grads: np.ndarray,
        learning_rate: float,
        global_step: int,
    ) -> None:
        self._check_batch(weights, state, rows, grads)
        if rows.shape[0]:
            self._update_at(weights, state, rows, grads, _F32(learning_rate), global_step, _NO_ROUNDING)

    def _update(
        self,
        weights: np.ndarray,
        state: np.ndarray,
        rows: np.ndarray,
        grads: np.ndarray,
        lr: np.float32,
        p: np.ndarray,
    ) -> None:
        """Run the kernel on a checked, non-empty batch (rules that ignore the global step).

        ``p`` is float32 ``[m, dim]`` to round each updated row to fp16 with (see
        :class:`StochasticRoundingFloat16OptimizerWrapper`), or ``[0, 1]``: no rounding.
        """
        raise NotImplementedError(f"{type(self).__name__} defines neither _update nor _update_at")

    def _update_at(
        self,
        weights: np.ndarray,
        state: np.ndarray,
        rows: np.ndarray,
        grads: np.ndarray,
        lr: np.float32,
        global_step: int,
        p: np.ndarray,
    ) -> None:
        """Like :meth:`_update`, for rules that read the global step; by default the step is ignored."""
        self._update(weights, state, rows, grads, lr, p)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "learning_rate": self.learning_rate}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({params})"

    # -- helpers for subclasses

    def _real(self, name: str, value: float | None, default: float, **bounds: Any) -> float:
        """Validate a float hyper-parameter; ``None`` takes the proto default."""
        return check_real(type(self).__name__, name, default if value is None else value, **bounds)

    def _rate(self, value: float | None, default: float, *, positive: bool = False) -> float:
        """Validate a learning rate (strictly positive where the rule divides by it)."""
        return self._real("learning_rate", value, default, low=0.0, low_open=positive)

    def _int(self, name: str, value: int | None, default: int, *, low: int) -> int:
        """Validate an integer hyper-parameter; ``None`` takes the proto default."""
        return check_int(type(self).__name__, name, default if value is None else value, low=low)

    def _flag(self, name: str, value: bool | None, default: bool = False) -> bool:
        """Validate a boolean hyper-parameter; ``None`` takes the proto default."""
        value = default if value is None else value
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{type(self).__name__}: {name} must be a bool, got {value!r}")
        return bool(value)

    def _check_batch(self, weights: np.ndarray, state: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> None:
        # Kernels do no bounds checks, so a bad batch must be stopped here rather than corrupt memory.
        owner = type(self).__name__
        for label, array in (("weights", weights), ("state", state), ("grads", grads)):
            if array.dtype != np.float32 or array.ndim != 2:
                raise ValueError(f"{owner}: {label} must be a 2-D float32 array, got {array.dtype} {array.shape}")
        dim, width = weights.shape[1], self.state_width(weights.shape[1])
        if state.shape[1] != width:
            raise ValueError(f"{owner}: state must have {width} columns for dim {dim}, got {state.shape}")
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise ValueError(f"{owner}: rows must be a 1-D integer array, got {rows.dtype} {rows.shape}")
        if grads.shape != (rows.shape[0], dim):
            raise ValueError(f"{owner}: grads must have shape {(rows.shape[0], dim)}, got {grads.shape}")
        capacity = min(weights.shape[0], state.shape[0])
        if rows.shape[0] and not _all_within(rows, capacity):
            raise IndexError(f"{owner}: rows must lie in [0, {capacity}), got [{rows.min()}, {rows.max()}]")


class SgdOptimizer(_KernelOptimizer):
    """Plain SGD: ``w -= lr * g``. No state."""

    name = "sgd"

    def __init__(self, learning_rate: float | None = None) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01)

    def state_width(self, dim: int) -> int:
        return 0

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _sgd_kernel(weights, rows, grads, lr, p)


class AdagradOptimizer(_KernelOptimizer):
    """Adagrad (Duchi et al. 2011) with optional L2 weight decay folded into the gradient.

    State per row: the squared-gradient accumulator ``norm[dim]``. ``hessian_compression_times`` is kept
    for configuration parity only; Monolith's runtime does not use it either.

    Deviation from Monolith: its AVX build decays only the tail past ``floor(dim / 8) * 8`` in the weight
    update; here, as in Monolith's scalar path, every element uses the decayed gradient.
    """

    name = "adagrad"

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float | None = None,
        hessian_compression_times: int | None = 1,
        warmup_steps: int | None = 0,
        weight_decay_factor: float | None = 0.0,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.001)
        # 0 is torch.optim.Adagrad's default: a row's first non-zero gradient then moves it by lr.
        self.initial_accumulator_value = self._real(
            "initial_accumulator_value", initial_accumulator_value, 0.1, low=0.0
        )
        self.hessian_compression_times = self._int("hessian_compression_times", hessian_compression_times, 1, low=1)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return dim

    def init_state(self, state: np.ndarray) -> None:
        state.fill(self.initial_accumulator_value)

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _adagrad_kernel(weights, state, rows, grads, lr, _F32(self.weight_decay_factor), p)


class FtrlOptimizer(_KernelOptimizer):
    """FTRL-Proximal (McMahan et al. 2013).

    State per row: ``norm[dim]`` (squared-gradient sum, starts at ``initial_accumulator_value``) then
    ``zero[dim]`` (the ``z`` accumulator, starts at 0).

    Deviation from Monolith: its L1 term multiplies ``l1`` by ``signbit(z)`` (0 or 1); here it is
    ``sign(z)``, the proximal step of the paper, so positive and negative ``z`` shrink symmetrically.
    Both agree when ``l1_regularization_strength`` is 0 (the default).
    """

    name = "ftrl"
    #: Proto defaults of (initial_accumulator_value, beta), and the update.
    _defaults = (0.1, 0.0)
    _kernel = staticmethod(_ftrl_kernel)

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float | None = None,
        beta: float | None = None,
        warmup_steps: int | None = 0,
        l1_regularization: float | None = None,
        l2_regularization: float | None = None,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01, positive=True)
        self.initial_accumulator_value = self._real(
            "initial_accumulator_value", initial_accumulator_value, self._defaults[0], low=0.0
        )
        self.beta = self._real("beta", beta, self._defaults[1], low=0.0)
        self.l1_regularization_strength = self._real("l1_regularization", l1_regularization, 0.0, low=0.0)
        self.l2_regularization_strength = self._real("l2_regularization", l2_regularization, 0.0, low=0.0)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def init_state(self, state: np.ndarray) -> None:
        dim = state.shape[1] // 2
        state[:, :dim] = self.initial_accumulator_value
        state[:, dim:] = 0

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        self._kernel(
            weights,
            state,
            rows,
            grads,
            lr,
            _F32(self.beta),
            _F32(self.l1_regularization_strength),
            _F32(self.l2_regularization_strength),
            p,
        )


class _AdamFamily(_KernelOptimizer):
    """Adam and AMSGrad share one kernel; the bias-correction powers are kept per row, as Monolith does."""

    _amsgrad: bool

    def _init_adam(
        self, learning_rate, beta1, beta2, weight_decay_factor, use_nesterov, epsilon, warmup_steps
    ) -> None:
        """Validate and store the hyper-parameters both share."""
        self._learning_rate = self._rate(learning_rate, 0.01)
        self.beta1 = self._real("beta1", beta1, 0.9, low=0.0, high=1.0, high_open=True)
        self.beta2 = self._real("beta2", beta2, 0.99, low=0.0, high=1.0, high_open=True)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.use_nesterov = self._flag("use_nesterov", use_nesterov)
        # Monolith adds epsilon outside the square root; zero would give 0/0 on a zero gradient.
        self.epsilon = self._real("epsilon", epsilon, 0.01, low=0.0, low_open=True)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return (3 if self._amsgrad else 2) * dim + 2

    def init_state(self, state: np.ndarray) -> None:
        powers = state.shape[1] - 2
        state[:, :powers] = 0
        state[:, powers] = self.beta1
        state[:, powers + 1] = self.beta2

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _adam_kernel(
            weights,
            state,
            rows,
            grads,
            lr,
            _F32(self.beta1),
            _F32(self.beta2),
            _F32(self.epsilon),
            _F32(self.weight_decay_factor),
            self.use_nesterov,
            self._amsgrad,
            p,
        )


class AdamOptimizer(_AdamFamily):
    """Adam (Kingma & Ba 2015), Monolith flavour: ``w -= lr_t * m / (sqrt(v) + epsilon)``.

    State per row: ``m[dim]``, ``v[dim]``, ``beta1_power``, ``beta2_power`` (start at beta1, beta2).
    ``use_beta1_warmup`` is kept for configuration parity; Monolith's runtime ignores it too.
    """

    name = "adam"
    _amsgrad = False

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float | None = 0.9,
        beta2: float | None = 0.99,
        use_beta1_warmup: bool | None = False,
        weight_decay_factor: float | None = 0.0,
        use_nesterov: bool | None = False,
        epsilon: float | None = 0.01,
        warmup_steps: int | None = 0,
    ) -> None:
        self._init_adam(learning_rate, beta1, beta2, weight_decay_factor, use_nesterov, epsilon, warmup_steps)
        self.use_beta1_warmup = self._flag("use_beta1_warmup", use_beta1_warmup)


class AmsgradOptimizer(_AdamFamily):
    """AMSGrad (Reddi et al. 2018): Adam whose denominator uses the running maximum ``vhat`` of ``v``.

    State per row: ``m[dim]``, ``v[dim]``, ``vhat[dim]``, ``beta1_power``, ``beta2_power``.
    """

    name = "amsgrad"
    _amsgrad = True

    def __init__(
        self,
        learning_rate: float | None = None,
        beta1: float | None = 0.9,
        beta2: float | None = 0.99,
        weight_decay_factor: float | None = 0.0,
        use_nesterov: bool | None = False,
        epsilon: float | None = 0.01,
        warmup_steps: int | None = 0,
    ) -> None:
        self._init_adam(learning_rate, beta1, beta2, weight_decay_factor, use_nesterov, epsilon, warmup_steps)


class MomentumOptimizer(_KernelOptimizer):
    """Heavy-ball momentum: ``n = momentum * n - lr * g; w += n`` (or the Nesterov variant).

    State per row: the velocity ``n[dim]``.
    """

    name = "momentum"

    def __init__(
        self,
        learning_rate: float | None = None,
        weight_decay_factor: float | None = 0.0,
        use_nesterov: bool | None = False,
        momentum: float | None = 0.9,
        warmup_steps: int | None = 0,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.use_nesterov = self._flag("use_nesterov", use_nesterov)
        self.momentum = self._real("momentum", momentum, 0.9, low=0.0, high=1.0)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return dim

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _momentum_kernel(
            weights, state, rows, grads, lr, _F32(self.momentum), _F32(self.weight_decay_factor), self.use_nesterov,
            p,
        )


class MovingAverageOptimizer(_KernelOptimizer):
    """Keeps an exponential moving average of the "gradients": ``w = momentum * w + (1 - momentum) * g``.

    No state. Monolith's proto has no learning rate for it: :attr:`learning_rate` is 0 and ``apply``
    ignores the rate it is given.
    """

    name = "moving_average"

    def __init__(self, momentum: float | None = 0.9) -> None:
        self._learning_rate = 0.0
        self.momentum = self._real("momentum", momentum, 0.9, low=0.0, high=1.0)

    def state_width(self, dim: int) -> int:
        return 0

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _moving_average_kernel(weights, rows, grads, _F32(self.momentum), p)


class _RmspropFamily(_KernelOptimizer):
    """RMSProp variants: ``n = momentum * n + c * g^2; w -= lr / (sqrt(n) + 1) * g``. State: ``n[dim]``."""

    def __init__(
        self,
        learning_rate: float | None = None,
        weight_decay_factor: float | None = 0.0,
        momentum: float | None = 0.9,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.momentum = self._real("momentum", momentum, 0.9, low=0.0, high=1.0)

    def state_width(self, dim: int) -> int:
        return dim

    def _run(self, weights, state, rows, grads, lr: np.float64, grad_square_scale: np.float64, p) -> None:
        _rmsprop_kernel(
            weights, state, rows, grads, lr, _f64(self.momentum), grad_square_scale, _f64(self.weight_decay_factor),
            p,
        )


class RmspropOptimizer(_RmspropFamily):
    """RMSProp as Monolith's v1: ``n = momentum * n + (1 - momentum) * g^2``, in double precision.

    Like Monolith, it always steps with its configured ``learning_rate`` and ignores the rate passed to
    ``apply`` (so learning-rate schedules have no effect on it).
    """

    name = "rmsprop"

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        self._run(weights, state, rows, grads, _f64(self.learning_rate), 1.0 - _f64(self.momentum), p)


class RmspropV2Optimizer(_RmspropFamily):
    """RMSProp as Monolith's v2: ``n = momentum * n + g^2``, stepping with the rate passed to ``apply``."""

    name = "rmspropv2"

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        self._run(weights, state, rows, grads, np.float64(lr), np.float64(1.0), p)


class AdadeltaOptimizer(_KernelOptimizer):
    """Adadelta (Zeiler 2012), scaled by the learning rate.

    State per row: ``accum[dim]`` (squared gradients) then ``accum_update[dim]`` (squared updates).
    """

    name = "adadelta"

    def __init__(
        self,
        learning_rate: float | None = None,
        weight_decay_factor: float | None = 0.0,
        averaging_ratio: float | None = 0.9,
        epsilon: float | None = 0.01,
        warmup_steps: int | None = 0,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.averaging_ratio = self._real("averaging_ratio", averaging_ratio, 0.9, low=0.0, high=1.0)
        # The first update is sqrt(epsilon) / sqrt(epsilon): zero would make it 0/0.
        self.epsilon = self._real("epsilon", epsilon, 0.01, low=0.0, low_open=True)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return 2 * dim

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _adadelta_kernel(
            weights,
            state,
            rows,
            grads,
            lr,
            _F32(self.averaging_ratio),
            _F32(self.epsilon),
            _F32(self.weight_decay_factor),
            p,
        )


class AdaGradWithGroupLassoOptimizer(_KernelOptimizer):
    """Group-lasso Adagrad: one accumulator per row, growing by the row's largest squared gradient, and a
    group soft-threshold that sets the whole row to zero when ``||z|| <= l2_regularization_strength``.

    State per row: ``grad_square_sum`` (one column, starts at ``initial_accumulator_value``).

    Deviation from Monolith: a zero ``z`` (zero row, zero gradient) with ``l2_regularization_strength`` 0
    yields a zero row instead of NaN (Monolith divides 0 by 0 there).
    """

    name = "group_adagrad"

    def __init__(
        self,
        learning_rate: float | None = None,
        beta: float | None = None,
        initial_accumulator_value: float | None = None,
        l2_regularization: float | None = None,
        weight_decay_factor: float | None = 0.0,
        warmup_steps: int | None = 0,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.01, positive=True)
        self.beta = self._real("beta", beta, 0.0, low=0.0)
        self.initial_accumulator_value = self._real(
            "initial_accumulator_value", initial_accumulator_value, 0.1, low=0.0
        )
        self.l2_regularization_strength = self._real("l2_regularization", l2_regularization, 0.0, low=0.0)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)

    def state_width(self, dim: int) -> int:
        return 1

    def init_state(self, state: np.ndarray) -> None:
        state.fill(self.initial_accumulator_value)

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _group_adagrad_kernel(
            weights,
            state,
            rows,
            grads,
            lr,
            _F32(self.beta),
            _F32(self.l2_regularization_strength),
            _F32(self.weight_decay_factor),
            p,
        )


class FTRLWithGroupSparsityOptimizer(FtrlOptimizer):
    """Group-sparse FTRL-Proximal: per-element FTRL accumulators, with the L1 penalty applied to the whole
    row (group lasso), so a row whose ``||z||`` is below ``l1_regularization_strength`` becomes zero.

    State per row: ``norm[dim]`` (squared-gradient sum, starts at ``initial_accumulator_value``) then
    ``zero[dim]`` (the ``z`` accumulator, starts at 0), as :class:`FtrlOptimizer`. Defaults are those of
    Monolith's ``GroupFtrlOptimizerConfig`` (``beta`` 1.0, ``initial_accumulator_value`` 0.0).

    Monolith's open-source runtime declares this optimizer but its factory throws "not implemented yet";
    the update here is its scalar kernel ``BaselineGroupFTRLOptimize`` (``optimizer/avx_utils.h``)::

        n' = n + g^2;  z += g - (sqrt(n') - sqrt(n)) / lr * w;  n = n'
        w = 0                                                          if ||z|| < l1
        w = lr * z * (l1 - ||z||) / ||z|| / (beta + sqrt(n) + l2 * lr)  otherwise

    Deviations: a zero ``z`` gives a zero row where Monolith divides 0 by 0 (NaN rows when ``l1`` is 0);
    Monolith's AVX variant of the kernel subtracts ``l2 * lr`` in the denominator of the first
    ``floor(dim / 8) * 8`` elements, here every element adds it as the scalar kernel does.
    """

    name = "group_ftrl"
    _defaults = (0.0, 1.0)
    _kernel = staticmethod(_group_ftrl_kernel)

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float | None = None,
        beta: float | None = None,
        warmup_steps: int | None = 0,
        l1_regularization: float | None = None,
        l2_regularization: float | None = None,
    ) -> None:
        super().__init__(learning_rate, initial_accumulator_value, beta, warmup_steps, l1_regularization,
                         l2_regularization)
        if self.beta == 0 and self.initial_accumulator_value == 0 and self.l2_regularization_strength == 0:
            raise ValueError(
                f"{type(self).__name__}: one of beta, initial_accumulator_value and l2_regularization must be > 0 "
                "(else the denominator beta + sqrt(norm) + l2 * lr is 0 for an element that had no gradient yet), "
                "got beta=0.0, initial_accumulator_value=0.0, l2_regularization=0.0"
            )


class DynamicWdAdagradOptimizer(_KernelOptimizer):
    """Adagrad with coupled or decoupled (AdamW-style) L2 weight decay.

    State per row: the squared-gradient accumulator ``norm[dim]`` (starts at ``initial_accumulator_value``).
    With ``decouple_weight_decay`` the decay bypasses the accumulator::

        norm += g^2;  w -= lr / sqrt(norm) * g + lr * weight_decay_factor * w

    without it, it is folded into the gradient as :class:`AdagradOptimizer` does (``g += wd * w`` first).
    This is Monolith's published kernel ``BaselineDynamicWdAdagradOptimize``
    (``optimizer/dynamic_wd_avx_utils.h``), whose AVX variants agree with it to 1e-6.

    Deviation: Monolith's open-source runtime declares the optimizer but its factory throws "not implemented
    yet", and the *dynamic* part of the weight decay is not published: ``enable_dynamic_wd``,
    ``flip_direction`` and ``dynamic_wd_temperature`` (and the per-row ``last_update_step`` that
    Monolith's dump format reserves) have no formula to follow. They are validated and recorded here, and
    have no effect: the weight decay is the static ``weight_decay_factor``. A warning says so when
    ``enable_dynamic_wd`` is set with a non-zero ``weight_decay_factor``. ``hessian_compression_times`` is
    kept for configuration parity, as for :class:`AdagradOptimizer`. Keyword defaults are ``entry.py``'s
    (``decouple_weight_decay``, ``enable_dynamic_wd`` and ``flip_direction`` True); ``None`` takes the
    proto's (all False).
    """

    name = "dynamic_wd_adagrad"

    def __init__(
        self,
        learning_rate: float | None = None,
        initial_accumulator_value: float | None = None,
        hessian_compression_times: int | None = 1,
        warmup_steps: int | None = 0,
        weight_decay_factor: float | None = 0.0,
        decouple_weight_decay: bool | None = True,
        enable_dynamic_wd: bool | None = True,
        flip_direction: bool | None = True,
        dynamic_wd_temperature: float | None = 1.0,
    ) -> None:
        self._learning_rate = self._rate(learning_rate, 0.001)
        # A zero accumulator would divide 0 by 0 for a zero gradient.
        self.initial_accumulator_value = self._real(
            "initial_accumulator_value", initial_accumulator_value, 0.1, low=0.0, low_open=True
        )
        self.hessian_compression_times = self._int("hessian_compression_times", hessian_compression_times, 1, low=1)
        self.warmup_steps = self._int("warmup_steps", warmup_steps, 0, low=0)
        self.weight_decay_factor = self._real("weight_decay_factor", weight_decay_factor, 0.0, low=0.0)
        self.decouple_weight_decay = self._flag("decouple_weight_decay", decouple_weight_decay)
        self.enable_dynamic_wd = self._flag("enable_dynamic_wd", enable_dynamic_wd)
        self.flip_direction = self._flag("flip_direction", flip_direction)
        self.dynamic_wd_temperature = self._real(
            "dynamic_wd_temperature", dynamic_wd_temperature, 1.0, low=0.0, low_open=True
        )
        if self.enable_dynamic_wd and self.weight_decay_factor > 0:
            logger.warning(
                "DynamicWdAdagradOptimizer: the dynamic weight decay (enable_dynamic_wd, flip_direction, "
                "dynamic_wd_temperature) is not in Monolith's open-source runtime; the static %s weight decay "
                "factor %g is applied",
                "decoupled" if self.decouple_weight_decay else "coupled",
                self.weight_decay_factor,
            )

    def state_width(self, dim: int) -> int:
        return dim

    def init_state(self, state: np.ndarray) -> None:
        state.fill(self.initial_accumulator_value)

    def _update(self, weights, state, rows, grads, lr, p) -> None:
        _dynamic_wd_adagrad_kernel(
            weights, state, rows, grads, lr, _F32(self.weight_decay_factor), self.decouple_weight_decay,
            p,
        )


class BatchSoftmaxOptimizer(_KernelOptimizer):
    """Item-frequency estimation for batch softmax (Yi et al. 2019, "Sampling-bias-corrected neural
    modeling"): the slice's single value ``B`` tracks the average number of global steps between two
    occurrences of the id. Gradients are ignored; each update at ``global_step`` does::

        B = (1 - lr) * B + lr * (global_step - A);  A = global_step

    where ``A`` is the step of the id's previous update (0 for a new row) and ``lr`` is the rate passed
    to ``apply`` (the configured ``learning_rate``, proto default 0.1, unless a schedule overrides it).
    ``B`` starts from the slice's initializer, usually :class:`~monolith.optim.BatchSoftmaxInitializer`.
    An id repeated within one step gets a second update with interval 0, as Monolith's per-occurrence
    ``Optimize`` calls do. ``1 / B`` is the frequency that Monolith's ``batch_softmax_loss`` corrects with.

    The slice must have ``dim`` 1 (Monolith's ``DCHECK``; its release build would update only the first
    element). State per row: ``A`` as two float32 columns, ``A // 2**24`` and ``A % 2**24`` (Monolith keeps
    it as one int64; both are exact for steps below 2**48). A negative ``global_step`` is a ``ValueError``
    (Monolith's ``LOG(FATAL)``).
    """

    name = "batch_softmax"

    def __init__(self, learning_rate: float | None = None) -> None:
        self._learning_rate = self._real("learning_rate", learning_rate, 0.1, low=0.0, high=1.0)

    def state_width(self, dim: int) -> int:
        if dim != 1:
            raise ValueError(f"{type(self).__name__}: the slice must have dim 1 (one step-interval estimate per id), "
                             f"got dim {dim!r}")
        return 2

    def _update_at(self, weights, state, rows, grads, lr, global_step, p) -> None:
        step = check_int(type(self).__name__, "global_step", global_step, low=0)
        if step >= _MAX_STEP:
            raise ValueError(f"{type(self).__name__}: global_step must be below 2**48, got {step}")
        _batch_softmax_kernel(weights, state, rows, lr, np.int64(step), p)


class StochasticRoundingFloat16OptimizerWrapper(_KernelOptimizer):
    """Runs ``optimizer``, then rounds every weight of each updated row to a neighbouring float16 value,
    stochastically (Monolith's ``StochasticRoundingFloat16OptimizerDecorator``, ``optimizer/stochastic_rounding.h``).

    A weight ``v`` between its fp16 neighbours ``down <= v <= up`` (round toward -inf / +inf) becomes
    ``up`` when ``p <= (v - down) / (up - down)``, else ``down``; weights already fp16 values stay as they
    are. Rows stay float32 (holding fp16 values); the optimizer state is not rounded. A row repeated in
    a batch is rounded after each of its updates. State width, initial state and learning rate are the
    wrapped optimizer's; its ``config()`` is nested under ``"optimizer"``.

    ``p`` comes from Monolith's generator, Marsaglia's multiply-with-carry pair seeded ``{0, 1}``, drawn
    once per weight in batch order (row by row, element by element). As in Monolith, the first word of
    that seed never leaves 0, so ``p`` only takes values below 0.2747: a weight more than 27.5% of the way
    from ``down`` to ``up`` always rounds up, and rounding is biased toward +inf. That is Monolith's
    behaviour, kept here.

    Deviations: Monolith keeps one generator per thread, shared by every wrapped slice of the process;
    here each wrapper owns one (starting at Monolith's seed), so a wrapper's draws do not depend on other
    tables. Monolith's decorator calls the wrapped optimizer without the global step (it gets 0); here it
    gets the real step, which only :class:`BatchSoftmaxOptimizer` reads. Wrapping a wrapper wraps its
    optimizer once (Monolith's proto has a single ``stochastic_rounding_float16`` flag).
    """

    def __init__(self, optimizer: SliceOptimizer) -> None:
        if isinstance(optimizer, StochasticRoundingFloat16OptimizerWrapper):
            optimizer = optimizer.optimizer
        if not isinstance(optimizer, SliceOptimizer):
            raise ValueError(f"{type(self).__name__}: optimizer must be a SliceOptimizer, got {optimizer!r}")
        self.optimizer = optimizer
        # The generator's state (Monolith's rng_): numba kernels hold the GIL, so a draw is atomic.
        self._rng = np.array([0, 1], dtype=np.uint64)

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.optimizer.name

    @property
    def learning_rate(self) -> float:
        return self.optimizer.learning_rate

    @property
    def warmup_steps(self) -> int:
        """The wrapped optimizer's warm-up, which the slice's learning-rate ramp reads."""
        return getattr(self.optimizer, "warmup_steps", 0) or 0

    def state_width(self, dim: int) -> int:
        return self.optimizer.state_width(dim)

    def init_state(self, state: np.ndarray) -> None:
        self.optimizer.init_state(state)

    def config(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "optimizer": self.optimizer.config()}

    def _draw(self, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.float32)
        _mwc_uniforms(self._rng, out)
        return out

    def _update_at(self, weights, state, rows, grads, lr, global_step, p) -> None:
        m, dim = grads.shape
        p = self._draw(m * dim).reshape(m, dim)
        if isinstance(self.optimizer, _KernelOptimizer):
            # Its kernel rounds each row right after updating it.
            self.optimizer._update_at(weights, state, rows, grads, lr, global_step, p)
            return
        # Another SliceOptimizer: updates of a repeated row must alternate with its rounding, so the k-th
        # occurrences of all rows form wave k, applied and rounded after wave k-1. Distinct rows are
        # independent, and each occurrence keeps the p drawn for its position in the batch.
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        starts = np.ones(m, dtype=np.bool_)
        starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
        first = np.maximum.accumulate(np.where(starts, np.arange(m), 0))
        rank = np.empty(m, dtype=np.int64)
        rank[order] = np.arange(m) - first
        for k in range(rank.max() + 1):
            wave = np.flatnonzero(rank == k)
            self.optimizer.apply(weights, state, rows[wave], np.ascontiguousarray(grads[wave]), lr, global_step)
            _round_rows_fp16(weights, rows[wave], np.ascontiguousarray(p[wave]))


#: Monolith's other name for the same optimizer (its proto message is ``GroupAdaGradOptimizerConfig``).
GroupAdaGradOptimizer = AdaGradWithGroupLassoOptimizer
