"""Tests for sampling.py, each against something computed independently here.

- warp's top-k / top-p supports against brute-force python loops over numpy float64
  softmaxes, never against warp itself;
- `sample` and `accept_drafts` against exact distributions, with a chi-square test at a
  fixed seed. The 0.999 quantiles of the chi-square distribution are hard-coded (no scipy):
  a correct sampler fails one such test once in a thousand seeds, and the seeds are fixed,
  so the tests are deterministic.
"""

import numpy as np
import pytest
import torch

from sampling import Warper, accept_drafts, sample, warp

CHI2_999 = {1: 10.83, 3: 16.27, 4: 18.47}  # 0.999 quantile of chi-square, by degrees of freedom


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def support(probs: torch.Tensor) -> set[int]:
    """Indices with nonzero probability in a 1-D distribution."""
    return set(torch.nonzero(probs > 0).flatten().tolist())


def restricted(probs: np.ndarray, keep: set[int]) -> np.ndarray:
    """probs with everything outside `keep` zeroed, renormalised."""
    out = np.zeros_like(probs)
    idx = sorted(keep)
    out[idx] = probs[idx] / probs[idx].sum()
    return out


def ref_top_p_support(probs: np.ndarray, top_p: float) -> set[int]:
    """Walk tokens from most to least likely; stop as soon as the kept mass reaches top_p."""
    keep, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        keep.add(i)
        mass += probs[i]
        if mass >= top_p:
            break
    return keep


def assert_clear_of_boundary(probs: np.ndarray, top_p: float, margin: float = 1e-4):
    """The test's own precondition: no prefix mass within `margin` of top_p, so that warp's
    float32 arithmetic and the float64 reference cannot disagree on where the prefix ends."""
    cum = np.cumsum(np.sort(probs)[::-1])
    assert np.abs(cum - top_p).min() > margin, "pick another seed: a prefix mass sits on top_p"


def chi_square(samples: torch.Tensor, probs: np.ndarray) -> float:
    """Pearson's statistic of integer samples against probs (which must be > 0 wherever
    a sample landed; categories with probability 0 must have no samples)."""
    counts = np.bincount(samples.flatten().cpu().numpy(), minlength=len(probs)).astype(np.float64)
    assert counts[probs == 0].sum() == 0, "samples landed on a probability-0 token"
    expected = counts.sum() * probs[probs > 0]
    return float(((counts[probs > 0] - expected) ** 2 / expected).sum())


# ---------------------------------------------------------------------------- warp


def test_top_k_keeps_the_k_largest_logits_and_renormalises(device):
    torch.manual_seed(0)
    logits = torch.randn(6, 12) * 3  # [B, V], continuous: no ties
    for k in (1, 2, 5, 11):
        probs = warp(logits.to(device), temperature=1.0, top_k=k).cpu()  # [B, V]
        assert probs.shape == logits.shape
        for row, x in zip(probs, logits.double().numpy()):
            keep = set(np.argsort(-x)[:k].tolist())
            assert support(row) == keep
            torch.testing.assert_close(row.double(), torch.from_numpy(restricted(softmax(x), keep)),
                                       atol=1e-6, rtol=0)


def test_top_k_off_when_zero_or_at_least_vocab_size(device):
    torch.manual_seed(1)
    logits = torch.randn(3, 7)
    full = torch.from_numpy(np.stack([softmax(x) for x in logits.double().numpy()]))
    for k in (0, 7, 50):
        torch.testing.assert_close(warp(logits.to(device), 1.0, k).cpu().double(), full, atol=1e-6, rtol=0)


def test_top_k_keeps_ties_at_the_kth_value(device):
    # Documented behaviour: warp keeps every token whose logit is >= the k-th largest, so a
    # tie at the edge keeps all tied tokens (here 3 tokens for k=2, 2 tokens for k=1).
    logits = torch.tensor([3.0, 1.0, 2.0, 2.0, 0.0])
    x = logits.double().numpy()
    for k, expected in ((2, {0, 2, 3}), (1, {0})):
        kth = np.sort(x)[::-1][k - 1]
        keep = {i for i in range(len(x)) if x[i] >= kth}
        assert keep == expected  # the reference rule, spelled out on this example
        probs = warp(logits.to(device), 1.0, top_k=k).cpu()
        assert support(probs) == keep
        torch.testing.assert_close(probs.double(), torch.from_numpy(restricted(softmax(x), keep)),
                                   atol=1e-6, rtol=0)
    tied_top = torch.tensor([2.0, 2.0, 1.0])
    assert support(warp(tied_top.to(device), 1.0, top_k=1).cpu()) == {0, 1}


