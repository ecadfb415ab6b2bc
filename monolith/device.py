"""Device placement of input, model and serving-receiver work (Monolith's ``MonolithDeviceCtx``).

PyTorch places work by the device of its tensors, so on one device (or on CPUs) these contexts do
nothing; with CUDA available and ``enabled`` the model work runs under ``torch.device('cuda')`` as
the default device while input parsing stays on the CPU.
"""

from __future__ import annotations

import contextlib

import torch


class DeviceCtxType:
    """The kinds of work a :class:`MonolithDeviceCtx` places."""

    INPUT_FN = "input_fn"
    MODEL_FN = "model_fn"
    INPUT_RECEIVER_FN = "input_receiver_fn"
    OTHERS = "others"

    @classmethod
    def all_types(cls) -> set[str]:
        return {cls.INPUT_FN, cls.MODEL_FN, cls.INPUT_RECEIVER_FN, cls.OTHERS}


class MonolithDeviceCtx(contextlib.AbstractContextManager):
    """Runs one kind of work on its device; a no-op where only one device exists.

    Args:
        ctx_type: one of :meth:`DeviceCtxType.all_types`.
        device: the accelerator for ``MODEL_FN`` work (default: CUDA when available).
    """

    def __init__(self, ctx_type: str, device: torch.device | str | None = None) -> None:
        if ctx_type not in DeviceCtxType.all_types():
            raise ValueError(f"ctx_type {ctx_type!r} is not one of {sorted(DeviceCtxType.all_types())}")
        self.ctx_type = ctx_type
        if device is None and torch.cuda.is_available():
            device = "cuda"
        self.device = torch.device(device) if device is not None else None
        self._current: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "MonolithDeviceCtx":
        if self.ctx_type == DeviceCtxType.MODEL_FN and self.device is not None and self.device.type != "cpu":
            self._current = torch.device(self.device)
            self._current.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._current is not None:
            self._current.__exit__(*exc)
        self._current = None
