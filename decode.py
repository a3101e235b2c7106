"""Generation loops: autoregressive, and SDSAT's two-step draft-then-verify.

    python decode.py --prompt "def fibonacci(n):" --max-new-tokens 64
    python decode.py --method sdsat --k 5 --trace --prompt "import os"
    python decode.py --method sdsat --compile      # fixed-shape, compiled forwards (model.StaticModel)

Every method takes a prefilled cache and the logits of the last prompt token, and returns
(new token ids, Stats). The first new token always comes from the prefill logits, so
`Stats.forwards` counts only the decode loop's forward passes in every method. Timing is
the caller's job (bench.py). Batch size is 1 throughout: speculative decoding accepts a
different number of tokens per sequence, and a batch would need per-row cache lengths.

The SDSAT loop (SDSAT.md section 3), with L tokens cached and `cur` the last emitted
token, not yet cached, S the semantic adaptive token:

    draft:   feed [cur, S, S, .., S]       at positions L .. L+k
             -> g[0] the exact next token, g[1..k] drafts; truncate the cache to L+1
    verify:  feed [g[0], g[1], .., g[k]]   at positions L+1 .. L+1+k
             -> h; n = how many drafts match (g[i+1] == h[i]); emit h[0..n]
             truncate the cache to L+2+n; cur = h[n]
"""

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass, field

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch
import torch.nn.functional as F

from model import (DEFAULT_MODEL, DTYPES, CheckpointError, KVCache, Llama, ModelArgs, StaticModel, load_model, pick_device,
                   read_config, slow_bf16_warning)
from sampling import Warper, accept_drafts, sample
from sat import sat_layout



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

    def emit(self, ids: list[int]) -> bool:
        """Append ids up to the first stop id or the budget. Returns True when finished."""
        start = len(self.tokens)
        for t in ids:
            if self.done:
                break
            self.tokens.append(t)
            self.done = t in self.stop_ids or len(self.tokens) >= self.max_new
        if self.on_tokens and len(self.tokens) > start:
            self.on_tokens(self.tokens[start:])
        return self.done


@torch.inference_mode()  # as the loops: no autograd graph, and no gradient flag on the cache
def prefill(model: Llama, cache: KVCache, prompt: list[int]) -> torch.Tensor:
    """Feed the prompt into an empty cache; return the logits [V] of its last token."""
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token (for example BOS)")
    cache.check_room(len(prompt))
    tokens = torch.tensor([prompt], device=model.device)
    return model(tokens, cache=cache)[0, -1]


# ----------------------------------------------------------------------------- autoregressive


@torch.inference_mode()
def generate_ar(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                stop_ids=(), generator=None, on_tokens=None) -> tuple[list[int], Stats]:
    """One token per forward pass."""
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats()
    while not out.done:
        token = warper.next_token(logits, generator)
        if out.emit([int(token)]):  # int(): the host needs the id to check for a stop
            break
        logits = model(token.view(1, 1), cache=cache)[0, -1]
        stats.forwards += 1
    stats.new_tokens = len(out.tokens)
    return out.tokens, stats


# ----------------------------------------------------------------------------- SDSAT, chain


