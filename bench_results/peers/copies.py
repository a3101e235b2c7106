"""How many copies should prompt lookup and the hybrid feed, and do the hybrid's SAT
passes pay, on this machine? Demo SAT model, greedy, 1 thread, 4 held-out + 4 HumanEval
prompts x 96 tokens, float32 and bfloat16, methods interleaved as in bench.py.

    python bench_results/peers/copies.py > bench_results/peers/copies.md
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import bench  # noqa: E402
from bench import Method  # noqa: E402
from decode_tree import TREE_DEPTH5, build_tree  # noqa: E402
from checkpoint import load_model
from model import DEFAULT_MODEL, DTYPES  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

torch.set_num_threads(1)
tok = Tokenizer(DEFAULT_MODEL)
prompts = {"heldout": bench.heldout_prompts(DEFAULT_MODEL, tok, 4, 192), "humaneval": bench.humaneval_prompts(4)}
encoded = {name: [tok.encode(p["text"]) for p in ps] for name, ps in prompts.items()}
methods = [Method("ar", "ar")]
methods += [Method(f"lookup, {c} copies", "lookup", drafts=c) for c in (10, 5, 3)]
methods += [Method(f"hybrid k={k}, {c} copies", "hybrid", k, drafts=c) for k, c in ((2, 5), (2, 10), (1, 5), (1, 3))]
print(bench.environment_line(bench.environment(torch.device("cpu"))))
print("| dtype | prompts | " + " | ".join(m.name for m in methods) + " |")
print("|---" * (len(methods) + 2) + "|")
for dtype in ("float32", "bfloat16"):
    model = load_model(DEFAULT_MODEL, "cpu", DTYPES[dtype])
    res = bench.bench_dtype(model, encoded, methods, 96, model.args.sat_token_id, model.args.stop_ids,
                            build_tree(TREE_DEPTH5), seed=0)
    for name, rows in res.items():
        cells = [f"{rows[m.name]['tokens_per_s']:.1f} ({rows[m.name]['speedup']:.2f}x)" for m in methods]
        print(f"| {dtype} | {name} | " + " | ".join(cells) + " |", flush=True)