def test_top_p_keeps_the_smallest_prefix_reaching_top_p(device):
    torch.manual_seed(2)
    logits = torch.randn(8, 12) * 2  # [B, V]
    for top_p in (1e-9, 0.3, 0.5, 0.8, 0.9, 0.99, 1.0):
        probs = warp(logits.to(device), temperature=1.0, top_p=top_p).cpu()
        for row, x in zip(probs, logits.double().numpy()):
            ref = softmax(x)
            if top_p < 1:
                assert_clear_of_boundary(ref, top_p)
            keep = ref_top_p_support(ref, top_p)
            assert support(row) == keep, f"top_p={top_p}"
            torch.testing.assert_close(row.double(), torch.from_numpy(restricted(ref, keep)),
                                       atol=1e-6, rtol=0)
            if top_p == 1e-9:
                assert keep == {int(np.argmax(x))}  # only the argmax survives a tiny top_p
            if top_p == 1.0:
                assert len(keep) == len(x)  # top_p 1 keeps everything


def test_top_p_on_flat_rows_that_the_top_64_do_not_cover(device):
    """Flat rows need thousands of tokens to reach top_p, so warp takes its bucket route
    (sampling.top_p_keep); a peaked row rides along in the same batch. Checked against the
    float64 walk; (row, top_p) pairs whose prefix masses sit within 1e-6 of top_p are left
    out, since float32 and float64 may then disagree on where the prefix ends."""
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(6, 3000, generator=g) * 0.7  # [B, V]
    logits[0] *= 30  # peaked: the top 64 alone hold top_p
    logits[1, :1000] = float("-inf")  # zeros in the row: never kept
    checked = 0
    for top_p in (0.3, 0.9, 0.99):
        probs = warp(logits.to(device), temperature=1.0, top_p=top_p).cpu()
        for row, x in zip(probs, logits.double().numpy()):
            ref = softmax(x)
            cum = np.cumsum(np.sort(ref)[::-1])
            if np.abs(cum - top_p).min() < 1e-6:
                continue
            keep = ref_top_p_support(ref, top_p)
            assert support(row) == keep, f"top_p={top_p}"
            torch.testing.assert_close(row.double(), torch.from_numpy(restricted(ref, keep)), atol=1e-6, rtol=0)
            checked += 1
    assert checked >= 15
    assert len(ref_top_p_support(softmax(logits[2].double().numpy()), 0.9)) > 64  # the bucket route ran


def test_top_p_always_keeps_the_top_token(device):
    # One token already holds more than top_p: the prefix is that token alone.
    logits = torch.tensor([10.0, 0.0, 0.0, 0.0])
    probs = warp(logits.to(device), 1.0, top_p=0.5).cpu()
    assert support(probs) == {0} and probs[0] == 1


def test_top_k_then_top_p_on_the_renormalised_top_k(device):
    # top-p measures mass on the distribution left by top-k (renormalised), not on the full
    # softmax; the seed is chosen so that some rows keep different supports under the two.
    torch.manual_seed(3)
    logits = torch.randn(8, 10) * 1.5
    k, top_p = 4, 0.7
    probs = warp(logits.to(device), 1.0, top_k=k, top_p=top_p).cpu()
    differs = 0
    for row, x in zip(probs, logits.double().numpy()):
        after_k = restricted(softmax(x), set(np.argsort(-x)[:k].tolist()))
        assert_clear_of_boundary(after_k, top_p)
        keep = ref_top_p_support(after_k, top_p)
        assert support(row) == keep
        torch.testing.assert_close(row.double(), torch.from_numpy(restricted(after_k, keep)),
                                   atol=1e-6, rtol=0)
        differs += keep != ref_top_p_support(softmax(x), top_p)
    assert differs > 0, "no row tells the two orders apart; pick another seed"


def test_temperature_applies_before_top_p(device):
    # Hand-checked: softmax(x / 0.5) = [.87, .12, ...] -> top_p 0.8 keeps {0};
    # softmax(x / 2) = [.46, .28, .17, .10] -> keeps {0, 1, 2}. Were temperature applied
    # after top-p, both would keep the support of softmax(x) at 0.8, which is {0, 1}.
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    x = logits.double().numpy()
    top_p = 0.8
    assert ref_top_p_support(softmax(x), top_p) == {0, 1}
    for temperature, expected in ((0.5, {0}), (2.0, {0, 1, 2})):
        ref = softmax(x / temperature)
        keep = ref_top_p_support(ref, top_p)
        assert keep == expected
        probs = warp(logits.to(device), temperature, top_p=top_p).cpu()
        assert support(probs) == keep
        torch.testing.assert_close(probs.double(), torch.from_numpy(restricted(ref, keep)),
                                   atol=1e-6, rtol=0)


