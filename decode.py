"""Generation loops: autoregressive, and SDSAT's two-step draft-then-verify.

    python decode.py --prompt "def fibonacci(n):" --max-new-tokens 64
    python decode.py --method sdsat --k 5 --trace --prompt "import os"

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
import sys
import time
from dataclasses import dataclass, field

import torch

from model import DEFAULT_MODEL, DTYPES, CheckpointError, KVCache, Llama, load_model
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
    return n, int(nxt), drafts.tolist()



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
                       cache_before=before, cache_after=cache.length))
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
        return int(self.depth.max())

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
        n_ranks = int(tree.rank.max()) + 1
        top = logits[1:].topk(n_ranks, dim=-1).indices  # [k, n_ranks]
        nodes = torch.where(tree.depth == 0, x, top[(tree.depth - 1).clamp(min=0), tree.rank])
        mask = torch.cat([torch.ones(tree.size, L + 1, dtype=torch.bool, device=dev), tree.mask], 1)
        logits = model(nodes[None], positions=(L + 1 + tree.depth)[None], mask=mask[None, None],
                       cache=cache)[0]  # [N, V]
        stats.forwards += 1
        # One target choice per node, all at once (one host sync); only the walked path's
        # choices are used, and each is an independent draw from that node's distribution.
        choice = warper.next_token(logits, generator).tolist()
        node_tokens = nodes.tolist()
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
                       path=path))
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
            trace(dict(step=f"fused: next drafts from group {n}", cur=int(cur), sats=(k + 1) * k, x=None,
                       drafts=d, accepted=n, bonus=nxt, cache_before=before, cache_after=cache.length))
        if out.emit(d[:n] + [nxt]):
            break
        cur = torch.tensor(nxt, device=dev)
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- CLI


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def load_or_exit(path: str, device, dtype) -> Llama:
    try:
        return load_model(path, device=device, dtype=dtype)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")


def resolve_sat_id(model: Llama, sat_id: int | None) -> int:
    if sat_id is None and model.args.sat_token_id is not None and model.args.sat_k is None:
        print("warning: this model's config reserves a SAT id but records no SAT fine-tuning (sat_k): "
              "drafts will rarely be accepted", file=sys.stderr)
    sat_id = model.args.sat_token_id if sat_id is None else sat_id
    if sat_id is None:
        raise SystemExit("error: this model's config.json has no sat_token_id: pass --sat-token-id "
                         "(SDSAT needs a model fine-tuned with semantic adaptive tokens)")
    if not 0 <= sat_id < model.args.vocab_size:
        raise SystemExit(f"error: SAT id {sat_id} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    return sat_id


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


def trace_printer(tok, colour: bool):
    """The --trace view of one speculative iteration."""
    green, red, dim, bold, end = (("\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m") if colour
                                  else ("", "", "", "", ""))

    def show(t: int) -> str:
        return repr(tok.decode([t]))

    def trace(ev):
        marks = []
        for j, d in enumerate(ev["drafts"]):
            ok = j < ev["accepted"]
            marks.append(f"{green if ok else red}{show(d)}{'✓' if ok else '✗'}{end}")
        nxt = "" if ev["x"] is None else f" | next {show(ev['x'])}"
        print(f"{dim}[{ev['step']}] fed {show(ev['cur'])} + {ev['sats']} SAT{nxt} | "
              f"drafts {' '.join(marks) or '-'} | accepted {ev['accepted']} | bonus {bold}{show(ev['bonus'])}{end}"
              f"{dim} | cache {ev['cache_before']} -> {ev['cache_after']}{end}")
    return trace


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint directory (Hugging Face layout)")
    p.add_argument("--prompt", default="def fibonacci(n):\n", help="text to continue")
    p.add_argument("--suffix", default=None,
                   help="CodeLlama infilling: write the middle between --prompt and this suffix")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--method", choices=["ar", "sdsat", "fused"], default="ar",
                   help="ar: one token per forward; sdsat: two-step draft-then-verify; fused: one-step")
    p.add_argument("--k", type=int, default=5, help="SATs (drafts) per step")
    p.add_argument("--tree", action="store_true", help="with --method sdsat: verify a depth-5 token tree instead of a chain of --k drafts")
    p.add_argument("--sat-token-id", type=int, default=None, help="default: the config's sat_token_id")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--max-len", type=int, default=None,
                   help="KV cache size in tokens (default: prompt + new tokens + room for drafts)")
    p.add_argument("--trace", action="store_true", help="show every draft/verify step")
    a = p.parse_args()
    try:
        warper = Warper(a.temperature, a.top_k, a.top_p)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    if a.max_new_tokens < 1 or a.k < 1:
        raise SystemExit("error: --max-new-tokens and --k must be at least 1")
    if a.tree and a.method != "sdsat":
        raise SystemExit("error: --tree needs --method sdsat")

    from tokenizer import Tokenizer
    device = pick_device(a.device)
    model = load_or_exit(a.model, device, DTYPES[a.dtype])
    try:
        tok = Tokenizer(a.model)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        raise SystemExit(f"error: {e}")
    stop = list(model.args.stop_ids)
    if a.suffix is not None:
        try:
            prompt = tok.encode_infill(a.prompt, a.suffix)
        except ValueError as e:
            raise SystemExit(f"error: --suffix: {e}")
        stop.append(tok.eot_id)  # the middle ends with ▁<EOT>
    else:
        prompt = tok.encode(a.prompt)
    room = {"ar": 0, "sdsat": len(TREE_DEPTH5) + 1 if a.tree else a.k + 1,
            "fused": 1 + a.k + (a.k + 1) * a.k}[a.method]  # the widest block fed
    need = len(prompt) + a.max_new_tokens + room
    max_len = a.max_len or need
    if need > max_len:
        raise SystemExit(f"error: prompt of {len(prompt)} tokens + {a.max_new_tokens} new tokens"
                         f"{f' + {room} for drafts' if room else ''} exceeds --max-len {max_len}")
    if max_len > model.args.max_position_embeddings:
        print(f"warning: {max_len} positions exceed the model's max_position_embeddings "
              f"{model.args.max_position_embeddings}; quality may drop", file=sys.stderr)
    gen = torch.Generator(device=device).manual_seed(a.seed)
    cache = model.new_cache(max_len)
    # --trace prints one line per iteration, then the text; otherwise the text streams.
    stream = None if a.trace else TextStream(tok)
    if not a.trace:
        sys.stdout.write(a.prompt)
    t0 = time.perf_counter()
    logits = prefill(model, cache, prompt)
    common = dict(stop_ids=stop, generator=gen, on_tokens=stream)
    max_new = a.max_new_tokens
    if a.method == "ar":
        tokens, stats = generate_ar(model, cache, logits, max_new, warper, **common)
    else:
        sat = resolve_sat_id(model, a.sat_token_id)
        trace = trace_printer(tok, sys.stdout.isatty()) if a.trace else None
        if a.method == "fused":
            tokens, stats = generate_fused(model, cache, logits, max_new, warper, a.k, sat, trace=trace, **common)
        elif a.tree:
            tokens, stats = generate_sdsat_tree(model, cache, logits, max_new, warper, sat,
                                                build_tree(TREE_DEPTH5, device), trace=trace, **common)
        else:
            tokens, stats = generate_sdsat(model, cache, logits, max_new, warper, a.k, sat, trace=trace, **common)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if a.trace:
        print(a.prompt + tok.decode(tokens), end="")
    print(f"\n\n[{a.method}{' tree' if a.tree else ''}] {len(tokens)} tokens in {dt:.2f}s "
          f"({len(tokens) / dt:.1f} tok/s incl. prefill), {stats.forwards} decode forwards, "
          f"{stats.tokens_per_forward:.2f} tokens/forward"
          + (f", {stats.mean_accepted:.2f} accepted drafts/iteration" if a.method != "ar" else ""),
          file=sys.stderr)


if __name__ == "__main__":
    main()
