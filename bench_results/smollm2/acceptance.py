"""How the SmolLM2 acceptance numbers in the README were measured (run from the repository root):

    python bench_results/smollm2/acceptance.py models/smollm2-135m-sat [MORE_MODEL_DIRS ...]

Greedy two-step SDSAT, k = 5, SAT id 6, float32, one thread: the mean number of accepted
drafts per draft-verify iteration over bench.py's first 8 held-out and 8 HumanEval
prompts, 48 new tokens each. No timing: a model's acceptance does not depend on the
machine. One JSON line per model.
"""
import json
import os
import sys

sys.path.insert(0, os.getcwd())
import torch  # noqa: E402

from bench import heldout_prompts, humaneval_prompts  # noqa: E402
from decode import generate_sdsat
from decode_common import prefill  # noqa: E402
from checkpoint import load_model  # noqa: E402
from sampling import Warper  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

N_PROMPTS, NEW_TOKENS, K, SAT_ID = 8, 48, 5, 6
torch.set_num_threads(1)
tok = Tokenizer("models/smollm2-135m")
sets = {"heldout": heldout_prompts("models/smollm2-135m-sat", tok, N_PROMPTS, 192),
        "humaneval": humaneval_prompts(N_PROMPTS)}
for path in sys.argv[1:]:
    model = load_model(path)
    row = {"model": path}
    for name, prompts in sets.items():
        accepted = iterations = 0
        for p in prompts:
            cache = model.new_cache(512)
            logits = prefill(model, cache, tok.encode(p["text"]))
            _, stats = generate_sdsat(model, cache, logits, NEW_TOKENS, Warper(), K, SAT_ID, model.args.stop_ids)
            accepted, iterations = accepted + sum(stats.accepted), iterations + len(stats.accepted)
        row[name] = round(accepted / iterations, 3)
    print(json.dumps(row), flush=True)
