"""What one forward pass costs, and how far that is from the machine's floor.

On a GPU a pass of a few tokens costs about what a pass of one costs: reading the weights
dominates (memory-bound). Where that holds, SDSAT's (1 + k)-token passes are nearly free;
where it does not, every token fed is paid for. bench.py prints this curve beside every
benchmark, and `bench.py --latency-only` measures it on any checkpoint:

  latency(T)   median time of one forward of T new tokens after a cache of `prefix` tokens
  floor(T)     max(bytes read / memory bandwidth, FLOPs / matrix-product peak), both
               measured in the same process: the time no implementation can beat
  x floor      latency / floor: how far this forward is from the machine's limit

Bytes read: every weight a forward touches (the blocks, the final norm, the head; of the
embedding only T rows, unless it is tied to the head) and the cached keys and values.
"""

import json
import os
import resource
import statistics
import sys
import time

import torch

from bench_report import environment, environment_line, latency_markdown
from checkpoint import write_json, write_text
from decode import generate_ar, load_or_exit
from machine import gemm_peak, memory_bandwidth, now, slow_bf16_warning
from model import DTYPES, KVCache, Llama
from packing import can_pack, pack_weights
from sampling import Warper


@torch.inference_mode()
def forward_latency(model: Llama, sizes: list[int], prefix: int = 128, reps: int = 15, static=None,
                    sats: int = 0) -> dict:
    """Median time of one forward of T new tokens after a `prefix`-token cache; with
    `static` (compiled.StaticModel) through its compiled graphs, compiling each width first.
    sats > 0: the last min(sats, T - 1) tokens are SATs, so the adapter runs (what a pass
    that drafts costs: the draft tree's groups, the chain's draft pass)."""
    dev = model.device
    cache = static.cache if static else model.new_cache(prefix + max(sizes))
    cache.truncate(0)
    model(torch.ones(1, prefix, dtype=torch.long, device=dev), cache=cache)
    run = static or model

    def tokens(T):
        ids = torch.ones(1, T, dtype=torch.long, device=dev)
        if min(sats, T - 1) > 0:
            ids[0, T - min(sats, T - 1):] = model.adapter.sat_id
        return ids
    return {T: median_time(run, tokens(T), cache, prefix, reps) for T in sizes}


def tree_shape_here(model: Llama, table: dict, sizes: list[int], prefix: int = 128, reps: int = 15):
    """The draft tree's shape for this machine, dtype and model (decode_tree.choose_shape):
    from the forward's curve and, with an adapter, the curve of passes that end with SATs,
    both timed now. Returns (shape, expected tok/s, curve, SAT curve or None)."""
    from decode_tree import choose_shape
    curve = forward_latency(model, sizes, prefix, reps)
    sat_curve = forward_latency(model, sizes, prefix, reps, sats=table.get("k", 0)) if model.adapter and table else None
    shape, rate = choose_shape(curve, table, sat_latency=sat_curve)
    return shape, rate, curve, sat_curve


def median_time(run, tokens: torch.Tensor, cache: KVCache, prefix: int, reps: int) -> float:
    """Median seconds of run(tokens) on a cache truncated back to `prefix` tokens each
    time, after two forwards not counted."""
    times = []
    for _ in range(reps + 2):
        cache.truncate(prefix)
        t0 = now(tokens.device)
        run(tokens, cache=cache)
        times.append(now(tokens.device) - t0)
    return statistics.median(times[2:])


@torch.inference_mode()
def draft_pass_cost(model: Llama, k: int = 5, prefix: int = 128, reps: int = 15) -> dict:
    """What SATs add to a pass (the adapter's low-rank changes): median seconds of a forward
    of 1 + k real tokens, of [cur, S * k] with the changes computed for the SAT rows alone
    (model.linear, as decoding runs), and with them computed for every row and then chosen
    by the SAT mask (how model.linear did it before)."""
    import model as model_module
    dev, sat = model.device, model.adapter.sat_id
    cache = model.new_cache(prefix + 1 + k)
    model(torch.ones(1, prefix, dtype=torch.long, device=dev), cache=cache)
    real = torch.ones(1, 1 + k, dtype=torch.long, device=dev)
    sats = torch.tensor([[1] + [sat] * k], device=dev)

    def timed(tokens):
        return median_time(model, tokens, cache, prefix, reps)
    out = {"real": timed(real), "sat_rows_only": timed(sats)}
    tail, model_module.sat_tail = model_module.sat_tail, lambda is_sat: None  # every row, then the mask
    try:
        out["every_row_masked"] = timed(sats)
    finally:
        model_module.sat_tail = tail
    return out


