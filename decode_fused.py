"""One-step fused SDSAT (SDSAT.md section 5, beyond the paper): every forward pass verifies
the current drafts and drafts the next ones, for every possible number of accepted drafts.
"""

import torch

from decode_common import Emitter, Stats, draft_and_emit, finish, verify
from model import KVCache, Llama
from sampling import Warper, sample
from sat import sat_layout

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
        group 0   x          | x      |        |          SAT j: draft j+1 after cur
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
    x, drafts, q, done = draft_and_emit(model, cache, cur, sats, stats, warper, generator, out, trace)
    if done:
        return out.tokens, finish(stats, out)
    cur = x
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
        done = out.emit(d[:n] + [nxt])
        if trace:
            trace(dict(step="fused", cur=int(cur), sats=(k + 1) * k, drafts=d, accepted=n, bonus=nxt,
                       next_drafts=drafts.tolist(), emitted=out.last, cache_before=before, cache_after=cache.length))
        if done:
            break
        cur = torch.tensor(nxt, device=dev)
    return out.tokens, finish(stats, out)
