"""SDSAT with a token tree: many candidate continuations verified in one forward pass.

The draft pass is the two-step loop's (decode.py); the verify pass feeds a tree built from
the top drafts of every SAT, with a mask that lets each node see only its ancestors, then
keeps the branch the model itself chooses (SDSAT.md section 4, tree mode).
"""

from dataclasses import dataclass

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