def test_temperature_scales_logits_before_top_k(device):
    torch.manual_seed(4)
    logits = torch.randn(4, 9)
    for temperature in (0.3, 1.0, 2.5):
        probs = warp(logits.to(device), temperature, top_k=3).cpu()
        for row, x in zip(probs, logits.double().numpy()):
            keep = set(np.argsort(-x)[:3].tolist())
            torch.testing.assert_close(row.double(),
                                       torch.from_numpy(restricted(softmax(x / temperature), keep)),
                                       atol=1e-6, rtol=0)


def test_temperature_zero_is_one_hot_argmax(device):
    torch.manual_seed(5)
    logits = torch.randn(5, 11)
    probs = warp(logits.to(device), temperature=0, top_k=3, top_p=0.5).cpu()  # top-k/top-p are moot when greedy
    expected = torch.zeros(5, 11)
    expected[torch.arange(5), [int(np.argmax(x)) for x in logits.numpy()]] = 1
    assert torch.equal(probs, expected)
    # ties: the first maximum
    assert torch.equal(warp(torch.tensor([1.0, 3.0, 3.0, 0.0], device=device), 0).cpu(), torch.tensor([0.0, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("name, value", [
    ("temperature", -1.0), ("temperature", float("nan")),
    ("top_p", 0.0), ("top_p", 1.5),
    ("top_k", -1), ("top_k", 2.5),
])
def test_invalid_arguments_raise_value_error(name, value, device):
    kwargs = {name: value}
    with pytest.raises(ValueError, match=name):
        Warper(**kwargs)
    with pytest.raises(ValueError, match=name):
        warp(torch.randn(5, device=device), **kwargs)


def test_valid_edge_arguments_are_accepted(device):
    for kwargs in (dict(temperature=0.0), dict(top_p=1.0), dict(top_k=0), dict(top_p=1e-9)):
        Warper(**kwargs)
        warp(torch.randn(5, device=device), **kwargs)


def test_whole_float_top_k_is_rejected_or_works(device):
    logits = torch.randn(6, device=device)
    try:
        probs = warp(logits, 1.0, top_k=2.0)
    except ValueError:
        return
    assert torch.equal(probs, warp(logits, 1.0, top_k=2))


# ---------------------------------------------------------------------------- Warper


def test_warper_greedy_is_argmax(device):
    torch.manual_seed(6)
    logits = torch.randn(3, 4, 17)  # [B, T, V]
    w = Warper()
    assert w.greedy
    ids = w.next_token(logits.to(device))
    assert ids.shape == (3, 4)
    assert ids.tolist() == np.argmax(logits.numpy(), -1).tolist()


def test_warper_probs_is_warp(device):
    torch.manual_seed(7)
    logits = torch.randn(2, 13)
    w = Warper(temperature=0.7, top_k=5, top_p=0.9)
    assert not w.greedy
    logits = logits.to(device)
    assert torch.equal(w.probs(logits), warp(logits, 0.7, 5, 0.9))


def test_warper_seeded_sampling_is_reproducible(device):
    logits = torch.zeros(32, device=device)  # uniform: two different seeds agree on 50 draws with prob 32**-50
    w = Warper(temperature=1.0)

    def draws(seed):
        g = torch.Generator(device).manual_seed(seed)
        return [int(w.next_token(logits, g)) for _ in range(50)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_warper_samples_stay_in_the_top_k(device):
    torch.manual_seed(8)
    logits = torch.randn(16)
    top3 = set(np.argsort(-logits.numpy())[:3].tolist())
    g = torch.Generator(device).manual_seed(0)
    ids = Warper(temperature=1.5, top_k=3).next_token(logits.to(device).expand(2000, 16), g)
    assert set(ids.tolist()) == top3  # all of them, and nothing else


# ---------------------------------------------------------------------------- sample


def test_sample_matches_distribution_chi_square(device):
    probs = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    g = torch.Generator(device).manual_seed(0)
    ids = sample(torch.tensor(probs, dtype=torch.float32, device=device).expand(20000, 5), g)  # [20000]
    assert ids.shape == (20000,)
    assert chi_square(ids, probs) < CHI2_999[4]
    # the same test rejects a sampler of a slightly different distribution
    wrong = sample(torch.tensor([0.12, 0.2, 0.28, 0.25, 0.15], device=device).expand(20000, 5), g)
    assert chi_square(wrong, probs) > CHI2_999[4]


def test_sample_shape_and_zero_probability_tokens(device):
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5], device=device).expand(2, 3, 4)
    ids = sample(probs, torch.Generator(device).manual_seed(0))
    assert ids.shape == (2, 3)
    assert set(ids.flatten().tolist()) <= {1, 3}


def test_sample_is_reproducible_with_a_seed(device):
    probs = torch.full((100, 10), 0.1, device=device)
    a = sample(probs, torch.Generator(device).manual_seed(3))
    b = sample(probs, torch.Generator(device).manual_seed(3))
    c = sample(probs, torch.Generator(device).manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------- accept_drafts

P0 = np.array([0.6, 0.2, 0.1, 0.1])  # target distribution for the draft's slot
P1 = np.array([0.1, 0.2, 0.3, 0.4])  # target distribution after it (the bonus token)
Q = np.array([0.1, 0.5, 0.05, 0.35])  # the drafter's distribution: deliberately unlike P0
N = 20000


def test_accept_drafts_first_token_is_distributed_as_target(device):
    """Speculative sampling is lossless: whatever q is, the first emitted token ~ p0.

    A biased rule -- accept when an independent x ~ p0 equals the draft, else emit a fresh
    sample of p0 -- looks plausible but emits q(y) p0(y) + (1 - sum q p0) p0(y), not p0(y);
    the same chi-square test, with the same N and seed, rejects it.
    """
    p = torch.tensor(np.stack([P0, P1]), dtype=torch.float32, device=device)  # [k + 1, V]
    q = torch.tensor(Q, dtype=torch.float32, device=device)[None]  # [k, V]
    g = torch.Generator(device).manual_seed(0)
    drafts = sample(q.expand(N, 4), g)  # [N]
    first, bonus = [], []
    for d in drafts:
        n, nxt = accept_drafts(p, q, d[None], g)
        assert n in (0, 1)
        first.append(int(d) if n == 1 else int(nxt))
        if n == 1:
            bonus.append(int(nxt))
    assert chi_square(torch.tensor(first), P0) < CHI2_999[3]
    # after an accepted draft, the bonus token comes from p[k]
    assert chi_square(torch.tensor(bonus), P1) < CHI2_999[3]
    # the acceptance rate is sum(min(p0, q)) = 0.45 (binomial sd ~0.0035)
    assert abs(len(bonus) / N - np.minimum(P0, Q).sum()) < 0.02

    g = torch.Generator(device).manual_seed(0)
    drafts = sample(q.expand(N, 4), g)
    x = sample(p[0].expand(N, 4), g)
    fresh = sample(p[0].expand(N, 4), g)
    biased = torch.where(x == drafts, drafts, fresh)
    assert chi_square(biased, P0) > 5 * CHI2_999[3]


def test_accept_drafts_accepts_everything_when_p_equals_q(device):
    torch.manual_seed(9)
    k, V = 4, 10
    g = torch.Generator(device).manual_seed(0)
    for trial in range(200):
        p = warp(torch.randn(k + 1, V).to(device) * 2, 1.0, top_k=6)  # zeros too: drafts never land there
        q = p[:k].clone()
        drafts = sample(q, g)
        n, nxt = accept_drafts(p, q, drafts, g)
        assert n == k, f"trial {trial}: draft {n} rejected although p == q"
        assert p[k, nxt] > 0


def test_accept_drafts_rejects_impossible_draft_and_resamples_residual(device):
    # p0 gives the draft token 1 probability 0: always rejected, and the replacement comes
    # from max(0, p0 - q), which excludes every token where q >= p0.
    p = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25] * 4], device=device)
    q = torch.tensor([[0.1, 0.6, 0.3, 0.0]], device=device)
    residual = np.clip(p[0].cpu().numpy() - q[0].cpu().numpy(), 0, None)
    residual /= residual.sum()  # [0.4/0.6, 0, 0.2/0.6, 0]
    g = torch.Generator(device).manual_seed(0)
    out = []
    for _ in range(3000):
        n, nxt = accept_drafts(p, q, torch.tensor([1], device=device), g)
        assert n == 0
        out.append(int(nxt))
    assert chi_square(torch.tensor(out), residual) < CHI2_999[1]


def test_accept_drafts_with_a_point_mass_draft(device):
    """A copied draft (prompt lookup) is not sampled: its q is one-hot on it. The rule then
    accepts it with probability p0(d), else samples p0 with d removed, so the first emitted
    token is still distributed as p0 -- for a likely draft and for an unlikely one."""
    p = torch.tensor(np.stack([P0, P1]), dtype=torch.float32, device=device)  # [k + 1, V]
    g = torch.Generator(device).manual_seed(0)
    runs = 5000
    for d in (0, 2):
        draft = torch.tensor([d], device=device)
        q = torch.nn.functional.one_hot(draft, 4).float()  # [k, V]
        first, accepted = [], 0
        for _ in range(runs):
            n, nxt = accept_drafts(p, q, draft, g)
            first.append(d if n == 1 else int(nxt))
            accepted += n
        assert chi_square(torch.tensor(first), P0) < CHI2_999[3]
        assert abs(accepted / runs - P0[d]) < 0.03  # binomial sd <= 0.007
