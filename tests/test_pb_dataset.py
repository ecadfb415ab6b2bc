"""Tests of monolith.data.pb_dataset / feature_list: Monolith's framed protobuf files and Kafka payloads.

Expected values are computed here from the messages the tests build, with the framing, the
Hadoop snappy layout and the FID v1 -> v2 conversion written out by hand (not through the module).
"""

from __future__ import annotations

import gzip
import logging
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cramjam
import numpy as np
import pytest
import torch

from monolith.data.feature_list import FeatureList
from monolith.data.messages import PBMessageDataset
from monolith.data.pb_dataset import (
    INVALID_LABEL,
    Framing,
    PBDataset,
    PBParser,
    frame_record,
    parse_example_batch_bytes,
    parse_example_bytes,
    parse_instance_bytes,
    write_pb_file,
)
from monolith.data.proto.example_pb2 import SHARED, Example, ExampleBatch
from monolith.data.proto.line_id_pb2 import LineId
from monolith.data.proto.proto_parser_pb2 import Instance
from monolith.sparse import Batch

U64 = 1 << 64


def v1(slot: int, sig: int) -> int:
    """A v1 FID as the uint64 Monolith writes."""
    return (slot << 54) | (sig & ((1 << 54) - 1))


def v2(slot: int, sig: int) -> int:
    return (slot << 48) | (sig & ((1 << 48) - 1))


def v1_as_v2(fid: int) -> int:
    """Monolith's convert_fid_v1_to_v2, on Python ints."""
    return ((fid >> 54) << 48) | (fid & ((1 << 48) - 1))


def signed(x: int) -> int:
    return x - U64 if x >= 1 << 63 else x


def u64(x: int) -> bytes:
    return struct.pack("<Q", x)


def collect(batches) -> tuple[list[int], dict[str, list[list[int]]], dict[str, torch.Tensor]]:
    """(batch sizes, feature -> FID rows over all batches, dense name -> concatenated tensor)."""
    batches = list(batches)
    assert all(isinstance(b, Batch) for b in batches)
    sparse: dict[str, list[list[int]]] = {}
    for b in batches:
        for name, jt in b.sparse.to_dict().items():
            sparse.setdefault(name, []).extend(jt.to_lists())
    dense = {k: torch.cat([b.dense[k] for b in batches]) for k in batches[0].dense} if batches else {}
    return [b.batch_size for b in batches], sparse, dense


# ---------------------------------------------------------------- data with known truth


def make_examples(n: int, seed: int = 0) -> tuple[list[Example], dict]:
    """``n`` Examples and what a reader must make of them (FIDs as signed int64 v2)."""
    rng = np.random.default_rng(seed)
    messages, truth = [], {"user": [], "item": [], "ctr": [], "cnt": [], "label": [], "req_time": [], "uid_line": []}
    for i in range(n):
        e = Example()
        # v1 FIDs, one of them in slot 700 (bit 63 set: negative as int64).
        uid = [v1(3, int(rng.integers(1 << 54))), v1(700, i + 1)]
        item = [v2(9, int(s)) for s in rng.integers(1 << 48, size=i % 3)]  # 0..2 FIDs, some rows empty
        f = e.named_feature.add(name="user")
        f.feature.fid_v1_list.value.extend(uid)
        f = e.named_feature.add(name="item")
        f.feature.fid_v2_list.value.extend(item)
        e.named_feature.add(name="ctr").feature.float_list.value.extend([i / 4, 1.5])
        e.named_feature.add(name="cnt").feature.int64_list.value.append(10 * i)
        e.named_feature.add(name="title").feature.bytes_list.value.append(b"dropped")
        e.label.append(float(i % 2))
        e.line_id.req_time = 1_700_000_000 + i
        e.line_id.uid = U64 - 1 - i
        messages.append(e)
        truth["user"].append([signed(v1_as_v2(x)) for x in uid])
        truth["item"].append(item)
        truth["ctr"].append([i / 4, 1.5])
        truth["cnt"].append(10 * i)
        truth["label"].append(float(i % 2))
        truth["req_time"].append(1_700_000_000 + i)
        truth["uid_line"].append(-1 - i)
    return messages, truth


def check_examples(batches, truth: dict, sizes: list[int]) -> None:
    got_sizes, sparse, dense = collect(batches)
    assert got_sizes == sizes
    assert sorted(sparse) == ["item", "user"]
    assert sparse["user"] == truth["user"] and sparse["item"] == truth["item"]
    assert dense["ctr"].dtype == torch.float32 and dense["ctr"].tolist() == truth["ctr"]
    assert dense["cnt"].dtype == torch.int64 and dense["cnt"].tolist() == truth["cnt"]
    assert dense["label"].dtype == torch.float32 and dense["label"].tolist() == truth["label"]
    assert dense["req_time"].dtype == torch.int64 and dense["req_time"].tolist() == truth["req_time"]
    assert "title" not in dense and "title" not in sparse  # bytes features are dropped


FRAMINGS = [
    {},
    {"has_sort_id": True},
    {"kafka_dump": True},
    {"kafka_dump_prefix": True},
    {"kafka_dump_prefix": True, "has_sort_id": True, "kafka_dump": True},
    {"lagrangex_header": True},
]


