"""monolith.data.Dataset: tf.data's operations with tf.data's results, and the readers chaining."""

import threading

import numpy as np
import pytest
import torch

from monolith.data import AUTOTUNE, CsvReader, Dataset, PBDataset, TensorSpec, advanced_parse, to_ragged
from monolith.data.pb_dataset import write_pb_file
from monolith.data.proto.example_pb2 import Example
from monolith.sparse import JaggedTensor


def ints(ds):
    return [int(x) for x in ds]


def test_from_tensor_slices_and_chain_ops():
    ds = Dataset.from_tensor_slices(torch.arange(10))
    assert ints(ds.take(3)) == [0, 1, 2]
    assert ints(ds.skip(7)) == [7, 8, 9]
    assert ints(ds.take(-1)) == list(range(10))
    assert ints(ds.skip(-1)) == []
    assert ints(ds.shard(3, 1)) == [1, 4, 7]
    assert ints(ds.filter(lambda x: x % 2 == 0).map(lambda x: x * 10)) == [0, 20, 40, 60, 80]
    assert ints(ds.take(2).repeat(3)) == [0, 1] * 3
    assert ints(ds.take(2).repeat().take(5)) == [0, 1, 0, 1, 0]
    # A dataset is re-iterable: each pass starts over.
    assert ints(ds.take(2)) == ints(ds.take(2))


def test_from_tensor_slices_dicts_and_mismatch():
    ds = Dataset.from_tensor_slices({"a": np.arange(3), "b": torch.tensor([[1.0, 2.0]] * 3)})
    rows = list(ds)
    assert [int(r["a"]) for r in rows] == [0, 1, 2] and tuple(rows[0]["b"].shape) == (2,)
    with pytest.raises(ValueError, match="one first dimension"):
        Dataset.from_tensor_slices({"a": np.arange(3), "b": np.arange(2)})


def test_batch_drop_remainder_and_structures():
    ds = Dataset.from_tensor_slices(torch.arange(7))
    shapes = [tuple(b.shape) for b in ds.batch(3)]
    assert shapes == [(3,), (3,), (1,)]
    assert [tuple(b.shape) for b in ds.batch(3, drop_remainder=True)] == [(3,), (3,)]
    pairs = Dataset.from_generator(lambda: ((i, b"x%d" % i) for i in range(4))).batch(2)
    first = next(iter(pairs))
    assert torch.equal(first[0], torch.tensor([0, 1])) and first[1] == [b"x0", b"x1"]
    assert ints(ds.batch(3).unbatch()) == list(range(7))


def test_from_generator_signature_checked():
    spec = {"uid": TensorSpec([1], torch.int64), "label": TensorSpec([], torch.float32)}
    ds = Dataset.from_generator(lambda: ({"uid": [i], "label": 1.0} for i in range(3)), output_signature=spec)
    got = list(ds)
    assert got[2]["uid"].dtype == torch.int64 and got[2]["label"].dtype == torch.float32
    bad = Dataset.from_generator(lambda: iter([{"uid": [1, 2], "label": 0.0}]), output_signature=spec)
    with pytest.raises(ValueError, match=r"element 0\['uid'\] has shape \(2,\), expected \(1,\)"):
        list(bad)


def test_to_ragged_tutorial_pipeline():
    # Monolith's tutorial: shard, batch(drop_remainder), map(to_ragged).
    rows = [{"mov": [10 + i], "uid": [20 + i], "label": float(i % 2)} for i in range(10)]
    spec = {"mov": TensorSpec([1], torch.int64), "uid": TensorSpec([1], torch.int64), "label": TensorSpec([], torch.float32)}
    ds = (Dataset.from_generator(lambda: iter(rows), output_signature=spec)
          .shard(2, 0).batch(2, drop_remainder=True).to_ragged(["mov", "uid"]))
    batches = list(ds)
    assert len(batches) == 2
    assert batches[0]["mov"].to_lists() == [[10], [12]] and batches[1]["uid"].to_lists() == [[24], [26]]
    assert batches[0]["label"].tolist() == [0.0, 0.0]
    padded = to_ragged({"ids": torch.tensor([[1, 0], [2, 3]])}, ["ids"], padding=0)
    assert padded["ids"].to_lists() == [[1], [2, 3]]


def test_shuffle_is_a_permutation_seeded_and_reshuffled_per_epoch():
    ds = Dataset.from_tensor_slices(torch.arange(20)).shuffle(5, seed=3)
    a, b = ints(ds), ints(ds)
    assert sorted(a) == list(range(20)) and a != list(range(20))
    assert a != b  # a new order each pass (reshuffle_each_iteration)
    again = Dataset.from_tensor_slices(torch.arange(20)).shuffle(5, seed=3)
    assert ints(again) == a  # the same seed, the same first pass
    fixed = Dataset.from_tensor_slices(torch.arange(20)).shuffle(5, seed=3, reshuffle_each_iteration=False)
    assert ints(fixed) == ints(fixed)
    # A buffer of 1 keeps the order; tf.data's buffer only ever holds buffer_size elements, so the
    # first element out is one of the first buffer_size ones.
    assert ints(Dataset.from_tensor_slices(torch.arange(5)).shuffle(1, seed=0)) == list(range(5))
    assert all(ints(Dataset.from_tensor_slices(torch.arange(20)).shuffle(4, seed=s))[0] < 4 for s in range(10))


