"""The --trace view of decode.py: a legend, then one line per forward pass of a loop.

Every decoding loop calls trace(record) once per forward pass, after the pass has emitted
its tokens and truncated the cache. A record holds token ids and counts only:

    step          what the pass did: draft, verify, tree, fused, lookup or draft-tree
    cur           the real token fed first: the last one emitted, not yet in the cache
    sats          how many SATs were fed (after cur and any drafts)
    emitted       the ids the pass added to the text; fewer than it chose where a stop id
                  or --max-new-tokens ends the run inside them
    cache_before  the cache's length after the pass, everything fed still in it
    cache_after   its length after the truncation (the tree: after the compaction)

    draft         x, the exact next token, and drafts: one per SAT (the tree: each SAT's
                  top drafts, likeliest first, a list per SAT)
    verify, tree, fused, lookup, draft-tree
                  drafts (fed after cur, to be checked), accepted (how many drafts the
                  model's own choices confirmed), bonus (its choice after the last of them)
    tree          nodes (every node's token, node 0 being cur), parents, path (the nodes
                  walked), rejected (the last path node's children: none was the choice)
    fused         next_drafts: group `accepted`'s outputs, the next pass's drafts
    draft-tree    nodes, parents, path as the tree's; sources (cur, sat, copy or both per
                  node), groups (the nodes carrying k SATs each, fed after the nodes), k,
                  next_drafts (the top draft of each SAT of the group where the walk ended)

trace_html.py draws the same records as a page (decode.py --html).
"""

TRACE_LEGEND = {  # what one iteration of each method does, in the words its trace lines use
    "chain": ["draft   feeds the last token + k SATs: the model's exact next token, and one draft per SAT",
              "verify  feeds that token + the drafts: the model's own choice after each one checks the next draft"],
    "tree": ["draft   feeds the last token + k SATs: the model's exact next token, and the top drafts of every SAT",
             "verify  feeds a tree of those drafts in one pass and follows the branch the model itself chooses"],
    "fused": ["draft   once, first: the last token + k SATs give the exact next token and the first drafts",
              "fused   one pass checks the drafts and drafts the next ones: group i of k SATs drafts what",
              "        follows if exactly i drafts are accepted"],
    "lookup": ["lookup  feeds drafts copied from earlier text (what followed the last tokens when they last",
               "        occurred) and checks them in one pass"],
    "draft-tree": ["tree    one pass checks a tree of the SATs' top drafts and copies of earlier text, and feeds",
                   "        groups of SATs at its likeliest ends: the group where the walk ends drafts the next"],
}
TRACE_MARKS = ["✓ accepted   ✗ rejected   · never checked (it comes after a rejected draft)",
               "bonus: the model's own token after the last accepted draft; every check yields one",
               "cache A → B: the KV cache holds A tokens after the pass and is truncated to B",
               "✂ the run ends here (a stop token or --max-new-tokens): what follows is not emitted"]


def trace_kind(method: str, tree: bool) -> str:
    """The key of TRACE_LEGEND for a decode.py --method (and --tree)."""
    return "tree" if tree else {"sdsat": "chain", "tree": "draft-tree"}.get(method, method)


def plural(n: int, word: str) -> str:
    """'1 draft', '2 drafts'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def trace_printer(tok, colour: bool, kind: str):
    """The --trace view of a `kind` loop (TRACE_LEGEND's keys): a legend before the first
    record, then one line per record, so one per forward pass."""
    green, red, dim, bold, end = (("\033[32m", "\033[31m", "\033[2m", "\033[1m", "\033[0m") if colour
                                  else ("", "", "", "", ""))
    legend_printed = False

    def show(tokens) -> str:
        return " ".join(repr(tok.decode([t])) for t in tokens)

    def checked(ev) -> str:
        """Each draft with its fate: accepted, the first rejected one, or never checked."""
        marks = [f"{green}{show([d])}✓{end}" if j < ev["accepted"] else
                 f"{red}{show([d])}✗{end}" if j == ev["accepted"] else f"{dim}{show([d])}·{end}"
                 for j, d in enumerate(ev["drafts"])]
        return " ".join(marks) or "(no drafts)"

    def emitted(ev) -> str:
        """→ the accepted drafts + bonus, with a ✂ where the run ends if it ends inside them."""
        words = [show([d]) for d in ev["drafts"][:ev["accepted"]]]
        words.append(f"{'+ ' if words else ''}bonus {bold}{show([ev['bonus']])}{end}")
        if len(ev["emitted"]) < len(words):
            words.insert(len(ev["emitted"]), "✂")
        return "→ " + " ".join(words)

    def cache(ev, what: str) -> str:
        return f"{dim}| cache {ev['cache_before']} → {ev['cache_after']}: {what}{end}"

    def trace(ev):
        nonlocal legend_printed
        if not legend_printed:
            print("\n".join(TRACE_LEGEND[kind] + TRACE_MARKS) + "\n")
            legend_printed = True
        step, n, cur = ev["step"], ev.get("accepted", 0), show([ev["cur"]])
        unaccepted = plural(len(ev["drafts"]) - n, "unaccepted draft")
        if step == "draft":
            drafts = (f"the top {len(ev['drafts'][0])} drafts of each SAT make the tree" if kind == "tree" else
                      f"drafts {show(ev['drafts'])}")
            print(f"draft   {cur} + {plural(ev['sats'], 'SAT')} → next {bold}{show([ev['x']])}{end} | {drafts} "
                  + cache(ev, "the SATs are dropped"))
        elif step == "verify":
            print(f"verify  {cur} + {plural(len(ev['drafts']), 'draft')}: {checked(ev)} {emitted(ev)} "
                  + cache(ev, f"{unaccepted} dropped"))
        elif step == "tree":
            size, missed = len(ev["nodes"]), " ".join(f"{red}{show([t])}✗{end}" for t in ev["rejected"])
            print(f"verify  the tree ({size} tokens): path {checked(ev)}"
                  + (f", then no branch holds the model's choice: {missed}" if missed else ", to a leaf")
                  + f" {emitted(ev)} "
                  + cache(ev, f"the path's {plural(n + 1, 'token')} moved together, "
                              f"{plural(size - n - 1, 'other node')} dropped"))
        elif step == "fused":
            print(f"fused   {cur} + {plural(len(ev['drafts']), 'draft')} + {plural(ev['sats'], 'SAT')}: "
                  f"{checked(ev)} {emitted(ev)}; next drafts from group {n}: {show(ev['next_drafts'])} "
                  + cache(ev, f"{unaccepted} and all {plural(ev['sats'], 'SAT')} dropped"))
        elif step == "draft-tree":
            kinds = ev["sources"][1:]
            fed = (f"{plural(len(kinds), 'node')} ({kinds.count('sat') + kinds.count('both')} SAT drafts, "
                   f"{kinds.count('copy') + kinds.count('both')} copied)")
            print(f"tree    {cur} + {fed} + {plural(ev['sats'], 'SAT')}: path {checked(ev)} {emitted(ev)} "
                  + cache(ev, f"the path moved together, {plural(len(kinds) - n, 'other node')} and "
                              f"{plural(ev['sats'], 'SAT')} dropped"))
        else:  # lookup
            print(f"lookup  {cur} + {plural(len(ev['drafts']), 'copied draft')}: {checked(ev)} {emitted(ev)} "
                  + cache(ev, f"{unaccepted} dropped"))
    return trace
