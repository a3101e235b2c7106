"""Decoding loops: autoregressive with the cache, SDSAT (chain and tree) and fused decoding;
prompt lookup in test_decode_lookup.py, the draft tree of every source in test_decode_tree.py.

The anchors: cached decoding equals uncached decoding; greedy SDSAT equals greedy
autoregressive decoding token for token (float32); SDSAT sampling reproduces the
autoregressive distribution (exact enumeration + chi-square, fixed seeds).
"""

import numpy as np
import pytest
import torch

import decode_common
from decode import generate_ar, generate_sdsat
from decode_common import prefill
from decode_fused import fused_layout, generate_fused
from decode_lookup import generate_lookup
from decode_tree import TREE_DEPTH5, Shape, build_tree, generate_sdsat_tree, generate_tree
from model import Llama, ModelArgs, init_weights
from sampling import Warper, sample


def tiny_model(vocab=50, seed=0, layers=2, dim=32, heads=4, kv_heads=2, std=0.5, device="cpu") -> Llama:
    """A random float32 model whose last id is the SAT. A large init std makes its
    distributions peaked, so greedy choices are far from ties."""
    torch.manual_seed(seed)
    args = ModelArgs(hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                     num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                     eos_token_id=None, sat_token_id=vocab - 1, max_position_embeddings=512)
    model = Llama(args)
    init_weights(model, std=std)  # drawn on the CPU: the same weights on every device
    return model.eval().to(device)


# A draft tree with every source: SAT candidates of ranks 0-1 two deep, groups of 2 SATs at
# three nodes, two copies of up to 4 tokens.
MIXED_SHAPE = Shape(((0,), (1,), (0, 0), (0, 1), (1, 0)), k=2, groups=3, copies=2, copy_len=4)


def run(model, prompt, method, max_new, warper=Warper(), k=3, stop_ids=(), seed=0, trace=None, cache_len=256,
        shape=None):
    """Prefill a fresh cache and decode; returns (tokens, stats, cache)."""
    cache = model.new_cache(cache_len)
    gen = torch.Generator(model.device).manual_seed(seed)
    logits = prefill(model, cache, prompt)
    sat = model.args.sat_token_id
    if method == "ar":
        out = generate_ar(model, cache, logits, max_new, warper, stop_ids, gen)
    elif method == "sdsat":
        out = generate_sdsat(model, cache, logits, max_new, warper, k, sat, stop_ids, gen, trace=trace)
    elif method == "fused":
        out = generate_fused(model, cache, logits, max_new, warper, k, sat, stop_ids, gen, trace=trace)
    elif method == "lookup":
        out = generate_lookup(model, cache, logits, max_new, warper, prompt, stop_ids=stop_ids, generator=gen,
                              trace=trace)
    elif method == "draft-tree":  # SAT candidates and copies in one tree (decode_tree.generate_tree)
        out = generate_tree(model, cache, logits, max_new, warper, sat, shape or MIXED_SHAPE, prompt, stop_ids=stop_ids,
                            generator=gen, trace=trace)
    else:
        out = generate_sdsat_tree(model, cache, logits, max_new, warper, sat,
                                  build_tree(TREE_DEPTH5, model.device), stop_ids, gen, trace=trace)
    return out[0], out[1], cache


def uncached_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids], device=model.device))[0, -1].argmax()))
    return ids[len(prompt):]


PROMPT = [1, 3, 0, 2, 5]
REPEATING = [1, 3, 0, 2, 5, 1, 3, 0, 2, 5, 1, 3]  # copies itself: lookup has drafts from the start


# ----------------------------------------------------------------------------- autoregressive


def test_ar_cached_equals_uncached(device):
    model = tiny_model(device=device)
    tokens, stats, _ = run(model, PROMPT, "ar", 40)
    assert tokens == uncached_greedy(model, PROMPT, 40)
    assert stats.forwards == 39 and stats.new_tokens == 40


def test_ar_stop_and_budget(device):
    model = tiny_model(device=device)
    full, _, _ = run(model, PROMPT, "ar", 30)
    for i in (0, 5, 17):
        stopped, _, _ = run(model, PROMPT, "ar", 30, stop_ids=[full[i]])
        assert stopped == full[:full.index(full[i]) + 1]
    for n in (1, 2, 13):
        assert run(model, PROMPT, "ar", n)[0] == full[:n]


