"""SDSAT with a token tree: many candidate continuations verified in one forward pass.

The draft pass is the two-step loop's (decode.py); the verify pass feeds a tree built from
the top drafts of every SAT, with a mask that lets each node see only its ancestors, then
keeps the branch the model itself chooses (SDSAT.md section 4, tree mode).
"""

import os
from dataclasses import dataclass, field

import torch

from decode_common import Emitter, Stats, draft_pass, finish
from model import KVCache, Llama
from sampling import Warper

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
        logits = draft_pass(model, cache, cur, sats, stats)  # [1 + k, V]
        x = warper.next_token(logits[0], generator)
        n_ranks = 1 + max(p[-1] for p in tree.paths)  # the host's lists again, not tree.rank
        top = logits[1:].topk(n_ranks, dim=-1).indices  # [k, n_ranks]: each SAT's drafts, likeliest first
        done = out.emit([int(x)])
        if trace:  # one record per forward pass (trace_view.py)
            trace(dict(step="draft", cur=int(cur), sats=k, x=int(x), drafts=top.tolist(), emitted=out.last,
                       cache_before=L + 1 + k, cache_after=L + 1))
        if done:
            break
        # Node tokens: root = x, others = top-ranked tokens of their depth's SAT.
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
        done = out.emit([node_tokens[i] for i in path[1:]] + [want])
        if trace:
            trace(dict(step="tree", cur=int(x), sats=0, nodes=node_tokens, parents=tree.parent, path=path,
                       drafts=[node_tokens[i] for i in path[1:]], accepted=n, bonus=want,
                       rejected=[node_tokens[c] for c in tree.children[path[-1]].values()], emitted=out.last,
                       cache_before=before, cache_after=cache.length))
        if done:
            break
        cur = torch.tensor(want, device=dev)
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- one tree from every source
#
# generate_tree verifies, in one forward pass, every candidate it has for what follows
# `cur`: the SATs' top candidates at each depth and continuations copied from earlier text,
# merged into one token tree (a shared prefix is one node). The same pass drafts the next
# iteration's SAT candidates: a group of k SATs hangs off some of the nodes, and the group
# of the node where acceptance ends supplies them (fused decoding's trick, on a tree).
# L = cache length; a tree of three nodes under cur, a group of k = 2 SATs at cur and at b:
#
#            cur   a    b    c  | S  S  | S  S        a, b: SAT candidates (depth 1, ranks 0, 1)
#   position  L   L+1  L+1  L+2 | L+1 L+2| L+2 L+3     c: a copy, after b
#   cur       x                 |        |
#   a         x    x            |        |             each node sees the cache, its
#   b         x         x       |        |             ancestors and itself
#   c         x         x    x  |        |
#   S @cur    x                 | x      |             SAT j of the group at node v sees
#             x                 | x  x   |             v's path and SATs 1..j of its group
#   S @b      x         x       |        | x
#             x         x       |        | x  x
#
# Walk down from cur: draw the model's token at this node (argmax, or one sample); if a
# child holds it, move there, else it is the bonus token and the walk ends. Every emitted
# token is a draw from the model's own distribution at its exact prefix, whoever proposed
# the children, so greedy output equals AR and sampling keeps AR's distribution. The
# accepted path's cache slots are compacted; the group at the last node (if it has one)
# drafted the tokens after the bonus token, the next cur.


@dataclass(frozen=True)
class Shape:
    """What one pass of generate_tree feeds, chosen by choose_shape from this machine's
    cost curve and the drafts' measured acceptance (or given by hand):

    sat_paths  SAT candidates as child-rank paths from cur, e.g. ((0,), (1,), (0, 0)):
               rank r at depth d = SAT d's r-th likeliest token (d <= k)
    k          SATs per group (0: no SATs at all, copies only)
    groups     nodes that carry a group: the root and the groups - 1 nodes likeliest to
               end the walk
    copies     continuations copied from earlier text (lookup_matches), copy_len tokens each
    """
    sat_paths: tuple = ()
    k: int = 0
    groups: int = 1
    copies: int = 0
    copy_len: int = 0

    @property
    def nominal_size(self) -> int:
        """Tokens fed when every candidate is there and nothing merges: the cost side."""
        return 1 + len(self.sat_paths) + self.copies * self.copy_len + (self.groups * self.k if self.k else 0)

    def describe(self) -> str:
        sat = f"{len(self.sat_paths)} SAT nodes, k = {self.k}, {self.groups} group(s)" if self.k else "no SATs"
        return f"{sat}; {self.copies} copies of {self.copy_len}; {self.nominal_size} tokens fed at most"