def split_draft(warper: Warper, logits: torch.Tensor, generator=None):
    """Outputs [1 + k, V] of [cur, S * k] -> (x, drafts [k], q [k, V] or None).

    Output 0 is the exact next token x; output j is a guess j + 1 tokens ahead. Greedy
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



@torch.inference_mode()
def generate_sdsat(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                   k: int, sat_id: int, stop_ids=(), generator=None, on_tokens=None,
                   trace=None) -> tuple[list[int], Stats]:
    """Two-step SDSAT decoding: a draft pass with k SATs, then a verify pass of the drafts.

    Greedy: drafts are the argmax at each SAT, and the output equals greedy autoregressive
    decoding. Sampling: drafts are sampled from the SAT distributions and verified with
    the speculative rule (sampling.accept_drafts), so the output is distributed exactly
    as autoregressive sampling.
    """
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=k)
    dev = model.device
    sats = torch.full((k,), sat_id, device=dev)
    cur = warper.next_token(logits, generator)  # the first new token, from the prefill
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    while True:
        L = cache.length
        # 1. Draft: [cur, S * k]. Output 0 is exact; output j is a guess j + 1 tokens ahead.
        logits = model(torch.cat([cur.view(1), sats])[None], cache=cache)[0]  # [1 + k, V]
        stats.forwards += 1
        x, drafts, q = split_draft(warper, logits, generator)
        cache.truncate(L + 1)  # keep cur; the SATs must never be seen by a real token
        if out.emit([int(x)]):
            break
        # 2. Verify: [x, d_1 .. d_k] gives the target distribution at every draft's slot.
        logits = model(torch.cat([x.view(1), drafts])[None], cache=cache)[0]  # [1 + k, V]
        stats.forwards += 1
        n, nxt, d = verify(warper, logits, drafts, q, generator)
        stats.count(n, k)
        before = cache.length
        cache.truncate(L + 2 + n)  # keep cur, x and the n accepted drafts
        if trace:
            trace(dict(step="chain", cur=int(cur), sats=k, x=int(x), drafts=d, accepted=n, bonus=nxt,
                       cache_before=before, cache_after=cache.length, draft_cache=(L + 1 + k, L + 1)))
        if out.emit(d[:n] + [nxt]):
            break
        cur = torch.tensor(nxt, device=dev)
    return out.tokens, finish(stats, out)


def finish(stats: Stats, out: Emitter) -> Stats:
    stats.new_tokens = len(out.tokens)
    return stats


# ----------------------------------------------------------------------------- SDSAT, tree
#
# The tree of the official release, depth 5: each path lists child ranks from the root;
# rank c at depth d is the c-th most likely token of SAT d's draft distribution.

TREE_DEPTH5 = ([[0], [1], [2], [3]]
               + [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0]]
               + [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0]]
               + [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 0], [0, 0, 1, 1]]
               + [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2]])


@dataclass
class Tree:
    """Index buffers for a token tree. Node 0 is the root; the others follow `paths`."""

    paths: list[list[int]]  # child-rank path of node i + 1
    depth: torch.Tensor  # [N] 0 for the root
    rank: torch.Tensor  # [N] rank at its depth (root: 0)
    parent: list[int]  # [N] parent node (root: -1)
    children: list[dict[int, int]]  # rank -> child node, per node
    mask: torch.Tensor  # [N, N] bool: node i sees node j iff j is i or an ancestor of i

    @property
    def size(self) -> int:
        return len(self.parent)

    @property
    def max_depth(self) -> int:
        return max(map(len, self.paths))  # from the host's lists: no wait for the device

    def leaf_paths(self) -> list[list[int]]:
        """Root-to-leaf node lists (ragged: no padding to misread)."""
        leaves = [i for i in range(self.size) if not self.children[i]]
        out = []
        for leaf in leaves:
            path = [leaf]
            while self.parent[path[-1]] >= 0:
                path.append(self.parent[path[-1]])
            out.append(path[::-1])
        return out


def build_tree(paths: list[list[int]], device=None) -> Tree:
    index = {(): 0}
    parent, depth, rank, children = [-1], [0], [0], [{}]
    for p in sorted(paths, key=len):
        node, up = len(parent), index[tuple(p[:-1])]  # a parent comes before its children
        index[tuple(p)] = node
        parent.append(up), depth.append(len(p)), rank.append(p[-1]), children.append({})
        children[up][p[-1]] = node
    n = len(parent)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parent[j]
    return Tree(paths=[list(p) for p in sorted(paths, key=len)], depth=torch.tensor(depth, device=device),
                rank=torch.tensor(rank, device=device), parent=parent, children=children,
                mask=mask.to(device))


@torch.inference_mode()
def generate_sdsat_tree(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                        sat_id: int, tree: Tree, stop_ids=(), generator=None, on_tokens=None,
                        trace=None) -> tuple[list[int], Stats]:
    """SDSAT with a token tree: many candidate continuations verified in one pass.

    Draft as in the chain (k = tree depth SATs). The tree's node at depth d, rank c holds
    the c-th most likely token of SAT d. The verify pass feeds the whole tree at once:
    each node sees the cache, the root and its own ancestors (tree.mask), at position
    cache length + depth. Then walk down from the root: draw the token the target model
    wants at this node (argmax, or one sample); if a child holds it, move there, else emit
    it and stop. Every emitted token is drawn from the exact target distribution, so the
    result is lossless. Finally the accepted path's cache slots are compacted and the rest
    truncated.
    """
    k = tree.max_depth
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=k)
    dev = model.device
    sats = torch.full((k,), sat_id, device=dev)
    cur = warper.next_token(logits, generator)
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    while True:
        L = cache.length
        logits = model(torch.cat([cur.view(1), sats])[None], cache=cache)[0]  # [1 + k, V]
        stats.forwards += 1
        x = warper.next_token(logits[0], generator)
        cache.truncate(L + 1)
        if out.emit([int(x)]):
            break
        # Node tokens: root = x, others = top-ranked tokens of their depth's SAT.
        n_ranks = 1 + max(p[-1] for p in tree.paths)  # the host's lists again, not tree.rank
        top = logits[1:].topk(n_ranks, dim=-1).indices  # [k, n_ranks]
        nodes = torch.where(tree.depth == 0, x, top[(tree.depth - 1).clamp(min=0), tree.rank])
        mask = torch.cat([torch.ones(tree.size, L + 1, dtype=torch.bool, device=dev), tree.mask], 1)
        logits = model(nodes[None], positions=(L + 1 + tree.depth)[None], mask=mask[None, None],
                       cache=cache)[0]  # [N, V]
        stats.forwards += 1
        # One target choice per node, all at once (one host sync); only the walked path's
        # choices are used, and each is an independent draw from that node's distribution.
        both = torch.cat([warper.next_token(logits, generator), nodes]).tolist()
        choice, node_tokens = both[:tree.size], both[tree.size:]
        path = [0]
        while True:
            want = choice[path[-1]]
            child = next((c for c in tree.children[path[-1]].values() if node_tokens[c] == want), None)
            if child is None:
                break
            path.append(child)
        n = len(path) - 1
        stats.count(n, min(k, n + 1))
        before = cache.length
        cache.compact([L + 1 + i for i in path])  # root and accepted nodes, now contiguous
        if trace:
            trace(dict(step="tree", cur=int(cur), sats=k, x=int(x), drafts=[node_tokens[i] for i in path[1:]],
                       accepted=n, bonus=want, cache_before=before, cache_after=cache.length,
                       path=path, size=tree.size, draft_cache=(L + 1 + k, L + 1),
                       rejected=[node_tokens[c] for c in tree.children[path[-1]].values()]))
        if out.emit([node_tokens[i] for i in path[1:]] + [want]):
            break
        cur = torch.tensor(want, device=dev)
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- fused, one step


def fused_layout(k: int, device=None):
    """Position offsets [Tf] and mask [Tf, Tf] of one fused pass: the k + 1 real tokens
    [cur, d_1 .. d_k], then for each i = 0..k a group of k SATs anchored at real token i.
    It is the training layout (sat.py) with every real token an anchor."""
    positions, mask = sat_layout(k + 1, torch.arange(k + 1, device=device)[None], k)
    return positions[0], mask[0, 0]


@torch.inference_mode()
def generate_fused(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                   k: int, sat_id: int, stop_ids=(), generator=None, on_tokens=None,
                   trace=None) -> tuple[list[int], Stats]:
    """One-step fused SDSAT (SDSAT.md section 5): every pass verifies the current drafts and
    drafts the next ones, for every possible number of accepted drafts at once.

    Each pass feeds the k + 1 real tokens [cur, d_1 .. d_k] and k + 1 groups of k SATs;
    group i is anchored at real token i (cur or d_i): it sees the cache and the real tokens
    up to d_i, so it drafts what follows if exactly i drafts are accepted. For k = 2
    (L = cache length; x = may attend; every row also sees the whole cache):

                 cur  d1  d2 | S   S  | S   S  | S   S
        position  L  L+1 L+2 | L+1 L+2| L+2 L+3| L+3 L+4
        cur       x          |        |        |
        d1        x   x      |        |        |
        d2        x   x   x  |        |        |
        group 0   x          | x      |        |          SAT j: guess j+1 after cur
                  x          | x   x  |        |
        group 1   x   x      |        | x      |          ... after d1
                  x   x      |        | x   x  |
        group 2   x   x   x  |        |        | x
                  x   x   x  |        |        | x   x

    The real rows give the target distributions; n drafts are accepted as in the two-step
    loop; the cache is truncated to L + 1 + n (cur and the accepted drafts; every SAT is
    dropped); group n's outputs are the next drafts. Up to k + 1 tokens per forward pass,
    for 1 + k + (k + 1) * k tokens fed (36 at k = 5). The first drafts come from one
    two-step-style draft pass [cur, S * k].
    """
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=k)
    dev = model.device
    offsets, block_mask = fused_layout(k, dev)  # built once, reused every pass
    sats = torch.full((k,), sat_id, device=dev)
    group_sats = torch.full(((k + 1) * k,), sat_id, device=dev)
    cur = warper.next_token(logits, generator)
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    # The first drafts: [cur, S * k] as in the two-step loop.
    L = cache.length
    logits = model(torch.cat([cur.view(1), sats])[None], cache=cache)[0]
    stats.forwards += 1
    cur, drafts, q = split_draft(warper, logits, generator)
    cache.truncate(L + 1)
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    while True:
        L = cache.length
        tokens = torch.cat([cur.view(1), drafts, group_sats])[None]
        mask = torch.cat([torch.ones(len(offsets), L, dtype=torch.bool, device=dev), block_mask], 1)
        logits = model(tokens, positions=(L + offsets)[None], mask=mask[None, None], cache=cache)[0]
        stats.forwards += 1
        real, groups = logits[:k + 1], logits[k + 1:].view(k + 1, k, -1)  # [k+1, V], [k+1, k, V]
        n, nxt, d = verify(warper, real, drafts, q, generator)
        if warper.greedy:  # group n drafts what follows the n accepted drafts
            drafts = groups[n].argmax(-1)
        else:
            q = warper.probs(groups[n])
            drafts = sample(q, generator)
        stats.count(n, k)
        before = cache.length
        cache.truncate(L + 1 + n)  # cur and the n accepted drafts; rejected drafts and SATs go
        if trace:
            trace(dict(step="fused", cur=int(cur), sats=(k + 1) * k, x=None, drafts=d, accepted=n, bonus=nxt,
                       cache_before=before, cache_after=cache.length, next_drafts=drafts.tolist()))
        if out.emit(d[:n] + [nxt]):
            break
        cur = torch.tensor(nxt, device=dev)
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- prompt lookup


def lookup_drafts(ids: list[int], max_drafts: int = 10, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Prompt lookup: the tokens that followed the latest earlier occurrence of the last
    n-gram of ids, trying n = max_ngram first, then shorter ones down to min_ngram.

        ids:  a b c d . . x b c d     the last 3-gram "b c d" occurred at index 1
        ->    drafts "d . . x b c d"[1:]  = the (at most max_drafts) tokens after it

    Returns [] when no n-gram matches. Code and repetitive text copy themselves a lot."""
    for n in range(min(max_ngram, len(ids) - 1), min_ngram - 1, -1):
        tail, last = ids[-n:], ids[-1]
        for start in range(len(ids) - n - 1, -1, -1):  # latest first; the tail itself excluded
            if ids[start + n - 1] == last and ids[start:start + n] == tail:
                return ids[start + n:start + n + max_drafts]
    return []