def test_ar_sampling_reproducible(device):
    model = tiny_model(device=device)
    w = Warper(temperature=1.0, top_p=0.9)
    a, b, c = (run(model, PROMPT, "ar", 30, w, seed=s)[0] for s in (1, 1, 2))
    assert a == b and a != c


def test_prompt_longer_than_cache_is_a_clear_error(device):
    model = tiny_model(device=device)
    with pytest.raises(ValueError, match="max_len"):
        run(model, list(range(1, 40)), "ar", 5, cache_len=20)
    with pytest.raises(ValueError, match="max_len"):  # the budget overflows during decoding
        run(model, PROMPT, "ar", 30, cache_len=20)


# ----------------------------------------------------------------------------- greedy SDSAT


@pytest.mark.quick
@pytest.mark.parametrize("k", range(1, 9))
def test_sdsat_greedy_equals_ar_random_model(k, device):
    # A 12-token vocabulary: drafts are accepted often enough to see every case.
    for seed in range(3):
        model = tiny_model(vocab=12, seed=seed, device=device)
        ar, _, _ = run(model, PROMPT, "ar", 60)
        sd, stats, _ = run(model, PROMPT, "sdsat", 60, k=k)
        assert sd == ar
        assert stats.new_tokens == 60


def test_sdsat_random_models_cover_all_accept_counts(device):
    seen = set()
    for seed in range(6):
        _, stats, _ = run(tiny_model(vocab=8, seed=seed, device=device), PROMPT, "sdsat", 80, k=3)
        seen |= set(stats.accepted)
    assert seen == {0, 1, 2, 3}


def constant_model(vocab=20, token=5, device="cpu") -> Llama:
    """Output independent of the input: every embedding row is the same, every block adds
    nothing (zeroed output projections), and lm_head scores only `token`."""
    model = tiny_model(vocab=vocab, device=device)
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.embed_tokens.weight.copy_(torch.ones_like(model.embed_tokens.weight))  # every token alike
        model.lm_head.weight.zero_()
        model.lm_head.weight[token] = 1.0
    return model


@pytest.mark.parametrize("k", range(1, 9))
def test_sdsat_greedy_full_acceptance_constant_model(k, device):
    model = constant_model(device=device)
    events = []
    tokens, stats, cache = run(model, PROMPT, "sdsat", 50, k=k, trace=events.append)
    assert tokens == [5] * 50 == run(model, PROMPT, "ar", 50)[0]
    verified = [e for e in events if e["step"] == "verify"]
    assert verified and all(e["accepted"] == k for e in verified)  # every draft accepted
    L = len(PROMPT)
    for e in verified:  # cur, x and k drafts stay: the cache grows by k + 2 per iteration
        assert e["cache_after"] == L + k + 2
        L = e["cache_after"]


class ScriptedModel(Llama):
    """Output depends on position only: at position t it predicts script[t + 1]. At a SAT
    j steps after the last real token it predicts the right token if j <= good, else a wrong
    one. So every accept count 0..k can be forced. The cache is real (its K/V are unused)."""

    def __init__(self, script, good, sat_id, device="cpu"):
        super().__init__(ModelArgs(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                   num_attention_heads=1, vocab_size=sat_id + 1, sat_token_id=sat_id,
                                   eos_token_id=None))
        self.script, self.good, self.sat = script, good, sat_id
        self.to(device)  # the cache and the generator follow the model's device

    def forward(self, tokens, positions=None, mask=None, cache=None):
        T = tokens.shape[1]
        L = cache.length if cache is not None else 0
        if cache is not None:
            cache.check_room(T)
            cache.length = L + T
        pos = (torch.arange(L, L + T) if positions is None else positions.reshape(-1)).tolist()
        logits = torch.zeros(1, T, self.args.vocab_size, device=tokens.device)
        j = 0
        for i, (t, p) in enumerate(zip(tokens[0].tolist(), pos)):
            j = j + 1 if t == self.sat else 0
            target = self.script[p + 1]
            if j > self.good:
                target = (target + 1) % self.sat  # a wrong draft
            logits[0, i, target] = 1.0
        return logits