def test_interleave_matches_tf_data():
    # The example of tf.data.Dataset.interleave's documentation, with its documented output.
    ds = Dataset.from_tensor_slices(torch.arange(1, 6)).interleave(
        lambda x: Dataset.from_tensor_slices(x.repeat(6)), cycle_length=2, block_length=4)
    assert ints(ds) == [1, 1, 1, 1, 2, 2, 2, 2, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5]
    # Sources of different lengths, one element at a time.
    ragged = Dataset.from_iterable([[1], [2, 2, 2], [3, 3]]).interleave(lambda xs: xs, cycle_length=2)
    # TF closes an exhausted source and moves the turn on before opening the next one there.
    assert list(ragged) == [1, 2, 2, 3, 2, 3]


def test_prefetch_order_errors_and_early_stop():
    ds = Dataset.from_tensor_slices(torch.arange(100))
    assert ints(ds.prefetch(3)) == list(range(100))
    assert ints(ds.prefetch(AUTOTUNE)) == list(range(100))

    def failing():
        yield 1
        raise OSError("disk gone")

    it = iter(Dataset.from_generator(failing).prefetch(2))
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)

    before = threading.active_count()
    endless = iter(Dataset.from_tensor_slices(torch.arange(3)).repeat().prefetch(2))
    assert [int(next(endless)) for _ in range(4)] == [0, 1, 2, 0]
    endless.close()  # leaving the loop early stops the thread
    assert threading.active_count() == before
    assert not any(t.name == "monolith-prefetch" for t in threading.enumerate())


def test_prefetch_reads_on_another_thread():
    producer_threads = set()

    def gen():
        for i in range(3):
            producer_threads.add(threading.current_thread().name)
            yield i

    assert list(Dataset.from_generator(gen).prefetch(1)) == [0, 1, 2]
    assert producer_threads == {"monolith-prefetch"}


def test_bad_arguments_name_themselves():
    ds = Dataset.from_tensor_slices(torch.arange(3))
    with pytest.raises(ValueError, match="shard index must be in"):
        ds.shard(2, 2)
    with pytest.raises(ValueError, match="batch_size must be"):
        ds.batch(0)
    with pytest.raises(TypeError, match="re-iterable"):
        Dataset.from_iterable(iter([1, 2]))


def test_readers_chain(tmp_path):
    path = tmp_path / "d.pb"
    examples = []
    for i in range(6):
        e = Example(label=[float(i)])
        e.named_feature.add(name="uid").feature.fid_v2_list.value.append(100 + i)
        examples.append(e)
    write_pb_file(path, examples, "example")
    ds = PBDataset(str(path), 2, sparse_features=["uid"], line_id_fields=())
    # A held-out range (skip / take) and a reshuffled order per epoch.
    held_out = ds.skip(2)
    assert [b["label"].tolist() for b in held_out] == [[4.0, 5.0]]
    epochs = ds.shuffle(3, seed=1).repeat(2).map(lambda b: b["label"].tolist())
    got = list(epochs)
    assert sorted(map(tuple, got[:3])) == [(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)] and len(got) == 6
    csv = tmp_path / "d.csv"
    csv.write_text("label,uid\n1,5\n0,6\n1,7\n")
    reader = CsvReader(str(csv), {"uid": 1}, [], "label", 1)
    assert [b["label"].tolist() for b in reader.filter(lambda b: b["label"][0] > 0).prefetch(2)] == [[1.0], [1.0]]



def test_counter_from_tensors_ragged_batch_and_as_numpy_iterator():
    # tf.data: Counter(0, 1).map(...).apply(dense_to_ragged_batch(2, True)) -> ragged ids, stacked labels.
    ds = Dataset.counter(0, 1).map(lambda i: {"ids": torch.arange(int(i) + 1), "label": i.float()}).ragged_batch(2, True)
    first, second = list(ds.take(2))
    assert first["ids"].to_lists() == [[0], [0, 1]] and first["label"].tolist() == [0.0, 1.0]
    assert second["ids"].to_lists() == [[0, 1, 2], [0, 1, 2, 3]]
    assert list(Dataset.from_tensors({"a": torch.tensor([1, 2])}).repeat(3).map(lambda x: x["a"].sum().item())) == [3] * 3
    (row,) = list(Dataset.from_tensor_slices({"a": np.array([[1, 2]]), "s": np.array(["x"])}).as_numpy_iterator())
    assert isinstance(row["a"], np.ndarray) and row["a"].tolist() == [1, 2] and row["s"] == "x"


def test_from_tensor_slices_shard_cuts_columns_like_the_generic_shard():
    columns = {"a": torch.arange(10), "b": np.arange(10) * 2}
    sliced = Dataset.from_tensor_slices(columns).shard(3, 1)
    assert [(int(x["a"]), int(x["b"])) for x in sliced] == [(1, 2), (4, 8), (7, 14)]
    assert ints(Dataset.from_tensor_slices(torch.arange(10)).shard(3, 1).map(lambda x: x * 10)) == [10, 40, 70]
    with pytest.raises(ValueError, match=r"shard index must be in \[0, 3\)"):
        Dataset.from_tensor_slices(torch.arange(10)).shard(3, 3)


def test_advanced_parse_makes_a_batch_of_jagged_and_dense_features():
    batch = advanced_parse({"f": JaggedTensor.from_lists([[1, 2], [3]]), "x": torch.tensor([[1.0], [2.0]])})
    assert batch.batch_size == 2 and batch["f"].to_lists() == [[1, 2], [3]] and batch["x"].shape == (2, 1)
    with pytest.raises(ValueError, match="same batch"):
        advanced_parse({"f": JaggedTensor.from_lists([[1, 2], [3]]), "x": torch.tensor([1.0])})
