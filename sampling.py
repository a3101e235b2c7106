"""Distributions over the vocabulary: the one warper, and sampling from it.

Every probability distribution the decoders use, target or draft, comes from `warp`. That
is what keeps speculative sampling lossless: the acceptance rule compares a draft
distribution with a target distribution, and both must be made the same way.
"""

from dataclasses import dataclass

import torch


def check_warper_args(temperature: float, top_k: int, top_p: float):
    """Raise ValueError with a readable message for arguments warp() cannot use."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0 or int(top_k) != top_k:
        raise ValueError(f"top_k must be a whole number >= 0 (0 = off), got {top_k}")


def warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities [..., V] from logits [..., V]: temperature, then top-k, then top-p.

    temperature 0 is greedy: all mass on the argmax (the first one on ties).
    top_k keeps every token whose logit is >= the k-th largest (ties at the edge stay).
    top_p keeps the most likely tokens, in order, until their mass first reaches top_p
    (the top token always stays).
    """
    check_warper_args(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(int(top_k), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1:
        probs = probs.masked_fill(~top_p_keep(probs, top_p), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def top_p_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean [..., V]: the most likely tokens of each row, in order, until their mass first
    reaches top_p (a token is kept when the mass before it is < top_p).

    The plain way sorts every row, and on a CPU that is slow: sorting 8k-50k probabilities
    costs as much as a small model's forward pass. Only the tokens near the edge of the
    kept set need an order, so:
      1. if the top 64 tokens hold top_p in every row (a low temperature), sort only those;
      2. else put every token in a bucket by value. The bit pattern of a non-negative
         float32 orders as its value does, so its top 12 bits (sign 0, 8 exponent bits, 3
         mantissa bits) number 1024 buckets, 8 per octave, lowest value first. Summing
         mass per bucket from the top finds the edge bucket, the one where the running
         mass reaches top_p. Buckets above it are kept whole, those below dropped, and
         only the edge bucket's few tokens are sorted.
    Both are exact: they keep what a full sort would (ties at the edge in either order).
    """
    sorted_p, order = probs.topk(min(64, probs.shape[-1]), dim=-1)  # [..., 64] descending
    if bool((sorted_p.sum(-1) >= top_p).all()):  # the one host sync of the common case
        return prefix_keep(probs, sorted_p, order, 0.0, top_p)
    V = probs.shape[-1]
    p = probs.reshape(-1, V)  # [R, V]
    bucket = p.view(torch.int32) >> 20  # [R, V] in 0 .. 1016 (1.0 is 0x3F800000)
    mass = torch.zeros(p.shape[0], 1025, device=p.device).scatter_add_(1, bucket.long(), p)
    at_or_above = mass.flip(-1).cumsum(-1).flip(-1)  # [R, 1025]: mass in buckets >= b
    edge = (at_or_above >= top_p).sum(-1, keepdim=True) - 1  # [R, 1]; -1: everything is kept
    above_edge = at_or_above.gather(1, edge + 1)  # mass of the buckets kept whole
    keep = bucket > edge
    in_edge = bucket == edge
    m = int(in_edge.sum(-1).max())  # the edge bucket's size, at most
    if m:
        sorted_p, order = p.masked_fill(~in_edge, -1.0).topk(m, dim=-1)  # [R, m]; -1: padding
        keep |= prefix_keep(p, sorted_p, order, above_edge, top_p) & in_edge
    return keep.view(probs.shape)


def prefix_keep(probs, sorted_p, order, mass_above, top_p: float) -> torch.Tensor:
    """Boolean like probs: the tokens of `order` (sorted_p descending, -1 for padding) whose
    mass before them, mass_above plus their predecessors in the list, is < top_p."""
    sorted_p = sorted_p.clamp(min=0)
    mass_before = mass_above + sorted_p.cumsum(-1) - sorted_p
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, mass_before < top_p)


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of probs [..., V] -> [...]. Reproducible with a seeded generator.

    Inverse transform: one uniform u per row, and the first token whose cumulative mass
    exceeds u * total. A token of probability 0 adds no width to the cumulative mass, so it
    is never the first to exceed it. (torch.multinomial does the same and costs several
    times more on a CPU.)"""
    cdf = probs.float().cumsum(-1)  # [..., V]
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, device=probs.device)  # [..., 1]
    ids = torch.searchsorted(cdf, u * cdf[..., -1:], right=True)  # [..., 1]
    return ids.clamp(max=probs.shape[-1] - 1)[..., 0]


def accept_drafts(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                  generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
    """Speculative sampling over a chain of k drafts. Returns (n accepted, next token).

    p: [k + 1, V] target distributions: p[j] is the model's distribution for the slot of
       drafts[j] given everything before it, p[k] the one after the last draft.
    q: [k, V] the distributions the drafts were sampled from; drafts: [k].

    Draft j is accepted with probability min(1, p_j(d) / q_j(d)). At the first rejection
    the next token is sampled from the residual r = max(0, p_j - q_j) / sum(...), and the
    chain stops; if all k are accepted, a bonus token is sampled from p[k].

    Why the emitted token is distributed exactly as p_j, whatever q_j is: write
    m(x) = min(p(x), q(x)). Accepting emits x with probability q(x) * min(1, p(x)/q(x)) = m(x).
    Rejection happens with probability 1 - sum(m), and sum(max(0, p - q)) = 1 - sum(m) as
    well, so rejection followed by the residual emits x with probability max(0, p(x) - q(x)).
    Together: m(x) + max(0, p(x) - q(x)) = p(x).
    """
    k = drafts.shape[0]
    rows = torch.arange(k, device=drafts.device)
    p_d, q_d = p[rows, drafts], q[rows, drafts]
    u = torch.rand(k, generator=generator, device=p.device)
    accepted = (u * q_d < p_d).long().cumprod(0)  # 1 while every draft so far is accepted
    n = int(accepted.sum())  # the one host sync of the verification
    if n == k:
        return n, sample(p[k], generator)
    residual = (p[n] - q[n]).clamp(min=0)  # > 0 somewhere: rejection implies p(d) < q(d)
    return n, sample(residual / residual.sum(), generator)


@dataclass(frozen=True)
class Warper:
    """The decoding settings, checked once. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        check_warper_args(self.temperature, self.top_k, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return warp(logits, self.temperature, self.top_k, self.top_p)

    def next_token(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Token ids [...] for logits [..., V]: argmax when greedy, else a sample."""
        return logits.argmax(-1) if self.greedy else sample(self.probs(logits), generator)
