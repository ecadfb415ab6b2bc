"""Monolith's input transforms, with the cases and expected values of Monolith's
feature_utils_test.py and instance_utils_test.cc (ported to the fields our LineId has)."""

import numpy as np
import pytest
import torch

from monolith.data import (
    Dataset,
    add_action,
    add_label,
    feature_combine,
    filter_by_feature_value,
    filter_by_fids,
    filter_by_label,
    filter_by_value,
    label_normalization,
    label_upper_bound,
    map_id,
    multi_label_gen,
    negative_sample,
    parse_instances,
    scatter_label,
    use_field_as_label,
)
from monolith.data.feature_utils import INVALID_LABEL, reweight_replicas
from monolith.data.proto.example_pb2 import Example, FilterValues
from monolith.data.proto.proto_parser_pb2 import Instance
from monolith.fid import make_fid, make_fid_v1
from monolith.sparse import JaggedTensor

INV = INVALID_LABEL


def instance(labels=(), actions=(), chnid=None, fids=(), **line_id):
    inst = Instance(label=list(labels), fid=list(fids))
    inst.line_id.actions.extend(actions)
    inst.line_id.uid = 100
    inst.line_id.sample_rate = 0.5
    if chnid is not None:
        inst.line_id.chnid = chnid
    for name, value in line_id.items():
        if isinstance(value, list):
            getattr(inst.line_id, name).extend(value)
        else:
            setattr(inst.line_id, name, value)
    return inst


def test_filter_by_fids_is_instance_of_interest():
    # instance_utils_test.cc, IsInstanceOfInterest.Basic.
    now = 1700000000
    inst = instance(actions=[-1, 1], fids=[6436927642569553426, 6457882839108881377, 6461985998153810495],
                    req_time=now)
    filter_fids = [6436927642569553426]
    has_fids = [6436927642569553426]
    select_fids = [6436927642569553426, 6457882839108881377]
    req_time_min = 1626537600
    assert filter_by_fids(inst, req_time_min=req_time_min)
    assert filter_by_fids(inst, req_time_min=now)
    assert not filter_by_fids(inst, req_time_min=now + 1)
    assert not filter_by_fids(inst, filter_fids, req_time_min=req_time_min)
    assert filter_by_fids(inst, has_fids=has_fids, req_time_min=req_time_min)
    assert filter_by_fids(inst, select_fids=select_fids, req_time_min=req_time_min)
    assert not filter_by_fids(inst, filter_fids, has_fids, select_fids, req_time_min=req_time_min)
    assert filter_by_fids(inst, has_actions=[-1], req_time_min=req_time_min)
    assert filter_by_fids(inst, has_actions=[1, 5], req_time_min=req_time_min)
    assert filter_by_fids(inst, has_fids=has_fids, select_fids=select_fids, has_actions=[1, 5])
    assert not filter_by_fids(inst, has_actions=[7])
    assert not filter_by_fids(inst, has_fids=[1])
    # An int64 spelling of a uint64 FID is the same FID.
    assert not filter_by_fids(inst, [6436927642569553426 - (1 << 64) if 6436927642569553426 >= 1 << 63 else 6436927642569553426])


def test_filter_by_fids_select_slots_then_parse():
    # feature_utils_test.test_filter_by_fids: instance 0 lacks slot 3 and is dropped.
    insts = [instance(fids=[make_fid_v1(2, i), make_fid_v1(3, i)] if i else [make_fid_v1(2, i)]) for i in range(5)]
    kept = Dataset.from_iterable(insts).filter(lambda m: filter_by_fids(m, select_slots=[2, 3], variant_type="instance"))
    batch = next(iter(kept.batch(4).map(lambda ms: parse_instances(ms, fidv1_features=[2, 3]))))
    # Monolith returns the v1 FIDs; here every FID is v2 (the slot moved to bits 48..62).
    assert batch["slot_2"].values().tolist() == [make_fid(2, i + 1) for i in range(4)]
    assert batch["slot_3"].values().tolist() == [make_fid(3, i + 1) for i in range(4)]
    example = Example()
    example.named_feature.add(name="a").feature.fid_v2_list.value.append(make_fid(7, 1))
    example.named_feature.add(name="b").feature.fid_v1_list.value.append(make_fid_v1(9, 1))
    assert filter_by_fids(example, select_slots=[7, 9], variant_type="example")
    assert not filter_by_fids(example, select_slots=[8], variant_type="example")
    with pytest.raises(TypeError, match="variant_type 'instance' needs a Instance"):
        filter_by_fids(example)


