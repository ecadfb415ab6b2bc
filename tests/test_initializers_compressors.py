"""Initializers and serving compressors against Monolith's C++ tests."""

from __future__ import annotations

import numpy as np
import pytest

from monolith.optim import (
    BatchSoftmaxInitializer,
    ConstantsInitializer,
    FixedR8Compressor,
    Fp16Compressor,
    Fp32Compressor,
    HashNetQuantizer,
    OneBitCompressor,
    RandomUniformInitializer,
    SgdOptimizer,
    ZerosInitializer,
)
from monolith.optim.fid_random import FidRandom
from monolith.table import EmbeddingHashTable, SliceConfig


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
        (lambda: BatchSoftmaxInitializer(0.5), "init_step_interval"),
        (lambda: BatchSoftmaxInitializer(float("nan")), "init_step_interval"),
        (lambda: OneBitCompressor(step_size=0), "step_size"),
        (lambda: OneBitCompressor(step_size=2.5), "step_size"),
        (lambda: OneBitCompressor(amplitude=0.0), "amplitude"),
        (lambda: HashNetQuantizer(max_scale=-1.0), "max_scale"),
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


def test_batch_softmax_initializer():
    init = BatchSoftmaxInitializer(3.5)
    assert init.init_step_interval == 3.5 and init.constant == 3.5  # Monolith's attribute name
    rows = np.zeros((2, 1), np.float32)
    init.initialize(rows, np.random.default_rng(0))
    np.testing.assert_array_equal(rows, 3.5)
    BatchSoftmaxInitializer(1)  # the smallest interval Monolith accepts
    with pytest.raises(ValueError, match=r"init_step_interval must be a finite number >= 1.0, got 0.5"):
        BatchSoftmaxInitializer(init_step_interval=0.5)


def test_one_bit_monolith_vector():
    # float_compressor_test.cc: one_bit { step_size: 5 amplitude: 1.0 }.
    values = [100.0, 0.1, 0.00001, 0.0, -0.00001, -0.1, -100.0]
    compressor = OneBitCompressor(step_size=5, amplitude=1.0)
    np.testing.assert_allclose(round_trip(compressor, values), [1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0], atol=0.1)
    encoded = compressor.encode(np.float32([values + [np.nan, -0.0, 1e-30]]))
    assert encoded.dtype == np.int8 and encoded.tolist() == [[1, 1, 1, -1, -1, -1, -1, -1, -1, 1]]


def test_one_bit_defaults_and_decode():
    compressor = OneBitCompressor()
    assert (compressor.step_size, compressor.amplitude) == (200, 0.05)  # entry.py's defaults
    assert compressor.config() == {"type": "OneBitCompressor", "step_size": 200, "amplitude": 0.05}
    decoded = compressor.decode(np.int8([[1, -1, 1]]), 3)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, np.float32([[0.05, -0.05, 0.05]]))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        compressor.decode(np.int8([[1, -1, 1]]), 2)


def test_one_bit_config_round_trips():
    from monolith.optim import Compressor, Initializer, from_config

    compressor = OneBitCompressor(step_size=7, amplitude=0.5)
    assert from_config(compressor.config(), Compressor).config() == compressor.config()
    init = BatchSoftmaxInitializer(2.0)
    assert from_config(init.config(), Initializer).config() == init.config()


def test_hash_net_quantizer_monolith_vectors():
    # hash_net_quantizer_test.cc: step_size 1000 and the proto defaults (amplitude 0.1, init_scale 1,
    # max_scale 10000).
    model = HashNetQuantizer(step_size=1000, amplitude=0.1)
    assert model.scale == np.float32(1.0)
    np.testing.assert_allclose(model.forward(np.float32([1.0, 2.0])), [0.07615941, 0.09640275], rtol=1e-6)
    assert model.backward(np.float32(2.0), np.float32(1.0), 0) == pytest.approx(0.00706508, rel=1e-6)
    assert model.backward(np.float32(2.0), np.float32(2.0), 999) == pytest.approx(0.01413016, rel=1e-6)
    assert model.backward(np.float32(2.0), np.float32(100.0), 1000) == pytest.approx(0.005442613, rel=1e-6)
    assert model.backward(np.float32(2.0), np.float32(200.0), 1001) == pytest.approx(0.01088523, rel=1e-6)
    assert model.forward(np.float32(2.0)) == pytest.approx(0.09998888, rel=1e-6)
    assert model.scale == pytest.approx(2.44948974, rel=1e-6)


def test_hash_net_quantizer_scale_is_capped():
    model = HashNetQuantizer(step_size=10, amplitude=0.1, max_scale=3.0)
    model.backward(np.float32([0.5]), np.float32([1.0]), 10_000)  # sqrt(1 + 50) > 3
    assert model.scale == np.float32(3.0)


def splitmix_finaliser(x):
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return x ^ (x >> 31)


def test_fid_random_is_the_documented_counter_based_draw():
    golden, mask = 0x9E3779B97F4A7C15, 2**64 - 1
    seed, stream, fids = 12345, 2, np.array([7, 2**60 + 3, -5])
    draws = FidRandom(seed, stream, fids)
    got = np.concatenate([draws.random((3, 2)), draws.random((3, 1))], axis=1)  # a second draw continues
    key = splitmix_finaliser(splitmix_finaliser(seed) ^ stream)
    for i, fid in enumerate(fids.tolist()):
        row = splitmix_finaliser(key ^ splitmix_finaliser((fid + golden) & mask))
        want = [(splitmix_finaliser((row + (j + 1) * golden) & mask) >> 40) / 2**24 for j in range(3)]
        np.testing.assert_array_equal(got[i], np.float32(want))


def test_table_rows_start_from_their_fid_alone_with_monoliths_uniform_distribution():
    slices = [SliceConfig("vec", 8, initializer=RandomUniformInitializer(-1, 1), optimizer=SgdOptimizer(0.1)),
              SliceConfig("bias", 1, initializer=RandomUniformInitializer(-1, 1), optimizer=SgdOptimizer(0.1))]
    ids = np.arange(100_000, dtype=np.int64) * 7_919

    def insert(table, fids):  # rows are created by their first (here zero) gradient
        table.apply_gradients(fids, np.zeros((fids.size, 9), np.float32))
        return table

    one = insert(EmbeddingHashTable(slices, seed=3), ids)
    other = insert(EmbeddingHashTable(slices, seed=3), ids[::-1][:500] + 1)  # other ids first,
    for part in np.array_split(ids[::-1], 7):  # then ours in reverse, in pieces
        insert(other, part)
    np.testing.assert_array_equal(one.lookup(ids), other.lookup(ids))
    rows = one.lookup(ids).numpy()
    assert not np.array_equal(rows[:, 0], rows[:, 8])  # the slices of an id draw apart
    assert not np.array_equal(insert(EmbeddingHashTable(slices, seed=4), ids[:3]).lookup(ids[:3]).numpy(), rows[:3])
    # Monolith's distribution: uniform on [-1, 1), float32; each tenth of the range holds a tenth.
    assert rows.min() >= -1 and rows.max() < 1
    shares = np.histogram(rows, bins=10, range=(-1, 1))[0] / rows.size
    np.testing.assert_allclose(shares, 0.1, atol=0.002)
