"""Prompt lookup: drafts copied from earlier text.

Code repeats itself: the tokens that followed the last occurrence of the latest n-gram are
often what comes next. Lookup needs no training at all. decode_tree.generate_tree puts
several such copies beside the SATs' candidates in one tree (lookup_matches).
"""

import torch
import torch.nn.functional as F

from decode_common import Emitter, Stats, finish, verify
from model import KVCache, Llama
from sampling import Warper

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


def lookup_matches(ids: list[int], n_matches: int, max_len: int, max_ngram: int = 3, min_ngram: int = 1) -> list[list[int]]:
    """Several copies at once (decode_tree.generate_tree puts them all in one tree): the
    continuations of up to n_matches earlier occurrences of the last n-gram, the longest
    n-gram first and the latest occurrence first, each at most max_len tokens; a
    continuation that another already begins with is left out.

        ids:  a b c . a b d . a b     "a b" occurred at 4 and at 0
        ->    [[d, ., a, b], [c, ., a, b, d, ...]]     (max_len permitting)
    """
    found = []
    for n in range(min(max_ngram, len(ids) - 1), min_ngram - 1, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):
            if ids[start:start + n] == tail:
                copy = ids[start + n:start + n + max_len]
                if copy and not any(f[:len(copy)] == copy for f in found):
                    found.append(copy)
                    if len(found) == n_matches:
                        return found
    return found


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
        done = out.emit(d[:n] + [nxt])
        if trace:  # one record per forward pass (trace_view.py)
            trace(dict(step="lookup", cur=cur, sats=0, drafts=d, accepted=n, bonus=nxt, emitted=out.last,
                       cache_before=before, cache_after=cache.length))
        if done:
            break
        cur = nxt
    return out.tokens, finish(stats, out)