def test_add_label_and_filter_by_label():
    # feature_utils_test.test_input_instance_output_instance_add_label, with a seeded draw.
    actions = [[1, 2, 4], [1], [3, 4], [5]]
    rng = np.random.default_rng(0)
    out = [add_label(instance(actions=a), "1,2:3:1.0;4::0.5", -1.0, 1.0, "instance", rng=rng)
           for _ in range(100) for a in actions]
    assert list(out[0].label) == [1.0, 1.0] and out[0].line_id.sample_rate == 1.0
    assert out[1].label[0] == 1.0 and out[1].label[1] in (-1.0, INV)
    assert list(out[2].label) == [-1.0, 1.0]  # task 1 negative (sample rate 1), task 2 positive
    assert out[3].label[0] == INV and out[3].label[1] in (-1.0, INV)
    kept = [m for m in out if filter_by_label(m, [-100, -100], variant_type="instance")]
    # Instances 2 and 4 of each group draw in turn for task 2; instance 4 is kept when its draw is sampled.
    draws = np.random.default_rng(0).random(200)
    assert len(kept) == 300 + int((draws[1::2] < 0.5).sum())
    assert 330 <= len(kept) <= 370  # Monolith's test: 340..360 of 400 with unseeded draws
    # A first label <= 0 becomes invalid.
    assert add_label(instance(labels=[0.0], actions=[1]), "1::1.0", 0.0, 1.0, "instance").label[0] == INV


def test_filter_by_label_equals():
    # test_input_instance_output_instance_filter_by_label_equals: labels [0, 1] kept unless filter_equal.
    assert filter_by_label(instance(labels=[0, 1]), [0, 1], filter_equal=False, variant_type="instance")
    assert not filter_by_label(instance(labels=[0, 1]), [0, 1], filter_equal=True, variant_type="instance")
    assert filter_by_label(instance(labels=[0, 2]), [0, 1], filter_equal=True, variant_type="instance")
    assert not filter_by_label(instance(labels=[5]), [0, 1], variant_type="instance")  # too few labels


def test_label_upper_bound_normalization_and_field_as_label():
    base = instance(labels=[0, 1], sample_rate=1.0)
    assert list(label_upper_bound(base, [0.5, 0.5]).label) == [0, 0.5]
    assert list(label_normalization(base, ["scale", "repow"], [0.5, 3]).label) == [0, 8]
    assert list(base.label) == [0, 1]  # the transforms return copies
    assert list(use_field_as_label(base, "sample_rate", False, 0).label) == [1, 1]
    bounded = label_upper_bound(base, [0.5, 0.5])
    assert list(use_field_as_label(bounded, "sample_rate", True, 1.1).label) == [1, 1]
    assert list(use_field_as_label(bounded, "sample_rate", True, 0.9).label) == [0, 0.5]
    np.testing.assert_allclose(
        label_normalization(instance(labels=[3.0]), ["log", "scalelog", "pow", "scale2int"], [1.0, 2.0, 2.0, 0.3]).label,
        [int((np.log(np.log(4.0) / 2 + 1) + 1) ** 2 / 0.3)], rtol=1e-6)


def test_scatter_label():
    insts = [instance(labels=l, chnid=c) for l, c in zip([[1], [2], [3], []], [0, 100, 200, 300])]
    out = [scatter_label(m, "100:3,200:1,300:4", "instance") for m in insts]
    kept = [list(m.label) for m in out if filter_by_label(m, [-100] * 5, variant_type="instance")]
    assert kept == [[INV, INV, INV, 2.0, INV], [INV, 3.0, INV, INV, INV]]


def test_multi_label_gen():
    insts = [instance(labels=l, actions=a, chnid=c, device_type=d)
             for l, a, c, d in zip([[1], [2], [3], [1]], [[1, 2], [3], [2], [1]], [0, 100, 200, 300],
                                   ["ios", "wp", "android", "ios"])]
    out = [multi_label_gen(m, {"ios": 3, "wp": 1, "android": 4, "other": 0}, head_field="device_type",
                           pos_actions=[3, 2], neg_actions=[1], action_priority="4,3,2,1,0", variant_type="instance")
           for m in insts]
    assert [list(m.label) for m in out] == [
        [INV, INV, INV, 1.0, INV],
        [INV, 1.0, INV, INV, INV],
        [INV, INV, INV, INV, 1.0],
        [INV, INV, INV, 0.0, INV],
    ]
    origin = multi_label_gen(insts[1], {100: 2}, use_origin_label=True, variant_type="instance")
    assert list(origin.label) == [INV, INV, 2.0]