def forward_work(model: Llama, T: int, prefix: int) -> tuple[float, float]:
    """(bytes read, FLOPs) of one forward of T tokens after `prefix` cached ones."""
    a, item = model.args, model.dtype.itemsize
    stored = [t for n, t in list(model.named_parameters()) + list(model.named_buffers()) if not n.startswith("adapter.")]
    embed = model.embed_tokens.weight
    tied = getattr(model.lm_head, "weight", None) is embed  # the head multiplies the embedding itself (not an int8 copy)
    read = sum(t.numel() * t.element_size() for t in stored)  # every weight once (int8: a byte each) ...
    matmul = sum(t.numel() for t in stored if t.dim() == 2)  # ... and every matrix multiplies ...
    if not tied:  # ... but a lookup table: T rows of it are read, none multiplies
        read -= (embed.numel() - T * a.hidden_size) * item
        matmul -= embed.numel()
    keys = prefix + T
    cache_bytes = 2 * a.num_hidden_layers * a.num_key_value_heads * a.head_dim * keys * item
    attention = 4 * a.num_hidden_layers * a.num_attention_heads * a.head_dim * T * keys  # scores and sum
    return read + cache_bytes, 2 * T * matmul + attention


def floors(model: Llama, sizes: list[int], prefix: int) -> dict:
    """The machine's probes and each width's floor (module docstring)."""
    dev = model.device
    bandwidth, peak = memory_bandwidth(dev), gemm_peak(dev, model.dtype)
    out = {"bandwidth_bytes_per_s": bandwidth, "gemm_flops_per_s": peak, "widths": {}}
    for T in sizes:
        nbytes, flops = forward_work(model, T, prefix)
        out["widths"][T] = {"bytes": nbytes, "flops": flops, "floor_s": max(nbytes / bandwidth, flops / peak),
                            "bound": "memory" if nbytes / bandwidth >= flops / peak else "compute"}
    return out


class ConstantModel:
    """Stands in for the model in generate_ar: answers every forward with the same logits
    at no cost, so timing the loop with it measures the Python loop alone."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, tokens, cache=None, **_):
        cache.length += tokens.shape[1]
        return self.logits.expand(1, tokens.shape[1], -1)


def ar_loop_overhead(model: Llama, n: int = 256) -> float:
    """Seconds per token that the autoregressive loop spends outside the forward pass."""
    stub = ConstantModel(torch.zeros(1, 1, model.args.vocab_size, device=model.device, dtype=model.dtype))
    best = float("inf")
    for _ in range(5):
        cache = KVCache(model.args, 1, device=model.device, dtype=model.dtype)
        cache.max_len = n + 1  # the stub writes nothing, so no memory is needed
        t0 = now(model.device)
        tokens, stats = generate_ar(stub, cache, stub.logits[0, 0], n, Warper())
        best = min(best, (now(model.device) - t0) / stats.forwards)
    return best


def projected_speedups(lat: dict, reference: dict) -> list[dict]:
    """What the tokens per forward measured in a reference run would give with this
    model's forward costs: speedup = tokens per forward x T(1) / T(tokens fed per forward).
    Two-step feeds 1 + k tokens in both of its forwards; fused feeds 1 + k + (k + 1) k."""
    out = []
    for dtype, res in reference["results"].items():
        for set_name, rows in res["sets"].items():
            for name, r in rows.items():
                if (name.startswith("_") or r["kind"] not in ("chain", "fused") or r["temperature"] != 0
                        or r.get("compiled")):  # a compiled row's tokens per forward are the eager row's
                    continue
                fed = r["tokens_fed_per_forward"]
                out.append({"set": set_name, "dtype": dtype, "method": name, "tokens_per_forward": r["tokens_per_forward"],
                            "tokens_fed": fed, "cost_ratio": lat[fed] / lat[1],
                            "projected_speedup": r["tokens_per_forward"] * lat[1] / lat[fed]})
    return out


def latency_only(a, device: torch.device):
    """--latency-only: time forwards of a few sizes on any checkpoint (no tokenizer needed),
    eager and, with --compile, compiled; beside each, its floor. With --project-from, the
    speedups a benchmark's tokens per forward would give with these costs."""
    from compiled import StaticModel
    reference, fed = None, set()
    if a.project_from:
        try:
            with open(a.project_from) as f:
                reference = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"error: --project-from {a.project_from}: {e}")
        fed = {r["tokens_fed_per_forward"] for res in reference["results"].values()
               for rows in res["sets"].values() for n, r in rows.items() if not n.startswith("_")}
    sizes = sorted(set(a.sizes) | {1} | fed - {None})
    record = {"environment": environment(device), "model": os.path.abspath(a.model), "prefix": a.prefix, "results": {}}
    if reference:
        record["projected_from"] = {"path": os.path.abspath(a.project_from), "model": reference["model"]}
    if "bfloat16" in a.dtype and (warning := slow_bf16_warning(device)):
        print(warning, file=sys.stderr)
    for dtype in a.dtype:
        t0 = time.perf_counter()
        model = load_or_exit(a.model, device, DTYPES[dtype])
        params = sum(p.numel() for p in model.parameters())
        print(f"{dtype}: {params / 1e6:.0f}M parameters loaded in {time.perf_counter() - t0:.1f}s "
              f"(peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB); "
              f"timing {len(sizes)} sizes x {a.reps} forwards", file=sys.stderr)
        res = {"parameters": params, "floor": floors(model, sizes, a.prefix)}
        if can_pack(model):  # the weights as loaded, then pre-packed (what decode.py and bench.py run)
            res["unpacked_latency_s"] = forward_latency(model, sizes, a.prefix, a.reps)
            pack_weights(model)
        res["forward_latency_s"] = forward_latency(model, sizes, a.prefix, a.reps)
        if model.adapter is not None:  # what the SATs' adapter adds to a draft pass of k = 5
            res["draft_pass_s"] = draft_pass_cost(model, 5, a.prefix, a.reps)
        if a.quantize == "int8":  # and weight-only int8, with its own floor (half the weights' bytes): a
            # fresh copy, since quantize_int8 swaps nn.Linear layers and packing has replaced them
            int8 = load_or_exit(a.model, device, DTYPES[dtype], quantize="int8")
            res["int8_latency_s"] = forward_latency(int8, sizes, a.prefix, a.reps)
            res["int8_floor"] = floors(int8, sizes, a.prefix)
            del int8
        if a.compile:
            static = StaticModel(model, a.prefix + max(sizes), autotune=a.autotune)
            res["compile_s"] = static.warm_up(sizes)
            res["compiled_latency_s"] = forward_latency(model, sizes, a.prefix, a.reps, static)
            del static
        if reference:
            res["projection"] = projected_speedups(res["forward_latency_s"], reference)
        record["results"][dtype] = res
        del model
    table = latency_markdown(record)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "latency.json"), record)
    write_text(os.path.join(a.out, "latency.md"), environment_line(record["environment"]) + table + "\n")
    print(f"\nwrote {a.out}/latency.json and latency.md", file=sys.stderr)