@pytest.mark.parametrize("compression", [None, "snappy", "gzip"])
@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: "+".join(f) or "plain")
def test_example_files_round_trip_every_framing(tmp_path: Path, framing: dict, compression: str | None) -> None:
    messages, truth = make_examples(7)
    path = tmp_path / "part-0"
    framing = {"has_sort_id": False, **framing}
    assert write_pb_file(path, messages, "example", compression=compression, **framing) == 7
    ds = PBDataset(path, 3, compression=compression, **framing)
    check_examples(ds, truth, [3, 3, 1])
    assert ds.num_bad_records == 0
    check_examples(ds, truth, [3, 3, 1])  # a second pass reads the same
    # PBMessageDataset reads the same files (its options are PBDataset's) message by message.
    assert list(PBMessageDataset(path, "example", compression=compression, **framing)) == messages


def test_both_readers_take_compression_and_max_record_bytes_alike(tmp_path: Path) -> None:
    messages, _ = make_examples(3)
    path = tmp_path / "part-0"
    write_pb_file(path, messages, "example", has_sort_id=False)
    for reader in (PBMessageDataset, lambda p, **options: PBDataset(p, 8, **options)):
        with pytest.raises(ValueError, match=r"compression must be one of .*, got 'zip'"):
            reader(path, compression="zip")
    # A record longer than max_record_bytes is a corrupt frame that ends the file.
    first = len(messages[0].SerializeToString())
    reason = f"corrupt frame: message of {first} bytes exceeds max_record_bytes={first - 1}"
    examples = PBDataset(path, 8, has_sort_id=False, max_record_bytes=first - 1)
    assert list(examples) == [] and examples.bad_records == [(str(path), 0, reason)]
    messages_read = PBMessageDataset(path, has_sort_id=False, max_record_bytes=first - 1)
    assert list(messages_read) == [] and messages_read.bad_records == [(str(path), 0, reason)]


def test_plain_file_layout_is_monolith_writer_layout(tmp_path: Path) -> None:
    messages, _ = make_examples(2)
    path = tmp_path / "part"
    write_pb_file(path, messages, "example", kafka_dump_prefix=True, has_sort_id=True, kafka_dump=True)
    serialized = [m.SerializeToString() for m in messages]
    expected = b"".join(bytes(16) + bytes(8) + bytes(8) + u64(len(s)) + s for s in serialized)
    assert path.read_bytes() == expected


def test_compression_is_inferred_from_the_file_name(tmp_path: Path) -> None:
    messages, truth = make_examples(4)
    for name in ["a.snappy", "b.gz", "c.pb"]:
        write_pb_file(tmp_path / name, messages, "example")  # with sort ids by default, as the reader
    assert (tmp_path / "b.gz").read_bytes()[:2] == b"\x1f\x8b"
    paths = [tmp_path / n for n in ["a.snappy", "b.gz", "c.pb"]]
    ds = PBDataset(paths, 4)  # has_sort_id defaults to True, as Monolith's file dataset
    check_examples(ds, {k: v * 3 for k, v in truth.items()}, [4, 4, 4])


def test_hand_built_headers_with_non_zero_words(tmp_path: Path) -> None:
    """Header words as producers other than Monolith's writer fill them."""
    messages, truth = make_examples(3)
    payloads = [m.SerializeToString() for m in messages]
    cases = {
        # lagrangex: pb type in the low byte, data source key above.
        "lagrangex": ({"lagrangex_header": True}, [u64(0xABCD_0003) + u64(len(p)) + p for p in payloads]),
        # A non-zero kafka dump prefix is the length of the sort id that follows.
        "prefix_is_sort_id_length": (
            {"kafka_dump_prefix": True, "has_sort_id": True},
            [u64(5) + b"sort" + bytes([i]) + u64(len(p)) + p for i, p in enumerate(payloads)],
        ),
        # A zero prefix is followed by one more word; then the sort id has its own length.
        "zero_prefix": (
            {"kafka_dump_prefix": True, "has_sort_id": True, "kafka_dump": True},
            [u64(0) + u64(77) + u64(3) + b"sid" + u64(99) + u64(len(p)) + p for p in payloads],
        ),
        "non_zero_prefix_without_sort_id": (
            {"kafka_dump_prefix": True},
            [u64(12345) + u64(len(p)) + p for p in payloads],
        ),
    }
    for name, (framing, frames) in cases.items():
        path = tmp_path / name
        path.write_bytes(b"".join(frames))
        ds = PBDataset(path, 8, **{"has_sort_id": False, **framing})
        check_examples(ds, truth, [3])


def hadoop_snappy(blocks: list[list[bytes]]) -> bytes:
    """Hadoop block snappy: per block its length, then its chunks, each compressed on its own."""
    out = b""
    for chunks in blocks:
        out += struct.pack(">I", sum(len(c) for c in chunks))
        for chunk in chunks:
            compressed = bytes(cramjam.snappy.compress_raw(chunk))
            out += struct.pack(">I", len(compressed)) + compressed
    return out


def test_snappy_blocks_and_chunks_split_records_anywhere(tmp_path: Path) -> None:
    messages, truth = make_examples(5)
    stream = b"".join(u64(len(s)) + s for s in (m.SerializeToString() for m in messages))
    a, b, c = len(stream) // 5, len(stream) // 2, len(stream) - 3
    path = tmp_path / "part.snappy"
    path.write_bytes(hadoop_snappy([[stream[:a], stream[a:b]], [stream[b:c]], [], [stream[c:]]]))
    check_examples(PBDataset(path, 2, has_sort_id=False), truth, [2, 2, 1])


# ---------------------------------------------------------------- ExampleBatch and Instance


