"""Stopping a trainer the way Kubernetes and supervisors do: SIGTERM or SIGINT, then maybe again.

The first signal only asks the training loop to stop after its current step (it then checkpoints,
commits its stream's offsets, pushes its last changes and returns normally); a second one ends the
process at once, by the signal's default action, as an impatient supervisor expects.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Callable

logger = logging.getLogger(__name__)

__all__ = ["GracefulStop"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """A context manager that turns the first SIGTERM/SIGINT into a stop request.

    Args:
        on_request: called once, inside the signal handler, when the stop is requested (e.g. to
            tell a stream to stop waiting for messages); it must be quick and must not block.

    Outside the main thread (where Python cannot handle signals) it installs nothing and a stop is
    never requested. The previous handlers are restored on exit.
    """

    def __init__(self, on_request: Callable[[], None] = lambda: None) -> None:
        self._on_request = on_request
        self._previous: dict[int, object] = {}
        #: The name of the signal that requested the stop ("SIGTERM"), None while none did.
        self.requested: str | None = None

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now, as the default action does
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested = signal.Signals(signum).name
        logger.warning("%s received: stopping after the current step, then checkpointing (a second signal stops "
                       "at once)", self.requested)
        self._on_request()
