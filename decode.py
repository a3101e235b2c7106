"""SDSAT's two-step decoding, the paper's loop, and the command line that runs every method.

    python decode.py --prompt "def fibonacci(n):" --max-new-tokens 64
    python decode.py --method sdsat --k 5 --trace --prompt "import os"
    python decode.py --method sdsat --compile      # fixed-shape, compiled forwards (compiled.py)
    python decode.py --method sdsat --prompt-file my_function.py

The two-step loop (SDSAT.md section 3), with L tokens cached, `cur` the last emitted token
(not yet cached) and S the semantic adaptive token:

    draft:   feed [cur, S, S, .., S]       at positions L .. L+k
             -> g[0] the exact next token, g[1..k] drafts; truncate the cache to L+1
    verify:  feed [g[0], g[1], .., g[k]]   at positions L+1 .. L+1+k
             -> h; n = how many drafts match (g[i+1] == h[i]); emit h[0..n]
             truncate the cache to L+2+n; cur = h[n]

Every loop takes a prefilled cache and the logits of the last prompt token, and returns
(new token ids, Stats). The first new token always comes from the prefill logits, so
`Stats.forwards` counts only the decode loop's forward passes. Timing is the caller's job
(bench.py). Batch size is 1: speculative decoding accepts a different number of tokens
per sequence, and a batch would need per-row cache lengths. The methods beyond the paper
have files of their own: decode_tree.py, decode_fused.py, decode_lookup.py; what the
loops share is in decode_common.py.
"""

import argparse
import os
import signal
import sys
import time

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch

from checkpoint import load_model, read_config
from compiled import StaticModel
from decode_common import Emitter, Stats, draft_and_emit, finish, prefill, verify
from decode_fused import generate_fused
from decode_lookup import generate_lookup
from decode_tree import (MAX_FED, TREE_DEPTH5, TREE_TABLE, build_tree, generate_sdsat_tree,
                         generate_tree, parse_shape, read_tree_table)
from machine import pick_device, slow_bf16_warning
from model import DEFAULT_MODEL, DTYPES, CheckpointError, KVCache, Llama, ModelArgs
from packing import pack_weights
from quantize import QUANTIZERS
from sampling import Warper
from trace_html import check_path, command_line, page_data, write_page
from trace_view import trace_kind, trace_printer

# ----------------------------------------------------------------------------- SDSAT, two steps


@torch.inference_mode()
def generate_sdsat(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                   k: int, sat_id: int, stop_ids=(), generator=None, on_tokens=None,
                   trace=None) -> tuple[list[int], Stats]:
    """Two-step SDSAT decoding: a draft pass with k SATs, then a verify pass of the drafts.

    Greedy: drafts are the argmax at each SAT, and the output equals greedy autoregressive
    decoding. Sampling: drafts are sampled from the SAT distributions and verified with
    the speculative rule (sampling.accept_drafts), so the output is distributed exactly
    as autoregressive sampling.
    """
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=k)
    dev = model.device
    sats = torch.full((k,), sat_id, device=dev)
    cur = warper.next_token(logits, generator)  # the first new token, from the prefill
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    while True:
        L = cache.length
        # 1. Draft: [cur, S * k], then the SATs leave the cache. Output 0 is exact: x.
        x, drafts, q, done = draft_and_emit(model, cache, cur, sats, stats, warper, generator, out, trace)
        if done:
            break
        # 2. Verify: [x, d_1 .. d_k] gives the target distribution at every draft's slot.
        logits = model(torch.cat([x.view(1), drafts])[None], cache=cache)[0]  # [1 + k, V]
        stats.forwards += 1
        n, nxt, d = verify(warper, logits, drafts, q, generator)
        stats.count(n, k)
        before = cache.length
        cache.truncate(L + 2 + n)  # keep cur, x and the n accepted drafts
        done = out.emit(d[:n] + [nxt])
        if trace:
            trace(dict(step="verify", cur=int(x), sats=0, drafts=d, accepted=n, bonus=nxt, emitted=out.last,
                       cache_before=before, cache_after=cache.length))
        if done:
            break
        cur = torch.tensor(nxt, device=dev)
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- autoregressive