@torch.inference_mode()
def generate_lookup(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                    prompt: list[int], max_drafts: int = 10, stop_ids=(), generator=None, on_tokens=None,
                    trace=None) -> tuple[list[int], Stats]:
    """Prompt-lookup decoding: drafts copied from earlier text (lookup_drafts), one pass each.

    Each pass feeds [cur, d_1 .. d_m] (m <= max_drafts; m = 0 is a plain autoregressive
    step) and checks the copies with the chain's `verify`. A copied draft is not sampled
    from anything: its draft distribution q is a point mass on it, so the speculative rule
    accepts it with probability p(d) and otherwise samples p with d removed; the output is
    distributed exactly as autoregressive sampling (greedy: equal to it).
    """
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=max_drafts)
    dev = model.device
    cur = int(warper.next_token(logits, generator))
    if out.emit([cur]):
        return out.tokens, finish(stats, out)
    while True:
        L = cache.length
        room = max_new - len(out.tokens) - 1  # drafts past the budget would be thrown away
        d = lookup_drafts(prompt + out.tokens, min(max_drafts, room))
        drafts = torch.tensor(d, dtype=torch.long, device=dev)  # [m]
        logits = model(torch.tensor([[cur] + d], device=dev), cache=cache)[0]  # [1 + m, V]
        stats.forwards += 1
        q = None if warper.greedy else F.one_hot(drafts, logits.shape[-1]).float()  # [m, V] point masses
        n, nxt, _ = verify(warper, logits, drafts, q, generator)
        stats.count(n, len(d))
        before = cache.length
        cache.truncate(L + 1 + n)  # keep cur and the n accepted drafts
        if trace:
            trace(dict(step="lookup", cur=cur, sats=0, x=None, drafts=d, accepted=n, bonus=nxt,
                       cache_before=before, cache_after=cache.length))
        if out.emit(d[:n] + [nxt]):
            break
        cur = nxt
    return out.tokens, finish(stats, out)


