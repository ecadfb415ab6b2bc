"""Test-wide settings."""

import torch

# Two cores shared with the torchrun workers some tests start: OpenMP threads that spin-wait for
# a busy core slow small ops by orders of magnitude, so the tests run torch on one thread.
torch.set_num_threads(1)
