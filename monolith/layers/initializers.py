"""Keras weight initialisers by name, as Monolith's layers use them (``tf.keras.initializers``).

A Keras initialiser is called with a shape and returns a fresh tensor: ``GlorotUniform()((4, 3))``.
Fans follow Keras, whose kernels are ``[fan_in, fan_out]`` (``Dense`` here keeps that layout), so a
ported layer starts from the distribution Monolith's starts from. Random draws use torch's global
generator (``torch.manual_seed`` makes them repeatable).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

__all__ = [
    "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity", "Initializer",
    "LecunNormal", "LecunUniform", "Ones", "Orthogonal", "RandomNormal", "RandomUniform", "TruncatedNormal",
    "VarianceScaling", "Zeros", "get",
]

Shape = Sequence[int]
#: What a layer's ``*_initializer`` argument may be: a name, an initialiser (class or instance), a
#: function of the shape returning a tensor, or None (the layer's default).
InitializerLike = Union[str, "Initializer", type, Callable[[Shape], torch.Tensor], None]

# Keras: the standard deviation of a normal truncated at two deviations, for unit variance.
_TRUNCATED_STDDEV = 0.87962566103423978


def _fans(shape: Shape) -> tuple[float, float]:
    """Keras's ``_compute_fans``: ``[in, out]`` matrices, ``[..., in, out]`` convolution kernels."""
    if len(shape) < 1:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


class Initializer:
    """Base of the Keras initialisers: ``init(shape, dtype=torch.float32) -> tensor``."""

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return dict(vars(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Zeros(Initializer):
    """``tf.keras.initializers.Zeros``."""

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(tuple(shape), dtype=dtype)


class Ones(Initializer):
    """``tf.keras.initializers.Ones``."""

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.ones(tuple(shape), dtype=dtype)


class Constant(Initializer):
    """``tf.keras.initializers.Constant(value=0)``."""

    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.full(tuple(shape), float(self.value), dtype=dtype)


class RandomNormal(Initializer):
    """``tf.keras.initializers.RandomNormal(mean=0.0, stddev=0.05)``."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean, self.stddev = mean, stddev

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(tuple(shape), dtype=dtype) * self.stddev + self.mean


class RandomUniform(Initializer):
    """``tf.keras.initializers.RandomUniform(minval=-0.05, maxval=0.05)``."""

    def __init__(self, minval: float = -0.05, maxval: float = 0.05) -> None:
        self.minval, self.maxval = minval, maxval

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.empty(tuple(shape), dtype=dtype).uniform_(self.minval, self.maxval)


class TruncatedNormal(Initializer):
    """``tf.keras.initializers.TruncatedNormal(mean=0.0, stddev=0.05)``: redrawn beyond two deviations."""

    def __init__(self, mean: float = 0.0, stddev: float = 0.05) -> None:
        self.mean, self.stddev = mean, stddev

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.empty(tuple(shape), dtype=dtype)
        return torch.nn.init.trunc_normal_(out, self.mean, self.stddev,
                                           self.mean - 2 * self.stddev, self.mean + 2 * self.stddev)


class VarianceScaling(Initializer):
    """``tf.keras.initializers.VarianceScaling(scale=1.0, mode="fan_in", distribution="truncated_normal")``."""

    def __init__(self, scale: float = 1.0, mode: str = "fan_in", distribution: str = "truncated_normal") -> None:
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform", "normal"):
            raise ValueError(f"VarianceScaling distribution must be truncated_normal, untruncated_normal "
                             f"or uniform, got {distribution!r}")
        self.scale, self.mode, self.distribution = scale, mode, distribution

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        fan_in, fan_out = _fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        scale = self.scale / max(1.0, n)
        if self.distribution in ("truncated_normal", "normal"):
            return TruncatedNormal(0.0, math.sqrt(scale) / _TRUNCATED_STDDEV)(shape, dtype)
        if self.distribution == "untruncated_normal":
            return RandomNormal(0.0, math.sqrt(scale))(shape, dtype)
        limit = math.sqrt(3.0 * scale)
        return RandomUniform(-limit, limit)(shape, dtype)


class GlorotUniform(VarianceScaling):
    """``tf.keras.initializers.GlorotUniform``: uniform in ``±sqrt(6 / (fan_in + fan_out))``."""

    def __init__(self) -> None:
        super().__init__(1.0, "fan_avg", "uniform")


class GlorotNormal(VarianceScaling):
    """``tf.keras.initializers.GlorotNormal``: truncated normal, variance ``2 / (fan_in + fan_out)``."""

    def __init__(self) -> None:
        super().__init__(1.0, "fan_avg", "truncated_normal")


class HeNormal(VarianceScaling):
    """``tf.keras.initializers.HeNormal``: truncated normal, variance ``2 / fan_in``."""

    def __init__(self) -> None:
        super().__init__(2.0, "fan_in", "truncated_normal")


class HeUniform(VarianceScaling):
    """``tf.keras.initializers.HeUniform``: uniform in ``±sqrt(6 / fan_in)``."""

    def __init__(self) -> None:
        super().__init__(2.0, "fan_in", "uniform")


class LecunNormal(VarianceScaling):
    """``tf.keras.initializers.LecunNormal``: truncated normal, variance ``1 / fan_in``."""

    def __init__(self) -> None:
        super().__init__(1.0, "fan_in", "truncated_normal")


class LecunUniform(VarianceScaling):
    """``tf.keras.initializers.LecunUniform``: uniform in ``±sqrt(3 / fan_in)``."""

    def __init__(self) -> None:
        super().__init__(1.0, "fan_in", "uniform")


class Orthogonal(Initializer):
    """``tf.keras.initializers.Orthogonal(gain=1.0)``, over the shape flattened to ``[prod(shape[:-1]), shape[-1]]``."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        flat = torch.empty(math.prod(shape[:-1]), shape[-1], dtype=dtype)
        return torch.nn.init.orthogonal_(flat, self.gain).reshape(tuple(shape))


class Identity(Initializer):
    """``tf.keras.initializers.Identity(gain=1.0)`` for 2-D shapes."""

    def __init__(self, gain: float = 1.0) -> None:
        self.gain = gain

    def __call__(self, shape: Shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if len(shape) != 2:
            raise ValueError(f"Identity initializer needs a 2-D shape, got {tuple(shape)}")
        return self.gain * torch.eye(shape[0], shape[1], dtype=dtype)


_BY_NAME: dict[str, type[Initializer]] = {
    "zeros": Zeros, "zero": Zeros, "ones": Ones, "one": Ones, "constant": Constant,
    "random_normal": RandomNormal, "normal": RandomNormal, "random_uniform": RandomUniform,
    "uniform": RandomUniform, "truncated_normal": TruncatedNormal, "variance_scaling": VarianceScaling,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal, "he_normal": HeNormal,
    "he_uniform": HeUniform, "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform,
    "orthogonal": Orthogonal, "identity": Identity,
}
_BY_NAME.update({cls.__name__.lower(): cls for cls in set(_BY_NAME.values())})


def get(identifier: InitializerLike) -> Callable[[Shape], torch.Tensor] | None:
    """Keras's ``initializers.get``: None stays None; a name (``"glorot_uniform"``, ``"GlorotNormal"``)
    or a class is instantiated; an initialiser or any function of the shape is returned as is."""
    if identifier is None:
        return None
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown initializer {identifier!r}; expected one of {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, type):
        return identifier()
    if callable(identifier):
        return identifier
    raise TypeError(f"initializer must be a name, an initializer or a function of the shape, "
                    f"got {identifier!r}")
