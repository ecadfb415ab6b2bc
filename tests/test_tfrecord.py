"""TFRecord files without TensorFlow: CRC-32C against the RFC's vectors, framing built by hand from
TensorFlow's spec, bad records, and Monolith's tf_example_to_example test."""

import gzip
import math
import struct

import numpy as np
import pytest
import torch

from monolith.data import (FixedLenFeature, TFRecordDataset, parse_example, parse_examples, tf_example_to_example,
                           write_tfrecord)
from monolith.data.proto import tf_example_pb2 as tfpb
from monolith.data.tfrecord import crc32c, frame_tfrecord, masked_crc32c


def crc32c_bitwise(data: bytes) -> int:
    """CRC-32C bit by bit from its definition (reflected, polynomial 0x82F63B78), no table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def record_by_hand(data: bytes) -> bytes:
    # tensorflow/core/lib/io/record_writer.cc: length, masked CRC of the length, data, masked CRC of the data.
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", mask(crc32c_bitwise(length))) + data + struct.pack("<I", mask(crc32c_bitwise(data)))


def test_crc32c_matches_rfc3720_vectors():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    payload = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert crc32c(payload) == crc32c_bitwise(payload)
    assert masked_crc32c(payload) == mask(crc32c_bitwise(payload))


def test_framing_matches_the_spec_and_reads_back(tmp_path):
    records = [b"", b"a", b"hello tfrecord", bytes(range(256)) * 3]
    assert [frame_tfrecord(r) for r in records] == [record_by_hand(r) for r in records]
    path = tmp_path / "hand.tfrecord"
    path.write_bytes(b"".join(record_by_hand(r) for r in records))
    ds = TFRecordDataset(str(path))
    assert list(ds) == records and ds.num_bad_records == 0
    assert write_tfrecord(tmp_path / "w.tfrecord", records) == 4
    assert (tmp_path / "w.tfrecord").read_bytes() == path.read_bytes()
    write_tfrecord(tmp_path / "w.gz", records, "GZIP")
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == path.read_bytes()
    assert list(TFRecordDataset(str(tmp_path / "w.gz"), "GZIP")) == records
    write_tfrecord(tmp_path / "w.z", records, "ZLIB")
    assert list(TFRecordDataset(str(tmp_path / "w.z"), "ZLIB")) == records


def test_bad_records_skipped_counted_or_raised(tmp_path):
    good = [b"one", b"two", b"three"]
    framed = [bytearray(record_by_hand(r)) for r in good]
    framed[0][12] ^= 0xFF  # a data byte of the first record: its data CRC fails
    path = tmp_path / "bad_data.tfrecord"
    path.write_bytes(b"".join(framed))
    ds = TFRecordDataset(str(path))
    assert list(ds) == [b"two", b"three"]
    assert ds.num_bad_records == 1 and ds.bad_records[0][1:] == (0, "corrupt record: the data fails its CRC-32C")
    with pytest.raises(ValueError, match="byte offset 0: malformed record: corrupt record"):
        list(TFRecordDataset(str(path), strict=True))
    assert list(TFRecordDataset(str(path), verify_crc=False)) == [bytes(framed[0][12:15]), b"two", b"three"]

    framed = [bytearray(record_by_hand(r)) for r in good]
    framed[1][8] ^= 0x01  # the length CRC of the second record: the rest cannot be trusted
    path.write_bytes(b"".join(framed))
    ds = TFRecordDataset(str(path))
    assert list(ds) == [b"one"]
    assert ds.bad_records == [(str(path), len(framed[0]), "corrupt record: the length fails its CRC-32C")]

    whole = b"".join(record_by_hand(r) for r in good)
    path.write_bytes(whole[:-3])  # cut inside the last record
    ds = TFRecordDataset(str(path))
    assert list(ds) == [b"one", b"two"] and ds.num_bad_records == 1
    assert "truncated record" in ds.bad_records[0][2]


def test_tf_example_to_example_monolith_test(tmp_path):
    # Monolith's tf_example_to_example_test: five features of known values through a TFRecord file,
    # converted, batched by 2 and parsed.
    rng = np.random.default_rng(7)
    n = 10
    feature0 = rng.choice([False, True], n)
    feature1 = rng.integers(0, 5, n)
    feature2 = np.array([b"cat", b"dog", b"chicken", b"horse", b"goat"])[feature1]
    feature3 = rng.standard_normal(n)
    feature4 = rng.standard_normal(n)

    def serialize(i: int) -> bytes:
        e = tfpb.Example()
        f = e.features.feature
        f["feature0"].int64_list.value.append(int(feature0[i]))
        f["feature1"].int64_list.value.append(int(feature1[i]))
        f["feature2"].bytes_list.value.append(bytes(feature2[i]))
        f["feature3"].float_list.value.append(feature3[i])
        f["feature4"].float_list.value.append(feature4[i])
        return e.SerializeToString()

    path = tmp_path / "test.tfrecord"
    write_tfrecord(path, (serialize(i) for i in range(n)))
    ds = (TFRecordDataset(str(path))
          .map(lambda r: tf_example_to_example(r, {"feature0": 1, "feature1": 2, "feature4": 3}, ["feature2"],
                                               "feature3", None))
          .batch(2)
          .map(lambda ms: parse_examples(
              ms, sparse_features=["not_existed1", "feature0", "feature1", "feature4"],
              dense_features=["label", "feature3", "not_existed2", "instance_weight"],
              dense_feature_shapes=[1, 1, 1, 1])))

    def fid_v2(slot, signature):
        return (slot << 48) | (signature & ((1 << 48) - 1))

    batches = list(ds)
    assert len(batches) == n // 2
    for b, got in enumerate(batches):
        rows = slice(2 * b, 2 * b + 2)
        assert got["not_existed1"].values().numel() == 0
        assert got["feature0"].values().tolist() == [fid_v2(1, int(v)) for v in feature0[rows]]
        assert got["feature1"].values().tolist() == [fid_v2(2, int(v)) for v in feature1[rows]]
        assert got["feature4"].values().tolist() == [fid_v2(3, int(math.log2(abs(np.float32(v)) + 1)))
                                                     for v in feature4[rows]]
        assert torch.equal(got["label"], torch.tensor(feature3[rows], dtype=torch.float32))
        assert got["feature3"].tolist() == [0.0, 0.0] and got["not_existed2"].tolist() == [0.0, 0.0]
        assert got["instance_weight"].tolist() == [1.0, 1.0]
    # The dense bytes feature is copied into the Example.
    example = tf_example_to_example(serialize(0), {"feature0": 1}, ["feature2"], "feature3")
    named = {nf.name: nf for nf in example.named_feature}
    assert list(named["feature2"].feature.bytes_list.value) == [bytes(feature2[0])] and named["feature0"].id == 1


def test_tf_example_to_example_rejects_bad_descriptions():
    with pytest.raises(ValueError, match="simultaneously"):
        tf_example_to_example(b"", {"a": 1}, ["a"], "label")
    with pytest.raises(ValueError, match="slots \\[1\\] have several"):
        tf_example_to_example(b"", {"a": 1, "b": 1}, [], "label")
    with pytest.raises(ValueError, match="should not occur"):
        tf_example_to_example(b"", {"label": 1}, [], "label")
    with pytest.raises(ValueError, match="cannot parse the tf.train.Example"):
        tf_example_to_example(b"\xff\xff", {"a": 1}, [], "label")


def test_parse_example_of_fixed_length_features():
    def example(**features):
        e = tfpb.Example()
        for name, values in features.items():
            kind = e.features.feature[name].int64_list if isinstance(values[0], int) else e.features.feature[name].float_list
            kind.value.extend(values)
        return e.SerializeToString()

    spec = {"mov": FixedLenFeature([1], torch.int64), "label": FixedLenFeature([], torch.float32),
            "ctx": FixedLenFeature([2], torch.float32, default_value=[0.5, 1.5])}
    out = parse_example([example(mov=[7], label=[4.0]), example(mov=[9], label=[2.0], ctx=[1.0, 2.0])], spec)
    assert out["mov"].tolist() == [[7], [9]] and out["mov"].dtype == torch.int64
    assert out["label"].tolist() == [4.0, 2.0] and out["ctx"].tolist() == [[0.5, 1.5], [1.0, 2.0]]
    with pytest.raises(ValueError, match="example 0 has no feature 'mov', which has no default_value"):
        parse_example([example(label=[1.0])], spec)
    with pytest.raises(ValueError, match=r"feature 'mov' of example 0 has 2 values, expected shape \[1\]"):
        parse_example([example(mov=[1, 2], label=[1.0])], spec)
    with pytest.raises(ValueError, match="is a float_list, expected a int64_list"):
        parse_example([example(mov=[1.0], label=[1.0])], spec)
    with pytest.raises(ValueError, match="record 0 is not a tf.train.Example"):
        parse_example([b"\xff\xff"], spec)
