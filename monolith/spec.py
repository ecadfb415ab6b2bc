"""What ``model_fn`` returns: Monolith's ``EstimatorSpec``."""

from __future__ import annotations

import collections


class EstimatorSpec(
    collections.namedtuple("EstimatorSpec", ["label", "pred", "head_name", "loss", "optimizer", "classification"])
):
    """The result of ``model_fn``.

    Args:
        label: label tensor ``[batch]`` (or a list / dict of them for several heads); None in PREDICT.
        pred: prediction tensor ``[batch]`` or ``[batch, 1]`` (or a list / dict of them).
        head_name: name(s) of the head(s); taken from ``pred``'s keys when it is a dict.
        loss: scalar loss (None in PREDICT).
        optimizer: the dense optimizer: a ``torch.optim.Optimizer`` or a callable taking the
            model's parameters and returning one (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3)``).
        classification: whether each head is a classification head (AUC) or not (MSE).
    """

    def __new__(cls, label, pred, head_name=None, loss=None, optimizer=None, classification=True):
        return super().__new__(cls, label=label, pred=pred, head_name=head_name, loss=loss,
                               optimizer=optimizer, classification=classification)