def make_example_batches() -> tuple[list[ExampleBatch], list[tuple[int, int, int]]]:
    """Two ExampleBatches (3 and 2 examples) and (base, id, index in its batch) of each example."""

    def line_id(uid: int, req_time: int, actions: list[int]) -> bytes:
        return LineId(uid=uid, req_time=req_time, actions=actions, sample_rate=0.5).SerializeToString()

    frames, rows = [], []
    for size, base in [(3, 0), (2, 10)]:
        eb = ExampleBatch(batch_size=size)
        user = eb.named_feature_list.add(name="user", type=SHARED)
        user.feature.add().fid_v2_list.value.append(v2(1, base))
        item = eb.named_feature_list.add(name="item")
        old = eb.named_feature_list.add(name="old")
        label = eb.named_feature_list.add(name="__LABEL__")
        lid = eb.named_feature_list.add(name="__LINE_ID__")
        weight = eb.named_feature_list.add(name="instance_weight")
        for i in range(size):
            item.feature.add().fid_v2_list.value.extend([v2(2, base + i)] * (i + 1))
            old.feature.add().fid_v1_list.value.append(v1(5, base + i))
            label.feature.add().float_list.value.extend([1.0, 0.0] if i % 2 else [0.0])
            lid.feature.add().bytes_list.value.append(line_id(base + i, 100 + base + i, [1, 2, 3, 4][: i + 1]))
            weight.feature.add().float_list.value.append(0.0 if i == 0 else 2.0)
            rows.append((base, base + i, i))
        frames.append(eb)
    return frames, rows


def test_example_batch_shared_labels_line_ids_and_weights(tmp_path: Path) -> None:
    frames, rows = make_example_batches()
    path = tmp_path / "eb"
    write_pb_file(path, frames, "example_batch")
    ds = PBDataset(
        path,
        4,
        variant_type="examplebatch",
        dense_features={"label": 2, "instance_weight": 1},
        line_id_fields={"uid": 1, "req_time": 1, "actions": 3, "sample_rate": 1},
    )
    sizes, sparse, dense = collect(ds)
    assert sizes == [4, 1]
    assert sparse["user"] == [[v2(1, base)] for base, _, _ in rows]
    assert sparse["item"] == [[v2(2, x)] * (i + 1) for _, x, i in rows]
    assert sparse["old"] == [[v1_as_v2(v1(5, x))] for _, x, _ in rows]
    assert dense["label"].shape == (5, 2)
    assert dense["label"].tolist() == [[1.0, 0.0] if i % 2 else [0.0, INVALID_LABEL] for _, _, i in rows]
    assert dense["instance_weight"].tolist() == [1.0 if i == 0 else 2.0 for _, _, i in rows]
    assert dense["uid"].tolist() == [x for _, x, _ in rows]
    assert dense["req_time"].tolist() == [100 + x for _, x, _ in rows]
    assert dense["actions"].tolist() == [([1, 2, 3, 4][: i + 1] + [0, 0])[:3] for _, _, i in rows]
    assert dense["sample_rate"].dtype == torch.float32 and dense["sample_rate"].tolist() == [0.5] * 5


def make_instances() -> list[Instance]:
    out = []
    for i in range(4):
        ins = Instance()
        ins.fid.extend([v1(1, 100 + i), v1(2, 200 + i), v1(1, 300 + i)] + ([v1(900, i)] if i % 2 else []))
        ins.label.extend([float(i), float(-i)])
        ins.line_id.req_time = 50 + i
        ins.line_id.actions.extend([7] * i)
        ins.value.extend([0.25 * i, 1.0])
        ctx = ins.feature.add(name="f_ctx")
        ctx.fid.extend([v2(4000, i), v2(4000, i + 1)])
        ins.feature.add(name="f_age").int64_value.append(20 + i)
        ins.feature.add(name="f_emb").float_value.extend([i, i + 0.5, i + 1])
        if i != 2:
            ins.instance_weight = 3.0
        out.append(ins)
    return out


def test_instance_slots_are_grouped_and_named_slot_n_without_a_feature_list(tmp_path: Path) -> None:
    instances = make_instances()
    path = tmp_path / "ins"
    write_pb_file(path, instances, "instance", has_sort_id=True)
    ds = PBDataset(path, 3, variant_type="instance", dense_features={"instance_weight": 1, "value": 2})
    sizes, sparse, dense = collect(ds)
    assert sizes == [3, 1]
    assert sorted(sparse) == ["f_ctx", "slot_1", "slot_2", "slot_900"]  # taken from the data, in name order
    assert sparse["slot_1"] == [[v1_as_v2(v1(1, 100 + i)), v1_as_v2(v1(1, 300 + i))] for i in range(4)]
    assert sparse["slot_2"] == [[v1_as_v2(v1(2, 200 + i))] for i in range(4)]
    assert sparse["slot_900"] == [[v1_as_v2(v1(900, i))] if i % 2 else [] for i in range(4)]
    assert sparse["f_ctx"] == [[v2(4000, i), v2(4000, i + 1)] for i in range(4)]
    assert dense["label"].tolist() == [float(i) for i in range(4)]
    assert dense["value"].tolist() == [[0.25 * i, 1.0] for i in range(4)]
    assert dense["instance_weight"].tolist() == [3.0, 3.0, 1.0, 3.0]
    assert dense["req_time"].tolist() == [50, 51, 52, 53]
    assert "f_age" not in dense  # dense features were given, so only those are read


