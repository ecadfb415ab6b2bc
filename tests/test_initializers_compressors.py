"""Initializers and serving compressors against Monolith's C++ tests."""

from __future__ import annotations

import numpy as np
import pytest

from monolith.optim import (
    ConstantsInitializer,
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    RandomUniformInitializer,
    ZerosInitializer,
)


def round_trip(compressor, values):
    rows = np.asarray([values], np.float32)
    return compressor.decode(compressor.encode(rows), rows.shape[1])[0]


def test_zeros_and_constants():
    rows = np.full((2, 3), 7.0, np.float32)
    ZerosInitializer().initialize(rows, np.random.default_rng(0))
    np.testing.assert_array_equal(rows, 0.0)
    ConstantsInitializer(0.25).initialize(rows, np.random.default_rng(0))
    np.testing.assert_array_equal(rows, 0.25)


def test_random_uniform_range_defaults_and_determinism():
    init = RandomUniformInitializer()
    assert (init.minval, init.maxval) == (-0.05, 0.05)
    rows = np.zeros((100, 10), np.float32)
    RandomUniformInitializer(minval=-1, maxval=1).initialize(rows, np.random.default_rng(3))
    assert rows.dtype == np.float32
    assert rows.min() >= -1.0 and rows.max() < 1.0
    assert rows.max() > 0.9 and rows.min() < -0.9  # Monolith's check that the range is used
    again = np.zeros_like(rows)
    RandomUniformInitializer(minval=-1, maxval=1).initialize(again, np.random.default_rng(3))
    np.testing.assert_array_equal(rows, again)


def test_random_uniform_fills_strided_views():
    store = np.zeros((6, 4), np.float32)
    RandomUniformInitializer(minval=2.0, maxval=3.0).initialize(store[::2], np.random.default_rng(1))
    assert np.all((store[::2] >= 2.0) & (store[::2] < 3.0))
    np.testing.assert_array_equal(store[1::2], 0.0)


@pytest.mark.parametrize(
    "build, param",
    [
        (lambda: ConstantsInitializer("zero"), "constant"),
        (lambda: RandomUniformInitializer(minval=1.0, maxval=0.0), "maxval"),
        (lambda: RandomUniformInitializer(minval=float("inf")), "minval"),
        (lambda: FixedR8Compressor(fixed_range=0.0), "fixed_range"),
        (lambda: FixedR8Compressor(fixed_range=-1.0), "fixed_range"),
    ],
)
def test_invalid_arguments(build, param):
    with pytest.raises(ValueError, match=param):
        build()


def test_fp32_is_exact():
    values = [0.1, 0.2, 10000.0, -3.5e-30]
    np.testing.assert_array_equal(round_trip(Fp32Compressor(), values), np.float32(values))


def test_fp16_monolith_vector_and_bits():
    np.testing.assert_allclose(round_trip(Fp16Compressor(), [0.1, 0.2, 10000.0]), [0.1, 0.2, 10000.0], atol=1e-4)
    encoded = Fp16Compressor().encode(np.float32([[0.1, 1.0, -2.0, 1e6]]))
    # IEEE binary16: 0.1 rounds to 0x2E66, 1.0 is 0x3C00, -2.0 is 0xC000, overflow is +inf (0x7C00).
    assert encoded.view(np.uint16).tolist() == [[0x2E66, 0x3C00, 0xC000, 0x7C00]]
    assert round_trip(Fp16Compressor(), [0.1])[0] == 0.0999755859375


def test_fixed_r8_monolith_vectors():
    step = np.float32(5.0) / np.float32(128)
    compressor = FixedR8Compressor(fixed_range=5.0)
    assert compressor.r == 5.0
    np.testing.assert_allclose(round_trip(compressor, [100.0, 0.0, 3.5]), [5.0, 0.0, 3.5], atol=step)
    values = [step * np.float32(1.4), step * np.float32(1.6), -step * np.float32(1.4), -step * np.float32(1.6)]
    assert compressor.encode(np.float32([values])).tolist() == [[1, 2, -1, -2]]
    np.testing.assert_array_equal(round_trip(compressor, values), [step, step * 2, -step, -step * 2])


def test_fixed_r8_saturation_and_nan():
    compressor = FixedR8Compressor()  # r = 1, step = 1/128
    encoded = compressor.encode(np.float32([[np.nan, 1e30, np.inf, -1e30, -np.inf, 0.999, -1.0]]))
    assert encoded.dtype == np.int8
    # Huge positive values saturate to +127 (Monolith's undefined int cast gives -128 there).
    assert encoded.tolist() == [[0, 127, 127, -128, -128, 127, -128]]
    np.testing.assert_array_equal(compressor.decode(encoded, 7), np.float32(encoded) / np.float32(128))


def test_decode_checks_dim():
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        Fp16Compressor().decode(np.zeros((1, 2), np.float16), 3)
