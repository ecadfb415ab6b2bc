"""Lookup-or-insert throughput and memory of the FID map against a Python dict, in one process.

A skewed (Zipf-like) stream of FIDs over ``distinct`` keys: the map is filled with every key, then
a stream of ``stream`` ids is looked up / inserted. The dict baseline runs the same stream (a
prefix of it, to bound its run time) through ``dict.setdefault``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks.plots import Bars
from monolith.fid import extract_fid
from monolith.table.hash_map import FidMap

#: Ids per call: about one training batch of 26 slots x 4096 examples x a few ids each.
_CHUNK = 1 << 18


def skewed_stream(distinct: int, size: int, seed: int = 0, exponent: float = 1.05) -> np.ndarray:
    """``size`` FIDs drawn from ``distinct`` keys with probability ~ 1 / rank**exponent."""
    rng = np.random.default_rng(seed)
    # Inverse-CDF sampling of a bounded power law over ranks 1..distinct.
    u = rng.random(size)
    a = 1.0 - exponent
    ranks = ((u * ((distinct + 1) ** a - 1) + 1) ** (1 / a)).astype(np.int64) - 1
    ranks = np.clip(ranks, 0, distinct - 1)
    return extract_fid(ranks, 7)


def run(distinct: int, stream: int = 20_000_000, dict_sample: int = 2_000_000) -> dict[str, float]:
    """Measures the map and the dict; returns throughput (ids/s) and bytes per key."""
    keys = extract_fid(np.random.default_rng(1).permutation(distinct).astype(np.int64), 7)
    ids = skewed_stream(distinct, stream)
    fid_map = FidMap()
    fid_map.find_or_insert(keys[:1000])  # compile before timing

    fid_map = FidMap()
    start = time.perf_counter()
    fid_map.find_or_insert(keys)
    insert_s = time.perf_counter() - start
    start = time.perf_counter()
    for chunk in range(0, stream, _CHUNK):
        fid_map.find_or_insert(ids[chunk : chunk + _CHUNK])
    stream_s = time.perf_counter() - start

    table: dict[int, int] = {}
    for k in keys[: min(distinct, dict_sample)].tolist():
        table.setdefault(k, len(table))
    sample = ids[:dict_sample].tolist()
    start = time.perf_counter()
    for k in sample:
        table.setdefault(k, len(table))
    dict_s = time.perf_counter() - start
    dict_bytes = sys.getsizeof(table) / len(table) + 2 * 32  # the dict plus one int object per key and value

    return {
        "distinct": distinct,
        "insert_ids_per_s": distinct / insert_s,
        "stream_ids_per_s": stream / stream_s,
        "dict_ids_per_s": len(sample) / dict_s,
        "speedup_vs_dict": (stream / stream_s) / (len(sample) / dict_s),
        "map_bytes_per_key": fid_map.nbytes / len(fid_map),
        "dict_bytes_per_key": dict_bytes,
    }


def report(results: list[dict[str, float]]) -> str:
    """Markdown table of :func:`run` results."""
    lines = [
        "| distinct keys | insert (M ids/s) | skewed stream (M ids/s) | Python dict (M ids/s) | speed-up | map bytes/key | dict bytes/key |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['distinct']:,} | {r['insert_ids_per_s'] / 1e6:.1f} | {r['stream_ids_per_s'] / 1e6:.1f} | "
            f"{r['dict_ids_per_s'] / 1e6:.2f} | {r['speedup_vs_dict']:.0f}x | {r['map_bytes_per_key']:.1f} | "
            f"{r['dict_bytes_per_key']:.0f} |"
        )
    return "\n".join(lines)


def figures(results: list[dict[str, float]]) -> list[Bars]:
    """Lookup-or-insert throughput of the map and of a Python dict at each size."""
    return [Bars("fid_map", "FID map against a Python dict: lookup-or-insert, one thread", "M ids/s",
                 [f"{r['distinct']:,} distinct keys" for r in results],
                 {"FID map, insert": [r["insert_ids_per_s"] / 1e6 for r in results],
                  "FID map, skewed stream": [r["stream_ids_per_s"] / 1e6 for r in results],
                  "Python dict": [r["dict_ids_per_s"] / 1e6 for r in results]}, log=True)]


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 10_000_000]
    print(report([run(n) for n in sizes]))
