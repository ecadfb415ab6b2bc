"""parse_examples / parse_instances / parse_example_batch over batches of messages, and a Monolith
input pipeline of messages read from a file, transformed, batched and parsed."""

import warnings

import numpy as np
import pytest
import torch

from monolith.data import (
    PBDataset,
    PBMessageDataset,
    filter_by_label,
    parse_example_batch,
    parse_examples,
    parse_instances,
    scatter_label,
)
from monolith.data.feature_utils import INVALID_LABEL
from monolith.data.pb_dataset import write_pb_file
from monolith.data.proto.example_pb2 import SHARED, Example, ExampleBatch
from monolith.data.proto.proto_parser_pb2 import Instance
from monolith.fid import make_fid, make_fid_v1


def example(i: int, name: str = "uid") -> Example:
    e = Example(label=[float(i % 2), float(i)])
    e.named_feature.add(name=name).feature.fid_v2_list.value.extend([make_fid(1, i), make_fid(1, i + 100)][: 1 + i % 2])
    e.named_feature.add(name="ctx").feature.float_list.value.extend([i, 2.0 * i])
    e.line_id.req_time = 1000 + i
    e.line_id.actions.extend(range(i))
    return e


def test_parse_examples_dense_extra_and_missing():
    batch = parse_examples(
        [example(i) for i in range(3)],
        sparse_features=["uid", "absent"],
        dense_features=["label", "ctx", "absent_dense"],
        dense_feature_shapes=[2, 2, 1],
        extra_features=["req_time", "actions"],
        extra_feature_shapes=[1, 3],
    )
    assert batch["uid"].to_lists() == [[make_fid(1, 0)], [make_fid(1, 1), make_fid(1, 101)], [make_fid(1, 2)]]
    assert batch["absent"].values().numel() == 0 and batch["absent"].lengths().tolist() == [0, 0, 0]
    assert batch["label"].tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
    assert batch["ctx"].tolist() == [[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]]
    assert batch["absent_dense"].tolist() == [0.0, 0.0, 0.0]
    assert batch["req_time"].tolist() == [1000, 1001, 1002] and batch["req_time"].dtype == torch.int64
    assert batch["actions"].tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]
    # Serialized messages parse alike.
    again = parse_examples([example(i).SerializeToString() for i in range(3)], sparse_features=["uid"])
    assert again["uid"].to_lists() == batch["uid"].to_lists()


def test_parse_examples_bad_message_and_types():
    payloads = [example(0).SerializeToString(), b"\xff\xff\xff", example(1).SerializeToString()]
    assert parse_examples(payloads, sparse_features=["uid"]).batch_size == 2
    with pytest.raises(ValueError, match="message 1 of the batch: malformed record"):
        parse_examples(payloads, sparse_features=["uid"], strict=True)
    with pytest.raises(ValueError, match="string features cannot be batched"):
        parse_examples([example(0)], dense_features=["req_id"], dense_feature_shapes=[1], dense_feature_types=["S"])
    with pytest.raises(ValueError, match="2 names but 1 shapes"):
        parse_examples([example(0)], dense_features=["a", "b"], dense_feature_shapes=[1])
    ints = parse_examples([example(3)], dense_features=["ctx"], dense_feature_shapes=[2],
                          dense_feature_types=[torch.int64])
    assert ints.batch_size == 0  # float values asked for as int64: the record is bad, skipped


def test_slot_request_on_named_features_warns():
    named = [example(i, name="uid") for i in range(2)]
    with pytest.warns(UserWarning, match=r"\['fc_slot_1'\] were asked for by slot .*\(\['uid'\]\)"):
        batch = parse_examples(named, sparse_features=["fc_slot_1"])
    assert batch["fc_slot_1"].values().numel() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slot_named = parse_examples([example(i, name="fc_slot_1") for i in range(2)], sparse_features=["fc_slot_1"])
    assert slot_named["fc_slot_1"].values().numel() == 3