@dataclass
class Node:
    token: int
    parent: int  # -1 for the root
    depth: int
    p: float  # estimated chance that the walk reaches it (for placing groups)
    source: str  # "cur", "sat", "copy" or "both"
    children: dict = field(default_factory=dict)  # token -> node index


def merge_candidates(cur: int, sat_top: list[list[int]] | None, shape: Shape, copied: list[list[int]],
                     sat_p: dict, copy_p: list[float]) -> list[Node]:
    """The tree of one pass: the root `cur`, SAT candidates (sat_top[d - 1][r], the r-th
    likeliest token of SAT d, for each path of the shape) and copied continuations, with
    shared prefixes merged. sat_p: path -> chance the walk reaches it; copy_p[i]: chance
    a copy's first i + 1 tokens all hold. A merged node keeps the larger chance."""
    nodes = [Node(cur, -1, 0, 1.0, "cur")]

    def add(parent: int, token: int, p: float, source: str) -> int:
        if token in nodes[parent].children:
            i = nodes[parent].children[token]
            nodes[i].p = max(nodes[i].p, p)
            nodes[i].source = nodes[i].source if nodes[i].source == source else "both"
            return i
        nodes.append(Node(token, parent, nodes[parent].depth + 1, p, source))
        nodes[parent].children[token] = len(nodes) - 1
        return len(nodes) - 1

    if sat_top is not None:
        at = {(): 0}
        for path in sorted(shape.sat_paths, key=len):
            d, r = len(path), path[-1]
            at[path] = add(at[path[:-1]], sat_top[d - 1][r], sat_p.get(path, 0.0), "sat")
    for copy in copied:
        node = 0
        for i, token in enumerate(copy):
            node = add(node, token, copy_p[min(i, len(copy_p) - 1)] if copy_p else 0.0, "copy")
    return nodes


def place_groups(nodes: list[Node], groups: int) -> list[int]:
    """The nodes that carry a SAT group: the root, then those likeliest to end the walk
    (reached, and none of their children taken)."""
    ends = [n.p - sum(nodes[c].p for c in n.children.values()) for n in nodes]
    rest = sorted(range(1, len(nodes)), key=lambda i: -ends[i])[:max(0, groups - 1)]
    return [0] + sorted(rest)


def tree_layout(nodes: list[Node], grouped: list[int], k: int, device=None):
    """Positions offsets [T] (from the cache length L) and the mask [T, T] of one pass:
    the nodes, then k SATs per grouped node (the SATs last: adapter.py changes those rows
    alone)."""
    N, T = len(nodes), len(nodes) + len(grouped) * k
    offsets, mask = [0] * T, [[False] * T for _ in range(T)]  # built on the host, sent once
    for i, n in enumerate(nodes):
        offsets[i], j = n.depth, i
        while j >= 0:  # itself and its ancestors
            mask[i][j], j = True, nodes[j].parent
    for g, v in enumerate(grouped):
        for j in range(1, k + 1):
            row = N + g * k + j - 1
            offsets[row] = nodes[v].depth + j
            mask[row][:N] = mask[v][:N]  # v's path
            mask[row][N + g * k:row + 1] = [True] * j  # SATs 1..j of its own group
    offsets, mask = torch.tensor(offsets), torch.tensor(mask)
    return offsets.to(device), mask.to(device)