@torch.inference_mode()
def generate_hybrid(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                    prompt: list[int], k: int, sat_id: int, max_drafts: int = 5, stop_ids=(), generator=None,
                    on_tokens=None, trace=None) -> tuple[list[int], Stats]:
    """Prompt lookup where the text repeats itself, SAT drafts where it does not; one
    forward pass per iteration (SDSAT.md section 10: the cost curve that decided this).

    Each pass is one of two kinds (L = cache length):

        copy:  [cur, c_1 .. c_m]             m <= max_drafts tokens copied from earlier text
        SAT:   [cur, d_1 .. d_m, S * k]      m = 0 or k SAT guesses, then k SATs after them

    Outputs 0..m are the target distributions for the drafts and the bonus token, as in
    the chain's verify pass. In a SAT pass, SAT j guesses the token j + 1 after the last
    real token. The drafts of the next pass, in this order of preference:
      - a copy: the tokens after the latest earlier occurrence of the last 2- or 3-gram;
      - the SATs' guesses, when a SAT pass accepted every draft: the SATs followed d_m,
        so they guessed the tokens after the bonus token, which is the next `cur`;
      - none: the next pass is [cur, S * k], SDSAT's draft pass (one exact token out).
    SATs ride only on passes without copies: where copies exist they are usually the
    better guess, and every token fed costs time (section 10).
    A copy's draft distribution is a point mass, a SAT guess's its warped SAT output, and
    the chain's `verify` checks both: greedy output equals autoregressive decoding, and
    sampling is distributed exactly as autoregressive sampling.
    """
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=max(k, max_drafts))
    dev = model.device
    sats = torch.full((k,), sat_id, device=dev)
    cur = warper.next_token(logits, generator)
    if out.emit([int(cur)]):
        return out.tokens, finish(stats, out)
    drafts, q, source = sats[:0], None, "none"  # [m] drafts for the next pass, q [m, V] when sampling
    while True:
        L = cache.length
        room = max_new - len(out.tokens) - 1  # copies past the budget would be thrown away
        copied = lookup_drafts(prompt + out.tokens, min(max_drafts, room), min_ngram=2)
        if copied:
            drafts, source = torch.tensor(copied, device=dev), "copy"
        if source != "SAT" and not warper.greedy:  # point masses ([0, V] when there are no drafts)
            q = F.one_hot(drafts, logits.shape[-1]).float()
        m = drafts.shape[0]
        tail = sats[:0] if source == "copy" else sats
        logits = model(torch.cat([cur.view(1), drafts, tail])[None], cache=cache)[0]  # [1 + m (+ k), V]
        stats.forwards += 1
        n, nxt, d = verify(warper, logits[:1 + m], drafts, q, generator)
        stats.count(n, m)
        before = cache.length
        cache.truncate(L + 1 + n)  # keep cur and the accepted drafts; SATs always go
        if trace:
            trace(dict(step="hybrid", drafts_from=source, cur=int(cur), sats=len(tail), x=None, drafts=d,
                       accepted=n, bonus=nxt, cache_before=before, cache_after=cache.length))
        if out.emit(d[:n] + [nxt]):
            break
        cur = torch.tensor(nxt, device=dev)
        if n == m and source != "copy":  # d_m (or cur) stands: its SATs guessed what follows nxt
            guesses = logits[1 + m:]  # [k, V]
            q = None if warper.greedy else warper.probs(guesses)
            drafts, source = guesses.argmax(-1) if warper.greedy else sample(q, generator), "SAT"
        else:
            drafts, q, source = sats[:0], None, "none"
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- CLI


