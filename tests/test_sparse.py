import pytest
import torch

from monolith.sparse import Batch, JaggedTensor, KeyedJaggedTensor


def test_jagged_offsets_and_padding():
    jt = JaggedTensor(torch.tensor([1, 2, 3, 4, 5, 6]), torch.tensor([1, 0, 2, 3]))
    assert jt.offsets().tolist() == [0, 1, 1, 3, 6]
    assert jt.offsets() is jt.offsets()  # cached
    assert jt.batch_size() == 4 and len(jt) == 4
    assert jt.to_padded(2).tolist() == [[1, 0], [0, 0], [2, 3], [4, 5]]
    assert jt.to_padded(4, padding_value=-1).tolist() == [[1, -1, -1, -1], [-1] * 4, [2, 3, -1, -1], [4, 5, 6, -1]]
    assert jt.to_padded(0).shape == (4, 0)
    assert jt.to_lists() == [[1], [], [2, 3], [4, 5, 6]]


def test_jagged_float_values_and_from_lists():
    jt = JaggedTensor(torch.tensor([0.5, 1.5]), torch.tensor([2], dtype=torch.int32))
    assert jt.lengths().dtype == torch.int64
    assert jt.to_padded(3).tolist() == [[0.5, 1.5, 0.0]]
    jt = JaggedTensor.from_lists([[7], [], [8, 9]])
    assert jt.values().dtype == torch.int64
    assert jt.values().tolist() == [7, 8, 9] and jt.lengths().tolist() == [1, 0, 2]


@pytest.mark.parametrize(
    "values, lengths, match",
    [
        (torch.tensor([1, 2, 3]), torch.tensor([1, 1]), "sum\\(lengths\\) == len\\(values\\)"),
        (torch.tensor([1, 2]), torch.tensor([3, -1]), "non-negative"),
        (torch.tensor([[1, 2]]), torch.tensor([2]), "1-D"),
        (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([2]), "int64"),
        (torch.tensor([1, 2]), torch.tensor([2.0]), "integer"),
    ],
)
def test_jagged_validation(values, lengths, match):
    with pytest.raises(ValueError, match=match):
        JaggedTensor(values, lengths)


def _kjt():
    # keys a, b over batch 3: a = [[1], [2, 3], []], b = [[], [4], [5, 6, 7]]
    return KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([1, 2, 0, 0, 1, 3]))


def test_kjt_accessors():
    kjt = _kjt()
    assert kjt.keys() == ["a", "b"] and len(kjt) == 2 and "a" in kjt and "c" not in kjt
    assert kjt.stride() == 3
    assert kjt.length_per_key() == [3, 4]
    assert kjt.offset_per_key() == [0, 3, 7]
    assert kjt.offsets().tolist() == [0, 1, 3, 3, 3, 4, 7]
    assert kjt["a"].to_lists() == [[1], [2, 3], []]
    assert kjt["b"].to_lists() == [[], [4], [5, 6, 7]]
    assert {k: jt.to_lists() for k, jt in kjt.to_dict().items()} == {"a": [[1], [2, 3], []], "b": [[], [4], [5, 6, 7]]}
    with pytest.raises(KeyError, match="keys are \\['a', 'b'\\]"):
        kjt["c"]


def test_kjt_from_lists_and_jagged_dict_roundtrip():
    rows = {"a": [[1], [2, 3], []], "b": [[], [4], [5, 6, 7]]}
    kjt = KeyedJaggedTensor.from_lists(rows)
    assert kjt.values().tolist() == _kjt().values().tolist()
    assert kjt.lengths().tolist() == _kjt().lengths().tolist()
    again = KeyedJaggedTensor.from_jagged_dict(kjt.to_dict())
    assert again.keys() == ["a", "b"] and again.values().tolist() == kjt.values().tolist()


def test_kjt_select_split_to():
    kjt = _kjt()
    sel = kjt.select(["b", "a"])
    assert sel.keys() == ["b", "a"]
    assert sel.lengths().tolist() == [0, 1, 3, 1, 2, 0]
    assert sel.values().tolist() == [4, 5, 6, 7, 1, 2, 3]
    first, second, empty = kjt.split([1, 1, 0])
    assert first.keys() == ["a"] and first["a"].to_lists() == [[1], [2, 3], []]
    assert second.keys() == ["b"] and second.values().tolist() == [4, 5, 6, 7]
    assert empty.keys() == [] and empty.stride() == 3
    with pytest.raises(ValueError, match="summing to 2 keys"):
        kjt.split([1])
    moved = kjt.to("cpu")
    assert moved.keys() == kjt.keys() and moved.values().tolist() == kjt.values().tolist()


def test_kjt_validation():
    with pytest.raises(ValueError, match="unique"):
        KeyedJaggedTensor(["a", "a"], torch.tensor([1]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="len\\(keys\\) \\* batch"):
        KeyedJaggedTensor(["a", "b"], torch.tensor([1]), torch.tensor([1, 0, 0]))
    with pytest.raises(ValueError, match="sum\\(lengths\\) == len\\(values\\)"):
        KeyedJaggedTensor(["a"], torch.tensor([1]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="stride=3"):
        KeyedJaggedTensor(["a"], torch.tensor([1]), torch.tensor([1, 0]), stride=3)
    with pytest.raises(ValueError, match="explicit stride"):
        KeyedJaggedTensor([], torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64))
    empty = torch.tensor([], dtype=torch.int64)
    assert KeyedJaggedTensor([], empty, empty, stride=4).stride() == 4
    with pytest.raises(ValueError, match="needs batch size 1 for every key"):
        KeyedJaggedTensor.from_lists({"a": [[1]], "b": [[1], [2]]})
    with pytest.raises(ValueError, match="one values dtype"):
        KeyedJaggedTensor.from_jagged_dict(
            {"a": JaggedTensor.from_lists([[1]]), "b": JaggedTensor.from_lists([[1.0]], dtype=torch.float32)}
        )
    with pytest.raises(ValueError, match="explicit stride"):
        KeyedJaggedTensor.from_lists({})


def test_batch_lookup_and_validation():
    batch = Batch(_kjt(), {"label": torch.tensor([1.0, 0.0, 1.0]), "dense": torch.zeros(3, 4)})
    assert batch.batch_size == 3
    assert batch["a"].to_lists() == [[1], [2, 3], []]
    assert batch["label"].tolist() == [1.0, 0.0, 1.0]
    assert "label" in batch and "a" in batch and "zz" not in batch
    assert batch.keys() == ["a", "b", "label", "dense"]
    with pytest.raises(KeyError, match="dense keys: \\['label', 'dense'\\]"):
        batch["zz"]
    assert batch.to("cpu")["dense"].shape == (3, 4)
    with pytest.raises(ValueError, match="dense\\['label'\\] must have leading dimension 3"):
        Batch(_kjt(), {"label": torch.zeros(2)})
    with pytest.raises(ValueError, match="both sparse keys and dense keys"):
        Batch(_kjt(), {"a": torch.zeros(3)})
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        Batch(_kjt(), {"label": [1, 2, 3]})