@torch.inference_mode()
def generate_tree(model: Llama, cache: KVCache, logits: torch.Tensor, max_new: int, warper: Warper,
                  sat_id: int | None, shape: Shape, prompt: list[int], table: dict | None = None, stop_ids=(),
                  generator=None, on_tokens=None, trace=None) -> tuple[list[int], Stats]:
    """One forward pass per iteration verifies a tree of SAT candidates and copies and
    drafts the next SAT candidates (the section's comment above). table: the acceptance
    statistics the shape was chosen from (choose_shape), used to place the groups; the
    output does not depend on it."""
    from decode_lookup import lookup_matches  # (decode_lookup imports nothing from here)
    depth = max([len(p) for p in shape.sat_paths] + [shape.copy_len, 1])
    out, stats = Emitter(max_new, stop_ids, on_tokens), Stats(k=depth)
    stats.accepted_from.update(sat=0, copy=0, both=0)
    dev = model.device
    sat_p, copy_p = node_chances(table or {}, shape)
    n_ranks = 1 + max([p[-1] for p in shape.sat_paths] + [0])
    cur = int(warper.next_token(logits, generator))
    if out.emit([cur]):
        return out.tokens, finish(stats, out)
    sat_top = None  # [k][n_ranks] candidate ids for the tokens after cur, from the last pass
    while True:
        L = cache.length
        room = max_new - len(out.tokens) - 1  # candidates past the budget would be thrown away
        copied = lookup_matches(prompt + out.tokens, shape.copies, min(shape.copy_len, room)) if shape.copies else []
        nodes = merge_candidates(cur, sat_top, shape, copied, sat_p, copy_p)
        grouped = place_groups(nodes, shape.groups) if shape.k else []
        offsets, block = tree_layout(nodes, grouped, shape.k, dev)
        tokens = torch.tensor([n.token for n in nodes] + [sat_id] * (len(grouped) * shape.k), device=dev)
        mask = torch.cat([torch.ones(len(tokens), L, dtype=torch.bool, device=dev), block], 1)
        logits = model(tokens[None], positions=(L + offsets)[None], mask=mask[None, None], cache=cache)[0]
        stats.forwards += 1
        choice = warper.next_token(logits[:len(nodes)], generator).tolist()  # one draw per node, one sync
        path = [0]
        while (child := nodes[path[-1]].children.get(choice[path[-1]])) is not None:
            path.append(child)
        end, n = path[-1], len(path) - 1
        stats.count(n, min(depth, n + 1))
        for i in path[1:]:
            stats.accepted_from[nodes[i].source] += 1
        before = cache.length
        cache.compact([L + i for i in path])  # cur and the accepted nodes, now contiguous
        bonus = choice[end]
        done = out.emit([nodes[i].token for i in path[1:]] + [bonus])
        sat_top = None
        if end in grouped:  # its SATs drafted the tokens after the bonus token: the next candidates
            g = grouped.index(end)
            rows = logits[len(nodes) + g * shape.k:len(nodes) + (g + 1) * shape.k]  # [k, V]
            sat_top = rows.topk(n_ranks, dim=-1).indices.tolist()
        if trace:  # one record per forward pass (trace_view.py)
            trace(dict(step="draft-tree", cur=cur, sats=len(grouped) * shape.k, drafts=[nodes[i].token for i in path[1:]],
                       accepted=n, bonus=bonus, emitted=out.last, cache_before=before, cache_after=cache.length,
                       nodes=[m.token for m in nodes], parents=[m.parent for m in nodes],
                       sources=[m.source for m in nodes], path=path, groups=grouped, k=shape.k,
                       next_drafts=[top[0] for top in sat_top] if sat_top else []))
        if done:
            break
        cur = bonus
    return out.tokens, finish(stats, out)


# ----------------------------------------------------------------------------- the shape, from the machine


def node_chances(table: dict, shape: Shape) -> tuple[dict, list[float]]:
    """From measured acceptance (bench_acceptance.py): the chance the walk reaches each
    SAT path of the shape (the share of anchors whose ranks of the model's token among SAT
    1..k's candidates begin with that path), and copy_holds[i], the chance that one of
    the shape's copies holds its first i + 1 tokens (at any position of the text)."""
    rows = table.get("sat_ranks") or []
    sat_p = {path: sum(tuple(r[:len(path)]) == path for r in rows) / max(1, len(rows)) for path in shape.sat_paths}
    holds = table.get("copy_holds", {}).get(str(shape.copies), []) if shape.copies else []
    return sat_p, list(holds[:shape.copy_len])