SCRIPT = [(7 * i + 3) % 11 for i in range(400)]  # real tokens 0..10, SAT = 11


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_cache_length_after_every_accept_count(k, device):
    for good in range(k + 1):
        model = ScriptedModel(SCRIPT, good, 11, device)
        events = []
        prompt = SCRIPT[:6]
        tokens, stats, cache = run(model, prompt, "sdsat", 60, k=k, trace=events.append)
        assert tokens == SCRIPT[6:66]
        assert set(stats.accepted) == {good}
        L = len(prompt)  # cache before the first iteration: the prompt (cur not cached)
        for draft, e in zip(events[::2], events[1::2]):
            # the draft pass leaves L + 1 (cur); the verify pass L + 1 + (1 + k), truncated to L + 2 + n
            assert (draft["step"], draft["cache_before"], draft["cache_after"]) == ("draft", L + 1 + k, L + 1)
            assert e["cache_before"] == L + 2 + k and e["cache_after"] == L + 2 + good
            L = e["cache_after"]


@pytest.mark.parametrize("k", [2, 5])
def test_stop_id_at_every_position_of_an_accepted_block(k, device):
    model = ScriptedModel(list(range(300)), k, 299, device)  # all distinct tokens, all drafts right
    prompt = list(range(4))
    full, _, _ = run(model, prompt, "sdsat", 40, k=k, cache_len=400)
    assert full == list(range(4, 44))
    for stop in range(4, 4 + 3 * (k + 2)):  # spans several iterations, every slot of a block
        out, _, _ = run(model, prompt, "sdsat", 40, k=k, stop_ids=[stop], cache_len=400)
        assert out == list(range(4, stop + 1))
    for n in range(1, 2 * (k + 2) + 1):
        assert run(model, prompt, "sdsat", n, k=k, cache_len=400)[0] == full[:n]


def test_stop_ids_random_model_match_ar(device):
    model = tiny_model(vocab=12, seed=1, device=device)
    full, _, _ = run(model, PROMPT, "ar", 40)
    for stop in set(full):
        ar, _, _ = run(model, PROMPT, "ar", 40, stop_ids=[stop])
        for method in ("sdsat", "tree", "fused"):
            assert run(model, PROMPT, method, 40, k=4, stop_ids=[stop])[0] == ar


# ----------------------------------------------------------------------------- fused


@pytest.mark.quick
@pytest.mark.parametrize("k", range(1, 7))
def test_fused_greedy_equals_ar(k, device):
    seen = set()
    for seed in range(3):
        model = tiny_model(vocab=8, seed=seed, device=device)
        ar, _, _ = run(model, PROMPT, "ar", 60)
        fu, stats, _ = run(model, PROMPT, "fused", 60, k=k)
        assert fu == ar
        seen |= set(stats.accepted)
    assert len(seen) >= min(3, k + 1)  # rejections and acceptances both happen


def test_fused_layout_k2(device):
    offsets, mask = fused_layout(2, device)
    assert offsets.device == mask.device == torch.device(device)
    assert offsets.tolist() == [0, 1, 2, 1, 2, 2, 3, 3, 4]
    rows = ["x........", "xx.......", "xxx......", "x..x.....", "x..xx....",
            "xx...x...", "xx...xx..", "xxx....x.", "xxx....xx"]
    assert mask.tolist() == [[c == "x" for c in r] for r in rows]


def test_fused_cache_after_each_pass_equals_refeeding(device):
    model = tiny_model(vocab=8, seed=2, device=device)
    k, emitted = 3, []

    def check(ev):
        # after the pass: cache = prompt + the tokens emitted before it (they end with cur) + the accepted drafts
        before = emitted[:len(emitted) - len(ev["emitted"])]
        ref = model.new_cache(256)
        with torch.no_grad():
            model(torch.tensor([PROMPT + before + ev["drafts"][:ev.get("accepted", 0)]], device=device), cache=ref)
        assert cache.length == ref.length
        for layer in range(model.args.num_hidden_layers):
            torch.testing.assert_close(cache.k[layer][:, :, :ref.length], ref.k[layer][:, :, :ref.length],
                                       atol=1e-5, rtol=1e-5)
        checks.append(ev.get("accepted", 0))

    checks = []
    cache = model.new_cache(256)
    gen = torch.Generator(device).manual_seed(0)
    logits = prefill(model, cache, PROMPT)
    tokens, _ = generate_fused(model, cache, logits, 40, Warper(), k, model.args.sat_token_id, generator=gen,
                               on_tokens=emitted.extend, trace=check)
    assert len(checks) > 5 and max(checks) > 0


# ----------------------------------------------------------------------------- tree


