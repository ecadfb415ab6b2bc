"""Which embedding step is running: the one whose ``with`` block the code runs in.

``with collection.step(batch):`` (which running ``model_fn`` opens) makes a step the running one
for the code inside it, as ``torch.no_grad()`` sets the grad mode: a feature column's
``embedding_lookup`` reads the running step's batch, and nothing outlives the ``with`` block.
The steps themselves are :class:`~monolith.modules.feature_slot_collection.EmbeddingStep`; this
module sits below the feature declarations, which read the running step, and the collection.
"""

from __future__ import annotations

import contextvars
from typing import Any

__all__ = ["current_step", "end_step", "running_step"]

_running: contextvars.ContextVar[Any] = contextvars.ContextVar("monolith_embedding_step", default=None)


def current_step() -> Any:
    """The :class:`~monolith.modules.feature_slot_collection.EmbeddingStep` whose ``with`` block is
    running (None outside any)."""
    return _running.get()


def running_step(step: Any) -> contextvars.Token:
    """Makes ``step`` the running one until :func:`end_step` of the returned token."""
    return _running.set(step)


def end_step(token: contextvars.Token) -> None:
    """Ends the step :func:`running_step` started: the one before it runs again (or none)."""
    _running.reset(token)
