"""The compiled static-shape path (compiled.StaticModel) against the eager reference.

The anchors: the static network, fed a cache full of stale entries, gives the eager
forward's logits; compiled greedy decoding emits exactly the eager tokens for every
method, and leaves the same cache; compiled two-step, tree and fused decoding emit exactly
compiled AR's tokens; after one generation per method, nothing compiles again. One tiny
model and one StaticModel serve the whole file, so each block width is compiled once: 1
(AR), 6 (two-step k = 5 and every draft pass), 29 (the depth-5 tree) and 36 (fused k = 5),
each as two graphs (the block, shared by every layer, and the head).
"""

import pytest
import torch
from torch._dynamo.utils import counters

from compiled import StaticModel
from decode import generate_ar, generate_sdsat
from decode_common import prefill
from decode_fused import generate_fused
from decode_tree import TREE_DEPTH5, build_tree, generate_sdsat_tree
from model import causal_mask
from sampling import Warper
from test_decode import tiny_model

PROMPT, OTHER_PROMPT = [1, 3, 0, 2, 5], [4, 4, 7, 1, 9, 2, 6]
K = 5
METHODS = ["ar", "sdsat", "tree", "fused"]  # the order of the warm-up


def decode(step, model, cache, prompt, method, max_new):
    """Prefill eagerly with `model`, then decode with `step` (the model or a StaticModel)."""
    cache.truncate(0)
    logits = prefill(model, cache, prompt)
    sat, w = model.args.sat_token_id, Warper()
    if method == "ar":
        return generate_ar(step, cache, logits, max_new, w)
    if method == "sdsat":
        return generate_sdsat(step, cache, logits, max_new, w, K, sat)
    if method == "fused":
        return generate_fused(step, cache, logits, max_new, w, K, sat)
    return generate_sdsat_tree(step, cache, logits, max_new, w, sat, build_tree(TREE_DEPTH5, model.device))


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def compiled(device):
    """(model, static, new graphs per method, eager runs): the first generation of each
    method compiles its new widths; the eager runs are the reference."""
    model = tiny_model(vocab=12, seed=1, device=device)  # a small vocabulary: drafts get accepted
    static = StaticModel(model, 256)
    new_graphs, eager = {}, {}
    for method in METHODS:
        before = graphs()
        decode(static, model, static.cache, PROMPT, method, 50)
        new_graphs[method] = graphs() - before
        eager_cache = model.new_cache(256)
        tokens, stats = decode(model, model, eager_cache, PROMPT, method, 50)
        eager[method] = tokens, stats, eager_cache
    return model, static, new_graphs, eager


def test_static_network_ignores_stale_slots(device):
    """Uncompiled: the static path over a whole cache whose unused slots hold garbage
    gives the eager forward's logits, for the causal default and an explicit mask."""
    model = tiny_model(seed=2, device=device)
    static = StaticModel(model, 32, compile=False)
    eager = model.new_cache(32)
    for cache in (eager, static.cache):
        for t in cache.k + cache.v:
            t.normal_(generator=torch.Generator(device).manual_seed(0))  # garbage everywhere
    prompt, block = torch.tensor([[3, 1, 4, 1, 5, 9]], device=device), torch.tensor([[2, 6, 5]], device=device)
    with torch.no_grad():
        for cache in (eager, static.cache):
            model(prompt, cache=cache)
        # a mask that is not causal: the last new token does not see the one before it
        mask = causal_mask(6, 3, device).clone()
        mask[..., 2, 7] = False
        for m in (None, mask):
            eager.truncate(6)
            static.cache.truncate(6)
            want = model(block, mask=m, cache=eager)
            got = static(block, mask=m, cache=static.cache)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            assert static.cache.length == 9
        assert not torch.equal(got, model(block, cache=model.new_cache(32)))  # the cache mattered


@pytest.mark.parametrize("method", METHODS)
def test_compiled_greedy_equals_eager(compiled, method):
    model, static, _, eager = compiled
    want, want_stats, want_cache = eager[method]
    tokens, stats = decode(static, model, static.cache, PROMPT, method, 50)
    assert tokens == want
    assert stats.accepted == want_stats.accepted and stats.forwards == want_stats.forwards
    if method != "ar":
        assert sum(stats.accepted) > 0  # truncation after accepted drafts was exercised
    n = static.cache.length
    assert n == want_cache.length
    for layer in range(model.args.num_hidden_layers):
        torch.testing.assert_close(static.cache.k[layer][:, :, :n], want_cache.k[layer][:, :, :n],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused"])
def test_compiled_speculative_equals_compiled_ar(compiled, method):
    model, static, _, _ = compiled
    for prompt in (PROMPT, OTHER_PROMPT):
        want, _ = decode(static, model, static.cache, prompt, "ar", 60)
        tokens, stats = decode(static, model, static.cache, prompt, method, 60)
        assert tokens == want and stats.iterations > 0


def test_each_width_compiles_once_and_never_again(compiled):
    model, static, new_graphs, _ = compiled
    # The warm-up compiled two graphs (block, head) per new width: the tree's and the fused
    # method's draft passes reuse the two-step width 1 + k; every layer uses the one block graph.
    assert new_graphs == {"ar": 2, "sdsat": 2, "tree": 2, "fused": 2}
    before = graphs()
    for method in METHODS:  # another prompt, another budget, other cache lengths
        decode(static, model, static.cache, OTHER_PROMPT, method, 70)
    assert graphs() == before


def test_compiled_path_writes_only_its_own_cache(compiled):
    model, static, _, _ = compiled
    with pytest.raises(ValueError, match="its own cache"):
        static(torch.tensor([[1]], device=model.device), cache=model.new_cache(256))


def test_compiled_decoding_with_an_adapter_equals_the_bases_ar(compiled, device):
    """The adapter's graphs (a block with the gated changes, used only by draft passes)
    leave the base's tokens alone: compiled SDSAT with an adapter = the base's eager AR."""
    from test_adapter import with_adapter
    _, _, _, eager = compiled
    model = with_adapter(tiny_model(vocab=12, seed=1, device=device))
    static = StaticModel(model, 256)
    tokens, stats = decode(static, model, static.cache, PROMPT, "sdsat", 50)
    assert tokens == eager["ar"][0] and stats.iterations > 0
