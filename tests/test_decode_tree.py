"""The draft tree of every source (decode_tree.generate_tree): SAT candidates and copied
text merged into one tree, verified in one pass, shaped by a cost curve.

Anchors: the tree, its mask and its positions exactly as drawn in decode_tree.py; greedy
output equals autoregressive decoding for every shape and source mix; sampling keeps the
autoregressive distribution with copies and SATs in one tree; the shape chooser finds what
a brute-force search over small trees finds.
"""

import itertools

import pytest
import torch

from decode_tree import (Shape, choose_shape, expected_tokens, likeliest_paths, merge_candidates, parse_shape,
                         pass_cost, place_groups, tree_layout)
from sampling import Warper
from test_decode import (MIXED_SHAPE, N_RUNS, PROMPT, REPEATING, SAMPLING_PROMPT, ScriptedModel, SCRIPT,
                         chi2_999, chi_square, exact_tokens23_dist, run, sampled_tokens23_counts, sampling_model,
                         tiny_model)


@pytest.mark.quick
def test_the_tree_mask_and_positions_are_as_drawn():
    """decode_tree.py's picture: SAT candidates a (rank 0) and b (rank 1) under cur, a copy
    "b c" merged into b, groups of k = 2 SATs at cur and at b."""
    cur, a, b, c = 100, 7, 8, 9
    shape = Shape(((0,), (1,)), k=2, groups=2, copies=1, copy_len=2)
    nodes = merge_candidates(cur, [[a, b], [50, 51]], shape, [[b, c]], {(0,): 0.3, (1,): 0.2}, [0.6, 0.1])
    assert [(n.token, n.parent, n.depth, n.source) for n in nodes] == [
        (cur, -1, 0, "cur"), (a, 0, 1, "sat"), (b, 0, 1, "both"), (c, 2, 2, "copy")]
    assert [n.p for n in nodes] == [1.0, 0.3, 0.6, 0.1]  # a merged node keeps the larger chance
    grouped = place_groups(nodes, 2)  # walk ends: cur 0.1, a 0.3, b 0.5, c 0.1: b carries the second group
    assert grouped == [0, 2]
    offsets, mask = tree_layout(nodes, grouped, 2)
    assert offsets.tolist() == [0, 1, 1, 2, 1, 2, 2, 3]
    x, _ = 1, 0
    assert mask.int().tolist() == [
        # cur a  b  c  S  S  S  S
        [1, 0, 0, 0, 0, 0, 0, 0],  # cur
        [1, 1, 0, 0, 0, 0, 0, 0],  # a
        [1, 0, 1, 0, 0, 0, 0, 0],  # b
        [1, 0, 1, 1, 0, 0, 0, 0],  # c
        [1, 0, 0, 0, 1, 0, 0, 0],  # SAT 1 of the group at cur
        [1, 0, 0, 0, 1, 1, 0, 0],  # SAT 2
        [1, 0, 1, 0, 0, 0, 1, 0],  # SAT 1 of the group at b
        [1, 0, 1, 0, 0, 0, 1, 1]]  # SAT 2


SHAPES = {"SATs only": Shape(((0,), (1,), (2,), (0, 0), (0, 1), (0, 0, 0)), k=3, groups=2),
          "copies only": Shape(copies=3, copy_len=5),
          "one copy (prompt lookup)": Shape(copies=1, copy_len=10),
          "both": MIXED_SHAPE,
          "a group at every node": Shape(((0,), (1,), (0, 0)), k=2, groups=4, copies=1, copy_len=3)}


@pytest.mark.quick
@pytest.mark.parametrize("name", list(SHAPES))
def test_greedy_equals_ar_for_every_shape_and_source_mix(name, device):
    used = set()
    for seed in range(3):
        model = tiny_model(vocab=10, seed=seed, device=device)
        for prompt in (PROMPT, REPEATING):
            want, _, _ = run(model, prompt, "ar", 50)
            events = []
            got, stats, _ = run(model, prompt, "draft-tree", 50, shape=SHAPES[name], trace=events.append)
            assert got == want
            assert stats.forwards == len(events) and stats.new_tokens == 50
            used |= {k for k, v in stats.accepted_from.items() if v}
    want_sources = {"SATs only": {"sat"}, "copies only": {"copy"}, "one copy (prompt lookup)": {"copy"}}
    assert used >= want_sources.get(name, {"sat", "copy"})  # every source it was given did draft accepted tokens


