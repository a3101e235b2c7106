"""What every decoding loop shares: the emitter, the loop's statistics, the prefill, and
the two halves of a speculative step, splitting a draft pass and verifying drafts.

The loops themselves: decode.py (autoregressive and SDSAT's two-step loop, the paper),
decode_tree.py (the paper's token tree, and the one-pass tree of SAT candidates and
copies), decode_fused.py (one-step fused), decode_lookup.py (prompt lookup). Each takes a
prefilled cache and the logits of the last prompt token and returns (new token ids, Stats).
"""

from dataclasses import dataclass, field

import torch

from model import KVCache, Llama
from sampling import Warper, accept_drafts, sample


@dataclass
class Stats:
    """What a decode loop did. The first new token comes from the prefill, not the loop."""

    k: int = 0
    forwards: int = 0  # forward passes in the decode loop
    iterations: int = 0  # draft-verify rounds (speculative methods)
    accepted: list[int] = field(default_factory=list)  # accepted drafts, per iteration
    checked_at: list[int] = field(default_factory=list)  # [k]: times draft j was checked
    accepted_at: list[int] = field(default_factory=list)  # [k]: times draft j was accepted
    new_tokens: int = 0
    accepted_from: dict = field(default_factory=dict)  # draft tree: accepted tokens by source (sat, copy, both)

    def __post_init__(self):
        self.checked_at = self.checked_at or [0] * self.k
        self.accepted_at = self.accepted_at or [0] * self.k

    def count(self, n_accepted: int, n_checked: int):
        """Record one verification: drafts 1..n_checked were looked at, n_accepted kept."""
        self.iterations += 1
        self.accepted.append(n_accepted)
        for j in range(n_checked):
            self.checked_at[j] += 1
            self.accepted_at[j] += j < n_accepted

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted) / max(1, len(self.accepted))

    @property
    def tokens_per_forward(self) -> float:
        return (self.new_tokens - 1) / max(1, self.forwards)


class Emitter:
    """Collects new tokens; stops at a stop id (kept) or after exactly max_new tokens."""

    def __init__(self, max_new: int, stop_ids, on_tokens=None):
        self.tokens, self.max_new, self.stop_ids, self.on_tokens = [], max_new, set(stop_ids), on_tokens
        self.done = max_new <= 0
        self.last = []  # what the latest emit took: a stop id or the budget may cut its ids short

    def emit(self, ids: list[int]) -> bool:
        """Append ids up to the first stop id or the budget. Returns True when finished."""
        start = len(self.tokens)
        for t in ids:
            if self.done:
                break
            self.tokens.append(t)
            self.done = t in self.stop_ids or len(self.tokens) >= self.max_new
        self.last = self.tokens[start:]
        if self.on_tokens and self.last:
            self.on_tokens(self.last)
        return self.done


@torch.inference_mode()  # as the loops: no autograd graph, and no gradient flag on the cache
def prefill(model: Llama, cache: KVCache, prompt: list[int]) -> torch.Tensor:
    """Feed the prompt into an empty cache; return the logits [V] of its last token."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (for example BOS)")
    cache.check_room(len(prompt))
    tokens = torch.tensor([prompt], device=model.device)
    return model(tokens, cache=cache)[0, -1]


def draft_pass(model: Llama, cache: KVCache, cur: torch.Tensor, sats: torch.Tensor, stats: Stats) -> torch.Tensor:
    """Feed [cur, S * k], then cut the SATs out of the cache again (no real token may ever
    see one): logits [1 + k, V]. Output 0 is exact; output j is a draft j + 1 tokens ahead."""
    L = cache.length
    logits = model(torch.cat([cur.view(1), sats])[None], cache=cache)[0]  # [1 + k, V]
    stats.forwards += 1
    cache.truncate(L + 1)  # keep cur
    return logits


def draft_and_emit(model: Llama, cache: KVCache, cur: torch.Tensor, sats: torch.Tensor, stats: Stats, warper: Warper,
                   generator, out: "Emitter", trace=None):
    """The two-step loop's first half: the draft pass, its exact token x emitted, and its
    trace record. Returns (x, drafts [k], q [k, V] or None, whether the run is done)."""
    L, k = cache.length, sats.shape[0]
    x, drafts, q = split_draft(warper, draft_pass(model, cache, cur, sats, stats), generator)
    done = out.emit([int(x)])
    if trace:  # one record per forward pass (trace_view.py)
        trace(dict(step="draft", cur=int(cur), sats=k, x=int(x), drafts=drafts.tolist(), emitted=out.last,
                   cache_before=L + 1 + k, cache_after=L + 1))
    return x, drafts, q, done


def split_draft(warper: Warper, logits: torch.Tensor, generator=None):
    """Outputs [1 + k, V] of [cur, S * k] -> (x, drafts [k], q [k, V] or None).

    Output 0 is the exact next token x; output j is a draft j + 1 tokens ahead. Greedy
    takes argmaxes; sampling draws x from the target and each draft from its SAT's
    distribution q_j (which the verification needs)."""
    if warper.greedy:
        drafted = logits.argmax(-1)
        return drafted[0], drafted[1:], None
    probs = warper.probs(logits)
    return sample(probs[0], generator), sample(probs[1:], generator), probs[1:]


def verify(warper: Warper, logits: torch.Tensor, drafts: torch.Tensor, q, generator=None):
    """Target outputs [1 + k, V] at [x or cur, d_1 .. d_k] -> (n accepted, next token, drafts list).

    Greedy: n = the longest prefix of drafts equal to the model's own argmax, and the next
    token is the argmax after them. Sampling: the speculative rule of sampling.accept_drafts."""
    k = drafts.shape[0]
    if warper.greedy:
        both = torch.cat([drafts, logits.argmax(-1)]).tolist()  # one host sync for both
        d, h = both[:k], both[k:]
        n = next((i for i in range(k) if d[i] != h[i]), k)
        return n, h[n], d
    n, nxt = accept_drafts(warper.probs(logits), q, drafts, generator)
    *d, nxt = torch.cat([drafts, nxt.view(1)]).tolist()  # one host sync for both
    return n, nxt, d


def finish(stats: Stats, out: Emitter) -> Stats:
    stats.new_tokens = len(out.tokens)
    return stats
