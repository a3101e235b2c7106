"""How the README's "sampling paths, profiled" table was measured (run from the repository root):

    python bench_results/peers/profile_sampling.py [float32|bfloat16]

The demo SAT model, 1 thread, 3 x 96 new tokens from one prompt (a slice of decode.py),
top-p 0.95. For each method: tok/s, the share of the decode loop spent inside the model's
forward (a timer around every model call), and the time outside it per new token.
"""
import os
import sys
import time

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402

from decode import generate_ar, generate_sdsat

from decode_common import prefill

from decode_fused import generate_fused

from decode_tree import TREE_DEPTH5, build_tree, generate_sdsat_tree  # noqa: E402,E501
from checkpoint import load_model
from model import SAT_MODEL  # noqa: E402
from sampling import Warper  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

torch.set_num_threads(1)
dtype = getattr(torch, sys.argv[1]) if len(sys.argv) > 1 else torch.float32
model = load_model(SAT_MODEL, dtype=dtype)
prompt = Tokenizer(SAT_MODEL).encode(open("decode.py").read()[2000:4000])[:200]
inside = [0.0]
forward = type(model).__call__


def timed(self, *args, **kwargs):
    start = time.perf_counter()
    out = forward(self, *args, **kwargs)
    inside[0] += time.perf_counter() - start
    return out


type(model).__call__ = timed
sat = model.args.sat_token_id
for t in (0.2, 1.0):
    w = Warper(temperature=t, top_p=0.95)
    methods = {"ar": lambda c, x, g: generate_ar(model, c, x, 96, w, (), g),
               "sdsat k=5": lambda c, x, g: generate_sdsat(model, c, x, 96, w, 5, sat, (), g),
               "fused k=2": lambda c, x, g: generate_fused(model, c, x, 96, w, 2, sat, (), g),
               "tree": lambda c, x, g: generate_sdsat_tree(model, c, x, 96, w, sat, build_tree(TREE_DEPTH5), (), g)}
    for name, run in methods.items():
        total = fwd = 0.0
        tokens = 0
        for rep in range(3):
            cache = model.new_cache(512)
            with torch.inference_mode():
                logits = prefill(model, cache, prompt)
            inside[0] = 0.0
            start = time.perf_counter()
            out, _ = run(cache, logits, torch.Generator().manual_seed(rep))
            total += time.perf_counter() - start
            fwd, tokens = fwd + inside[0], tokens + len(out)
        print(f"T={t} {name:10s} {tokens / total:6.1f} tok/s  forward {fwd / total:5.1%}  "
              f"outside {(total - fwd) / tokens * 1000:.2f} ms/token", flush=True)
