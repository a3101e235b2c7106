import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"],
                     help="where device-independent tests run (CI: cpu; a GPU machine: cuda)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device of the `device` option. Tests that take it build their models, tensors
    and random generators there; the others (files, tokenizer, CLI) run on the CPU."""
    name = request.config.getoption("--device")
    if name == "cuda" and not torch.cuda.is_available():
        pytest.exit("--device cuda: CUDA is not available on this machine", returncode=1)
    return torch.device(name)
