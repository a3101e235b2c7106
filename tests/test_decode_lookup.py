"""Prompt lookup (decode_lookup.py): which copies are drafted, greedy output equal to
autoregressive decoding, stop ids and budgets at every slot, and sampling that keeps the
autoregressive distribution. (Copies beside SAT candidates in one tree: test_decode_tree.py.)
"""

import pytest

from decode_lookup import lookup_drafts
from sampling import Warper
from test_decode import (N_RUNS, PROMPT, REPEATING, SCRIPT, ScriptedModel, chi2_999, chi_square,
                         exact_tokens23_dist, run, sampled_tokens23_counts, sampling_model, tiny_model)


def test_lookup_drafts_latest_match_longest_ngram_first():
    ids = [1, 2, 3, 7, 5, 2, 3, 8, 2, 3]  # no earlier (8, 2, 3); (2, 3) at 1 and 5: the latest wins
    assert lookup_drafts(ids) == [8, 2, 3]
    assert lookup_drafts(ids, max_drafts=2) == [8, 2]
    ids = [4, 2, 3, 9, 2, 3, 6, 4, 2, 3]  # (4, 2, 3) at 0 beats the later (2, 3) at 4
    assert lookup_drafts(ids) == [9, 2, 3, 6, 4, 2, 3]
    assert lookup_drafts(ids, max_ngram=2) == [6, 4, 2, 3]
    assert lookup_drafts([5, 6, 7, 5]) == [6, 7, 5]  # only the last token recurs
    assert lookup_drafts([5, 6, 7, 5], min_ngram=2) == []
    assert lookup_drafts([7, 7, 7, 7]) == [7]  # overlapping occurrences count
    assert lookup_drafts([1, 2, 3]) == [] and lookup_drafts([4]) == []


@pytest.mark.quick
@pytest.mark.parametrize("method", ["lookup", "draft-tree"])
def test_lookup_greedy_equals_ar(method, device):
    accepted = 0
    for seed in range(4):
        for vocab in (8, 50):
            model = tiny_model(vocab=vocab, seed=seed, device=device)
            for prompt in (PROMPT, REPEATING):
                ar, _, _ = run(model, prompt, "ar", 60)
                out, stats, _ = run(model, prompt, method, 60, k=3)
                assert out == ar
                assert stats.new_tokens == 60
                accepted += sum(stats.accepted)
    assert accepted > 50


def test_lookup_scripted_model_every_copy_accepted(device):
    # SCRIPT repeats every 11 tokens, so once 11 + 2 tokens are known every copy is right.
    method = "lookup"
    model = ScriptedModel(SCRIPT, 0, 11, device)
    prompt = SCRIPT[:14]
    events = []
    tokens, stats, cache = run(model, prompt, method, 60, k=2, trace=events.append)
    assert tokens == SCRIPT[14:74]
    assert all(e["accepted"] == len(e["drafts"]) for e in events)
    assert [len(e["drafts"]) for e in events[:5]] == [10] * 5  # copies per pass: at most 10 (as transformers)
    L = len(prompt)
    for e in events:  # fed: cur + m copies (no SATs beside copies); kept: all of them
        m = len(e["drafts"])
        assert e["cache_before"] == L + 1 + m
        assert e["cache_after"] == L + 1 + m
        L = e["cache_after"]


@pytest.mark.parametrize("method", ["lookup", "draft-tree"])
def test_lookup_stop_id_at_every_slot_and_budget(method, device):
    model = ScriptedModel(SCRIPT, 2, 11, device)
    prompt = SCRIPT[:14]
    full, _, _ = run(model, prompt, method, 40, k=2)
    assert full == SCRIPT[14:54]
    for stop in range(11):  # the 11 token values fill the slots of the first accepted block
        out, _, _ = run(model, prompt, method, 40, k=2, stop_ids=[stop])
        assert out == full[:full.index(stop) + 1]
    for n in range(1, 25):
        assert run(model, prompt, method, n, k=2)[0] == full[:n]


@pytest.mark.parametrize("method", ["lookup", "draft-tree"])
def test_lookup_stop_ids_random_model_match_ar(method, device):
    model = tiny_model(vocab=12, seed=1, device=device)
    full, _, _ = run(model, REPEATING, "ar", 40)
    for stop in set(full):
        ar, _, _ = run(model, REPEATING, "ar", 40, stop_ids=[stop])
        assert run(model, REPEATING, method, 40, k=4, stop_ids=[stop])[0] == ar


def test_lookup_sampling_matches_ar_distribution(device):
    # The prompt repeats itself, so tokens 2 and 3 are decided by accepting or rejecting
    # copies (point-mass drafts).
    method = "lookup"
    model = sampling_model(device=device)
    prompt = [1, 0, 2, 1, 0, 2, 1, 0]
    warper = Warper(temperature=1.0)
    dist = exact_tokens23_dist(model, prompt, warper)
    counts = sampled_tokens23_counts(model, prompt, method, warper, model.args.sat_token_id)
    chi2 = chi_square(counts, dist, N_RUNS)
    assert chi2 < chi2_999(len(dist) - 1), (chi2, counts)