def load_or_exit(path: str, device, dtype) -> Llama:
    try:
        return load_model(path, device=device, dtype=dtype)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")


def read_config_or_exit(path: str) -> ModelArgs:
    """The model's shape from its config.json alone: every check runs before the weights load."""
    try:
        return read_config(path)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")


def load_tokenizer_or_exit(path: str):
    from tokenizer import Tokenizer
    try:
        return Tokenizer(path)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")


def resolve_sat_id(args: ModelArgs, sat_id: int | None) -> int:
    if sat_id is None and args.sat_token_id is not None and args.sat_k is None:
        print("warning: this model's config reserves a SAT id but records no SAT fine-tuning (sat_k): "
              "drafts will rarely be accepted", file=sys.stderr)
    sat_id = args.sat_token_id if sat_id is None else sat_id
    if sat_id is None:
        raise SystemExit("error: this model's config.json has no sat_token_id: pass --sat-token-id "
                         "(SDSAT needs a model fine-tuned with semantic adaptive tokens)")
    if not 0 <= sat_id < args.vocab_size:
        raise SystemExit(f"error: SAT id {sat_id} is outside the vocabulary (0..{args.vocab_size - 1})")
    return sat_id


# What each --method reads besides the prompt and the sampling settings. An option given to
# a method that ignores it is refused: a flag silently ignored looks like a result.
METHOD_OPTIONS = {"ar": set(), "sdsat": {"k", "tree", "sat_token_id", "trace"},
                  "fused": {"k", "sat_token_id", "trace"}, "lookup": {"copies", "trace"},
                  "hybrid": {"k", "copies", "sat_token_id", "trace"}}
COPIES = {"lookup": 10, "hybrid": 5}  # default --copies: transformers' 10; the hybrid's, SDSAT.md section 10


def block_sizes(method: str, k: int, tree: bool, copies: int = 0) -> tuple[int, int]:
    """(cache room for the widest forward pass, positions its SATs reach past the text).

    Two-step feeds 1 + k tokens, its last SAT k positions past the newest token; the tree
    feeds 29 tokens, 5 deep; fused feeds 1 + k + (k + 1) k tokens and its last group's
    last SAT sits k positions past d_k, which is k - 1 past the newest cached token. Lookup
    feeds at most 1 + `copies` copies (real tokens, no SATs); the hybrid 1 + `copies` or
    1 + k guesses + k SATs, the last SAT 2k positions past cur."""
    if tree:
        return len(TREE_DEPTH5) + 1, max(len(p) for p in TREE_DEPTH5)
    return {"ar": (0, 0), "sdsat": (k + 1, k), "fused": (1 + k + (k + 1) * k, 2 * k - 1), "lookup": (1 + copies, 0),
            "hybrid": (1 + max(copies, 2 * k), 2 * k)}[method]


