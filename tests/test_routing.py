"""The routing plan of a sharded lookup: owners, layout by owner, positions and latest times."""

import numpy as np
import pytest
import torch

from monolith.distributed.routing import plan_route, shard_of
from monolith.table.hash_map import KeyGrouper


def reference_plan(ids: np.ndarray, times: np.ndarray, world: int):
    """The same plan from torch.unique and a stable sort by owner (what the kernel replaces)."""
    unique, first = [], {}
    for fid in ids.tolist():
        if fid not in first:
            first[fid] = len(unique)
            unique.append(fid)
    unique_t = torch.tensor(unique, dtype=torch.int64)
    owners = shard_of(unique_t, world)
    order = torch.argsort(owners, stable=True)
    latest = {}
    for fid, t in zip(ids.tolist(), np.broadcast_to(times, ids.shape).tolist()):
        latest[fid] = max(latest.get(fid, t), t)
    laid_out = unique_t[order].numpy()
    place = {fid: p for p, fid in enumerate(laid_out.tolist())}
    keyed = np.stack([laid_out, [latest[f] for f in laid_out.tolist()]], axis=1)
    return keyed, torch.bincount(owners, minlength=world).numpy(), np.array([place[f] for f in ids.tolist()])


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("per_id_times", [True, False])
def test_plan_matches_unique_and_stable_sort_by_owner(world, per_id_times):
    rng = np.random.default_rng(world)
    # Full-range ids (negative ones too: the hash's wrap-around and arithmetic shift) and repeats.
    ids = np.concatenate([rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64),
                          rng.integers(0, 50, 700, dtype=np.int64)])
    rng.shuffle(ids)
    times = rng.integers(1, 10**9, ids.size, dtype=np.int64) if per_id_times else np.array([12345], dtype=np.int64)
    groups, count = KeyGrouper().group(ids)
    keyed, counts, positions = plan_route(ids, groups, count, times, world)
    want_keyed, want_counts, want_positions = reference_plan(ids, times, world)
    np.testing.assert_array_equal(keyed, want_keyed)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(positions, want_positions)
    # Every occurrence reads its own id back from the layout.
    np.testing.assert_array_equal(keyed[positions, 0], ids)


@pytest.mark.parametrize("world", [1, 2])
def test_plan_of_a_lookup_without_ids(world):
    # A feature a rank's batch lacks is routed without ids: nothing to send, in the same layout.
    ids = np.zeros(0, dtype=np.int64)
    groups, count = KeyGrouper().group(ids)
    keyed, counts, positions = plan_route(ids, groups, count, np.array([7], dtype=np.int64), world, True)
    assert keyed.shape == (0, 3) and positions.shape == (0,)
    np.testing.assert_array_equal(counts, np.zeros(world))
