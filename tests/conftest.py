"""Test-wide settings and fixtures."""

import pytest
import torch
from absl import flags

# Two cores shared with the torchrun workers some tests start: OpenMP threads that spin-wait for
# a busy core slow small ops by orders of magnitude, so the tests run torch on one thread.
torch.set_num_threads(1)


@pytest.fixture
def parsed_flags():
    """``parsed_flags("--model_dir=...", ...)`` parses a command line into absl's global FLAGS (which
    RunnerConfig reads) for one test, and forgets it afterwards."""
    def parse(*args: str) -> None:
        flags.FLAGS(["prog", *args])

    yield parse
    flags.FLAGS.unparse_flags()
