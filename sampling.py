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
        # Only the most likely tokens can be kept, so sort only them: the top m, with m grown
        # until they hold top_p of the mass in every row (a full sort of a 32k vocabulary
        # costs more than a small model's forward pass). Every token outside the top m has
        # more than top_p of mass before it, so it would be dropped anyway.
        m = min(64, probs.shape[-1])
        while True:
            sorted_p, order = probs.topk(m, dim=-1)  # [..., m] descending
            if m == probs.shape[-1] or bool((sorted_p.sum(-1) >= top_p).all()):
                break
            m = min(8 * m, probs.shape[-1])
        mass_before = sorted_p.cumsum(-1) - sorted_p  # mass of the more likely tokens
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, mass_before < top_p)
        probs = probs.masked_fill(~keep, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


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