def copy_yield(table: dict, shape: Shape) -> tuple[float, float]:
    """The copies' accepted tokens a pass, and the chance a pass accepts at least one: from
    copy_walk (passes walked as decoding walks them) where the table has it, else from
    copy_holds. copy_holds counts every position alike, the middle of a long repeat as
    often as a pass could start there, so it promises more than decoding gets."""
    if not shape.copies:
        return 0.0, 0.0
    walk = table.get("copy_walk", {}).get(str(shape.copies), [])
    if len(walk) >= shape.copy_len:
        gain, any_held = walk[shape.copy_len - 1]
        return gain, any_held
    holds = node_chances(table, shape)[1]
    return sum(holds), holds[0] if holds else 0.0


def expected_tokens(shape: Shape, table: dict) -> float:
    """Tokens one pass yields on average (accepted candidates and the bonus), in the steady
    state of a chain of two states: a pass has fresh SAT candidates (the last walk ended at
    a node with a group) or none; the SATs' gain counts only in passes where no copy holds."""
    sat_p, _ = node_chances(table, shape)
    copy_gain, copy_any = copy_yield(table, shape)
    if not shape.k or not shape.sat_paths:
        return 1 + copy_gain
    nodes, at = [Node(0, -1, 0, 1.0, "cur")], {(): 0}
    for path in sorted(shape.sat_paths, key=len):
        nodes.append(Node(0, at[path[:-1]], len(path), sat_p[path], "sat"))
        at[path] = nodes[at[path[:-1]]].children[path] = len(nodes) - 1
    ends = [n.p - sum(nodes[c].p for c in n.children.values()) for n in nodes]
    a = sum(ends[i] for i in place_groups(nodes, shape.groups))  # P(fresh next | fresh now)
    b = 1.0 - copy_any  # P(fresh next | stale now): the walk ends at the root
    fresh = b / (1 - a + b) if 1 - a + b > 0 else 1.0
    # SAT candidates add only where no copy holds: where one does, the walk follows it, and
    # a SAT's first candidate mostly is the copy's token (merged). Counting both, as before,
    # promised 54 tok/s for a mixed shape that measured 38 (bf16, SmolLM2).
    return 1 + copy_gain + fresh * (1 - copy_any) * sum(n.p for n in nodes[1:])


def pass_cost(latency: dict, tokens: int) -> float:
    """The measured forward time for `tokens` fed, interpolated linearly between the sizes
    timed (and extended from the last two)."""
    sizes = sorted(int(t) for t in latency)
    curve = {int(t): v for t, v in latency.items()}
    if tokens in curve:
        return curve[tokens]
    lo = max([t for t in sizes if t < tokens], default=sizes[0])
    hi = min([t for t in sizes if t > tokens], default=None)
    if hi is None:
        lo, hi = sizes[-2], sizes[-1]
    return curve[lo] + (curve[hi] - curve[lo]) * (tokens - lo) / (hi - lo)


def candidate_shapes(max_k: int, max_nodes: int = 24, max_copies: int = 3):
    """(k, SAT nodes, groups, copies, copy length) of every shape choose_shape weighs: up to
    max_nodes SAT nodes (the likeliest paths), k SATs a group, 1 to 3 groups, 0 to
    max_copies copies of 2 to 10 tokens."""
    for k in range(0, max_k + 1):
        for n in ([0] if k == 0 else range(1, max_nodes + 1)):
            for groups in ([1] if k == 0 else (1, 2, 3)):
                for copies in range(0, max_copies + 1):
                    for copy_len in ([0] if copies == 0 else (2, 4, 6, 10)):
                        yield k, n, groups, copies, copy_len