FEATURE_LIST = """\
# users and items
column_name : uid, age, ctx
feed_name=uid; shared=true; feature_id=11
cache_column: uid
feature_name=f_user; depend=uid; method=DirectString; slot=1; feature_id=21
feature_name=fc_item-fc_cate; depend=item, cate; method=Combine; slot=2; args=1,4,0; feature_version=1
feature_name=f_rare; depend=rare; method=DirectInt32; slot=900; shared=false; need_raw=TRUE; owner=ads
feature_name=f_ctx; depend=ctx; method=Tags; slot=4000; feature_version=2; input_optional=true,false
feature_name=f_age; depend=age; method=DirectInt64; slot=5; feature_group=a, "b"
feature_name=f_emb; depend=emb; method=Embedding; slot=6
feature_name=f_same_slot; depend=x; method=DirectString; slot=4000; feature_version=2
"""


@pytest.fixture
def feature_list_path(tmp_path: Path) -> Path:
    path = tmp_path / "feature_list.conf"
    path.write_text(FEATURE_LIST)
    return path


def test_feature_list_conf_parsing(feature_list_path: Path) -> None:
    fl = FeatureList.parse(feature_list_path)
    assert fl.column_names == {"uid", "age", "ctx"}
    assert fl.feeds["uid"].shared is True and fl.feeds["uid"].feature_id == 11
    assert fl.caches["cache_column"].cache_column == "uid"
    assert len(fl) == 7 and [f.feature_name for f in fl][:2] == ["f_user", "fc_item-fc_cate"]
    user = fl["f_user"]
    assert (user.slot, user.method, user.depend, user.feature_id) == (1, "DirectString", ["uid"], 21)
    assert user.shared is False
    combo = fl["fc_item-fc_cate"]
    assert combo.depend == ["item", "cate"] and combo.args == ["1", "4", "0"] and combo.feature_version == 1
    rare = fl["f_rare"]
    assert rare.need_raw is True and rare.shared is False and rare.extra == {"owner": "ads"}
    assert fl["f_ctx"].input_optional == [True, False] and fl["f_age"].feature_group == ["a", "b"]
    # Monolith's lookups: prefixes f_ / fc_ (per "-" part), slots.
    assert fl["user"] is user and fl["item-cate"] is combo and "ctx" in fl and "nope" not in fl
    assert fl[1] is user and 900 in fl and 3 not in fl
    assert [f.feature_name for f in fl.get_with_slot(4000)] == ["f_ctx", "f_same_slot"]
    assert fl.name_of_slot(900) == "f_rare" and fl.name_of_slot(4000) is None
    assert fl.name_of_slot(4000, fid_version=2) == "f_ctx"
    assert fl.slot_of("age") == 5 and fl.slot_of("slot_77") == 77 and fl.slot_of("fc_slot_8") == 8
    assert fl.slot_of("unknown") is None
    with pytest.raises(KeyError, match="no feature 'nope'"):
        fl["nope"]


def test_feature_list_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("feature_name=f_a; slot=1\n\nfeature_name=f_b; slot=two\n")
    with pytest.raises(ValueError, match=rf"{path}, line 3: malformed .*f_b"):
        FeatureList.parse(path)
    with pytest.raises(FileNotFoundError, match="missing.conf"):
        FeatureList.parse(tmp_path / "missing.conf")


def test_instance_slots_named_by_the_feature_list(tmp_path: Path, feature_list_path: Path) -> None:
    path = tmp_path / "ins"
    write_pb_file(path, make_instances(), "instance", has_sort_id=True)
    ds = PBDataset(
        path,
        4,
        variant_type="instance",
        feature_list=feature_list_path,
        sparse_features=["user", 2, "f_rare", "f_ctx"],  # by short name, slot and full name
        dense_features={"label": 3, "f_age": 1, "f_emb": 3},
        dense_dtypes={"f_age": np.int64},
        line_id_fields={"req_time": 1, "actions": 2},
    )
    sizes, sparse, dense = collect(ds)
    assert sizes == [4]
    assert list(sparse) == ["user", "fc_item-fc_cate", "f_rare", "f_ctx"]
    assert sparse["user"] == [[v1_as_v2(v1(1, 100 + i)), v1_as_v2(v1(1, 300 + i))] for i in range(4)]
    assert sparse["fc_item-fc_cate"] == [[v1_as_v2(v1(2, 200 + i))] for i in range(4)]
    assert sparse["f_rare"] == [[v1_as_v2(v1(900, i))] if i % 2 else [] for i in range(4)]
    assert sparse["f_ctx"] == [[v2(4000, i), v2(4000, i + 1)] for i in range(4)]
    assert dense["label"].tolist() == [[float(i), float(-i), INVALID_LABEL] for i in range(4)]
    assert dense["f_age"].dtype == torch.int64 and dense["f_age"].tolist() == [20, 21, 22, 23]
    assert dense["f_emb"].tolist() == [[i, i + 0.5, i + 1] for i in range(4)]
    assert dense["actions"].tolist() == [[0, 0], [7, 0], [7, 7], [7, 7]]
    assert ds.num_bad_records == 0


def test_requested_features_are_checked_against_the_feature_list(feature_list_path: Path) -> None:
    with pytest.raises(ValueError, match="'nope' is not in the feature list"):
        PBParser("example", feature_list=feature_list_path, sparse_features=["nope"])
    with pytest.raises(ValueError, match="no feature of the feature list has slot 3"):
        PBParser("instance", feature_list=feature_list_path, sparse_features=[3])
    with pytest.raises(ValueError, match="used twice.*req_time"):
        PBParser("example", sparse_features=["req_time"])
    with pytest.raises(ValueError, match="LineId field 'user_id' holds strings"):
        PBParser("example", line_id_fields=["user_id"])
    with pytest.raises(ValueError, match="LineId has no field 'nope'"):
        PBParser("example", line_id_fields=["nope"])
    with pytest.raises(ValueError, match="'req_time' needs a width 1"):
        PBParser("example", line_id_fields={"req_time": 2})
    with pytest.raises(ValueError, match="variant_type"):
        PBParser("tfrecord")
    with pytest.raises(ValueError, match="float32 or int64"):
        PBParser("example", dense_features={"x": 1}, dense_dtypes={"x": np.float16})


