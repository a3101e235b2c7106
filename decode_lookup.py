"""Prompt lookup, and the SAT + lookup hybrid: drafts copied from earlier text.

Code repeats itself: the tokens that followed the last occurrence of the latest n-gram are
often what comes next. Lookup needs no training at all; the hybrid falls back on SAT
drafts where nothing can be copied (SDSAT.md section 10).
"""

import torch
import torch.nn.functional as F

from decode_common import Emitter, Stats, finish, verify
from model import KVCache, Llama
from sampling import Warper, sample

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
        done = out.emit(d[:n] + [nxt])
        if trace:  # one record per forward pass (trace_view.py)
            trace(dict(step="lookup", cur=cur, sats=0, drafts=d, accepted=n, bonus=nxt, emitted=out.last,
                       cache_before=before, cache_after=cache.length))
        if done:
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
        SAT:   [cur, d_1 .. d_m, S * k]      m = 0 or k SAT drafts, then k SATs after them

    Outputs 0..m are the target distributions for the drafts and the bonus token, as in
    the chain's verify pass. In a SAT pass, SAT j drafts the token j + 1 after the last
    real token. The drafts of the next pass, in this order of preference:
      - a copy: the tokens after the latest earlier occurrence of the last 2- or 3-gram;
      - the SATs' drafts, when a SAT pass accepted every draft: the SATs followed d_m,
        so they drafted the tokens after the bonus token, which is the next `cur`;
      - none: the next pass is [cur, S * k], SDSAT's draft pass (one exact token out).
    SATs ride only on passes without copies: where copies exist they are usually the
    better draft, and every token fed costs time (section 10).
    A copy's draft distribution is a point mass, a SAT draft's its warped SAT output, and
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
        done = out.emit(d[:n] + [nxt])
        if trace:  # one record per forward pass (trace_view.py)
            trace(dict(step="hybrid", drafts_from=source, cur=int(cur), sats=len(tail), drafts=d, accepted=n,
                       bonus=nxt, emitted=out.last, cache_before=before, cache_after=cache.length))
        if done:
            break
        cur = torch.tensor(nxt, device=dev)
        if n == m and source != "copy":  # d_m (or cur) stands: its SATs drafted what follows nxt
            guesses = logits[1 + m:]  # [k, V]
            q = None if warper.greedy else warper.probs(guesses)
            drafts, source = guesses.argmax(-1) if warper.greedy else sample(q, generator), "SAT"
        else:
            drafts, q, source = sats[:0], None, "none"
    return out.tokens, finish(stats, out)
