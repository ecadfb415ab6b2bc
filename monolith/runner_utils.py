"""Monolith's ``runner_utils`` import path for :class:`~monolith.runner_config.RunnerConfig`."""

from monolith.runner_config import RunnerConfig, ServiceDiscoveryType

__all__ = ["RunnerConfig", "ServiceDiscoveryType"]