@pytest.mark.parametrize("compression", [None, "snappy"])
@pytest.mark.parametrize("framing", FRAMINGS, ids=lambda f: "+".join(f) or "plain")
@pytest.mark.parametrize("variant_type", ["example_batch", "instance"])
def test_example_batches_and_instances_read_alike_under_every_framing(
    tmp_path: Path, variant_type: str, framing: dict, compression: str | None
) -> None:
    """The dedicated tests above check the content; here each framing must give the same batches."""
    messages = make_example_batches()[0] if variant_type == "example_batch" else make_instances()
    plain, framed = tmp_path / "plain", tmp_path / "framed"
    write_pb_file(plain, messages, variant_type)
    framing = {"has_sort_id": False, **framing}
    write_pb_file(framed, messages, variant_type, compression=compression, **framing)
    reference = collect(PBDataset(plain, 2, variant_type=variant_type))
    ds = PBDataset(framed, 2, variant_type=variant_type, compression=compression, **framing)
    got = collect(ds)
    assert got[0] == reference[0] == [2, 2] + ([1] if variant_type == "example_batch" else [])
    assert got[1] == reference[1] and got[1]
    assert got[2].keys() == reference[2].keys() and all(torch.equal(got[2][k], reference[2][k]) for k in got[2])
    assert ds.num_bad_records == 0


# ---------------------------------------------------------------- bad input


def frames_with_offsets(payloads: list[bytes], header: bytes = b"") -> tuple[bytes, list[int]]:
    data, offsets = b"", []
    for p in payloads:
        offsets.append(len(data))
        data += header + u64(len(p)) + p
    return data, offsets


def test_corrupt_message_is_skipped_or_raised_with_file_and_offset(tmp_path: Path) -> None:
    messages, truth = make_examples(4)
    payloads = [m.SerializeToString() for m in messages]
    payloads.insert(2, b"\xff\xff\xff\xff")  # not a protobuf message
    data, offsets = frames_with_offsets(payloads, header=u64(0))  # empty sort ids
    path = tmp_path / "corrupt"
    path.write_bytes(data)
    ds = PBDataset(path, 8)
    check_examples(ds, truth, [4])
    assert ds.num_bad_records == 1
    (file, offset, reason), = ds.bad_records
    assert (file, offset) == (str(path), offsets[2]) and "cannot parse the Example" in reason
    with pytest.raises(ValueError, match=rf"{path}, byte offset {offsets[2]}: malformed record: cannot parse"):
        list(PBDataset(path, 8, strict=True))


def test_truncated_file_keeps_the_complete_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    messages, truth = make_examples(5)
    data, offsets = frames_with_offsets([m.SerializeToString() for m in messages])
    for cut in [offsets[4] + 3, offsets[4] + 8 + 2]:  # inside the length word / inside the message
        path = tmp_path / f"cut{cut}"
        path.write_bytes(data[:cut])
        ds = PBDataset(path, 2, has_sort_id=False)
        with caplog.at_level(logging.WARNING, logger="monolith.data"):
            check_examples(ds, {k: v[:4] for k, v in truth.items()}, [2, 2])
        (_, offset, reason), = ds.bad_records
        assert offset == offsets[4] and reason.startswith("truncated record")
        assert f"{path}, byte offset {offsets[4]}" in caplog.text
        with pytest.raises(ValueError, match=rf"{path}, byte offset {offsets[4]}: malformed record: truncated"):
            list(PBDataset(path, 2, has_sort_id=False, strict=True))


def test_absurd_length_is_a_corrupt_frame_that_ends_the_file(tmp_path: Path) -> None:
    messages, truth = make_examples(3)
    data, offsets = frames_with_offsets([m.SerializeToString() for m in messages])
    bad_at = offsets[1]
    path = tmp_path / "garbled"
    path.write_bytes(data[:bad_at] + u64(0xFEFEFEFE) + data[bad_at + 8 :])
    ds = PBDataset(path, 8, has_sort_id=False, sparse_features=["user", "item"], dense_features={"ctr": 2, "cnt": 1})
    sizes, sparse, _ = collect(ds)
    assert sizes == [1] and sparse["user"] == truth["user"][:1]
    assert [(o, r.split(":")[0]) for _, o, r in ds.bad_records] == [(bad_at, "corrupt frame")]


def test_corrupt_snappy_and_gzip(tmp_path: Path) -> None:
    messages, truth = make_examples(3)
    stream, _ = frames_with_offsets([m.SerializeToString() for m in messages])
    snappy = tmp_path / "bad.snappy"
    good_block = hadoop_snappy([[stream[:40]]])
    snappy.write_bytes(good_block + struct.pack(">II", 100, 10) + b"\x00garbage!!")
    ds = PBDataset(snappy, 8, has_sort_id=False)
    assert collect(ds)[0] == []
    (_, offset, reason), = ds.bad_records
    assert offset == 0 and "corrupt compressed data" in reason and "snappy" in reason

    gz = tmp_path / "bad.gz"
    gz.write_bytes(gzip.compress(stream)[:-30])  # the gzip stream is cut
    ds = PBDataset(gz, 8, has_sort_id=False)
    list(ds)
    assert ds.num_bad_records == 1 and "corrupt compressed data" in ds.bad_records[0][2]