def memory_needed(args: ModelArgs, max_len: int, fed: int, dtype: torch.dtype) -> int:
    """Bytes, roughly, of a KV cache of max_len tokens and one forward of `fed` tokens over it:
    the cache [layers, K and V, kv_heads, max_len, head_dim], the attention scores [heads, fed,
    max_len] (SDPA's plain kernel makes them), the boolean mask [fed, max_len], the logits [fed, V]."""
    item = torch.finfo(dtype).bits // 8
    cache = 2 * args.num_hidden_layers * args.num_key_value_heads * max_len * args.head_dim * item
    return cache + fed * (args.num_attention_heads * max_len * item + max_len + args.vocab_size * item)


def memory_there_is(device: torch.device) -> int:
    """Bytes of the GPU, or of this machine's RAM: a bound that no run can pass."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class TextStream:
    """Prints decoded text as tokens arrive (decodes everything, prints the new tail)."""

    def __init__(self, tok):
        self.tok, self.ids, self.printed = tok, [], ""

    def __call__(self, new_ids):
        self.ids += new_ids
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        sys.stdout.write(text[len(self.printed):])
        sys.stdout.flush()
        self.printed = text


TRACE_LEGEND = {  # what one iteration of each method does, in the words its trace lines use
    "chain": ["draft   feeds the last token + k SATs: the model's exact next token, and one guess per SAT",
              "verify  feeds that token + the guesses: the model's own choice after each one checks the next guess"],
    "tree": ["draft   feeds the last token + k SATs: the model's exact next token, and the top guesses of every SAT",
             "verify  feeds a tree of those guesses in one pass and follows the branch the model itself chooses"],
    "fused": ["fused   one pass checks the guesses and drafts the next ones: group i of k SATs guesses what",
              "        follows if exactly i guesses are accepted (the first guesses come from one draft pass)"],
    "lookup": ["lookup  feeds guesses copied from earlier text (what followed the last tokens when they last",
               "        occurred) and checks them in one pass"],
    "hybrid": ["hybrid  one pass checks copied guesses where the last 2-3 tokens occurred before; otherwise it",
               "        checks the SATs' guesses and feeds k SATs after them for the next guesses"],
}
TRACE_MARKS = ["✓ accepted   ✗ rejected   · never checked (it comes after a rejected guess)",
               "bonus: the model's own token after the last accepted guess; every check yields one",
               "cache A → B: the KV cache holds A tokens after the pass and is truncated to B"]


def trace_printer(tok, colour: bool):
    """The --trace view: a legend before the first iteration, then one line per forward pass."""
    green, red, dim, bold, end = (("\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m") if colour
                                  else ("", "", "", "", ""))
    legend_printed = False

    def show(tokens) -> str:
        return " ".join(repr(tok.decode([t])) for t in tokens)

    def checked(ev) -> str:
        """Each guess with its fate: accepted, the first rejected one, or never checked."""
        marks = [f"{green}{show([d])}✓{end}" if j < ev["accepted"] else
                 f"{red}{show([d])}✗{end}" if j == ev["accepted"] else f"{dim}{show([d])}·{end}"
                 for j, d in enumerate(ev["drafts"])]
        return " ".join(marks) or "(no guesses)"

    def emitted(ev) -> str:
        accepted = show(ev["drafts"][:ev["accepted"]])
        return f"→ {accepted + ' + ' if accepted else ''}bonus {bold}{show([ev['bonus']])}{end}"

    def cache(before: int, after: int, what: str) -> str:
        return f"{dim}| cache {before} → {after}: {what}{end}"

    def trace(ev):
        nonlocal legend_printed
        if not legend_printed:
            print("\n".join(TRACE_LEGEND[ev["step"]] + TRACE_MARKS) + "\n")
            legend_printed = True
        step, n, cur = ev["step"], ev["accepted"], show([ev["cur"]])
        unaccepted = len(ev["drafts"]) - n
        if step in ("chain", "tree"):
            guesses = (f"guesses {show(ev['drafts'])}" if step == "chain" else
                       f"its top guesses make a tree of {ev['size']} tokens")
            print(f"draft   {cur} + {ev['sats']} SATs → next {bold}{show([ev['x']])}{end} | {guesses} "
                  + cache(*ev["draft_cache"], "the SATs are dropped"))
        if step == "chain":
            print(f"verify  {show([ev['x']])} + {len(ev['drafts'])} guesses: {checked(ev)} {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"], f"{unaccepted} unaccepted guesses dropped"))
        elif step == "tree":
            missed = " ".join(f"{red}{show([t])}✗{end}" for t in ev["rejected"])
            print(f"verify  the tree ({ev['size']} tokens): path {checked(ev)}"
                  + (f", then no branch holds the model's choice: {missed}" if missed else ", to a leaf")
                  + f" {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"],
                          f"the path's {n + 1} tokens moved together, {ev['size'] - n - 1} other nodes dropped"))
        elif step == "fused":
            print(f"fused   {cur} + {len(ev['drafts'])} guesses + {ev['sats']} SATs: {checked(ev)} {emitted(ev)}; "
                  f"next guesses from group {n}: {show(ev['next_drafts'])} "
                  + cache(ev["cache_before"], ev["cache_after"],
                          f"{unaccepted} unaccepted guesses and all {ev['sats']} SATs dropped"))
        elif step == "hybrid":
            fed = [f"{len(ev['drafts'])} {ev['drafts_from']} guesses"] if ev["drafts"] else []
            fed += [f"{ev['sats']} SATs"] if ev["sats"] else []
            dropped = [f"{unaccepted} unaccepted guesses"] if ev["drafts"] else []
            dropped += [f"{ev['sats']} SATs"] if ev["sats"] else []
            print(f"hybrid  {cur} + {' + '.join(fed)}: {checked(ev)} {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"], f"{' and '.join(dropped) or 'nothing'} dropped"))
        else:  # lookup
            print(f"lookup  {cur} + {len(ev['drafts'])} copied guesses: {checked(ev)} {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"], f"{unaccepted} unaccepted guesses dropped"))
    return trace


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="checkpoint directory, Hugging Face layout (default: %(default)s)")
    p.add_argument("--prompt", default="def fibonacci(n):\n", help="text to continue (default: %(default)r)")
    p.add_argument("--suffix", default=None,
                   help="CodeLlama infilling: write the middle between --prompt and this suffix (default: none)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    p.add_argument("--method", choices=list(METHOD_OPTIONS), default="ar",
                   help="ar: one token per forward pass; sdsat: two-step draft-then-verify; fused: one-step; "
                        "lookup: drafts copied from earlier text; hybrid: copies where they exist, SAT drafts "
                        "elsewhere (default: %(default)s)")
    p.add_argument("--k", type=int, default=None,
                   help="SATs, so drafts, per step; sdsat, fused and hybrid only (default: 5)")
    p.add_argument("--copies", type=int, default=None,
                   help="most drafts copied per pass; lookup and hybrid only (default: 10 for lookup, as "
                        "transformers' prompt lookup; 5 for hybrid). Fewer pay where a forward's cost grows "
                        "fast with the tokens fed: bench_results/peers/copies.md")
    p.add_argument("--tree", action="store_true",
                   help="with --method sdsat: verify a depth-5 token tree instead of a chain of --k drafts")
    p.add_argument("--sat-token-id", type=int, default=None,
                   help="the SAT's id; sdsat, fused and hybrid only (default: the config's sat_token_id)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens; 0 = off (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample from the likeliest tokens up to this mass; 1 = off (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="float32 makes greedy SDSAT output exactly autoregressive (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=None,
                   help="KV cache size in tokens (default: prompt + new tokens + room for drafts)")
    p.add_argument("--trace", action="store_true", help="show every draft and verify pass; every method but ar")
    p.add_argument("--compile", action="store_true",
                   help="decode with torch.compile'd fixed-shape forwards (model.StaticModel); the first pass "
                        "of each block width compiles, which takes a while")
    a = p.parse_args()
    try:
        warper = Warper(a.temperature, a.top_k, a.top_p)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    given = {"k": a.k is not None, "tree": a.tree, "sat_token_id": a.sat_token_id is not None, "trace": a.trace,
             "copies": a.copies is not None}
    for name in (n for n, g in given.items() if g and n not in METHOD_OPTIONS[a.method]):
        users = " or ".join(m for m, options in METHOD_OPTIONS.items() if name in options)
        raise SystemExit(f"error: --{name.replace('_', '-')} does nothing with --method {a.method} "
                         f"(it is for --method {users})")
    if a.tree and a.k is not None:
        raise SystemExit(f"error: --k does nothing with --tree (the tree's depth is fixed: "
                         f"{block_sizes('sdsat', 0, True)[1]})")
    # Sampling settings at temperature 0 only warn: a sweep over temperatures may include 0.
    unused = [flag for flag, g in (("--top-k", a.top_k != 0), ("--top-p", a.top_p != 1.0), ("--seed", a.seed != 0)) if g]
    if warper.greedy and unused:
        print(f"warning: greedy decoding (--temperature 0) ignores {', '.join(unused)}", file=sys.stderr)
    k = 5 if a.k is None else a.k
    copies = COPIES.get(a.method, 0) if a.copies is None else a.copies
    if a.max_new_tokens < 1 or k < 1:
        raise SystemExit("error: --max-new-tokens and --k must be at least 1")
    if a.copies is not None and a.copies < 1:
        raise SystemExit(f"error: --copies must be at least 1, got {a.copies}")

    # Every check runs on the config and the prompt, before the weights load or a line is printed.
    device = pick_device(a.device)
    args = read_config_or_exit(a.model)
    tok = load_tokenizer_or_exit(a.model)
    sat = resolve_sat_id(args, a.sat_token_id) if "sat_token_id" in METHOD_OPTIONS[a.method] else None
    stop = list(args.stop_ids)
    if a.suffix is not None:
        try:
            prompt = tok.encode_infill(a.prompt, a.suffix)
        except ValueError as e:
            raise SystemExit(f"error: --suffix: {e}")
        stop.append(tok.eot_id)  # the middle ends with ▁<EOT>
    else:
        prompt = tok.encode(a.prompt)
    room, reach = block_sizes(a.method, k, a.tree, copies)  # the widest block fed; how far past the text its SATs sit
    drafts = "--tree" if a.tree else f"--method {a.method}" + (f" --k {k}" if "k" in METHOD_OPTIONS[a.method] else "")
    fix = "fewer --max-new-tokens" + (" or a smaller --k" if "k" in METHOD_OPTIONS[a.method] and not a.tree else "")
    text, positions = len(prompt) + a.max_new_tokens, args.max_position_embeddings
    if text > positions:  # the text itself: RoPE goes on, the model was not trained there
        print(f"warning: prompt of {len(prompt)} tokens + {a.max_new_tokens} new tokens exceed the model's "
              f"max_position_embeddings {positions}; quality may drop", file=sys.stderr)
    elif text + reach > positions:  # only the drafts would go there: refuse
        raise SystemExit(f"error: {drafts} puts SATs up to position {text + reach} (prompt {len(prompt)} + "
                         f"{a.max_new_tokens} new tokens + {reach}), beyond the model's {positions} positions "
                         f"(max_position_embeddings): use {fix}")
    need = text + room
    max_len = need if a.max_len is None else a.max_len
    if need > max_len:
        raise SystemExit(f"error: prompt of {len(prompt)} tokens + {a.max_new_tokens} new tokens"
                         f"{f' + {room} for drafts' if room else ''} exceeds --max-len {max_len}")
    needed, there_is = memory_needed(args, max_len, max(room, 1), DTYPES[a.dtype]), memory_there_is(device)
    if needed > there_is:
        raise SystemExit(f"error: {drafts} needs about {needed / 2**30:,.0f} GiB at once (a KV cache of {max_len:,} "
                         f"tokens, a forward pass of {max(room, 1):,}), more than the {there_is / 2**30:,.0f} GiB "
                         f"{'of this GPU' if device.type == 'cuda' else 'of memory this machine has'}: use {fix}")

    if a.dtype == "bfloat16" and (warning := slow_bf16_warning(device)):
        print(warning, file=sys.stderr)
    model = load_or_exit(a.model, device, DTYPES[a.dtype])
    gen = torch.Generator(device=device).manual_seed(a.seed)
    static = StaticModel(model, max_len) if a.compile else None
    cache = static.cache if a.compile else model.new_cache(max_len)
    # --trace prints one line per iteration, then the text; otherwise the text streams.
    stream = None if a.trace else TextStream(tok)
    if not a.trace:
        sys.stdout.write(a.prompt)
    t0 = time.perf_counter()
    logits = prefill(model, cache, prompt)  # eager even with --compile: the prompt's length varies
    if a.compile:
        model = static  # from here on the loops call the compiled graphs
    common = dict(stop_ids=stop, generator=gen, on_tokens=stream)
    max_new = a.max_new_tokens
    if a.method == "ar":
        tokens, stats = generate_ar(model, cache, logits, max_new, warper, **common)
    else:
        trace = trace_printer(tok, sys.stdout.isatty()) if a.trace else None
        if a.method == "fused":
            tokens, stats = generate_fused(model, cache, logits, max_new, warper, k, sat, trace=trace, **common)
        elif a.method == "lookup":
            tokens, stats = generate_lookup(model, cache, logits, max_new, warper, prompt, copies, trace=trace,
                                            **common)
        elif a.method == "hybrid":
            tokens, stats = generate_hybrid(model, cache, logits, max_new, warper, prompt, k, sat, copies,
                                            trace=trace, **common)
        elif a.tree:
            tokens, stats = generate_sdsat_tree(model, cache, logits, max_new, warper, sat,
                                                build_tree(TREE_DEPTH5, device), trace=trace, **common)
        else:
            tokens, stats = generate_sdsat(model, cache, logits, max_new, warper, k, sat, trace=trace, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    text = a.prompt + tok.decode(tokens)
    if a.trace:
        print("\n" + text, end="")
    if not text.endswith("\n"):  # so that the shell's prompt, or the next file's text, starts on a line of its own
        print()
    sys.stdout.flush()  # the text first, then the summary on stderr
    print(f"\n[{a.method}{' tree' if a.tree else ''}] {len(tokens)} tokens in {dt:.2f}s "
          f"({len(tokens) / dt:.1f} tok/s incl. prefill{' and compiling' if a.compile else ''}), "
          f"{stats.forwards} decode forwards, "
          f"{stats.tokens_per_forward:.2f} tokens/forward"
          + (f", {stats.mean_accepted:.2f} accepted drafts/iteration" if a.method != "ar" else ""),
          file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: end the line, no traceback; 130 = 128 + SIGINT, as shells report it
        print()
        sys.exit(130)
