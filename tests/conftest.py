"""What every test file shares: the project on the import path, the `quick` marker, the
`--device` option and its fixture, and comparisons that hold on the CPU and on CUDA."""

import os
import shutil
import sys
import sysconfig

# One thread, for the tests and the commands they start (which inherit it): their models are
# tiny. The suite takes 6 minutes so on the Intel Xeon of the README (10 minutes on two
# threads on the machine before it; not compared on one machine). Set OMP_NUM_THREADS
# yourself to try more.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402  (after the thread count, which torch reads when it loads)
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the first check, under 2 minutes: model parity, greedy "
                                       "equality, the command lines (python -m pytest -m quick tests)")
    # torch's own inductor imports torch.utils.mkldnn, which still uses a deprecated torch.jit
    # decorator: not ours to fix, and it would print a warnings summary on every run.
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


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


def assert_same_on_cpu_close_on_cuda(a: torch.Tensor, b: torch.Tensor):
    """Bit-equal on the CPU, where these tests found it so. On CUDA, matrix products of
    different shapes may use different kernels (another summation order), so there the
    float32 values only agree to rounding."""
    if a.device.type == "cpu":
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def stdlib_corpus(tmp_path_factory, n_files: int) -> str:
    """A tiny corpus built by corpus.py (its own 400-piece tokenizer) from the first
    n_files standard-library files; returns its directory."""
    import corpus
    src = tmp_path_factory.mktemp("src")
    std = sysconfig.get_paths()["stdlib"]
    for name in sorted(f for f in os.listdir(std) if f.endswith(".py"))[:n_files]:
        shutil.copy(os.path.join(std, name), src / name)
    out = tmp_path_factory.mktemp("data")
    corpus.build(str(out), vocab_size=400, root=str(src))
    return str(out)