def test_parse_instances_by_slot_and_name():
    inst = Instance(label=[1.0], fid=[make_fid_v1(2, 5), make_fid_v1(3, 6)])
    inst.feature.add(name="item").fid.append(make_fid(7, 8))
    inst.line_id.uid = 42
    batch = parse_instances([inst, Instance(label=[0.0])], fidv1_features=[2, 3], fidv2_features=["item"],
                            dense_features=["label"], dense_feature_shapes=[1],
                            extra_features=["uid"], extra_feature_shapes=[1])
    assert batch["slot_2"].to_lists() == [[make_fid(2, 5)], []]
    assert batch["slot_3"].to_lists() == [[make_fid(3, 6)], []]
    assert batch["item"].to_lists() == [[make_fid(7, 8)], []]
    assert batch["label"].tolist() == [1.0, 0.0] and batch["uid"].tolist() == [42, 0]


def test_parse_example_batch_shared_features():
    eb = ExampleBatch(batch_size=3)
    column = eb.named_feature_list.add(name="uid")
    for i in range(3):
        column.feature.add().fid_v2_list.value.append(make_fid(1, i))
    shared = eb.named_feature_list.add(name="ctx", type=SHARED)
    shared.feature.add().fid_v2_list.value.append(make_fid(2, 9))
    labels = eb.named_feature_list.add(name="__LABEL__")
    for i in range(3):
        labels.feature.add().float_list.value.append(float(i))
    batch = parse_example_batch(eb, sparse_features=["uid", "ctx"], dense_features=["label"], dense_feature_shapes=[1])
    assert batch["uid"].to_lists() == [[make_fid(1, i)] for i in range(3)]
    assert batch["ctx"].to_lists() == [[make_fid(2, 9)]] * 3
    assert batch["label"].tolist() == [0.0, 1.0, 2.0]


def test_message_pipeline_from_file(tmp_path):
    # Monolith's pattern: PBDataset of variants -> map/filter transforms -> batch -> parse -> prefetch.
    path = tmp_path / "part-0"
    insts = []
    for i, chnid in enumerate([0, 100, 200, 300] * 3):
        inst = Instance(label=[float(i)], fid=[make_fid_v1(2, i)])
        inst.line_id.chnid = chnid
        insts.append(inst)
    write_pb_file(path, insts, "instance")
    with open(path, "ab") as f:  # a frame whose message does not parse: skipped and counted
        f.write(bytes(8) + (3).to_bytes(8, "little") + b"\xff\xff\xff")
    messages = PBMessageDataset(str(path), "instance")
    ds = (messages
          .map(lambda m: scatter_label(m, "100:1,200:0", "instance"))
          .filter(lambda m: filter_by_label(m, [-100, -100], variant_type="instance"))
          .batch(4)
          .map(lambda ms: parse_instances(ms, fidv1_features=[2], dense_features=["label"], dense_feature_shapes=[2]))
          .prefetch(2))
    batches = list(ds)
    assert messages.num_bad_records == 1 and "cannot parse the Instance" in messages.bad_records[0][2]
    assert [b.batch_size for b in batches] == [4, 2]
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [[INVALID_LABEL, i] if i % 4 == 1 else [i, INVALID_LABEL] for i in (1, 2, 5, 6, 9, 10)]
    kept = np.concatenate([b["slot_2"].values().numpy() for b in batches])
    assert kept.tolist() == [make_fid(2, i) for i in (1, 2, 5, 6, 9, 10)]


def test_pb_dataset_slot_request_on_named_features_warns(tmp_path):
    path = tmp_path / "named.pb"
    write_pb_file(path, [example(i, name="uid") for i in range(3)], "example", has_sort_id=False)
    reader = PBDataset(str(path), 2, sparse_features=[1], has_sort_id=False, line_id_fields=())
    with pytest.warns(UserWarning, match=r"\['slot_1'\] were asked for by slot .*\(\['uid'\]\)"):
        batches = list(reader)
    assert [b["slot_1"].values().numel() for b in batches] == [0, 0]
