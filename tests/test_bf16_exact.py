"""Greedy speculative decoding in bfloat16 equals greedy AR, token for token, on a CPU with
bf16 instructions (model.attend_few).

Why it can: on this CPU every linear layer's product of T rows equals T one-row products
bit for bit in bf16 (pre-packed too), and so do RMSNorm, RoPE and the SwiGLU. What was not
is attention: SDPA's CPU kernel computes a query's row differently with 1 or 6 queries
beside it. model.attend_few, two plain products and a softmax in float64 for a pass of a
few queries, gives each row the same value in any block, and the bf16 rounding of its
output hides where zeros sit in its sums (a tree's rows skip their siblings' keys).

Anchors: a 6-token pass's logits equal six 1-token passes' bit for bit; the attention of a
block equals its rows alone; every speculative method's bf16 text equals bf16 AR. On GPUs
(cuBLAS) and on CPUs without bf16 instructions none of this is claimed: skipped.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from checkpoint import load_model
from decode import generate_ar, generate_sdsat
from decode_common import prefill
from decode_fused import generate_fused
from decode_lookup import generate_lookup
from decode_tree import TREE_DEPTH5, build_tree, generate_sdsat_tree, generate_tree
from model import SAT_MODEL, attend_few
from packing import pack_weights
from sampling import Warper
from test_smollm2 import BASE, HELD_OUT, SAT, TREE, read
from tokenizer import Tokenizer

BF16_CPU = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
pytestmark = pytest.mark.skipif(not BF16_CPU, reason="the claim is for CPUs with bf16 instructions")
needs_smollm2 = pytest.mark.skipif(not os.path.isdir(BASE), reason=f"{BASE} missing: run bash get_smollm2.sh")


def qkv(T, N, dtype, seed=0, heads=9, kv_heads=3, hd=64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, n, hd, generator=g).to(dtype) for h, n in ((heads, T), (kv_heads, N), (kv_heads, N))]


@pytest.mark.quick
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_blocks_attention_is_its_rows_alone(dtype):
    """A block of 6 queries after 100 cached keys, causal: row t equals query t alone over
    its own 101 + t keys (a decoding step), bit for bit. And a tree's rows, which skip
    their siblings' keys, equal the chain they lie on."""
    L, T = 100, 6
    q, k, v = qkv(T, L + T, dtype)
    mask = (torch.arange(L + T)[None, :] <= L + torch.arange(T)[:, None])[None, None]  # [1, 1, T, L + T]
    block = attend_few(q, k, v, mask)
    for t in range(T):
        alone = attend_few(q[:, :, t:t + 1], k[:, :, :L + t + 1], v[:, :, :L + t + 1], None)
        assert torch.equal(block[:, :, t:t + 1], alone), t
    # A tree: root 0, children 1 and 2 of 0, child 3 of 2. Node 3's path is 0, 2, 3.
    tree = torch.zeros(1, 1, 4, L + 4, dtype=torch.bool)
    tree[..., :L] = True
    for node, path in enumerate(([0], [0, 1], [0, 2], [0, 2, 3])):
        tree[0, 0, node, [L + p for p in path]] = True
    out = attend_few(q[:, :, :4], k[:, :, :L + 4], v[:, :, :L + 4], tree)
    chain = [0, 2, 3]  # the same keys laid out as decoding would have cached them
    k_chain, v_chain = torch.cat([k[:, :, :L], k[:, :, [L + p for p in chain]]], 2), \
        torch.cat([v[:, :, :L], v[:, :, [L + p for p in chain]]], 2)
    alone = attend_few(q[:, :, [3]], k_chain, v_chain, None)
    if dtype == torch.bfloat16:  # bf16 rounding hides the float64 sums' order
        assert torch.equal(out[:, :, 3:4], alone)
    else:
        torch.testing.assert_close(out[:, :, 3:4], alone, rtol=0, atol=1e-6)


@pytest.mark.quick
def test_attend_few_is_attention():
    q, k, v = qkv(5, 40, torch.float32, seed=1)
    mask = torch.rand(1, 1, 5, 40, generator=torch.Generator().manual_seed(2)) < 0.7
    mask[..., 0] = True
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(attend_few(q, k, v, mask), want, rtol=1e-5, atol=1e-5)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(attend_few(q, k, v, additive), want, rtol=1e-5, atol=1e-5)


@needs_smollm2
@pytest.mark.parametrize("pack", [True, False])
def test_a_pass_of_six_is_six_passes_of_one(pack):
    model = load_model(BASE, dtype=torch.bfloat16)
    if pack:
        pack_weights(model)
    g = torch.Generator().manual_seed(0)
    prompt, new = torch.randint(100, 40000, (1, 100), generator=g), torch.randint(100, 40000, (1, 6), generator=g)
    with torch.no_grad():
        cache = model.new_cache(128)
        model(prompt, cache=cache)
        block = model(new, cache=cache)
        cache = model.new_cache(128)
        model(prompt, cache=cache)
        steps = torch.cat([model(new[:, t:t + 1], cache=cache) for t in range(6)], 1)
    assert torch.equal(block, steps)


def decode(model, prompt, method, n=40):
    cache = model.new_cache(256)
    logits, w, sat = prefill(model, cache, prompt), Warper(), model.args.sat_token_id
    if method == "ar":
        return generate_ar(model, cache, logits, n, w)[0]
    if method == "sdsat":
        return generate_sdsat(model, cache, logits, n, w, 5, sat)[0]
    if method == "fused":
        return generate_fused(model, cache, logits, n, w, 3, sat)[0]
    if method == "lookup":
        return generate_lookup(model, cache, logits, n, w, prompt)[0]
    if method == "tree":
        return generate_sdsat_tree(model, cache, logits, n, w, sat, build_tree(TREE_DEPTH5))[0]
    return generate_tree(model, cache, logits, n, w, sat, TREE, prompt)[0]


@pytest.fixture(scope="module")
def smollm2_bf16():
    return pack_weights(load_model(SAT, dtype=torch.bfloat16))  # as decode.py and bench.py run it


@needs_smollm2
@pytest.mark.parametrize("method", ["sdsat", "fused", "lookup", "tree", "draft-tree"])
def test_greedy_speculative_text_is_ar_in_bf16(method, smollm2_bf16):
    tok = Tokenizer(SAT)
    for path in HELD_OUT[:3]:
        prompt = tok.encode(read(path))[:96]
        assert decode(smollm2_bf16, prompt, method) == decode(smollm2_bf16, prompt, "ar"), path


@pytest.mark.parametrize("method", ["sdsat", "fused", "draft-tree"])
def test_the_demo_model_too(method):
    model = pack_weights(load_model(SAT_MODEL, dtype=torch.bfloat16))
    tok = Tokenizer(SAT_MODEL)
    for path in HELD_OUT[:2]:
        prompt = tok.encode(read(path))[:64]
        assert decode(model, prompt, method, 32) == decode(model, prompt, "ar", 32), path
