"""What this machine is and can do: the device a script runs on, the CPU's bf16 instructions.

Speed on a CPU hangs on its instructions: without avx512_bf16 / amx_bf16 (x86) or bf16
(Arm), PyTorch's bfloat16 matrix products take a slow path, slower than float32.
"""

import torch

def pick_device(name: str) -> torch.device:
    """The device of a script's --device NAME (cpu or cuda), or one line saying CUDA is missing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, list[str]] | None:
    """(the CPU's model name, its bf16 instructions) from Linux's /proc/cpuinfo, or None
    where it cannot be read. The instructions are x86's avx512_bf16 and amx_bf16, or Arm's
    bf16. Without them PyTorch's bf16 matmuls take a slow path: on this project's machine
    of later sessions (none of them) a 6-token bf16 forward of the demo model costs 2.9x a
    1-token one, against 0.9x on its first machine, and bf16 runs slower than float32."""
    name, flags = "", set()
    try:
        with open(cpuinfo) as f:
            for line in f:  # the first processor's block: up to the first blank line
                key, _, value = line.partition(":")
                if not line.strip() and (name or flags):
                    break
                if key.strip() in ("model name", "CPU part") and not name:
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        return None
    return name or "unknown CPU", sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def slow_bf16_warning(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """A warning for bf16 on a CPU that reports no bf16 instructions, else None."""
    info = cpu_info(cpuinfo) if device.type == "cpu" else None
    if info is None or info[1]:
        return None
    return (f"warning: this CPU ({info[0]}) reports no bf16 instructions (avx512_bf16, amx_bf16, bf16): "
            "PyTorch's bfloat16 matmuls take a slow path on it, usually slower than --dtype float32")


def now(device: torch.device) -> float:
    """Wall clock after all queued GPU work is done (CUDA kernels run asynchronously)."""
    import time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def memory_bandwidth(device: torch.device, mbytes: int = 512, reps: int = 5) -> float:
    """Bytes per second this process reads from memory: the best of `reps` sums of a
    `mbytes` MB float32 tensor, far larger than any cache (with torch's threads, as set)."""
    x = torch.ones(mbytes * 2**20 // 4, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = now(device)
        x.sum()
        best = min(best, now(device) - t0)
    return x.numel() * 4 / best


def gemm_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1536, reps: int = 5) -> float:
    """FLOP per second of a large square matrix product in `dtype` (best of `reps`): the
    compute ceiling that a forward of many tokens runs into."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = now(device)
        a @ b
        best = min(best, now(device) - t0)
    return 2 * n ** 3 / best
