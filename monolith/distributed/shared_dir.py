"""The check that every rank sees one shared ``model_dir`` before training starts.

Checkpoints are written by every rank into ``model_dir`` (each its table shards, rank 0 the rest),
so it must be one directory on shared storage. The same path on each node's own disk passes every
path comparison and fails only at the first checkpoint; here rank 0 writes a marker with a fresh
token and every rank must read that token back.
"""

from __future__ import annotations

import os
import socket
import uuid

from monolith.atomic import atomic_write
from monolith.distributed.context import DistributedContext

#: The marker rank 0 writes into the directory (and removes once every rank has read it).
MARKER = ".monolith-shared-check"


def check_shared_dir(path: str, ctx: DistributedContext, what: str = "model_dir") -> None:
    """Raises ``RuntimeError`` on every rank unless every rank reads back the token rank 0 wrote
    into ``path`` (created if absent), naming the ranks and hosts that did not."""
    if ctx.world_size == 1:  # a group of one shares every directory with itself
        return
    marker = os.path.join(path, MARKER)
    token = None
    if ctx.rank == 0:
        os.makedirs(path, exist_ok=True)
        token = uuid.uuid4().hex
        with atomic_write(marker, "w") as f:
            f.write(token)
    token = ctx.all_gather_object(token)[0]  # also the barrier: the marker exists from here on
    try:
        with open(marker) as f:
            seen = f.read() == token
    except OSError:
        seen = False
    views = ctx.all_gather_object((seen, socket.gethostname()))
    if ctx.rank == 0:
        os.remove(marker)
    blind = [(rank, host) for rank, (ok, host) in enumerate(views) if not ok]
    if blind:
        who = ", ".join(f"rank {rank} (host {host})" for rank, host in blind)
        raise RuntimeError(
            f"rank {ctx.rank}: {what} {os.path.abspath(path)} is not shared: {who} did not find the marker rank 0 "
            f"(host {views[0][1]}) wrote there; every node must mount the same shared storage at this path "
            f"(checkpoints are written by every rank into it)")
