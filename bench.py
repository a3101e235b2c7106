"""Benchmark: SDSAT against autoregressive decoding, on the same model, in the same run.

    python bench.py                      # demo model, quick subset (a few minutes on a CPU)
    python bench.py --full               # the whole protocol
    python bench.py --model DIR --device cuda --dtype bfloat16 --prompts humaneval --max-new-tokens 512
    python bench.py --model DIR --latency-only   # forward cost against tokens fed, and the projection
    python bench.py --peers                      # also transformers' generate: greedy and prompt lookup
    python bench.py --prompts-file my.jsonl      # your prompts: {"prompt": "...", "id": "..."} per line
    python bench.py --compile                    # also "... (compiled)" rows: torch.compile, fixed shapes
    python bench.py --model DIR --acceptance     # accepted drafts per iteration only (no timing)
    python bench.py --out bench_results/NAME     # results go to runs/bench unless you say where

For every prompt, every method runs once, in rotating order after a warm-up, so a noisy
machine slows all methods alike. Reported per method:

  tok/s       new tokens / decode-loop time (prefill timed and reported separately)
  speedup     tok/s over autoregressive tok/s, same dtype, same prompts, same budget
  acc/it      mean accepted drafts per draft-verify iteration
  tok/fwd     (new tokens - 1) / decode forward passes; ceiling (k + 2) / 2 for two-step
  exact       greedy outputs identical to autoregressive ones (float32 makes this exact)

plus acceptance by SAT position, the forward latency against the number of tokens fed
beside the machine's floor for it (bench_latency.py: why a 1 + k token forward is not free
on a CPU), and the fraction of repeated 4-grams in the autoregressive outputs (small models
loop, and loops inflate acceptance). Tables and plots: bench_report.py; transformers'
generate as a peer: bench_peers.py.
"""

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import time
from dataclasses import dataclass, replace

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch

from bench_latency import ar_loop_overhead, floors, forward_latency, latency_only, profile_sampling, tree_shape_here
from bench_peers import load_peer, run_hf
from bench_prompts import file_prompts, heldout_prompts, humaneval_prompts
from bench_acceptance import acceptance
from bench_report import (environment, environment_line, markdown, plot, plot_cost_curve, plot_learning_curve,
                          progress)
from checkpoint import write_json, write_text
from compiled import StaticModel
from decode import (generate_ar, generate_sdsat, load_or_exit, load_tokenizer_or_exit, read_config_or_exit,
                    resolve_sat_id)
from decode_common import Stats, prefill
from decode_fused import generate_fused
from decode_lookup import generate_lookup
from decode_tree import (MAX_FED, TREE_DEPTH5, TREE_TABLE, Shape, build_tree, generate_sdsat_tree,
                         generate_tree, read_tree_table)
from machine import now, pick_device, slow_bf16_warning
from model import DEFAULT_MODEL, DTYPES, Llama
from sampling import Warper
from tokenizer import Tokenizer

OUT = "runs/bench"  # git-ignored: committed results change only with an explicit --out