def test_snappy_chunk_claiming_more_than_it_can_hold_is_corrupt_before_it_is_allocated(tmp_path: Path) -> None:
    """A 10-byte chunk whose length header says 4 GiB: cramjam would allocate it, and abort if it cannot."""
    bomb = b"\xff\xff\xff\xff\x0f" + bytes(5)  # raw snappy: varint length 2**32 - 1, then junk
    for block in (0xFFFFFFFF, 100):  # the block's own length allows it, or not
        path = tmp_path / f"bomb{block}.snappy"
        path.write_bytes(struct.pack(">II", block, len(bomb)) + bomb)
        ds = PBDataset(path, 4)
        assert collect(ds)[0] == []
        (_, offset, reason), = ds.bad_records
        assert offset == 0 and "snappy chunk at byte 4 of the file claims 4294967295 uncompressed bytes" in reason
        with pytest.raises(ValueError, match=rf"{path}, byte offset 0: malformed record: corrupt compressed data"):
            list(PBDataset(path, 4, strict=True))

    # Where memory is limited, the allocation fails, and a failed Rust allocation aborts the process.
    script = f"""
import resource
from monolith.data.pb_dataset import PBDataset
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
ds = PBDataset({str(path)!r}, 4)
print(list(ds), ds.num_bad_records)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] 1"


def test_example_batch_sizes_are_checked_before_examples_are_made() -> None:
    def parse(eb: ExampleBatch) -> tuple[Batch, int]:
        parser = PBParser("example_batch", sparse_features=["u"])
        tracemalloc.start()
        try:
            batch = parser.parse([eb.SerializeToString()], has_header=False)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return batch, peak

    # A few bytes claiming 200000 examples: rejected without making them (about 40 MB before).
    huge = ExampleBatch(batch_size=200_000)
    huge.named_feature_list.add(name="u").feature.add().fid_v2_list.value.append(1)
    batch, peak = parse(huge)
    assert batch.batch_size == 0 and peak < 1 << 20
    with pytest.raises(ValueError, match="feature 'u' has 1 values for batch_size 200000"):
        PBParser("example_batch").parse([huge.SerializeToString()], has_header=False, strict=True)

    # Shared features only: nothing backs batch_size, so it may not exceed the message's bytes.
    shared = ExampleBatch(batch_size=200_000)
    shared.named_feature_list.add(name="u", type=SHARED).feature.add().fid_v2_list.value.append(1)
    batch, peak = parse(shared)
    assert batch.batch_size == 0 and peak < 1 << 20
    with pytest.raises(ValueError, match=r"batch_size 200000 exceeds the \d+ bytes of an ExampleBatch without"):
        PBParser("example_batch").parse([shared.SerializeToString()], has_header=False, strict=True)
    shared.batch_size = 3
    batch, _ = parse(shared)
    assert batch["u"].to_lists() == [[1], [1], [1]]

    negative = ExampleBatch(batch_size=-5)
    with pytest.raises(ValueError, match="batch_size -5 is negative"):
        PBParser("example_batch").parse([negative.SerializeToString()], has_header=False, strict=True)


def test_length_beyond_the_end_of_the_data_is_a_truncated_frame_not_an_allocation(tmp_path: Path) -> None:
    """A length word claiming more than any memory: read(n) would allocate n bytes before reading."""
    messages, truth = make_examples(2)
    data, offsets = frames_with_offsets([m.SerializeToString() for m in messages])
    path = tmp_path / "cut"
    path.write_bytes(data + u64(1 << 60) + b"only a few bytes")
    limit = {"max_record_bytes": 1 << 62}
    ds = PBDataset(path, 8, has_sort_id=False, **limit)
    check_examples(ds, truth, [2])
    reason = f"truncated record: the message needs {1 << 60} bytes, the stream has 16"
    assert ds.bad_records == [(str(path), len(data), reason)]
    with pytest.raises(ValueError, match=rf"{path}, byte offset {len(data)}: malformed record: truncated record"):
        list(PBDataset(path, 8, has_sort_id=False, strict=True, **limit))

    # Kafka payloads are framed streams too.
    payloads = [frame_record(messages[0].SerializeToString()), u64(1 << 60) + b"xx"]
    check_examples([parse_example_bytes(payloads, **limit)], {k: v[:1] for k, v in truth.items()}, [1])
    with pytest.raises(ValueError, match="payload 1, byte offset 0: malformed record: truncated record"):
        parse_example_bytes(payloads, strict=True, **limit)


def test_features_outside_the_feature_list_are_dropped_not_their_examples(
    tmp_path: Path, feature_list_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As Monolith's ExampleBatchToExample: the name mapper's unknown features are left out, the example stays."""

    def example(sig: int, *unknown: str) -> Example:
        e = Example()
        e.named_feature.add(name="f_user").feature.fid_v2_list.value.append(v2(1, sig))
        for name in unknown:
            e.named_feature.add(name=name).feature.fid_v2_list.value.append(v2(7, sig))
        e.label.append(float(sig))
        return e

    path = tmp_path / "ex"
    write_pb_file(path, [example(1), example(2, "f_unknown"), example(3, "f_unknown", "f_other")], "example")
    for strict in (False, True):
        ds = PBDataset(path, 8, feature_list=feature_list_path, strict=strict)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="monolith.data"):
            for _ in range(2):  # counted per pass, warned about once
                sizes, sparse, dense = collect(ds)
                assert sizes == [3] and sorted(sparse) == ["f_user"]
                assert sparse["f_user"] == [[v2(1, 1)], [v2(1, 2)], [v2(1, 3)]]
                assert dense["label"].tolist() == [1, 2, 3]
                assert ds.num_bad_records == 0 and ds.num_unknown_features == 3
        assert caplog.text.count("feature 'f_unknown' is not read: it is not in the feature list") == 1
        assert caplog.text.count("feature 'f_other' is not read") == 1

    # An ExampleBatch loses the column, for each of its examples.
    eb = ExampleBatch(batch_size=2)
    user, unknown = eb.named_feature_list.add(name="f_user"), eb.named_feature_list.add(name="f_unknown")
    for i in range(2):
        user.feature.add().fid_v2_list.value.append(v2(1, i))
        unknown.feature.add().fid_v2_list.value.append(v2(7, i))
    shared = eb.named_feature_list.add(name="f_shared_unknown", type=SHARED)
    shared.feature.add().fid_v2_list.value.append(v2(8, 0))
    parser = PBParser("example_batch", feature_list=feature_list_path)
    batch = parser.parse([eb.SerializeToString()], has_header=False, strict=True)
    assert batch.keys() == ["f_user", "label", "req_time"] and batch["f_user"].to_lists() == [[v2(1, 0)], [v2(1, 1)]]
    assert parser.num_unknown_features == 4


