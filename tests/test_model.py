"""Tests for model.py: the Llama, its KV cache and its config (files: test_checkpoint.py).

Everything is checked against something independent of model.py:

  * transformers.LlamaForCausalLM (logits and greedy generation) on tiny random configs,
  * the same model run without a cache, or on a fresh cache fed only the tokens that
    should be there.

Configs are tiny (hidden 64, 2 layers, vocab 100) so the whole file runs in seconds on CPU.
"""

import json
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import model
import packing
from checkpoint import load_model
from model import CheckpointError, KVCache, ModelArgs, causal_mask

VOCAB = 100
BASE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=VOCAB, max_position_embeddings=256,
            rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-6)


def randomize_(module: torch.nn.Module, seed: int = 0):
    """Weights large enough that logits are far from uniform; norm weights away from 1.

    transformers initialises RMSNorm weights to exactly 1 and the rest with std 0.02, which
    would hide a missing norm scale and make every logit nearly equal.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # a tied weight is listed (and drawn) once
            if p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))
    return module


def hf_model(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(**{**BASE, **overrides})
    hf = LlamaForCausalLM(cfg).eval()
    return randomize_(hf, seed)


def save_hf(hf: LlamaForCausalLM, path, **kwargs) -> str:
    hf.save_pretrained(str(path), safe_serialization=True, **kwargs)
    return str(path)


def tokens(*shape, seed: int = 1, device="cpu") -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed)).to(device)


def our_model(seed: int = 0, device="cpu", **overrides) -> model.Llama:
    """A random model of our own (no transformers involved), drawn on the CPU."""
    torch.manual_seed(seed)
    args = ModelArgs(**{**BASE, **overrides})
    return randomize_(model.Llama(args), seed).eval().to(device)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


# ----------------------------------------------------------------------------- parity


PARITY_CASES = {  # each of MHA/GQA, theta 1e4/1e6, tied/untied appears at least once
    "mha-1e4-untied": dict(num_key_value_heads=4, rope_theta=1e4, tie_word_embeddings=False),
    "gqa-1e4-tied": dict(num_key_value_heads=2, rope_theta=1e4, tie_word_embeddings=True),
    "mha-1e6-tied": dict(num_key_value_heads=4, rope_theta=1e6, tie_word_embeddings=True),
    "gqa-1e6-untied-sharded": dict(num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=False),
    # multi-query attention with head_dim != hidden/heads and a larger eps
    "mqa-headdim32-eps": dict(num_key_value_heads=1, head_dim=32, rope_theta=5e5, rms_norm_eps=1e-2),
}


@pytest.mark.quick
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_logits_match_transformers(case, tmp_path, device):
    overrides = PARITY_CASES[case]
    hf = hf_model(**overrides)
    sharded = case.endswith("sharded")
    path = save_hf(hf, tmp_path, **({"max_shard_size": "20KB"} if sharded else {}))
    if sharded:
        assert os.path.isfile(os.path.join(path, "model.safetensors.index.json"))
        assert not os.path.exists(os.path.join(path, "model.safetensors"))
        assert len([f for f in os.listdir(path) if f.endswith(".safetensors")]) > 1

    m, hf = load_model(path, device=device), hf.to(device)
    assert m.args.rope_theta == overrides["rope_theta"]
    assert m.args.num_key_value_heads == overrides["num_key_value_heads"]
    assert m.args.tie_word_embeddings == overrides.get("tie_word_embeddings", False)
    if m.args.tie_word_embeddings:
        assert m.lm_head.weight is m.embed_tokens.weight

    x = tokens(2, 16, device=device)
    with torch.no_grad():
        ours, ref = m(x), hf(x).logits
    assert ours.shape == ref.shape == (2, 16, VOCAB)
    assert (ours - ref).abs().max().item() <= 1e-4


def test_rope_theta_top_level_codellama_style(tmp_path, device):
    hf = hf_model(rope_theta=1e6)
    path = save_hf(hf, tmp_path)
    hf = hf.to(device)
    cfg = read_json(os.path.join(path, "config.json"))
    assert cfg["rope_parameters"]["rope_theta"] == 1e6  # the transformers-5 nested form
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 1e6
    write_json(os.path.join(path, "config.json"), cfg)

    m = load_model(path, device=device)
    assert m.args.rope_theta == 1e6
    x = tokens(1, 20, device=device)
    with torch.no_grad():
        assert (m(x) - hf(x).logits).abs().max().item() <= 1e-4

    # And the value matters: with the default theta the logits would differ.
    cfg.pop("rope_theta")
    write_json(os.path.join(path, "config.json"), cfg)
    m_default = load_model(path, device=device)
    assert m_default.args.rope_theta == 1e4
    with torch.no_grad():
        assert (m_default(x) - hf(x).logits).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------- greedy


def greedy(m: model.Llama, prompt: torch.Tensor, n_new: int) -> list[int]:
    """Plain greedy decoding with the KV cache: prefill, then one token at a time."""
    cache = m.new_cache(len(prompt) + n_new)
    with torch.no_grad():
        logits = m(prompt[None], cache=cache)
        out = []
        for _ in range(n_new):
            tok = logits[0, -1].argmax()
            out.append(int(tok))
            if len(out) == n_new:
                break
            logits = m(tok[None, None], cache=cache)
    assert cache.length == len(prompt) + n_new - 1
    return out


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_greedy_matches_transformers_generate(kv_heads, tmp_path, device):
    hf = hf_model(seed=3, num_key_value_heads=kv_heads, rope_theta=1e6)
    m, hf = load_model(save_hf(hf, tmp_path), device=device), hf.to(device)
    prompt = tokens(7, seed=4, device=device)
    hf.generation_config.eos_token_id = None  # never stop early
    with torch.no_grad():
        ref = hf.generate(prompt[None], attention_mask=torch.ones(1, 7, dtype=torch.long, device=device),
                          do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=0)
    assert ref.shape == (1, 27)
    ref_new = ref[0, 7:].tolist()
    assert len(set(ref_new)) > 1  # not a degenerate repeat-one-token model
    assert greedy(m, prompt, 20) == ref_new


# ----------------------------------------------------------------------------- cache


@pytest.mark.quick
@pytest.mark.parametrize("step", [1, 3])
def test_incremental_decoding_matches_full_forward(step, device):
    m = our_model(num_key_value_heads=2, device=device)
    x = tokens(2, 14, device=device)
    with torch.no_grad():
        full = m(x)
        cache = m.new_cache(14, batch_size=2)
        parts = [m(x[:, :5], cache=cache)]
        for i in range(5, 14, step):
            parts.append(m(x[:, i:i + step], cache=cache))
    assert cache.length == 14
    inc = torch.cat(parts, dim=1)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


def test_truncate_then_new_block(device):
    m = our_model(num_key_value_heads=2, device=device)
    P, A, B = (tokens(1, n, seed=seed, device=device) for n, seed in ((6, 1), (7, 2), (3, 3)))
    with torch.no_grad():
        cache = m.new_cache(32)
        m(P, cache=cache)
        m(A, cache=cache)
        assert cache.length == 13
        cache.truncate(6)
        assert cache.length == 6
        got = m(B, cache=cache)  # stale A slots 9..12 stay in memory but must not be seen
        assert cache.length == 9

        fresh = m.new_cache(32)
        m(P, cache=fresh)
        want = m(B, cache=fresh)
        full = m(torch.cat([P, B], dim=1))[:, 6:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)
    # The replaced slots themselves hold B's keys and values.
    for layer in range(m.args.num_hidden_layers):
        torch.testing.assert_close(cache.k[layer][:, :, :9], fresh.k[layer][:, :, :9], atol=1e-6, rtol=0)
        torch.testing.assert_close(cache.v[layer][:, :, :9], fresh.v[layer][:, :, :9], atol=1e-6, rtol=0)


def test_cache_overflow_and_bad_truncate(device):
    m = our_model(device=device)
    cache = m.new_cache(8)
    with torch.no_grad():
        m(tokens(1, 6, device=device), cache=cache)
        with pytest.raises(ValueError, match="max_len"):
            m(tokens(1, 3, device=device), cache=cache)
        assert cache.length == 6  # the failed call wrote nothing
        m(tokens(1, 2, device=device), cache=cache)  # exactly full is fine
        assert cache.length == 8
        with pytest.raises(ValueError, match="max_len"):
            m(tokens(1, 1, device=device), cache=cache)
    with pytest.raises(ValueError):
        cache.truncate(9)
    with pytest.raises(ValueError):
        cache.truncate(-1)
    assert cache.length == 8
    with pytest.raises(ValueError, match="max_len"):
        m(tokens(1, 9, device=device), cache=m.new_cache(8))


def test_compact_layer0_matches_feeding_only_kept_tokens(device):
    """Layer 0 K/V depend only on (token, position): compact must gather exactly them."""
    m = our_model(num_key_value_heads=2, device=device)
    P = tokens(1, 5, seed=1, device=device)
    L = P.shape[1]
    block = tokens(1, 6, seed=2, device=device)
    keep = [L, L + 2, L + 5]
    # kept tokens (block offsets 0, 2, 5) carry contiguous positions L, L+1, L+2
    positions = torch.tensor([L, L + 1, L + 1, L + 2, L + 2, L + 2], device=device)
    with torch.no_grad():
        cache = m.new_cache(16)
        m(P, cache=cache)
        m(block, positions=positions, cache=cache)
        prefix_k = cache.k[0][:, :, :L].clone()
        cache.compact(keep)
        assert cache.length == L + 3

        fresh = m.new_cache(16)
        m(P, cache=fresh)
        m(block[:, [0, 2, 5]], cache=fresh)
    torch.testing.assert_close(cache.k[0][:, :, :L], prefix_k, atol=0, rtol=0)
    torch.testing.assert_close(cache.k[0][:, :, :L + 3], fresh.k[0][:, :, :L + 3], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache.v[0][:, :, :L + 3], fresh.v[0][:, :, :L + 3], atol=1e-6, rtol=0)


def test_tree_mask_then_compact_matches_sequential_all_layers(device):
    """A tree-shaped mask plus compact leaves the cache as if only the kept path was fed.

    Block of 6 after prefix P; the kept path is offsets 0, 2, 5 (positions L, L+1, L+2).
    Each kept token sees P, the kept tokens before it, and itself; the others are
    distractors at the same positions. Then every layer's K/V, and the next token's
    logits, must match a fresh cache fed P + path.
    """
    m = our_model(num_key_value_heads=2, device=device)
    P, block, nxt = (tokens(1, n, seed=seed, device=device) for n, seed in ((5, 1), (6, 2), (1, 3)))
    L = P.shape[1]
    path = [0, 2, 5]
    positions = torch.tensor([L, L + 1, L + 1, L + 2, L + 2, L + 2], device=device)
    mask = torch.zeros(1, 1, 6, L + 6, dtype=torch.bool, device=device)
    mask[..., :L] = True
    for t in range(6):
        mask[0, 0, t, L + t] = True
    for i, t in enumerate(path):  # path tokens see earlier path tokens
        for s in path[:i]:
            mask[0, 0, t, L + s] = True
    mask[0, 0, 1, L + 0] = mask[0, 0, 3, L + 2] = mask[0, 0, 4, L + 0] = True  # distractors
    with torch.no_grad():
        cache = m.new_cache(16)
        m(P, cache=cache)
        block_logits = m(block, positions=positions, mask=mask, cache=cache)
        cache.compact(torch.tensor([L + t for t in path]))
        assert cache.length == L + 3
        got_next = m(nxt, cache=cache)

        fresh = m.new_cache(16)
        m(P, cache=fresh)
        path_logits = m(block[:, path], cache=fresh)
        want_next = m(nxt, cache=fresh)
    torch.testing.assert_close(block_logits[:, path], path_logits, atol=1e-5, rtol=0)
    for layer in range(m.args.num_hidden_layers):
        torch.testing.assert_close(cache.k[layer][:, :, :L + 3], fresh.k[layer][:, :, :L + 3], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache.v[layer][:, :, :L + 3], fresh.v[layer][:, :, :L + 3], atol=1e-5, rtol=0)
    torch.testing.assert_close(got_next, want_next, atol=1e-5, rtol=0)


def test_compact_rejects_bad_slots(device):
    m = our_model(device=device)
    cache = m.new_cache(16)
    with torch.no_grad():
        m(tokens(1, 8, device=device), cache=cache)
    for bad in ([5, 8], [6, 5], [3, 3], [-1, 2]):
        with pytest.raises(ValueError):
            cache.compact(bad)
    assert cache.length == 8


@pytest.mark.parametrize("n_cached", [0, 4])
def test_explicit_masks(n_cached, device):
    m = our_model(num_key_value_heads=2, device=device)
    prefix, x = tokens(2, n_cached, seed=1, device=device), tokens(2, 5, seed=2, device=device)
    T = x.shape[1]

    def run(mask):
        cache = m.new_cache(16, batch_size=2)
        with torch.no_grad():
            if n_cached:
                m(prefix, cache=cache)
            return m(x, mask=mask, cache=cache)

    # The default causal mask passed explicitly equals mask=None.
    torch.testing.assert_close(run(causal_mask(n_cached, T, device=device)), run(None), atol=1e-5, rtol=0)
    # An arbitrary boolean mask equals its additive float form (0 / -inf), per batch row.
    g = torch.Generator(device).manual_seed(5)
    bool_mask = torch.rand(2, 1, T, n_cached + T, generator=g, device=device) < 0.5
    bool_mask[..., torch.arange(T), n_cached + torch.arange(T)] = True  # every row sees itself
    float_mask = torch.zeros(bool_mask.shape, device=device).masked_fill(~bool_mask, float("-inf"))
    got = run(bool_mask)
    torch.testing.assert_close(got, run(float_mask), atol=1e-5, rtol=0)
    assert (got - run(None)).abs().max() > 1e-3  # the mask did change something


def test_causal_mask_layout(device):
    want = torch.tensor([[1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 1]], dtype=torch.bool, device=device)
    got = causal_mask(2, 3, device)
    assert got.shape == (1, 1, 3, 5) and got.dtype == torch.bool and got.device == want.device
    assert torch.equal(got[0, 0], want)


def test_gqa_cache_sized_by_kv_heads(device):
    m = our_model(num_key_value_heads=2, device=device)
    cache = m.new_cache(10, batch_size=3)
    assert len(cache.k) == len(cache.v) == 2
    assert cache.k[0].shape == (3, 2, 10, 16)
    assert cache.v[1].shape[1] == 2
    mqa = KVCache(ModelArgs(**{**BASE, "num_key_value_heads": 1, "head_dim": 32}), 7)
    assert mqa.k[0].shape == (1, 1, 7, 32)


# ----------------------------------------------------------------------------- config


def _cfg(**extra):
    return {**BASE, **extra}


@pytest.mark.parametrize("cfg", [
    _cfg(rope_scaling={"rope_type": "linear", "factor": 2.0}),
    _cfg(rope_scaling={"type": "dynamic", "factor": 2.0}),
    _cfg(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
    _cfg(attention_bias=True),
    _cfg(mlp_bias=True),
    _cfg(hidden_act="gelu"),
    _cfg(num_key_value_heads=3),
], ids=["rope_scaling-linear", "rope_scaling-type-key", "rope_parameters-llama3",
        "attention_bias", "mlp_bias", "gelu", "heads-not-multiple"])
def test_from_config_rejects(cfg):
    with pytest.raises(CheckpointError):
        ModelArgs.from_config(cfg)


def test_from_config_accepts_default_rope_and_keeps_extra():
    cfg = _cfg(rope_scaling=None, initializer_range=0.02,
               rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    del cfg["rope_theta"]
    args = ModelArgs.from_config(cfg)
    assert args.rope_theta == 5e5
    assert args.extra == {"initializer_range": 0.02}


def test_from_config_missing_key_message():
    cfg = _cfg()
    del cfg["vocab_size"]
    with pytest.raises(CheckpointError, match="vocab_size"):
        ModelArgs.from_config(cfg)


# ----------------------------------------------------------------------------- packed weights


@pytest.mark.quick
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("method", ["ar", "sdsat", "fused"])
def test_packed_weights_decode_the_unpacked_text(method):
    """pack_weights makes every product of the base oneDNN's pre-packed one, q k v stacked
    (5 per block, and the head): the same weights (the state dict is unchanged),
    logits to float32 rounding, and greedy text token for token, for AR and for
    speculative decoding of the packed model alike."""
    from test_decode import PROMPT, run, tiny_model
    plain, packed = tiny_model(seed=3), packing.pack_weights(tiny_model(seed=3))
    n_linear = 5 * plain.args.num_hidden_layers + 1
    assert sum(isinstance(m, packing.PackedLinear) for m in packed.modules()) == n_linear
    assert all(hasattr(b.self_attn, "qkv") for b in packed.layers)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), packed.state_dict().values()))
    tokens = torch.tensor([PROMPT + [4, 9, 8]])
    with torch.no_grad():
        torch.testing.assert_close(packed(tokens), plain(tokens), atol=1e-5, rtol=1e-5)
    want, _, _ = run(plain, PROMPT, "ar", 40)
    got, stats, _ = run(packed, PROMPT, method, 40, k=3)
    assert got == want and stats.forwards > 0