# fused decoding's k = 3 as a draft-tree shape: a chain of SAT rank-0 drafts, a group at every node
FUSED_CHAIN = Shape(((0,), (0, 0), (0, 0, 0)), k=3, groups=4)


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "ar", "chain", "tree", "fused", "lookup", "draft_tree", or "hf" (transformers' generate)
    k: int = 0  # SATs
    warper: Warper = Warper()
    drafts: int = 0  # most drafts copied by prompt lookup per pass
    compiled: bool = False  # decode through compiled.StaticModel (torch.compile, fixed shapes)
    shape: Shape | None = None  # draft_tree: its shape; None = chosen per dtype from the run's cost curve


def tokens_fed(m: Method) -> int | None:
    """Tokens that one decode forward of method m feeds at most: the cost side of tokens per
    forward. Lookup feeds 1 + m copies (m <= drafts); the draft tree its shape's size at most
    (MAX_FED before its shape is chosen). None for transformers' generate (not ours to count)."""
    if m.kind == "draft_tree":
        return m.shape.nominal_size if m.shape else MAX_FED
    return {"ar": 1, "chain": 1 + m.k, "tree": 1 + len(TREE_DEPTH5), "fused": 1 + m.k + (m.k + 1) * m.k,
            "lookup": 1 + m.drafts, "hf": None}[m.kind]


def methods_for(ks: list[int], fused_ks: list[int], sampling: bool, peers: bool = False,
                compiled: bool = False, full: bool = False, copies: list[int] = (10,)) -> list[Method]:
    """The methods of a run, in order. Sampling rows: AR and SDSAT k = 5 at T = 0.2 and 1.0,
    and with `full` the tree too (its rows alone took a fifth of the quick run). Lookup
    with each number of `copies` (the first is the plain "lookup" row)."""
    out = [Method("ar", "ar")] + [Method(f"sdsat k={k}", "chain", k) for k in ks]
    out += [Method("sdsat tree", "tree", 5)] + [Method(f"fused k={k}", "fused", k) for k in fused_ks]
    if compiled:  # the same methods again, compiled: compiled SDSAT against compiled AR
        out += [replace(m, name=f"{m.name} (compiled)", compiled=True) for m in out]
    out += [Method("lookup" if i == 0 else f"lookup, {c} copies", "lookup", drafts=c) for i, c in enumerate(copies)]
    out += [Method("draft tree", "draft_tree")]  # the shape of the run's curve (choose_shape) ...
    out += [Method("draft tree, chain k=3", "draft_tree", shape=FUSED_CHAIN),  # ... against fixed ones
            Method("draft tree, 3 copies", "draft_tree", shape=Shape(copies=3, copy_len=6))]
    if peers:
        out += [Method("hf generate", "hf"), Method("hf prompt lookup", "hf", drafts=10)]
        out += [Method("hf generate (compiled)", "hf", compiled=True)] if compiled else []
    if sampling:
        for t in (0.2, 1.0):
            w = Warper(temperature=t, top_p=0.95)
            out += [Method(f"ar T={t}", "ar", 0, w), Method(f"sdsat k=5 T={t}", "chain", 5, w)]
            out += [Method(f"sdsat tree T={t}", "tree", 5, w)] if full else []
    return out


# ----------------------------------------------------------------------------- timing


def run_once(model: Llama, prompt: list[int], m: Method, max_new: int, sat_id: int | None,
             stop_ids, seed: int, tree, hf=None, static: StaticModel | None = None, table=None) -> dict:
    if m.kind == "hf":
        return run_hf(hf, prompt, m, max_new, stop_ids, static.cache.max_len if m.compiled else 0)
    dev = model.device
    if m.compiled:  # the compiled path's one cache, sized for the longest run
        cache = static.cache
        cache.truncate(0)
    else:
        cache = model.new_cache(len(prompt) + max_new + max(tree.size, tokens_fed(m)) + 1)
    gen = torch.Generator(device=dev).manual_seed(seed)
    t0 = now(dev)
    logits = prefill(model, cache, prompt)  # eager in both: the prompt's length varies
    t1 = now(dev)
    if m.compiled:
        model = static  # the decode loop runs the compiled graphs
    if m.kind == "ar":
        tokens, stats = generate_ar(model, cache, logits, max_new, m.warper, stop_ids, gen)
    elif m.kind == "chain":
        tokens, stats = generate_sdsat(model, cache, logits, max_new, m.warper, m.k, sat_id, stop_ids, gen)
    elif m.kind == "fused":
        tokens, stats = generate_fused(model, cache, logits, max_new, m.warper, m.k, sat_id, stop_ids, gen)
    elif m.kind == "lookup":
        tokens, stats = generate_lookup(model, cache, logits, max_new, m.warper, prompt, m.drafts, stop_ids, gen)
    elif m.kind == "draft_tree":
        tokens, stats = generate_tree(model, cache, logits, max_new, m.warper, sat_id, m.shape, prompt, table,
                                      stop_ids, gen)
    else:
        tokens, stats = generate_sdsat_tree(model, cache, logits, max_new, m.warper, sat_id, tree, stop_ids, gen)
    t2 = now(dev)
    return {"tokens": tokens, "stats": stats, "prefill_s": t1 - t0, "decode_s": t2 - t1}


def repeated_ngram_fraction(tokens: list[int], n: int = 4) -> float:
    """Share of the n-grams in tokens that already occurred earlier in them."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    seen, repeats = set(), 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / max(1, len(grams))


# ----------------------------------------------------------------------------- quality

SHORT_PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main(", "class Stack:\n    def __init__(self):\n",
                 "    for i in range(len(items)):\n", "def read_config(path):\n    \"\"\""]


@torch.inference_mode()
def quality(model: Llama, tok: Tokenizer, heldout: list[list[int]], new_tokens: int = 128) -> dict:
    """Greedy completions of short prompts (to read), and how repetitive greedy
    continuations of held-out prompts are (loops inflate draft acceptance)."""
    def greedy(prompt_ids):
        cache = model.new_cache(len(prompt_ids) + new_tokens)
        return generate_ar(model, cache, prefill(model, cache, prompt_ids), new_tokens, Warper(),
                           model.args.stop_ids)[0]
    samples = [{"prompt": p, "completion": tok.decode(greedy(tok.encode(p))[:64])} for p in SHORT_PROMPTS]
    reps = [repeated_ngram_fraction(greedy(ids)) for ids in heldout]
    return {"samples": samples, "repeated_4gram_fraction": statistics.mean(reps), "per_prompt": reps}


# ----------------------------------------------------------------------------- the benchmark


def bench_dtype(model: Llama, prompts: dict, methods: list[Method], max_new: int, sat_id, stop_ids,
                tree, seed: int, hf=None, static=None, table=None) -> dict:
    """hf: transformers' model on the same weights, for the methods of kind "hf";
    static: the compiled path (compiled.StaticModel), for the compiled methods."""
    results = {}
    for set_name, encoded in prompts.items():
        runs = {m.name: [] for m in methods}
        for m in methods:  # warm-up: every code path once, not counted
            progress(f"{set_name} warm-up: {m.name}")
            run_once(model, encoded[0], m, min(16, max_new), sat_id, stop_ids, seed, tree, hf, static, table)
        for i, prompt in enumerate(encoded):
            order = methods[i % len(methods):] + methods[:i % len(methods)]
            for m in order:
                progress(f"{set_name} prompt {i + 1}/{len(encoded)}: {m.name}")
                runs[m.name].append(run_once(model, prompt, m, max_new, sat_id, stop_ids, seed + i, tree, hf,
                                             static, table))
        progress("")
        results[set_name] = summarise(methods, runs)
    return results


def compile_methods(model: Llama, static: StaticModel, prompt: list[int], methods: list[Method], sat_id,
                    stop_ids, tree, hf=None) -> dict:
    """Run each compiled method once, before anything is timed, so that every block width
    it feeds is compiled now: seconds and new graphs per method. A width that an earlier
    method compiled (the draft pass 1 + k) costs nothing again. Kept out of tok/s."""
    from torch._dynamo.utils import counters
    out = {}
    for m in methods:
        if m.compiled:
            graphs, t0 = counters["stats"]["unique_graphs"], now(model.device)
            run_once(model, prompt, m, 16, sat_id, stop_ids, 0, tree, hf, static)
            out[m.name] = {"seconds": now(model.device) - t0, "graphs": counters["stats"]["unique_graphs"] - graphs}
    return out


def summarise(methods: list[Method], runs: dict) -> dict:
    ar = runs["ar"]
    ar_rate = sum(len(r["tokens"]) for r in ar) / sum(r["decode_s"] for r in ar)
    rep = [repeated_ngram_fraction(r["tokens"]) for r in ar]
    median_rep = statistics.median(rep)
    out = {}
    for m in methods:
        rs = runs[m.name]
        new = sum(len(r["tokens"]) for r in rs)
        stats: list[Stats] = [r["stats"] for r in rs]
        forwards = sum(s.forwards for s in stats)
        accepted = [a for s in stats for a in s.accepted]
        k = m.k
        positions = max(k, m.drafts, *(s.k for s in stats)) if m.kind != "hf" else 0  # draft slots per pass
        checked = [sum(s.checked_at[j] for s in stats) for j in range(positions)]
        acc_at = [sum(s.accepted_at[j] for s in stats) for j in range(positions)]
        ours = m.kind not in ("ar", "hf")  # a speculative method whose iterations we count
        low_rep = [a for s, r in zip(stats, rep) if r <= median_rep for a in s.accepted]
        rate = new / sum(r["decode_s"] for r in rs)
        out[m.name] = {
            "kind": m.kind, "compiled": m.compiled, "k": k,
            "temperature": m.warper.temperature, "top_p": m.warper.top_p,
            "prompts": len(rs), "new_tokens": new, "decode_s": sum(r["decode_s"] for r in rs),
            "prefill_s_mean": statistics.mean(r["prefill_s"] for r in rs),
            "tokens_per_s": rate, "speedup": rate / ar_rate,
            "forwards": forwards if m.kind != "hf" else None,
            "tokens_per_forward": (new - len(rs)) / max(1, forwards) if m.kind != "hf" else None,
            "ceiling": {"ar": 1, "chain": (k + 2) / 2, "fused": k + 1, "lookup": m.drafts + 1}.get(m.kind),
            "shape": m.shape.describe() if m.shape else None,
            "accepted_from": ({src: sum(s.accepted_from.get(src, 0) for s in stats) for src in ("sat", "copy", "both")}
                              if m.kind == "draft_tree" else None),
            "tokens_fed_per_forward": tokens_fed(m),
            "accepted_per_iter": sum(accepted) / max(1, len(accepted)) if ours else None,
            "accepted_per_iter_less_repetitive_half": sum(low_rep) / max(1, len(low_rep)) if ours else None,
            "acceptance_by_position": [a / max(1, c) for a, c in zip(acc_at, checked)],
            "exact_match": (sum(r["tokens"] == a["tokens"] for r, a in zip(rs, ar))
                            if m.warper.greedy else None),
        }
    out["_repeated_4gram_fraction_ar"] = statistics.mean(rep)
    return out


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint directory, Hugging Face layout, or a SAT adapter directory (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--sat-token-id", type=int, default=None, help="the SAT's id (default: the config's sat_token_id)")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES),
                   help="dtypes to benchmark, one after the other (default: float32 bfloat16)")
    p.add_argument("--prompts", nargs="+", default=None, choices=["heldout", "humaneval"],
                   help="prompt sets (default: heldout humaneval, or none with --prompts-file)")
    p.add_argument("--prompts-file", default=None,
                   help="your own prompts, JSON Lines: {\"prompt\": ..., \"id\": ...} per line; "
                        "the set is named after the file (default: none)")
    p.add_argument("--peers", action="store_true",
                   help="also run transformers' generate on the same weights: greedy, and prompt lookup (10 drafts)")
    p.add_argument("--n-prompts", type=int, default=None,
                   help="prompts per set (default: 4; with --full all 164 HumanEval prompts and as many held-out files)")
    p.add_argument("--prompt-tokens", type=int, default=192, help="held-out prompt length (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="(default: 96; with --full 256)")
    p.add_argument("--k", type=int, nargs="+", default=None,
                   help="SAT counts to sweep (default: 1 3 5; with --full 1..8)")
    p.add_argument("--fused-k", type=int, nargs="+", default=None,
                   help="k for the fused method (default: 3; with --full 1..6)")
    p.add_argument("--no-sampling", action="store_true", help="skip the sampling methods")
    p.add_argument("--compile", action="store_true",
                   help="also run the greedy ar, sdsat, tree and fused methods compiled (compiled.StaticModel), "
                        "as rows named '... (compiled)', and with --peers transformers' compiled static-cache "
                        "generate; compile time is reported apart. With --latency-only: compiled latencies too")
    p.add_argument("--autotune", action="store_true",
                   help="with --compile: let inductor time its own matrix-product kernels against the library's "
                        "and keep the faster (max-autotune; compiling takes longer)")
    p.add_argument("--copies", type=int, nargs="+", default=[10],
                   help="lookup rows, one per number of copied drafts (default: 10, as transformers')")
    p.add_argument("--no-pack", action="store_true",
                   help="keep the weights as loaded: on a CPU they are otherwise pre-packed for oneDNN's matrix "
                        "products (packing.pack_weights), except with --compile")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="int8: weight-only int8 with per-channel scales; int4: 4 bits, a scale and a minimum per "
                        "32 weights (quantize.py), at load; with --latency-only (int8 only) an int8 curve beside "
                        "the bf16/fp32 ones (default: none)")
    p.add_argument("--tree-table", default=None,
                   help="the drafts' measured acceptance that the draft tree's shape is chosen from (default: the "
                        "model directory's tree_table.json; --acceptance writes OUT/tree_table.json)")
    p.add_argument("--full", action="store_true", help="every prompt and method")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", default=OUT,
                   help="directory for the results (default: %(default)s, ignored by git; the committed results "
                        "in bench_results/ change only when you name them here)")
    p.add_argument("--acceptance", nargs="*", default=None, metavar="DIR",
                   help="instead: accepted drafts per iteration of greedy two-step decoding (--k, float32, no "
                        "timing) of each model directory given, or of --model; one JSON line each, also "
                        "appended to OUT/acceptance.jsonl (default: off)")
    p.add_argument("--label", default=None,
                   help="--acceptance: name these models' rows (a training run); rows with a name and minutes of "
                        "training are drawn as learning curves in OUT/learning_curve.png (default: none)")
    p.add_argument("--profile-sampling", action="store_true",
                   help="instead: where the time of sampled decoding goes, inside the forward or outside it "
                        "(3 x --max-new-tokens from one prompt, top-p 0.95, T = 0.2 and 1.0)")
    p.add_argument("--quality", action="store_true",
                   help="instead: five greedy completions and the repeated 4-gram fraction of held-out continuations")
    p.add_argument("--latency-only", action="store_true",
                   help="instead: time forwards of --sizes tokens on any checkpoint and project speedups")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 6, 8, 16, 32],
                   help="tokens fed (--latency-only; default: 1 2 4 6 8 16 32)")
    p.add_argument("--reps", type=int, default=5, help="timed forwards per size (--latency-only; default: %(default)s)")
    p.add_argument("--prefix", type=int, default=128,
                   help="cached tokens before each timed forward (--latency-only; default: %(default)s)")
    p.add_argument("--project-from", default=None,
                   help="a bench.json whose tokens per forward to project onto these forward costs "
                        "(--latency-only; default: none)")
    a = p.parse_args()
    if min(a.sizes) < 1 or a.reps < 1 or a.prefix < 1:
        raise SystemExit("error: --sizes, --reps and --prefix must be positive")
    if a.latency_only and a.quantize == "int4":
        raise SystemExit("error: --latency-only times int8 beside the float curves; int4 only in the decoding runs")
    for flag, value in (("--n-prompts", a.n_prompts), ("--max-new-tokens", a.max_new_tokens),
                        ("--prompt-tokens", a.prompt_tokens), ("--threads", a.threads)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if a.acceptance:  # their tokenizer and SAT id (every directory given shares them)
        a.model = a.acceptance[0]
    if min(a.copies) < 1:
        raise SystemExit("error: --copies must be at least 1")
    if a.latency_only:
        return latency_only(a, device)
    if a.profile_sampling:
        return profile_sampling(a.model, device, DTYPES[a.dtype[0]], a.max_new_tokens or 96)
    n_prompts = a.n_prompts or (164 if a.full else 4)
    max_new = a.max_new_tokens or (256 if a.full else 96)
    ks = a.k or (list(range(1, 9)) if a.full else [1, 3, 5])
    fused_ks = a.fused_k or (list(range(1, 7)) if a.full else [3])
    # The same checks, in the same words, as decode.py, before anything is loaded or printed.
    args = read_config_or_exit(a.model)
    tok = load_tokenizer_or_exit(a.model)
    sat_id = None if a.quality else resolve_sat_id(args, a.sat_token_id)  # --quality decodes greedily only
    tree = build_tree(TREE_DEPTH5, device)
    table = read_tree_table(a.tree_table or os.path.join(a.model, TREE_TABLE), a.tree_table is not None)
    if a.peers:
        try:
            import transformers  # noqa: F401 (only to know it is there, before anything runs)
        except ImportError:
            raise SystemExit("error: --peers runs transformers' generate, and transformers is not installed "
                             "(pip install transformers)")
    methods = methods_for(ks, fused_ks, sampling=a.full or not a.no_sampling, peers=a.peers, compiled=a.compile,
                          full=a.full, copies=a.copies)
    if min(ks + fused_ks) < 1:
        raise SystemExit("error: --k and --fused-k must be at least 1")
    widest = max(tokens_fed(m) or 1 for m in methods)  # the tree's 29 tokens, or 1 + k + (k + 1) k for fused
    if a.prompt_tokens + max_new + widest > args.max_position_embeddings:
        raise SystemExit(f"error: a forward of {widest} tokens after a {a.prompt_tokens}-token prompt and "
                         f"{max_new} new tokens needs {a.prompt_tokens + max_new + widest} positions; the model has "
                         f"{args.max_position_embeddings}: use a smaller --k/--fused-k or fewer tokens")
    sets = a.prompts if a.prompts is not None else [] if a.prompts_file else ["heldout", "humaneval"]
    texts = {}
    if a.prompts_file:
        name = os.path.splitext(os.path.basename(a.prompts_file))[0]
        texts[name] = file_prompts(a.prompts_file)[:a.n_prompts]  # all of them unless --n-prompts
    if "heldout" in sets:
        texts["heldout"] = heldout_prompts(a.model, tok, n_prompts, a.prompt_tokens)
    if "humaneval" in sets:
        texts["humaneval"] = humaneval_prompts(n_prompts)
    encoded = {name: [tok.encode(t["text"]) for t in items] for name, items in texts.items()}
    if a.acceptance is not None:
        rows = acceptance(a.acceptance or [a.model], encoded, (a.k or [5])[-1], a.max_new_tokens or 48,
                          a.sat_token_id, device, a.label)
        os.makedirs(a.out, exist_ok=True)
        write_json(os.path.join(a.out, TREE_TABLE), rows[-1].pop("tree_table"))  # the last model's
        for r in rows:
            r.pop("tree_table", None)
        with open(os.path.join(a.out, "acceptance.jsonl"), "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        plot_learning_curve(os.path.join(a.out, "acceptance.jsonl"), os.path.join(a.out, "learning_curve.png"))
        return
    if a.quality:
        model = load_or_exit(a.model, device, DTYPES[a.dtype[0]])
        q = quality(model, tok, encoded.get("heldout") or next(iter(encoded.values())))
        for s in q["samples"]:
            print(f"--- prompt {s['prompt']!r}\n{s['prompt']}{s['completion']}\n")
        print(f"repeated 4-grams in 128-token greedy continuations of {len(q['per_prompt'])} held-out prompts: "
              f"{q['repeated_4gram_fraction']:.1%}")
        os.makedirs(a.out, exist_ok=True)
        write_json(os.path.join(a.out, "quality.json"), q)
        return
    results = {}
    if "bfloat16" in a.dtype and (warning := slow_bf16_warning(device)):
        print(warning, file=sys.stderr)
    for dtype in a.dtype:
        t0 = time.perf_counter()
        model = load_or_exit(a.model, device, DTYPES[dtype], pack=not (a.no_pack or a.compile), quantize=a.quantize)
        load_s = time.perf_counter() - t0
        longest = max(len(e) for v in encoded.values() for e in v) + max_new + tree.size + 1
        if longest > model.args.max_position_embeddings:
            print(f"note: up to {longest} positions, beyond max_position_embeddings "
                  f"{model.args.max_position_embeddings}", file=sys.stderr)
        print(f"{dtype}: loaded in {load_s:.1f}s (peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB); "
              f"{len(methods)} methods x {sum(map(len, encoded.values()))} prompts x {max_new} tokens", file=sys.stderr)
        sizes = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64} | {tokens_fed(m) for m in methods} - {None})
        shape, rate, lat, sat_lat = tree_shape_here(model, table, sizes)  # the draft tree's shape, from this run's curves
        print(f"{dtype}: draft tree shape {shape.describe()} (expected {rate:.1f} tok/s)", file=sys.stderr)
        dtype_methods = [replace(m, shape=shape) if m.kind == "draft_tree" and m.shape is None else m for m in methods]
        hf = load_peer(a.model, device, DTYPES[dtype]) if a.peers else None
        res = {"load_s": load_s, "forward_latency_s": lat, "sat_latency_s": sat_lat, "floor": floors(model, sizes, 128),
               "ar_loop_overhead_s": ar_loop_overhead(model)}
        static = None
        if a.compile:  # one cache for every compiled run: its size is part of each graph's shape
            widest = max(tree.size, *(tokens_fed(m) or 1 for m in methods if m.compiled))
            static = StaticModel(model, max(len(e) for v in encoded.values() for e in v) + max_new + widest + 1,
                                 autotune=a.autotune)
            first = next(iter(encoded.values()))[0]
            res["compile"] = compile_methods(model, static, first, methods, sat_id, model.args.stop_ids, tree, hf)
            res["compiled_latency_s"] = forward_latency(model, sizes, static=static)
        res["tree_shape"] = {"describe": shape.describe(), "sat_paths": shape.sat_paths, "k": shape.k,
                             "groups": shape.groups, "copies": shape.copies, "copy_len": shape.copy_len,
                             "expected_tok_s": rate}
        res["sets"] = bench_dtype(model, encoded, dtype_methods, max_new, sat_id, model.args.stop_ids, tree, a.seed,
                                  hf, static, table)
        results[dtype] = res
        del model, hf, static
    table = markdown(results)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    record = {"environment": environment(device), "model": os.path.abspath(a.model), "max_new_tokens": max_new,
              "prompt_sets": {k: [t["id"] for t in v] for k, v in texts.items()}, "results": results}
    write_json(os.path.join(a.out, "bench.json"), record)
    write_text(os.path.join(a.out, "bench.md"), environment_line(record["environment"]) + table + "\n")
    plot(results, os.path.join(a.out, "bench.png"))
    plot_cost_curve(results, os.path.join(a.out, "cost_curve.png"))
    print(f"\nwrote {a.out}/bench.json and bench.md", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT, as shells report it
        sys.exit(130)
