"""Monolith on PyTorch: collisionless embedding tables and real-time recommendation training."""

__version__ = "0.1.0"