def test_features_of_the_wrong_kind_or_width_and_bad_example_batches(tmp_path: Path) -> None:
    def example(**features) -> Example:
        e = Example()
        for name, (kind, values) in features.items():
            getattr(e.named_feature.add(name=name).feature, kind).value.extend(values)
        return e

    path = tmp_path / "mixed"
    write_pb_file(
        path,
        [
            example(u=("fid_v2_list", [1]), d=("float_list", [1.0, 2.0])),
            example(u=("fid_v2_list", [2]), d=("float_list", [1.0])),  # wrong width
            example(u=("float_list", [2.0])),  # floats for a FID feature
            example(u=("fid_v2_list", [3])),  # no "d": zeros
        ],
        "example",
        has_sort_id=True,
    )
    ds = PBDataset(path, 8, sparse_features=["u"], dense_features={"d": 2})
    _, sparse, dense = collect(ds)
    assert sparse["u"] == [[1], [3]] and dense["d"].tolist() == [[1.0, 2.0], [0.0, 0.0]]
    assert [r for _, _, r in ds.bad_records] == [
        "feature 'd' has 1 values, expected 2",
        "feature 'u' holds float values, expected FIDs",
    ]

    eb = ExampleBatch(batch_size=3)
    eb.named_feature_list.add(name="u").feature.add().fid_v2_list.value.append(1)  # 1 value for 3 examples
    good = ExampleBatch(batch_size=1)
    good.named_feature_list.add(name="u").feature.add().fid_v2_list.value.append(7)
    path = tmp_path / "eb"
    write_pb_file(path, [eb, good], "example_batch", has_sort_id=True)
    ds = PBDataset(path, 8, variant_type="example_batch")
    _, sparse, _ = collect(ds)
    assert sparse["u"] == [[7]]
    assert [r for _, _, r in ds.bad_records] == ["feature 'u' has 1 values for batch_size 3"]


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pb"):
        PBDataset(tmp_path / "nope.pb", 4)
    with pytest.raises(ValueError, match="at least one file"):
        PBDataset([], 4)
    (tmp_path / "x").write_bytes(b"")
    with pytest.raises(ValueError, match="compression"):
        PBDataset(tmp_path / "x", 4, compression="zstd")
    assert list(PBDataset(tmp_path / "x", 4)) == []


def test_late_features_of_a_data_derived_selection_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    messages, truth = make_examples(4)
    late = Example()
    late.CopyFrom(messages[0])
    late.named_feature.add(name="late").feature.fid_v2_list.value.append(5)
    path = tmp_path / "late"
    write_pb_file(path, [*messages, late], "example", has_sort_id=True)
    with caplog.at_level(logging.WARNING, logger="monolith.data"):
        _, sparse, _ = collect(PBDataset(path, 8, block_records=2))
    assert sorted(sparse) == ["item", "user"] and sparse["user"] == truth["user"] + truth["user"][:1]
    assert "feature 'late' is not read" in caplog.text


# ---------------------------------------------------------------- Kafka payloads


def test_kafka_payloads_bare_and_framed() -> None:
    messages, truth = make_examples(5)
    serialized = [m.SerializeToString() for m in messages]
    options = {"line_id_fields": ["req_time", "uid"]}

    bare = parse_example_bytes(serialized, has_header=False, **options)
    check_examples([bare], truth, [5])
    assert bare.dense["uid"].tolist() == truth["uid_line"]

    # Monolith's KafkaDataset: each payload a framed stream, which may hold several records.
    framed = [frame_record(serialized[0]), frame_record(serialized[1]) + frame_record(serialized[2])]
    framed += [u64(len(s)) + s for s in serialized[3:]]
    check_examples([parse_example_bytes(framed, **options)], truth, [5])

    with_sort_id = [frame_record(s, Framing(kafka_dump_prefix=True, has_sort_id=True)) for s in serialized]
    batch = parse_example_bytes(with_sort_id, kafka_dump_prefix=True, has_sort_id=True)
    check_examples([batch], truth, [5])


def test_kafka_bad_payloads_are_skipped_or_raised(caplog: pytest.LogCaptureFixture) -> None:
    messages, truth = make_examples(3)
    payloads = [frame_record(m.SerializeToString()) for m in messages]
    payloads.insert(1, frame_record(b"\xff\xff"))
    payloads.append(frame_record(b"cut in the middle")[:-4])
    with caplog.at_level(logging.WARNING, logger="monolith.data"):
        check_examples([parse_example_bytes(payloads)], truth, [3])
    assert "payload 1, byte offset 0: cannot parse the Example" in caplog.text
    assert "payload 4, byte offset 0: truncated record" in caplog.text
    with pytest.raises(ValueError, match="payload 1, byte offset 0: malformed record"):
        parse_example_bytes(payloads, strict=True)