def named_example(**features):
    e = Example()
    for name, value in features.items():
        f = e.named_feature.add(name=name).feature
        values = value if isinstance(value, list) else [value]
        if isinstance(values[0], str):
            f.bytes_list.value.extend(v.encode() for v in values)
        elif isinstance(values[0], float):
            f.float_list.value.extend(values)
        else:
            f.int64_list.value.extend(values)
    return e


def test_filter_by_value_and_feature_value(tmp_path):
    # test_filter_by_bytes_value / _float_value / _value_not_in / _value_all, on LineId.user_id
    # (our LineId has no did / req_id) and on Example features.
    req_ids = ["abckjhfjh", "kjhfjh", "huggfyfixyz", ""]
    by_line = [Example() for _ in req_ids]
    for e, r in zip(by_line, req_ids):
        e.line_id.user_id = r
    keep = [e.line_id.user_id for e in by_line
            if filter_by_value(e, "user_id", "endswith", ["kjhfjh", "huggfyfi"], variant_type="example")]
    assert keep == ["abckjhfjh", "kjhfjh"]
    by_feature = [named_example(req_id=r or "x", video_play_time=t) for r, t in zip(req_ids, [1.0, 2.0, 3.0, 4.0])]
    assert [i for i, e in enumerate(by_feature)
            if filter_by_feature_value(e, "req_id", "endswith", ["kjhfjh", "huggfyfi"], "bytes")] == [0, 1]
    assert [i for i, e in enumerate(by_feature)
            if filter_by_feature_value(e, "video_play_time", "gt", 2.5, "float")] == [2, 3]

    dids = ["hello", "world", "excluded", "300", "400"]
    chnids = [10, 20, 30, 40, 666]
    strings, ints = tmp_path / "strings.pb", tmp_path / "ints.pb"
    strings.write_bytes(FilterValues(bytes_list={"value": [b"hello", b"world", b"excluded"]}).SerializeToString())
    ints.write_bytes(FilterValues(int64_list={"value": [20, 30, 666]}).SerializeToString())
    examples = []
    for d, c in zip(dids, chnids):
        e = named_example(did=d, chnid=c)
        e.line_id.user_id, e.line_id.chnid = d, c
        examples.append(e)

    def kept(pred):
        return [e.line_id.user_id for e in examples if pred(e)]

    assert kept(lambda e: filter_by_value(e, "user_id", "not-in", ["hello", "world"], "example")) == ["excluded", "300", "400"]
    assert kept(lambda e: filter_by_feature_value(e, "did", "not-in", ["hello", "world"], "bytes")) == ["excluded", "300", "400"]
    assert kept(lambda e: filter_by_value(e, "user_id", "not-in", None, "example", operand_filepath=str(strings))) == ["300", "400"]
    assert kept(lambda e: filter_by_feature_value(e, "did", "not-in", None, "bytes", operand_filepath=str(strings))) == ["300", "400"]
    assert kept(lambda e: filter_by_value(e, "chnid", "in", None, "example", operand_filepath=str(ints))) == ["world", "excluded", "400"]
    assert kept(lambda e: filter_by_feature_value(e, "chnid", "in", None, "int64", operand_filepath=str(ints))) == ["world", "excluded", "400"]
    assert kept(lambda e: filter_by_value(e, "chnid", "between", [20, 40], "example")) == ["world", "excluded"]

    multi = [named_example(chnids=c) for c in [[10], [20, 30], [20, 30, 666], [40], [666]]]
    assert [i for i, e in enumerate(multi) if filter_by_feature_value(e, "chnids", "all", [20, 30, 666], "int64")] == [2]
    assert [i for i, e in enumerate(multi) if filter_by_feature_value(e, "chnids", "any", [666], "int64")] == [2, 4]
    actions = Example()
    actions.line_id.actions.extend([1, 2])
    assert filter_by_value(actions, "actions", "any", [2, 9], "example")
    assert not filter_by_value(actions, "actions", "diff", [2], "example")
    assert filter_by_value(Example(), "actions", "any", [2], "example", keep_empty=True)
    assert not filter_by_feature_value(Example(), "did", "eq", "x", "bytes")
    with pytest.raises(ValueError, match="op must be one of"):
        filter_by_value(actions, "chnid", "like", 1, "example")
    with pytest.raises(ValueError, match="LineId has no field 'did'"):
        filter_by_value(actions, "did", "eq", "x", "example")


