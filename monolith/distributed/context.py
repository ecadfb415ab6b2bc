"""The process group a run trains in: torch.distributed set up from torchrun's environment.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_from_env` joins that group (gloo on CPU, nccl where CUDA is available). A plain
``python`` run has no ``WORLD_SIZE`` and stays a single process.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import os
import threading
import time
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist


@dataclasses.dataclass
class DistributedContext:
    """Rank, world size and the collectives the training loop needs."""

    rank: int
    world_size: int
    group: Any = None

    def mark_failed(self, error: BaseException) -> None:
        """Records in the rendezvous store that this rank failed and why, and skips the exit barrier:
        this rank's exit then breaks the others' collectives at once, and they name it."""
        global _abandoned
        _abandoned = True
        store = _store()
        if store is not None:
            try:
                store.set(f"monolith/failed/{self.rank}", f"{type(error).__name__}: {error}"[:1000])
            except Exception:  # the store went with the agent: the others still stop, unnamed
                pass

    def abandon(self) -> None:
        """Leaves without the exit barrier (another rank failed: nobody would meet it there)."""
        global _abandoned
        _abandoned = True

    def failed_ranks(self) -> dict[int, str]:
        """Ranks that recorded a failure (:meth:`mark_failed`), with its reason."""
        store = _store()
        failed = {}
        for rank in range(self.world_size):
            key = f"monolith/failed/{rank}"
            try:
                if store is not None and store.check([key]):
                    failed[rank] = store.get(key).decode(errors="replace")
            except Exception:  # no store (it went with a dead agent): nothing to report
                break
        return failed

    def lost_ranks(self) -> list[int]:
        """The other ranks that show no sign of life for :data:`LIVENESS_WINDOW_S` (killed, exited or
        hung): each rank's liveness thread counts up in the rendezvous store while its process runs.
        Called after a collective failed, so the wait costs only the failing path."""
        store = _store()
        if store is None:
            return []
        keys = [f"{_ALIVE}{rank}" for rank in range(self.world_size)]
        try:
            before = [store.add(key, 0) for key in keys]
            time.sleep(LIVENESS_WINDOW_S)
            after = [store.add(key, 0) for key in keys]
        except Exception:  # the store went with the agent that hosted it: nobody left to ask
            return []
        return [rank for rank in range(self.world_size) if rank != self.rank and after[rank] == before[rank]]

    def barrier(self) -> None:
        dist.barrier(group=self.group)

    def count(self, flag: bool) -> int:
        """How many ranks pass ``flag`` True (one small all-reduce)."""
        tensor = torch.tensor([int(flag)], dtype=torch.int64)
        dist.all_reduce(tensor, group=self.group)
        return int(tensor.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj, group=self.group)
        return gathered

    def all_reduce_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Sums ``tensors`` over ranks in place, as one flat buffer (one collective per step)."""
        self.start_all_reduce(tensors)()

    def start_all_reduce(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        """Starts :meth:`all_reduce_tensors` in the background; the returned function waits for it
        and writes the sums into ``tensors``. Other collectives may run meanwhile."""
        if not tensors:
            return lambda: None
        flat = torch.cat([t.reshape(-1) for t in tensors])
        work = dist.all_reduce(flat, group=self.group, async_op=True)

        def finish() -> None:
            work.wait()
            offset = 0
            for t in tensors:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

        return finish

    def start_gradient_reduce(self, params: Iterable[torch.Tensor], sparse_squared: float | None, loss_finite: bool,
                              mean: bool = False) -> Callable[[], tuple[float | None, list[int]]]:
        """Starts summing the dense gradients of ``params`` (those that require one) over ranks (averaging them with ``mean``,
        as Horovod does) and, in the same collective, which ranks computed each (a parameter a batch
        did not use has none on that rank), the ranks' shares of the squared sparse norm (each rank
        holds the gradients of its own lookups) and which ranks' losses were not finite. The returned
        function waits for the sums, sets every parameter's gradient that some rank computed, and
        returns the squared sparse norm (None when ``sparse_squared`` is) and the failing ranks."""
        params = [p for p in params if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        n, world = len(params), self.world_size
        flags = torch.zeros(n + 1 + world, dtype=grads[0].dtype if grads else torch.float32)
        flags[:n] = torch.tensor([p.grad is not None for p in params], dtype=flags.dtype)
        flags[n] = sparse_squared or 0.0
        flags[n + 1 + self.rank] = 0.0 if loss_finite else 1.0
        finish = self.start_all_reduce(grads + [flags])

        def summed() -> tuple[float | None, list[int]]:
            finish()
            for param, grad, computed in zip(params, grads, flags[:n].tolist()):
                if not computed:
                    continue
                if mean:
                    grad.div_(world)
                param.grad = grad
            failing = [rank for rank in range(world) if flags[n + 1 + rank] > 0]
            return (float(flags[n]) if sparse_squared is not None else None), failing

        return summed

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        for t in tensors:
            dist.broadcast(t, src=src, group=self.group)


@dataclasses.dataclass
class SingleProcessContext(DistributedContext):
    """A run of one process as a group of one: every collective returns at once with this process's
    own value, so that the training loop runs the same code in one process and in N."""

    rank: int = 0
    world_size: int = 1

    def mark_failed(self, error: BaseException) -> None:
        pass

    def abandon(self) -> None:
        pass

    def failed_ranks(self) -> dict[int, str]:
        return {}

    def lost_ranks(self) -> list[int]:
        return []

    def barrier(self) -> None:
        pass

    def count(self, flag: bool) -> int:
        return int(bool(flag))

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def start_all_reduce(self, tensors: list[torch.Tensor]) -> Callable[[], None]:
        return lambda: None

    def start_gradient_reduce(self, params: Iterable[torch.Tensor], sparse_squared: float | None, loss_finite: bool,
                              mean: bool = False) -> Callable[[], tuple[float | None, list[int]]]:
        failing = [] if loss_finite else [self.rank]
        return lambda: (sparse_squared, failing)

    def broadcast_tensors(self, tensors: list[torch.Tensor], src: int = 0) -> None:
        pass


#: Set when this rank leaves after a failure: its exit barrier would wait for ranks stuck elsewhere.
_abandoned = False
#: How often a rank's liveness thread counts up, and how long a rank must stay still to be lost.
LIVENESS_INTERVAL_S = 0.25
LIVENESS_WINDOW_S = 2.0
_ALIVE = "monolith/alive/"
_liveness_started = False


def _start_liveness() -> None:
    """Counts this rank's liveness key up every :data:`LIVENESS_INTERVAL_S` in a thread with a
    connection of its own to the store, until the process exits (or the store's host does); once a
    process. The thread is stopped and joined at exit, before the group is left: a thread still in
    a store call when the interpreter ends aborts the process."""
    global _liveness_started
    store = _store()
    if store is None or _liveness_started:
        return
    _liveness_started = True
    store, key, stop = store.clone(), f"{_ALIVE}{dist.get_rank()}", threading.Event()

    def tick() -> None:
        while not stop.is_set():
            try:
                store.add(key, 1)
            except Exception:  # the store's host exited: the job is over
                return
            stop.wait(LIVENESS_INTERVAL_S)

    thread = threading.Thread(target=tick, name="monolith-liveness", daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(timeout=10)  # a store call stuck on a vanished host must not hang the exit

    atexit.register(end)  # registered after _leave_group, so it runs before it


def _store():
    """The rendezvous key-value store of the default group (hosted by torchrun's agent)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


def _leave_group() -> None:
    """Leaves the group at interpreter exit, once every rank got there.

    Without it, a rank that finishes first tears down its communication threads while they still
    run, which aborts the process ("terminate called without an active exception") and fails the
    whole torchrun job.
    """
    if not dist.is_initialized():
        return
    if not _abandoned:
        try:
            dist.barrier()
        except RuntimeError:  # a rank already died: nothing left to wait for
            pass
    dist.destroy_process_group()


def init_from_env(timeout_s: float = 300.0) -> DistributedContext | None:
    """Joins the torchrun process group; None for a single-process run.

    ``timeout_s``: how long a collective waits for a rank that neither answers nor exits (a hung
    one) before it fails (the first call in a process sets it). A rank that exits or is killed
    fails the others' collectives at once, and :meth:`DistributedContext.lost_ranks` names it.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        atexit.register(_leave_group)
    if dist.get_world_size() <= 1:
        return None
    _start_liveness()
    return DistributedContext(dist.get_rank(), dist.get_world_size())


def get_rank() -> int:
    """This process's rank (0 outside torch.distributed): for ``input_fn`` to pick its data shard."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """Number of training processes (1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))