def test_every_budget_and_stop_is_kept_exactly(device):
    model = ScriptedModel(SCRIPT, 2, 11, device)  # SATs right up to 2 ahead; copies right once it repeats
    prompt = SCRIPT[:14]
    full, stats, _ = run(model, prompt, "draft-tree", 60)
    assert full == SCRIPT[14:74] and max(stats.accepted) >= 3
    for n in range(1, 20):
        assert run(model, prompt, "draft-tree", n)[0] == full[:n]
    for stop in set(SCRIPT[14:30]):
        out = run(model, prompt, "draft-tree", 60, stop_ids=[stop])[0]
        assert out == full[:full.index(stop) + 1]


@pytest.mark.parametrize("drafts", ["own", "bad"])
def test_sampling_with_copies_and_sats_in_one_tree_matches_ar(drafts, device):
    model = sampling_model(device=device)
    warper = Warper(temperature=1.0)
    sat = model.args.sat_token_id if drafts == "own" else 2  # "bad": a real token in the SAT's place
    prompt = SAMPLING_PROMPT * 3  # repeats itself: copies from the start
    dist = exact_tokens23_dist(model, prompt, warper)
    counts = sampled_tokens23_counts(model, prompt, "draft-tree", warper, sat)
    chi2 = chi_square(counts, dist, N_RUNS)
    assert chi2 < chi2_999(len(dist) - 1), (chi2, counts)


# ----------------------------------------------------------------------------- the chooser

TABLE = {  # made up: SAT 1 right at rank 0 half the time, rank 1 a fifth; SAT 2 less often
    "k": 2,
    "sat_ranks": [[0, 0]] * 30 + [[0, 1]] * 10 + [[0, -1]] * 10 + [[1, 0]] * 12 + [[1, -1]] * 8 + [[-1, 0]] * 30,
    "copy_holds": {"1": [0.4, 0.3], "2": [0.5, 0.35]},
}


def all_trees(ranks=(0, 1), depth=2):
    """Every set of rank paths closed under prefixes (the empty one included)."""
    paths = [p for d in range(1, depth + 1) for p in itertools.product(ranks, repeat=d)]
    for n in range(len(paths) + 1):
        for chosen in itertools.combinations(paths, n):
            if all(p[:-1] in chosen or len(p) == 1 for p in chosen):
                yield tuple(sorted(chosen, key=lambda p: (len(p), p)))


@pytest.mark.parametrize("curve", ["flat", "steep"])
def test_the_chooser_finds_what_brute_force_finds(curve, monkeypatch):
    """A made-up cost curve and table; brute force over every small tree, k, group count
    and copy setting (rates by the same model, expected_tokens / pass_cost)."""
    import decode_tree
    latency = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.05, 16: 1.5, 32: 3.0} if curve == "flat" else \
        {1: 1.0, 2: 1.4, 4: 2.0, 8: 3.5, 16: 7.0, 32: 14.0}
    monkeypatch.setattr(decode_tree, "candidate_shapes", lambda max_k: (
        (k, n, g, c, m) for k in range(0, max_k + 1) for n in ([0] if k == 0 else range(1, 7))
        for g in ([1] if k == 0 else (1, 2, 3)) for c in (0, 1, 2) for m in ([0] if c == 0 else (1, 2))))
    shape, rate = choose_shape(latency, TABLE)
    shapes = [Shape(paths, k, g, c, m) for paths in all_trees() for k in ((0,) if not paths else (1, 2))
              for g in ((1,) if not paths else (1, 2, 3)) for c in (0, 1, 2) for m in ((0,) if c == 0 else (1, 2))
              if max(map(len, paths), default=0) <= k]
    best = max(((expected_tokens(s, TABLE) / pass_cost(latency, s.nominal_size), s) for s in shapes),
               key=lambda pair: pair[0])
    assert rate == pytest.approx(best[0])
    assert expected_tokens(shape, TABLE) / pass_cost(latency, shape.nominal_size) == pytest.approx(best[0])
    if curve == "steep":
        assert shape.nominal_size < 8  # a steep curve: small trees
    else:
        assert shape.k and shape.sat_paths  # a flat one: SATs pay