def test_kafka_instances_example_batches_and_a_stream_parser(feature_list_path: Path) -> None:
    instances = make_instances()
    serialized = [i.SerializeToString() for i in instances]
    batch = parse_instance_bytes(serialized, has_header=False, feature_list=feature_list_path)
    assert sorted(batch.sparse.keys()) == ["f_ctx", "f_rare", "f_user", "fc_item-fc_cate"]
    assert batch["f_user"].to_lists()[2] == [v1_as_v2(v1(1, 102)), v1_as_v2(v1(1, 302))]
    both = Instance(fid=[v1(1, 5)])  # slot 1 is f_user, which also comes as a named v2 feature
    both.feature.add(name="f_user").fid.append(v2(1, 6))
    batch = parse_instance_bytes([both.SerializeToString()], has_header=False, feature_list=feature_list_path)
    assert batch["f_user"].to_lists() == [[v1_as_v2(v1(1, 5)), v2(1, 6)]]
    # Slot 3 has no feature in the list: those FIDs are left out, the instance stays.
    stray = Instance(fid=[v1(3, 1), v1(1, 7)])
    stray.feature.add(name="f_unknown").fid.append(v2(3, 2))
    parser = PBParser("instance", feature_list=feature_list_path, sparse_features=["f_user"])
    batch = parser.parse([serialized[0], stray.SerializeToString()], has_header=False, strict=True)
    assert batch["f_user"].to_lists() == [[v1_as_v2(v1(1, 100)), v1_as_v2(v1(1, 300))], [v1_as_v2(v1(1, 7))]]
    assert parser.num_unknown_features == 2

    eb = ExampleBatch(batch_size=2)
    eb.named_feature_list.add(name="u").feature.add().fid_v2_list.value.append(1)
    eb.named_feature_list[0].feature.add().fid_v2_list.value.extend([2, 3])
    batch = parse_example_batch_bytes([frame_record(eb.SerializeToString())] * 2)
    assert batch["u"].to_lists() == [[1], [2, 3], [1], [2, 3]]

    # A parser keeps the features it took from its first payloads: every batch has the same keys.
    parser = PBParser("example_batch")
    assert parser.parse([eb.SerializeToString()], has_header=False).keys() == ["u", "label", "req_time"]
    other = ExampleBatch(batch_size=1)
    other.named_feature_list.add(name="v").feature.add().fid_v2_list.value.append(9)
    again = parser.parse([other.SerializeToString()], has_header=False)
    assert again.keys() == ["u", "label", "req_time"] and again["u"].to_lists() == [[]]
    empty = parser.parse([], has_header=False)
    assert empty.batch_size == 0 and empty.keys() == ["u", "label", "req_time"]


# ---------------------------------------------------------------- a framing that does not fit


WRONG_FRAMINGS = [
    # (written with, read with, the option the error names)
    ({"has_sort_id": False}, {"has_sort_id": True}, "has_sort_id=False"),
    ({"has_sort_id": True}, {"has_sort_id": False}, "has_sort_id=True"),
    ({"has_sort_id": False, "kafka_dump": True}, {"has_sort_id": False}, "kafka_dump=True"),
    ({"has_sort_id": False}, {"has_sort_id": False, "kafka_dump": True}, "kafka_dump=False"),
    ({"has_sort_id": False}, {"has_sort_id": False, "lagrangex_header": True}, "lagrangex_header=False"),
    ({"has_sort_id": True}, {"has_sort_id": True, "kafka_dump_prefix": True}, "kafka_dump_prefix=False"),
    ({"has_sort_id": False, "kafka_dump_prefix": True}, {"has_sort_id": False}, "kafka_dump_prefix=True"),
]


@pytest.mark.parametrize("variant", ["example", "example_batch", "instance"])
@pytest.mark.parametrize("written, read, option", WRONG_FRAMINGS)
def test_a_file_read_with_the_wrong_framing_stops_naming_the_file_and_the_option(
    tmp_path: Path, written: dict, read: dict, option: str, variant: str
) -> None:
    # Without the check, a file without sort ids read with has_sort_id=True lost every other
    # record with 0 bad records, and header words read as lengths made empty examples.
    messages = {"example": make_examples(6)[0], "example_batch": make_example_batches()[0], "instance": make_instances()}
    path = tmp_path / "part-0.snappy"
    write_pb_file(path, messages[variant], variant, **written)
    with pytest.raises(ValueError) as error:
        list(PBDataset(path, 4, variant_type=variant, **read))
    assert str(error.value).startswith(f"{path}: the records are not framed as the reader's options say")
    assert option in str(error.value) and "change that option" in str(error.value)
    assert len(list(PBDataset(path, 4, variant_type=variant, **written))) > 0


def test_sort_ids_that_are_strings_are_not_taken_for_records(tmp_path: Path) -> None:
    # Monolith's own tests write the user id as the sort id; such files read as they are.
    messages, truth = make_examples(20)
    frames = [u64(len(sid)) + sid + u64(len(s)) + s
              for sid, s in ((str(10**12 + 7 * i).encode(), m.SerializeToString()) for i, m in enumerate(messages))]
    path = tmp_path / "with-sort-ids"
    path.write_bytes(b"".join(frames))
    check_examples(PBDataset(path, 20), truth, [20])
