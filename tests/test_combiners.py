import pytest
import torch

from monolith.modules import FirstN, ReduceMean, ReduceSum, make_combiner


def _col(*xs):
    return torch.tensor(xs, dtype=torch.float32).reshape(-1, 1)


def test_reduce_sum_vector():
    out = ReduceSum()(_col(1, 2, 3), torch.tensor([1, 2]))
    assert out.tolist() == [[1.0], [5.0]]


def test_reduce_mean_vector_with_empty_row():
    out = ReduceMean()(_col(1, 2, 3, 4, 5, 6), torch.tensor([1, 0, 2, 3]))
    assert out.tolist() == [[1.0], [0.0], [2.5], [5.0]]


def test_first_n_vector():
    out = FirstN(2)(_col(1, 2, 3, 4, 5, 6), torch.tensor([1, 2, 3]))
    assert out.shape == (3, 2, 1)
    assert out.tolist() == [[[1.0], [0.0]], [[2.0], [3.0]], [[4.0], [5.0]]]


def _reference(name, emb, lengths, n):
    """Per-row Python loop, the obvious definition."""
    rows, start = [], 0
    for length in lengths.tolist():
        chunk = emb[start : start + length]
        start += length
        if name == "reduce_sum":
            rows.append(chunk.sum(0))
        elif name == "reduce_mean":
            rows.append(chunk.mean(0) if length else torch.zeros(emb.shape[1]))
        else:
            kept = chunk[:n]
            rows.append(torch.cat([kept, torch.zeros(n - kept.shape[0], emb.shape[1])]))
    return torch.stack(rows)


@pytest.mark.parametrize("one_id_per_example", [False, True])
@pytest.mark.parametrize("name", ["reduce_sum", "reduce_mean", "first_n"])
def test_values_and_gradients_match_loop_reference(name, one_id_per_example):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 6, (17,), generator=gen)
    lengths[3] = 0
    if one_id_per_example:  # the pooling-free fast path
        lengths = torch.ones(17, dtype=torch.int64)
    base = torch.randn(int(lengths.sum()), 4, generator=gen, dtype=torch.float64)
    upstream = torch.randn((17, 3, 4) if name == "first_n" else (17, 4), generator=gen, dtype=torch.float64)

    emb = base.clone().requires_grad_()
    out = make_combiner(name, max_seq_length=3)(emb, lengths)
    (out * upstream).sum().backward()

    ref_emb = base.clone().requires_grad_()
    ref = _reference(name, ref_emb, lengths, 3)
    (ref * upstream).sum().backward()

    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(emb.grad, ref_emb.grad)


def test_make_combiner_names_and_errors():
    assert isinstance(make_combiner("reduce_sum"), ReduceSum)
    assert isinstance(make_combiner("reduce_mean"), ReduceMean)
    first = make_combiner("first_n", max_seq_length=5)
    assert isinstance(first, FirstN) and first.max_seq_length == 5 and first.name == "first_n"
    with pytest.raises(ValueError, match="valid names: \\['first_n', 'reduce_mean', 'reduce_sum'\\]"):
        make_combiner("reduce_max")
    with pytest.raises(ValueError, match="max_seq_length > 0"):
        make_combiner("first_n")


def test_input_validation():
    with pytest.raises(ValueError, match="sum to embeddings.shape\\[0\\]=3"):
        ReduceSum()(_col(1, 2, 3), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="\\[total_ids, dim\\]"):
        ReduceSum()(torch.ones(3), torch.tensor([3]))
    with pytest.raises(ValueError, match="integer"):
        ReduceMean()(_col(1), torch.tensor([1.0]))


def test_empty_batch():
    assert ReduceSum()(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)).shape == (0, 2)
    assert FirstN(2)(torch.zeros(0, 2), torch.zeros(0, dtype=torch.int64)).shape == (0, 2, 2)