@torch.inference_mode()
def generate_ar(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                stop_ids=(), generator=None, on_tokens=None) -> tuple[list[int], Stats]:
    """One token per forward pass."""
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats()
    while not out.done:
        token = warper.next_token(logits, generator)
        if out.emit([int(token)]):  # int(): the host needs the id to check for a stop
            break
        logits = model(token.view(1, 1), cache=cache)[0, -1]
        stats.forwards += 1
    stats.new_tokens = len(out.tokens)
    return out.tokens, stats


# ----------------------------------------------------------------------------- command line


def load_or_exit(path: str, device, dtype, pack: bool = False, quantize: str | None = None) -> Llama:
    """The model, or one line saying why not. quantize "int8" or "int4": weight-only (quantize.py);
    pack: pre-pack the float weights (model.pack_weights: on a CPU, the same text, faster)."""
    try:
        model = load_model(path, device=device, dtype=dtype)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    if quantize and model.args.extra.get("quantization"):
        if quantize != "int8":
            raise SystemExit(f"error: {path} is an int8 checkpoint already; --quantize {quantize} needs a float one")
    elif quantize:
        try:
            QUANTIZERS[quantize](model)
        except ValueError as e:
            raise SystemExit(f"error: --quantize {quantize}: {e}")
    return pack_weights(model) if pack else model


def read_config_or_exit(path: str) -> ModelArgs:
    """The model's shape from its config.json alone: every check runs before the weights load."""
    try:
        return read_config(path)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")


