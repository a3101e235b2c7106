"""The --trace view of decode.py: a legend, then one line per forward pass of a loop."""

TRACE_LEGEND = {  # what one iteration of each method does, in the words its trace lines use
    "chain": ["draft   feeds the last token + k SATs: the model's exact next token, and one guess per SAT",
              "verify  feeds that token + the guesses: the model's own choice after each one checks the next guess"],
    "tree": ["draft   feeds the last token + k SATs: the model's exact next token, and the top guesses of every SAT",
             "verify  feeds a tree of those guesses in one pass and follows the branch the model itself chooses"],
    "fused": ["fused   one pass checks the guesses and drafts the next ones: group i of k SATs guesses what",
              "        follows if exactly i guesses are accepted (the first guesses come from one draft pass)"],
    "lookup": ["lookup  feeds guesses copied from earlier text (what followed the last tokens when they last",
               "        occurred) and checks them in one pass"],
    "draft-tree": ["tree    one pass checks a tree of the SATs' top guesses and copies of earlier text, and feeds",
                   "        groups of SATs at its likeliest ends: the group where the walk ends guesses next"],
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
        elif step == "draft-tree":
            kinds = [src for _, _, src in ev["nodes"][1:]]
            fed = f"{kinds.count('sat') + kinds.count('both')} SAT guesses, {kinds.count('copy') + kinds.count('both')} copied"
            print(f"tree    {cur} + {len(kinds)} nodes ({fed}) + {ev['sats']} SATs: path {checked(ev)} {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"],
                          f"the path moved together, {len(kinds) - n} other nodes and {ev['sats']} SATs dropped"))
        else:  # lookup
            print(f"lookup  {cur} + {len(ev['drafts'])} copied guesses: {checked(ev)} {emitted(ev)} "
                  + cache(ev["cache_before"], ev["cache_after"], f"{unaccepted} unaccepted guesses dropped"))
    return trace
