"""The shipped demo models, loaded from the repository (no test trains them)."""

import json
import math
import os

import pytest
import torch

from corpus import read_text, stdlib_root
from decode import generate_ar, generate_sdsat
from decode_common import prefill
from decode_fused import generate_fused
from checkpoint import load_model
from model import BASE_MODEL as BASE, SAT_MODEL as SAT
from sampling import Warper
from tokenizer import SAT_PIECE, Tokenizer


def heldout_texts(model_dir):
    with open(os.path.join(model_dir, "corpus.json")) as f:
        paths = json.load(f)["splits"]["val"]["paths"]
    return {p: read_text(os.path.join(stdlib_root(), p)) for p in paths}


def test_files_and_size():
    for name in ("config.json", "model.safetensors", "tokenizer.model", "corpus.json", "training.json"):
        assert os.path.isfile(os.path.join(BASE, name)), name
    assert os.path.getsize(os.path.join(BASE, "model.safetensors")) <= 32 * 2**20
    with open(os.path.join(BASE, "config.json")) as f:
        cfg = json.load(f)
    tok = Tokenizer(BASE)
    assert cfg["sat_token_id"] == tok.piece_id(SAT_PIECE)
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert cfg["torch_dtype"] == "bfloat16"


def test_tokenizer_round_trips_every_heldout_file():
    tok = Tokenizer(BASE)
    sat = tok.piece_id(SAT_PIECE)
    texts = heldout_texts(BASE)
    assert len(texts) >= 50
    for path, text in texts.items():
        ids = tok.encode(text, bos=False)
        assert tok.decode(ids) == text, path
        assert sat not in ids and tok.sp.unk_id() not in ids, path


def test_heldout_loss_is_that_of_a_trained_model(device):
    """Cross-entropy on the first 4096 held-out tokens, in float32, is close to the one
    the training report measured (bf16 autocast there, so not equal)."""
    model = load_model(BASE, device=device)
    tok = Tokenizer(BASE)
    ids = []
    for text in heldout_texts(BASE).values():
        ids += tok.encode(text, bos=True, eos=True)
        if len(ids) > 4 * 512:
            break
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(4):
            w = torch.tensor([ids[i * 512:(i + 1) * 512 + 1]], device=device)
            logits = model(w[:, :-1])
            total += torch.nn.functional.cross_entropy(logits[0], w[0, 1:], reduction="sum").item()
            count += 512
    with open(os.path.join(BASE, "training.json")) as f:
        reported = json.load(f)["log"][-1]["val_loss"]
    assert total / count < reported + 0.5
    assert total / count < math.log(8192) / 2  # far below a uniform guess


def heldout_prompts(tok, n=6, length=96):
    prompts = []
    for text in list(heldout_texts(BASE).values())[:n]:
        lines = text.splitlines(keepends=True)
        prompts.append(tok.encode("".join(lines[len(lines) // 3:]))[:length])
    return prompts


@pytest.mark.skipif(not os.path.isdir(SAT), reason="the SAT-tuned demo model is not shipped yet")
@pytest.mark.parametrize("method", ["sdsat", "fused"])
def test_sat_model_greedy_equals_ar_on_heldout_prompts(method, device):
    model = load_model(SAT, device=device)
    tok = Tokenizer(SAT)
    sat = model.args.sat_token_id
    accepted = 0
    for prompt in heldout_prompts(tok):
        cache = model.new_cache(512)
        ar, _ = generate_ar(model, cache, prefill(model, cache, prompt), 48, Warper(), model.args.stop_ids)
        for k in (1, 3, 5, 8) if method == "sdsat" else (2, 5):
            cache = model.new_cache(512)
            gen = generate_sdsat if method == "sdsat" else generate_fused
            out, stats = gen(model, cache, prefill(model, cache, prompt), 48, Warper(), k, sat, model.args.stop_ids)
            assert out == ar, (method, k)
            accepted += sum(stats.accepted)
    assert accepted > 0  # the drafts do get accepted: the SAT tuning is really there