def profile_sampling(model_dir: str, device: torch.device, dtype: torch.dtype, new_tokens: int):
    """--profile-sampling: where sampled decoding spends its time, inside the model's
    forward (a timer around every call) or outside it (warping, sampling, the rule that
    accepts drafts, host syncs). Three runs of `new_tokens` from one prompt per method."""
    from decode import generate_sdsat
    from decode_common import prefill
    from decode_fused import generate_fused
    from decode_tree import TREE_DEPTH5, build_tree, generate_sdsat_tree
    from tokenizer import Tokenizer
    model = load_or_exit(model_dir, device, dtype)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "decode.py")) as f:
        prompt = Tokenizer(model_dir).encode(f.read()[2000:4000])[:200]
    inside = [0.0]

    def timed(*args, **kwargs):
        t0 = now(device)
        out = model(*args, **kwargs)
        inside[0] += now(device) - t0
        return out
    timed.device, timed.dtype, timed.args = model.device, model.dtype, model.args  # what the loops read
    sat, tree = model.args.sat_token_id, build_tree(TREE_DEPTH5, device)
    for t in (0.2, 1.0):
        w = Warper(temperature=t, top_p=0.95)
        loops = {"ar": lambda c, x, g: generate_ar(timed, c, x, new_tokens, w, (), g),
                 "sdsat k=5": lambda c, x, g: generate_sdsat(timed, c, x, new_tokens, w, 5, sat, (), g),
                 "fused k=2": lambda c, x, g: generate_fused(timed, c, x, new_tokens, w, 2, sat, (), g),
                 "tree": lambda c, x, g: generate_sdsat_tree(timed, c, x, new_tokens, w, sat, tree, (), g)}
        for name, run in loops.items():
            total = forward = 0.0
            tokens = 0
            for rep in range(3):
                cache = model.new_cache(len(prompt) + new_tokens + 64)
                logits = prefill(model, cache, prompt)
                inside[0] = 0.0
                t0 = now(device)
                out, _ = run(cache, logits, torch.Generator(device).manual_seed(rep))
                total += now(device) - t0
                forward, tokens = forward + inside[0], tokens + len(out)
            print(f"T={t} {name:10s} {tokens / total:6.1f} tok/s  forward {forward / total:5.1%}  "
                  f"outside {(total - forward) / tokens * 1000:.2f} ms/token", flush=True)