def test_a_flatter_curve_picks_a_larger_tree():
    """The same table on a GPU-like curve (flat to 32 tokens) and this CPU's fp32 one."""
    gpu = {1: 1.0, 8: 1.0, 16: 1.0, 32: 1.02, 64: 1.1}
    cpu = {1: 1.0, 2: 1.4, 4: 1.6, 8: 2.2, 16: 3.8, 32: 7.0, 64: 14.0}
    big, _ = choose_shape(gpu, TABLE)
    small, _ = choose_shape(cpu, TABLE)
    assert big.nominal_size > small.nominal_size


def test_what_the_adapter_adds_to_a_pass_is_part_of_the_choice():
    """A flat curve picks SATs (above); where a pass with SATs costs twice a plain one, the
    same table picks copies alone, and the rate is the copies' own, by hand: 1 + 0.5 + 0.35
    tokens (two copies of 2) per pass of 1 + 2 x 2 tokens (1.0125: a quarter of the way
    from 4 tokens' 1.0 to 8 tokens' 1.05)."""
    flat = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.05, 16: 1.5, 32: 3.0}
    with_sats = {t: 2 * c for t, c in flat.items()}
    shape, rate = choose_shape(flat, TABLE, sat_latency=with_sats)
    assert shape.k == 0 and not shape.sat_paths and shape.copies == 2 and shape.copy_len == 2
    assert rate == pytest.approx((1 + 0.5 + 0.35) / 1.0125)
    assert choose_shape(flat, TABLE, sat_latency=flat) == choose_shape(flat, TABLE)


def test_a_walk_of_copies_counts_passes_as_decoding_makes_them():
    """prompt 5 6 7, then the model wrote 5 6 7 5 6 8. One copy of at most 2 tokens, by hand:
    pass 1 after '7': no earlier 7, nothing copied (0 accepted); pass 2 after '5': the copy
    '6 7' (after the first 5) holds both; pass 3 after '7 5': '6 7' again, only '6' holds,
    and the model's 8 ends the text. 3 accepted in 3 passes, 2 of 3 passes accepted one.
    The chooser then takes the walk's numbers, not copy_holds'."""
    from bench_acceptance import copy_walk
    walk = copy_walk([([5, 6, 7, 5, 6, 7, 5, 6, 8], 3)], max_copies=1, max_len=2)
    assert walk["1"][1] == [1.0, 0.6667]
    walked = dict(TABLE, copy_walk={"1": [[0.5, 0.5], [1.0, 0.6667]]})
    assert expected_tokens(Shape(copies=1, copy_len=2), walked) == pytest.approx(2.0)
    assert expected_tokens(Shape(copies=1, copy_len=2), TABLE) == pytest.approx(1 + 0.4 + 0.3)


def test_likeliest_paths_are_closed_under_prefixes_and_the_spec_parses():
    assert likeliest_paths(TABLE, 2, 3) == ((0,), (1,), (0, 0))  # 50 and 20 anchors, then 30
    assert parse_shape("k=2,nodes=3,groups=2,copies=1", TABLE) == Shape(((0,), (1,), (0, 0)), 2, 2, 1, 10)
    with pytest.raises(SystemExit, match="expected auto or NAME=NUMBER"):
        parse_shape("k=two", TABLE)
    with pytest.raises(SystemExit, match="only 5 SAT paths"):
        parse_shape("k=2,nodes=9", TABLE)