def likeliest_paths(table: dict, k: int, n: int, max_rank: int = 4) -> tuple:
    """The n paths (ranks < max_rank, depth <= k) the walk reaches most often: a set closed
    under prefixes, since a path is never reached more often than its parent."""
    counts = {}
    for r in table.get("sat_ranks") or []:
        for d in range(1, k + 1):
            if r[d - 1] < 0 or r[d - 1] >= max_rank:
                break
            counts[tuple(r[:d])] = counts.get(tuple(r[:d]), 0) + 1
    ranked = sorted(counts, key=lambda p: (-counts[p], len(p), p))[:n]
    return tuple(sorted(ranked, key=lambda p: (len(p), p)))


def choose_shape(latency: dict, table: dict, max_k: int | None = None,
                 sat_latency: dict | None = None) -> tuple[Shape, float]:
    """The shape with the most expected tokens per second: expected_tokens / pass_cost(the
    tokens it feeds), over candidate_shapes. Returns (shape, expected tokens per second).
    latency: {tokens fed: seconds} of this machine, dtype and model (bench_latency.py);
    sat_latency: the same for passes that end with SATs (the adapter runs at their rows),
    the cost of every shape with SAT groups. Without it those cost what plain passes do."""
    max_k = table.get("k", 0) if max_k is None else max_k
    best, best_rate = Shape(), 1 / pass_cost(latency, 1)
    for k, n, groups, copies, copy_len in candidate_shapes(max_k if table.get("sat_ranks") else 0):
        paths = likeliest_paths(table, k, n) if k else ()
        if k and len(paths) < n:
            continue  # fewer paths were ever reached: a larger n is the same tree
        shape = Shape(paths, k, groups, copies, copy_len)
        curve = sat_latency if k and sat_latency else latency
        rate = expected_tokens(shape, table) / pass_cost(curve, shape.nominal_size)
        if rate > best_rate:
            best, best_rate = shape, rate
    return best, best_rate


TREE_TABLE = "tree_table.json"  # in a model (or adapter) directory: its drafts' acceptance, for --shape auto
MAX_FED = 1 + 24 + 3 * 10 + 3 * 8  # the most tokens a chosen shape feeds (candidate_shapes, k <= 8)


def read_tree_table(path: str, asked: bool) -> dict:
    """The acceptance table of `bench.py --acceptance` ({"k", "sat_ranks", "copy_holds"}),
    or {} where there is none and none was asked for (the shape then uses copies alone)."""
    import json
    if not os.path.isfile(path):
        if asked:
            raise SystemExit(f"error: --tree-table {path} does not exist (bench.py --acceptance writes one)")
        return {}
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"error: --tree-table {path} cannot be read: {e}")
    if not isinstance(table, dict) or not isinstance(table.get("sat_ranks", []), list):
        raise SystemExit(f"error: --tree-table {path} is not a table of bench.py --acceptance")
    return table


def parse_shape(spec: str, table: dict) -> Shape:
    """--shape 'k=2,nodes=6,groups=2,copies=2,len=4' (any subset; the rest 0, groups 1):
    the SAT nodes are the table's `nodes` likeliest paths of depth <= k."""
    keys = {"k": 0, "nodes": 0, "groups": 1, "copies": 0, "len": 0}
    for part in filter(None, spec.split(",")):
        name, _, value = part.partition("=")
        if name.strip() not in keys or not value.strip().isdigit():
            raise SystemExit(f"error: --shape {spec!r}: expected auto or NAME=NUMBER,... with names "
                             f"{', '.join(keys)}")
        keys[name.strip()] = int(value)
    paths = likeliest_paths(table, keys["k"], keys["nodes"]) if keys["k"] and keys["nodes"] else ()
    if keys["nodes"] and len(paths) < keys["nodes"]:
        raise SystemExit(f"error: --shape {spec!r}: the acceptance table has only {len(paths)} SAT paths of depth "
                         f"<= {keys['k']} (give --tree-table, or fewer nodes)")
    if keys["copies"] and not keys["len"]:
        keys["len"] = 10
    return Shape(paths, keys["k"], max(1, keys["groups"]), keys["copies"], keys["len"] if keys["copies"] else 0)