def test_add_action():
    msg = instance(actions=[1], req_time=100, chnid=7)
    assert list(add_action(msg, "req_time", "ge", 100, 9, "instance").line_id.actions) == [1, 9]
    assert list(add_action(msg, "req_time", "gt", 100, 9, "instance").line_id.actions) == [1]
    assert list(add_action(msg, "chnid", "in", [5, 7], 3, "instance").line_id.actions) == [1, 3]
    assert list(add_action(msg, "sample_rate", "between", [0.4, 0.6], 4, "instance").line_id.actions) == [1, 4]
    assert list(add_action(msg, "actions", "eq", 1, 4, "instance").line_id.actions) == [1]  # repeated: no change
    assert list(msg.line_id.actions) == [1]


def test_negative_sample_with_positive_actions():
    # feature_utils_test.test_negative_sample_with_positive_actions, with a seeded draw.
    rng = np.random.default_rng(1)
    matched, mismatched = [], []
    for i in range(1000):
        actions = [[1, 2, 4, 5], [1, 3, 5], [5, 6], [6], [10, 11, 12]][i % 5]
        inst = instance(labels=[1 if i % 11 == 0 else 0], actions=actions)
        kept = negative_sample(inst, 0.88, 0, 0.5, "instance", "2,3,4,1,5,6", "1:1.0,2:0.0,3:1.0,4:0.5,5:0.22", rng=rng)
        if i % 11 == 0 or i % 5 == 0:
            assert kept  # a positive, or action 2 of drop rate 0
        elif i % 5 == 1:
            assert not kept  # action 3 of drop rate 1
        elif i % 5 == 2:
            matched.append(kept)
        else:
            mismatched.append(kept)
    assert 0.12 < 1 - np.mean(matched) < 0.32  # action 5: drop rate 0.22
    assert 0.82 < 1 - np.mean(mismatched) < 0.94  # no rated action: drop_rate 0.88


def test_instance_reweight():
    priority = "2,7,0,1,3,4,5,6,8,9,10,11"
    reweight = "0:0:1,1:0:1,2:3:-1,3:0:1,4:0:1,5:0:1,6:0:1,7:6:1,8:0:1,9:0:1,10:0:1,11:0:-1"

    def run(actions, pre_actions=(), label=1.0):
        msg = instance(labels=[label], actions=actions, pre_actions=list(pre_actions))
        count, out = reweight_replicas(msg, priority, reweight, "instance")
        return count, out.label[0]

    assert run([2]) == (3, -1.0)  # weight 3, relabelled -1
    assert run([7, 2]) == (3, -1.0)  # 2 outranks 7; 7's weight is not used
    assert run([7]) == (6, 1.0)
    assert run([0]) == (0, 1.0)  # weight 0 drops it
    assert run([]) == (1, 1.0)  # no actions: once, unchanged
    assert run([99]) == (1, 1.0)  # unranked, unweighted action
    assert run([2], pre_actions=[7]) == (9, -1.0)  # pre label 1 != label -1: 6 + 3
    assert run([7], pre_actions=[2]) == (0, 1.0)  # the pre-action outranks the action
    msgs = [instance(labels=[1.0], actions=a) for a in ([2], [0], [7])]
    out = list(Dataset.from_iterable(msgs).instance_reweight(priority, reweight, "instance"))
    assert [m.label[0] for m in out] == [-1.0] * 3 + [1.0] * 6


def test_feature_combine_and_map_id():
    # Monolith's kernel: the XOR of the two 64-bit words of the signed 128-bit product, in the new slot.
    rng = np.random.default_rng(3)
    a_vals = rng.integers(-(1 << 63), (1 << 63) - 1, 5, dtype=np.int64).tolist()
    b_vals = rng.integers(-(1 << 63), (1 << 63) - 1, 4, dtype=np.int64).tolist() + [-21]
    a = JaggedTensor.from_lists([a_vals[:2], a_vals[2:], []])
    b = JaggedTensor.from_lists([b_vals[:1], b_vals[1:3], b_vals[3:]])
    out = feature_combine(a, b, 9)

    def combine(x, y):
        product = x * y
        h = ((product >> 64) ^ product) & ((1 << 48) - 1)
        return (9 << 48) | h

    expected = [[combine(x, y) for x in a_vals[:2] for y in b_vals[:1]],
                [combine(x, y) for x in a_vals[2:] for y in b_vals[1:3]], []]
    assert out.to_lists() == expected
    assert map_id(torch.tensor([123, 456, 789, 912], dtype=torch.int32), {123: 0, 456: 1, 789: 2}).tolist() == [0, 1, 2, -1]
    assert map_id(torch.tensor([5, 6]), {5: 50}, default=0).tolist() == [50, 0]