def read_prompt_file(path: str) -> str:
    """The text of --prompt-file, or one line saying why it cannot be read. A byte-order
    mark that an editor wrote at its start is not text (utf-8-sig skips it)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise SystemExit(f"error: --prompt-file {path} does not exist")
    except IsADirectoryError:
        raise SystemExit(f"error: --prompt-file {path} is a directory, not a file")
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: --prompt-file {path} is not UTF-8 text (byte {e.start}: {e.reason})")
    except OSError as e:
        raise SystemExit(f"error: --prompt-file {path} cannot be read: {e.strerror}")


def load_tokenizer_or_exit(path: str):
    from tokenizer import Tokenizer
    try:
        return Tokenizer(path)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")


def resolve_sat_id(args: ModelArgs, sat_id: int | None) -> int:
    if sat_id is None and args.sat_token_id is not None and args.sat_k is None:
        print("warning: this model's config reserves a SAT id but records no SAT fine-tuning (sat_k): "
              "drafts will rarely be accepted", file=sys.stderr)
    sat_id = args.sat_token_id if sat_id is None else sat_id
    if sat_id is None:
        raise SystemExit("error: this model's config.json has no sat_token_id: pass --sat-token-id "
                         "(SDSAT needs a model fine-tuned with semantic adaptive tokens)")
    if not 0 <= sat_id < args.vocab_size:
        raise SystemExit(f"error: SAT id {sat_id} is outside the vocabulary (0..{args.vocab_size - 1})")
    return sat_id


DEFAULT_PROMPT = "def fibonacci(n):\n"

# What each --method reads besides the prompt and the sampling settings. An option given to
# a method that ignores it is refused: a flag silently ignored looks like a result.
METHOD_OPTIONS = {"ar": set(), "sdsat": {"k", "tree", "sat_token_id", "trace", "html"},
                  "fused": {"k", "sat_token_id", "trace", "html"}, "lookup": {"copies", "trace", "html"},
                  "tree": {"shape", "tree_table", "sat_token_id", "trace", "html"}}
COPIES = {"lookup": 10}  # default --copies: transformers' 10


def block_sizes(method: str, k: int, tree: bool, copies: int = 0) -> tuple[int, int]:
    """(cache room for the widest forward pass, positions its SATs reach past the text).

    Two-step feeds 1 + k tokens, its last SAT k positions past the newest token; the tree
    feeds 29 tokens, 5 deep; fused feeds 1 + k + (k + 1) k tokens and its last group's
    last SAT sits k positions past d_k, which is k - 1 past the newest cached token. Lookup
    feeds at most 1 + `copies` copies (real tokens, no SATs). The draft tree (decode_tree.
    generate_tree) feeds at most `copies` tokens (its shape's size) and its SATs reach k
    past its deepest node (here: 2k, k = the deepest node)."""
    if tree:
        return len(TREE_DEPTH5) + 1, max(len(p) for p in TREE_DEPTH5)
    return {"ar": (0, 0), "sdsat": (k + 1, k), "fused": (1 + k + (k + 1) * k, 2 * k - 1), "lookup": (1 + copies, 0),
            "tree": (copies, 2 * k)}[method]


def memory_needed(args: ModelArgs, max_len: int, fed: int, dtype: torch.dtype) -> int:
    """Bytes, roughly, of a KV cache of max_len tokens and one forward of `fed` tokens over it:
    the cache [layers, K and V, kv_heads, max_len, head_dim], the attention scores [heads, fed,
    max_len] (SDPA's plain kernel makes them), the boolean mask [fed, max_len], the logits [fed, V]."""
    item = torch.finfo(dtype).bits // 8
    cache = 2 * args.num_hidden_layers * args.num_key_value_heads * max_len * args.head_dim * item
    return cache + fed * (args.num_attention_heads * max_len * item + max_len + args.vocab_size * item)


def memory_there_is(device: torch.device) -> int:
    """Bytes of the GPU, or of this machine's RAM: a bound that no run can pass."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class TextStream:
    """Prints decoded text as tokens arrive (decodes everything, prints the new tail)."""

    def __init__(self, tok):
        self.tok, self.ids, self.printed = tok, [], ""

    def __call__(self, new_ids):
        self.ids += new_ids
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        sys.stdout.write(text[len(self.printed):])
        sys.stdout.flush()
        self.printed = text


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint directory, Hugging Face layout, or a SAT adapter directory (adapter.json), "
                        "which runs on the base it names (default: %(default)s)")
    p.add_argument("--prompt", default=None,
                   help=f"text to continue; an empty one starts from BOS alone (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--prompt-file", default=None,
                   help="read the prompt from this UTF-8 file instead of --prompt; an empty file starts from BOS "
                        "alone, as --prompt '' does (default: none)")
    p.add_argument("--suffix", default=None,
                   help="CodeLlama infilling: write the middle between --prompt and this suffix (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    p.add_argument("--method", choices=list(METHOD_OPTIONS), default="ar",
                   help="ar: one token per forward pass; sdsat: two-step draft-then-verify; fused: one-step; "
                        "lookup: drafts copied from earlier text; tree: SAT candidates and copies in one token tree, "
                        "one pass an iteration (decode_tree.generate_tree) (default: %(default)s)")
    p.add_argument("--k", type=int, default=None,
                   help="SATs, so drafts, per step; sdsat and fused only (default: 5)")
    p.add_argument("--copies", type=int, default=None,
                   help="most drafts copied per pass; lookup only (default: 10, as "
                        "transformers' prompt lookup). Fewer pay where a forward's cost grows "
                        "fast with the tokens fed: bench_results/peers/copies.md")
    p.add_argument("--tree", action="store_true",
                   help="with --method sdsat: verify a depth-5 token tree instead of a chain of --k drafts")
    p.add_argument("--shape", default=None,
                   help="--method tree: the tree each pass feeds; auto (the default) picks the one with the most "
                        "expected tokens per second from this machine's cost curve, timed at start, and "
                        "--tree-table; or SPEC such as 'k=2,nodes=6,groups=2,copies=2,len=4' (decode_tree.Shape)")
    p.add_argument("--tree-table", default=None,
                   help="--method tree: the drafts' measured acceptance (bench.py --acceptance writes it; "
                        "default: the model directory's tree_table.json, else copies alone)")
    p.add_argument("--sat-token-id", type=int, default=None,
                   help="the SAT's id; sdsat, fused and tree only (default: the config's sat_token_id)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample from the likeliest tokens up to this mass; 1 = off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="float32 makes greedy SDSAT output exactly autoregressive (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=None,
                   help="KV cache size in tokens (default: prompt + new tokens + room for drafts)")
    p.add_argument("--trace", action="store_true", help="show every draft and verify pass; every method but ar")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write one self-contained page of the run to FILE, to step through pass by pass beside "
                        "autoregressive decoding of the same prompt (run after it); every method but ar "
                        "(default: none)")
    p.add_argument("--compile", action="store_true",
                   help="decode with torch.compile'd fixed-shape forwards (compiled.StaticModel); the first pass "
                        "of each block width compiles, which takes a while")
    p.add_argument("--no-pack", action="store_true",
                   help="keep the weights as loaded: on a CPU they are otherwise pre-packed for oneDNN's matrix "
                        "products (packing.pack_weights; the same text, faster; not with --compile)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="int8: weight-only int8 with per-channel scales; int4: 4 bits, a scale and a minimum per "
                        "32 weights (quantize.py), at load (default: none)")
    a = p.parse_args()
    try:
        warper = Warper(a.temperature, a.top_k, a.top_p)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    given = {"k": a.k is not None, "tree": a.tree, "sat_token_id": a.sat_token_id is not None, "trace": a.trace,
             "copies": a.copies is not None, "shape": a.shape is not None, "tree_table": a.tree_table is not None,
             "html": a.html is not None}
    for name in (n for n, g in given.items() if g and n not in METHOD_OPTIONS[a.method]):
        users = " or ".join(m for m, options in METHOD_OPTIONS.items() if name in options)
        raise SystemExit(f"error: --{name.replace('_', '-')} does nothing with --method {a.method} "
                         f"(it is for --method {users})")
    if a.tree and a.k is not None:
        raise SystemExit(f"error: --k does nothing with --tree (the tree's depth is fixed: "
                         f"{block_sizes('sdsat', 0, True)[1]})")
    # Sampling settings at temperature 0 only warn: a sweep over temperatures may include 0.
    unused = [flag for flag, g in (("--top-k", a.top_k != 0), ("--top-p", a.top_p != 1.0), ("--seed", a.seed != 0)) if g]
    if warper.greedy and unused:
        print(f"warning: greedy decoding (--temperature 0) ignores {', '.join(unused)}", file=sys.stderr)
    if a.html is not None and (why := check_path(a.html)):
        raise SystemExit(f"error: --html {a.html}: {why}")
    if a.prompt is not None and a.prompt_file is not None:
        raise SystemExit("error: give --prompt or --prompt-file, not both")
    a.prompt = (read_prompt_file(a.prompt_file) if a.prompt_file is not None else
                DEFAULT_PROMPT if a.prompt is None else a.prompt)
    k = 5 if a.k is None else a.k
    copies = COPIES.get(a.method, 0) if a.copies is None else a.copies
    if a.max_new_tokens < 1 or k < 1:
        raise SystemExit("error: --max-new-tokens and --k must be at least 1")
    if a.copies is not None and a.copies < 1:
        raise SystemExit(f"error: --copies must be at least 1, got {a.copies}")

    # Every check runs on the config and the prompt, before the weights load or a line is printed.
    device = pick_device(a.device)
    args = read_config_or_exit(a.model)
    tok = load_tokenizer_or_exit(a.model)
    sat = resolve_sat_id(args, a.sat_token_id) if "sat_token_id" in METHOD_OPTIONS[a.method] else None
    stop = list(args.stop_ids)
    if a.suffix is not None:
        try:
            prompt = tok.encode_infill(a.prompt, a.suffix)
        except ValueError as e:
            raise SystemExit(f"error: --suffix: {e}")
        stop.append(tok.eot_id)  # the middle ends with ▁<EOT>
    else:
        prompt = tok.encode(a.prompt)
    if not prompt:  # an empty text and no BOS: nothing to start from
        raise SystemExit(f"error: the prompt is empty and this model's tokenizer has no BOS token to start from: "
                         "give some text")
    warnings = []
    depth = len(max(TREE_DEPTH5, key=len)) if a.tree else k  # how far ahead the SATs must draft
    if sat is not None and args.sat_k and depth > args.sat_k:
        asked = "--tree drafts 5 ahead" if a.tree else f"--k {k}"
        warnings.append(f"warning: {asked}, but this model's SATs were trained with k = {args.sat_k}: SATs past "
                        f"{args.sat_k} were never taught, their drafts will rarely be accepted")
    if args.sat_token_id is not None and args.sat_token_id in prompt:
        warnings.append(f"warning: the prompt holds the SAT id {args.sat_token_id} as a real token: the model "
                        "reads it as a SAT there")
    if a.method == "tree":
        table = read_tree_table(a.tree_table or os.path.join(a.model, TREE_TABLE), a.tree_table is not None)
        shape = parse_shape(a.shape, table) if a.shape not in (None, "auto") else None
        k = shape.k if shape else table.get("k", 0)
        copies = shape.nominal_size if shape else MAX_FED  # auto: the largest it may choose
    room, reach = block_sizes(a.method, k, a.tree, copies)  # the widest block fed; how far past the text its SATs sit
    drafts = "--tree" if a.tree else f"--method {a.method}" + (f" --k {k}" if "k" in METHOD_OPTIONS[a.method] else "")
    fix = "fewer --max-new-tokens" + (" or a smaller --k" if "k" in METHOD_OPTIONS[a.method] and not a.tree else "")
    text, positions = len(prompt) + a.max_new_tokens, args.max_position_embeddings
    if text > positions:  # the model was never trained there: refuse rather than run on for hours
        left = positions - len(prompt)
        raise SystemExit(f"error: prompt of {len(prompt)} tokens + {a.max_new_tokens} new tokens exceed the model's "
                         f"{positions} positions (max_position_embeddings): use "
                         + (f"--max-new-tokens {left} or fewer" if left > 0 else "a shorter prompt"))
    if text + reach > positions:  # only the drafts would go there: refuse
        raise SystemExit(f"error: {drafts} puts SATs up to position {text + reach} (prompt {len(prompt)} + "
                         f"{a.max_new_tokens} new tokens + {reach}), beyond the model's {positions} positions "
                         f"(max_position_embeddings): use {fix}")
    need = text + room
    max_len = need if a.max_len is None else a.max_len
    if need > max_len:
        raise SystemExit(f"error: prompt of {len(prompt)} tokens + {a.max_new_tokens} new tokens"
                         f"{f' + {room} for drafts' if room else ''} exceeds --max-len {max_len}")
    needed, there_is = memory_needed(args, max_len, max(room, 1), DTYPES[a.dtype]), memory_there_is(device)
    if needed > there_is:
        raise SystemExit(f"error: {drafts} needs about {needed / 2**30:,.0f} GiB at once (a KV cache of {max_len:,} "
                         f"tokens, a forward pass of {max(room, 1):,}), more than the {there_is / 2**30:,.0f} GiB "
                         f"{'of this GPU' if device.type == 'cuda' else 'of memory this machine has'}: use {fix}")

    if a.dtype == "bfloat16" and (warning := slow_bf16_warning(device)):
        warnings.append(warning)
    for warning in warnings:  # after every check: a refused run says only why
        print(warning, file=sys.stderr)
    model = load_or_exit(a.model, device, DTYPES[a.dtype], pack=not (a.no_pack or a.compile), quantize=a.quantize)
    gen = torch.Generator(device=device).manual_seed(a.seed)
    if a.method == "tree" and shape is None:  # auto: this machine's cost curve, timed now, and the table
        from bench_latency import tree_shape_here
        sizes = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64]
        shape, rate, _, _ = tree_shape_here(model, table, sizes, max(1, min(len(prompt), 256)), 3)
        print(f"tree shape: {shape.describe()} (expected {rate:.1f} tok/s here)", file=sys.stderr)
    static = StaticModel(model, max_len) if a.compile else None
    cache = static.cache if a.compile else model.new_cache(max_len)
    # --trace prints one line per iteration, then the text; otherwise the text streams.
    stream = None if a.trace else TextStream(tok)
    if not a.trace:
        sys.stdout.write(a.prompt)
    t0 = time.perf_counter()
    logits = prefill(model, cache, prompt)  # eager even with --compile: the prompt's length varies
    eager = model
    if a.compile:
        model = static  # from here on the loops call the compiled graphs
    common = dict(stop_ids=stop, generator=gen, on_tokens=stream)
    max_new = a.max_new_tokens
    if a.method == "ar":
        tokens, stats = generate_ar(model, cache, logits, max_new, warper, **common)
    else:
        kind, records, trace = trace_kind(a.method, a.tree), [], None
        if a.trace or a.html is not None:  # one record per forward pass: --trace prints it, --html keeps it
            printer = trace_printer(tok, sys.stdout.isatty(), kind) if a.trace else None

            def trace(record):
                records.append(record)
                if printer:
                    printer(record)
        if a.method == "fused":
            tokens, stats = generate_fused(model, cache, logits, max_new, warper, k, sat, trace=trace, **common)
        elif a.method == "lookup":
            tokens, stats = generate_lookup(model, cache, logits, max_new, warper, prompt, copies, trace=trace,
                                            **common)
        elif a.method == "tree":
            tokens, stats = generate_tree(model, cache, logits, max_new, warper, sat, shape, prompt, table,
                                          trace=trace, **common)
        elif a.tree:
            tokens, stats = generate_sdsat_tree(model, cache, logits, max_new, warper, sat,
                                                build_tree(TREE_DEPTH5, device), trace=trace, **common)
        else:
            tokens, stats = generate_sdsat(model, cache, logits, max_new, warper, k, sat, trace=trace, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    text = a.prompt + tok.decode(tokens)
    if a.trace:
        print("\n" + text, end="")
    if not text.endswith("\n"):  # so that the shell's prompt, or the next file's text, starts on a line of its own
        print()
    sys.stdout.flush()  # the text first, then the summary on stderr
    print(f"\n[{a.method}{' tree' if a.tree else ''}] {len(tokens)} tokens in {dt:.2f}s "
          f"({len(tokens) / dt:.1f} tok/s incl. prefill{' and compiling' if a.compile else ''}), "
          f"{stats.forwards} decode forwards, "
          f"{stats.tokens_per_forward:.2f} tokens/forward"
          + (f", {stats.mean_accepted:.2f} accepted drafts/iteration" if a.method != "ar" else ""),
          file=sys.stderr)
    if a.html is not None:  # the page shows autoregressive decoding of the same prompt beside the run
        cache.truncate(0)
        ar_tokens, ar_stats = generate_ar(eager, cache, prefill(eager, cache, prompt), max_new, warper, stop,
                                          torch.Generator(device=device).manual_seed(a.seed))
        data = page_data(records, tok, prompt, tokens, kind, command_line(sys.argv[1:]), warper.greedy, ar_tokens,
                         ar_stats.forwards)
        try:
            write_page(a.html, data)
        except OSError as e:
            raise SystemExit(f"error: --html {a.html}: {e.strerror}")
        print(f"page: {a.html} ({os.path.getsize(a.html) / 1000:.0f} kB, {len(records)} forward passes)",
              file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: end the line, no traceback; 130 = 128 + SIGINT, as shells report it
        print()
        sys.exit(130)