def test_tree_buffers_depth5(device):
    tree = build_tree(TREE_DEPTH5, device)
    assert tree.size == 29 and tree.max_depth == 5
    assert [int((tree.depth == d).sum()) for d in range(6)] == [1, 4, 8, 8, 5, 3]
    paths = tree.leaf_paths()
    assert len(paths) == 17
    assert all(p[0] == 0 and len(p) == int(tree.depth[p[-1]]) + 1 for p in paths)
    assert tree.mask.sum(1).tolist() == (tree.depth + 1).tolist()
    # every path of child ranks is reachable through the children tables
    for ranks in TREE_DEPTH5:
        node = 0
        for r in ranks:
            node = tree.children[node][r]
        assert tree.depth[node] == len(ranks) and tree.rank[node] == ranks[-1]


@pytest.mark.quick
def test_tree_greedy_equals_ar(device):
    for seed in range(4):
        model = tiny_model(vocab=10, seed=seed, device=device)
        ar, _, _ = run(model, PROMPT, "ar", 60)
        tr, stats, _ = run(model, PROMPT, "tree", 60)
        assert tr == ar
        assert max(stats.accepted) >= 2  # a 10-token vocabulary: the tree does accept


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused", "lookup", "draft-tree"])
def test_one_trace_record_per_forward_pass_and_emitted_is_the_output(method, device):
    """The records that --trace and --html draw: one per forward pass (the fused loop's first
    draft pass too), and `emitted` holds exactly what reached the output, also where the
    budget ends a run inside an accepted block."""
    model = tiny_model(vocab=10, seed=3, device=device)
    prompt = REPEATING if method in ("lookup", "draft-tree") else PROMPT
    cut_inside = 0
    for max_new in range(1, 25):
        events = []
        tokens, stats, _ = run(model, prompt, method, max_new, k=4, trace=events.append)
        assert len(events) == stats.forwards
        assert [e["cur"] for e in events[:1]] == tokens[:1] * bool(events)  # the prefill's token comes first
        assert sum((e["emitted"] for e in events), []) == tokens[1:]
        cut_inside += any(len(e["emitted"]) < e.get("accepted", 0) + 1 for e in events)
    assert cut_inside > 0 or method in ("lookup", "draft-tree")  # these copy no more than the budget has room for


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused", "lookup", "draft-tree"])
def test_cache_after_decoding_equals_refeeding(method, device):
    """After decoding (with truncation or tree compaction), the cache holds exactly what
    feeding prompt + emitted tokens (all but the last, which is `cur`) from scratch gives.
    Lookup and the draft tree get a prompt that repeats itself, so that copies are made."""
    model = tiny_model(vocab=10, seed=3, device=device)
    prompt = REPEATING if method in ("lookup", "draft-tree") else PROMPT
    tokens, stats, cache = run(model, prompt, method, 37, k=4)
    assert sum(stats.accepted) > 0
    ref = model.new_cache(256)
    with torch.no_grad():
        model(torch.tensor([prompt + tokens[:-1]], device=device), cache=ref)
    # the loop stops right after an emission, so the last emitted block may be uncached
    n = cache.length
    assert n <= ref.length
    for layer in range(model.args.num_hidden_layers):
        torch.testing.assert_close(cache.k[layer][:, :, :n], ref.k[layer][:, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[layer][:, :, :n], ref.v[layer][:, :, :n], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- sampling is lossless
#
# Reference: the exact distribution of new tokens 2 and 3 under autoregressive sampling,
# by enumeration. Token 1 comes from the prefill and token 2 from the draft pass's exact
# position, so token 3 is the first that the acceptance rule decides (an accepted draft
# or a residual sample). Then N seeded SDSAT runs; chi-square over the 2-token cells.

N_RUNS = 2000


def chi2_999(dof: int) -> float:
    """0.999 quantile of chi-square (Wilson-Hilferty; within 1% for dof >= 5)."""
    z = 3.0902
    return dof * (1 - 2 / (9 * dof) + z * (2 / (9 * dof)) ** 0.5) ** 3


def exact_tokens23_dist(model, prompt, warper):
    """P(new token 2 = a, new token 3 = b) under autoregressive sampling."""

    def probs(ids):
        with torch.no_grad():
            return warper.probs(model(torch.tensor([ids], device=model.device))[0, -1]).tolist()

    dist = {}
    for t1, p1 in enumerate(probs(prompt)):
        if p1 == 0:
            continue
        for a, p2 in enumerate(probs(prompt + [t1])):
            if p2 == 0:
                continue
            for b, p3 in enumerate(probs(prompt + [t1, a])):
                if p3 > 0:
                    dist[(a, b)] = dist.get((a, b), 0.0) + p1 * p2 * p3
    return dist


def chi_square(counts: dict, dist: dict, n: int) -> float:
    assert set(counts) <= set(dist), "a zero-probability sequence was sampled"
    cells = sorted(dist)
    obs = np.array([counts.get(c, 0) for c in cells], dtype=float)
    exp = np.array([dist[c] for c in cells]) * n
    return float(((obs - exp) ** 2 / exp).sum())


SMALL_TREE = build_tree([[0], [1], [0, 0], [0, 1], [1, 0]])


def sampled_tokens23_counts(model, prompt, method, warper, sat_id, k=2):
    counts = {}
    gen = torch.Generator(model.device).manual_seed(1234)
    tree = build_tree(SMALL_TREE.paths, model.device)
    cache = model.new_cache(64)
    logits = prefill(model, cache, prompt)
    for _ in range(N_RUNS):
        cache.truncate(len(prompt))  # back to "just prefilled": later slots get overwritten
        if method == "sdsat":
            out, _ = generate_sdsat(model, cache, logits, 3, warper, k, sat_id, generator=gen)
        elif method == "fused":
            out, _ = generate_fused(model, cache, logits, 3, warper, k, sat_id, generator=gen)
        elif method == "lookup":
            out, _ = generate_lookup(model, cache, logits, 3, warper, prompt, generator=gen)
        elif method == "draft-tree":
            out, _ = generate_tree(model, cache, logits, 3, warper, sat_id, MIXED_SHAPE, prompt, generator=gen)
        else:
            out, _ = generate_sdsat_tree(model, cache, logits, 3, warper, sat_id, tree, generator=gen)
        counts[tuple(out[1:3])] = counts.get(tuple(out[1:3]), 0) + 1
    return counts


def sampling_model(device="cpu"):
    # 3 real tokens + the SAT (which the model may also sample, like any token)
    return tiny_model(vocab=4, seed=7, std=0.4, device=device)


SAMPLING_PROMPT = [1, 0, 2]


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused"])
@pytest.mark.parametrize("drafts", ["own", "bad"])
def test_sdsat_sampling_matches_ar_distribution(method, drafts, device):
    model = sampling_model(device=device)
    warper = Warper(temperature=1.0)
    # "bad": a real token in the SAT's place, so the drafts come from a wrong distribution
    sat = model.args.sat_token_id if drafts == "own" else 2
    dist = exact_tokens23_dist(model, SAMPLING_PROMPT, warper)
    assert len(dist) == 16
    counts = sampled_tokens23_counts(model, SAMPLING_PROMPT, method, warper, sat)
    chi2 = chi_square(counts, dist, N_RUNS)
    assert chi2 < chi2_999(len(dist) - 1), (chi2, counts)


def test_official_biased_rule_fails_the_same_test(monkeypatch, device):
    """The release's rule: accept a draft if an independent target sample equals it, else
    emit a fresh target sample. A drafted token is then emitted with probability
    p(2 - p) > p. The same statistical test must reject it."""

    def biased_accept(p, q, drafts, generator=None):
        for j, d in enumerate(drafts.tolist()):
            if int(sample(p[j], generator)) != d:
                return j, sample(p[j], generator)
        return len(drafts), sample(p[-1], generator)

    model = sampling_model(device=device)
    warper = Warper(temperature=1.0)
    dist = exact_tokens23_dist(model, SAMPLING_PROMPT, warper)
    monkeypatch.setattr(decode_common, "accept_drafts", biased_accept)
    counts = sampled_tokens23_counts(model, SAMPLING_PROMPT, "sdsat", warper, model.args.sat_token_id)
    chi2 = chi_square(counts, dist, N_RUNS)
    assert chi2 > chi2_999(len(dist) - 1), chi2  # measured: 65 against a threshold of 37.8


def test_sdsat_sampling_with_top_k_and_top_p(device):
    model = tiny_model(vocab=6, seed=7, std=0.4, device=device)
    warper = Warper(temperature=0.8, top_k=4, top_p=0.9)
    dist = exact_tokens23_dist(model, SAMPLING_PROMPT, warper)
    assert len(dist) < 36  # the warper did cut the support
    counts = sampled_tokens23_counts(model, SAMPLING_PROMPT, "sdsat", warper, model.args.sat_token_id)
    chi2 = chi_square(counts, dist, N_RUNS)  # also asserts nothing outside the support
    assert chi2 < chi2_999(len(dist) - 1), (chi2, counts)
