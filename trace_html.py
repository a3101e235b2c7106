"""decode.py --html FILE: one self-contained page of a real run, built from the records
that --trace prints (trace_view.py), so the page and the trace cannot disagree.

One step per forward pass. Each step shows the tokens fed, each by kind (cur, SAT, draft,
copy), with its position; under each draft its fate (✓ accepted, ✗ rejected, · never
checked); under each fed token the model's output there, as used (emitted, bonus, a new
draft, cut off by the run's end, or unused); the KV cache as a row of slots after the pass,
the truncated ones drawn leaving, and after the truncation; the running count of tokens
emitted and of forward passes; and beside the text, autoregressive decoding's run of the
same prompt. Buttons and the arrow keys step, "play all" plays.

The page needs no network and nothing installed: inline CSS and JavaScript, the data as one
JSON element (id "trace-data"). What is on screen carries data-* attributes (the token ids,
kinds, fates, marks, cache lengths), which tests/test_html.py reads in a real browser.
"""

import json
import os
import re
import shlex

from trace_view import TRACE_LEGEND, TRACE_MARKS


def visible(text: str) -> str:
    """A token's text with its whitespace drawn: ' return' -> '␣return', 8 spaces -> '␣×8'."""
    text = re.sub(" {5,}", lambda m: f"␣×{len(m.group())}", text)
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def descriptions(kind: str) -> dict[str, str]:
    """TRACE_LEGEND's lines for a loop, as pass label -> what the pass does."""
    out, label = {}, None
    for line in TRACE_LEGEND[kind]:
        if not line.startswith(" "):
            label, line = line.split(maxsplit=1)
            out[label] = line
        else:
            out[label] += " " + line.strip()
    return out


def page_step(r: dict) -> dict:
    """One trace record (one forward pass) as the page draws it.

    fed    [id, kind] per token fed, kind cur, sat, draft or copy; pos its position
    fate   per fed token: accepted, rejected or unchecked for drafts and copies, else None
    out    [id, mark] per fed token: the model's output there as the loop used it: emitted,
           bonus, draft (for the next pass), cut (chosen, but the run ended first) or unused
           (id None: drawn after a rejection, or a SAT group not taken); a tree's draft
           pass gives a list of ids per SAT, its top drafts
    kept   the fed tokens that stay in the cache, in their new order
    cache  [length before the pass, after it, after the truncation]
    parents  (a tree, the draft tree) each node's parent node
    """
    step, cur, sats, drafts = r["step"], r["cur"], r["sats"], r["drafts"]
    if step == "draft":  # [cur, S * k] -> x, then one draft (or a tree's top drafts) per SAT
        fed = [[cur, "cur"]] + [[None, "sat"]] * sats
        return step_data(r, fed, [None] * len(fed), [[r["x"], "emitted"]] + [[d, "draft"] for d in drafts])
    n, chosen = r["accepted"], drafts[:r["accepted"]] + [r["bonus"]]
    used = [[t, "cut" if i >= len(r["emitted"]) else "bonus" if i == n else "emitted"] for i, t in enumerate(chosen)]
    if step == "tree":  # node 0 is cur; the path's nodes are accepted, their other children rejected
        nodes, parents, path = r["nodes"], r["parents"], r["path"]
        fed = [[cur, "cur"]] + [[t, "draft"] for t in nodes[1:]]
        fate = [None] + ["accepted" if i in path else "rejected" if parents[i] in path else "unchecked"
                         for i in range(1, len(nodes))]
        out = [[None, "unused"] for _ in nodes]
        for i, node in enumerate(path):
            out[node] = used[i]
        return {**step_data(r, fed, fate, out, depths(parents), kept=path), "parents": parents}
    if step == "draft-tree":  # the tree's nodes, then k SATs per grouped node; the group where the walk ends drafts on
        nodes, parents, path, k = r["nodes"], r["parents"], r["path"], r["k"]
        fed = [[cur, "cur"]] + [[t, "copy" if src == "copy" else "draft"] for t, src in zip(nodes[1:], r["sources"][1:])]
        fed += [[None, "sat"]] * sats
        fate = [None] + ["accepted" if i in path else "rejected" if parents[i] in path else "unchecked"
                         for i in range(1, len(nodes))] + [None] * sats
        out = [[None, "unused"] for _ in nodes]
        for i, node in enumerate(path):
            out[node] = used[i]
        for v in r["groups"]:
            out += [[d, "draft"] for d in r["next_drafts"]] if v == path[-1] and r["next_drafts"] else [[None, "unused"]] * k
        node_depth = depths(parents)
        offsets = node_depth + [node_depth[v] + j for v in r["groups"] for j in range(1, k + 1)]
        return {**step_data(r, fed, fate, out, offsets, kept=path), "parents": parents}
    kind = "copy" if step == "lookup" else "draft"
    fed = [[cur, "cur"]] + [[d, kind] for d in drafts] + [[None, "sat"]] * sats
    fate = [None] + ["accepted" if j < n else "rejected" if j == n else "unchecked" for j in range(len(drafts))]
    fate += [None] * sats
    out = used + [[None, "unused"]] * (len(drafts) - n)
    offsets = None  # positions one after another
    if step == "fused":  # k + 1 groups of k SATs; group i sits after real token i, group n drafts on
        k = len(drafts)
        offsets = list(range(k + 1)) + [g + j for g in range(k + 1) for j in range(1, k + 1)]
        out += [[d, "draft"] if g == n else [None, "unused"] for g in range(k + 1) for d in r["next_drafts"]]
    return step_data(r, fed, fate, out, offsets)


def depths(parents: list[int]) -> list[int]:
    """Each tree node's depth (node 0, the root, at 0); a parent comes before its children."""
    depth = []
    for p in parents:
        depth.append(0 if p < 0 else depth[p] + 1)
    return depth


def step_data(r: dict, fed, fate, out, offsets=None, kept=None) -> dict:
    """Positions are the cache's length before the pass + offsets (by default 0, 1, ..); a
    truncation keeps the first fed tokens, a tree's compaction the path (kept)."""
    start = r["cache_before"] - len(fed)  # the cache before the pass; the fed tokens follow it
    offsets = range(len(fed)) if offsets is None else offsets
    kept = list(range(r["cache_after"] - start)) if kept is None else kept
    return dict(step=r["step"], fed=fed, fate=fate, out=out, pos=[start + o for o in offsets], kept=kept,
                cache=[start, r["cache_before"], r["cache_after"]], new=len(r["emitted"]))


def command_line(argv: list[str]) -> str:
    """The command as bash takes it: an argument with a newline or a tab as $'...'."""
    def quote(arg: str) -> str:
        if "\n" not in arg and "\t" not in arg:
            return shlex.quote(arg)
        escaped = arg.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\t", "\\t")
        return f"$'{escaped}'"
    return " ".join(["python", "decode.py"] + [quote(arg) for arg in argv])


def text_ends(tok, tokens: list[int]) -> tuple[str, list[int]]:
    """The decoded text of tokens, and where it ends after each count of them (a prefix may
    decode to half a character: it ends where it still agrees with the whole)."""
    full = tok.decode(tokens)
    return full, [len(os.path.commonprefix([tok.decode(tokens[:c]), full])) for c in range(len(tokens) + 1)]


def page_data(records: list[dict], tok, prompt: list[int], tokens: list[int], kind: str, command: str,
              greedy: bool, ar_tokens: list[int], ar_forwards: int) -> dict:
    """Everything the page shows, as JSON: the steps, token texts, both runs' text."""
    steps = [page_step(r) for r in records]
    emitted = 1  # the first new token comes from the prefill
    for i, s in enumerate(steps):
        emitted += s["new"]
        s.update(emitted=emitted, forwards=i + 1)
    ids = set(prompt) | set(tokens)  # the tokens whose text the page needs
    for s in steps:
        for t, _ in s["fed"] + s["out"]:
            ids.update(t if isinstance(t, list) else [] if t is None else [t])
    text, ends = text_ends(tok, tokens)
    ar_text, ar_ends = text_ends(tok, ar_tokens)
    pieces = {t: visible(tok.decode([t]) or tok.id_to_piece(t)) for t in sorted(ids)}  # BOS decodes to "": <s>
    return dict(command=command, kind=kind, greedy=greedy, passes=descriptions(kind),
                marks=TRACE_MARKS[:2],  # the marks and the bonus, in the trace's words
                pieces=pieces, ids=prompt + tokens, prompt=tok.decode(prompt), steps=steps, text=text, ends=ends,
                ar=dict(text=ar_text, ends=ar_ends, tokens=len(ar_tokens), forwards=ar_forwards,
                        same=ar_tokens == tokens))


def page(data: dict) -> str:
    """The HTML page: the data as JSON ('<' escaped, so no string can close the script element)."""
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return PAGE.replace("/*DATA*/", blob)


def check_path(path: str) -> str | None:
    """Why the page cannot be written to path, or None. Checked before the run starts."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        return f"{path} is a directory: give the page's file name"
    if not os.path.isdir(folder):
        return f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"the folder {folder} is not writable"
    return None


def write_page(path: str, data: dict):
    """Write the page whole or not at all: a temporary file, renamed over path."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page(data))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SDSAT trace</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1em 2em; color: #222; }
code, .tok, .slot, pre { font-family: ui-monospace, monospace; }
h1 { font-size: 1.2em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: .2em 0; }
.cmd { color: #555; } .what { color: #444; margin: 0 0 .6em; }
nav { margin: .8em 0; } nav button { font-size: 1em; margin-right: .3em; }
.counts b { font-size: 1.1em; }
.pass { border-collapse: collapse; margin: .6em 0; overflow-x: auto; display: block; }
.pass th { text-align: right; font-weight: normal; color: #666; padding-right: .6em; white-space: nowrap; }
.pass td { text-align: center; padding: 2px 1px; min-width: 1.6em; }
.tok { display: inline-block; border-radius: 4px; padding: 1px 4px; white-space: pre; }
.pos { color: #999; font-size: .8em; white-space: nowrap; }
.cur { background: #d7e6ff; border: 1px solid #5b8def; }
.sat { background: #eee; border: 1px dashed #888; color: #666; }
.draft { background: #fff3c4; border: 1px solid #d8b23c; }
.copy { background: #e4d7ff; border: 1px solid #8b6ce0; }
.accepted { color: #1a7f37; font-weight: bold; } .rejected { color: #cf222e; font-weight: bold; }
.unchecked { color: #aaa; }
.emitted { background: #dff5e3; border: 1px solid #1a7f37; }
.bonus { background: #1a7f37; color: #fff; border: 1px solid #1a7f37; }
.cut { background: #fff; border: 1px dashed #cf222e; text-decoration: line-through; color: #cf222e; }
.unused { color: #bbb; }
.slots { display: flex; flex-wrap: wrap; gap: 2px; margin: .2em 0 .6em; }
.slot { width: 3.2em; height: 1.5em; overflow: hidden; font-size: 11px; border: 1px solid #bbb; border-radius: 3px;
        background: #f6f8fa; text-align: center; white-space: pre; }
.slot.fed { background: #fff3c4; } .slot.kept { background: #dff5e3; border-color: #1a7f37; }
.slot.leaving { background: #ffe4e4; border: 1px dashed #cf222e; color: #cf222e;
                animation: leave .8s ease-in forwards; }
@keyframes leave { to { opacity: .35; transform: translateY(6px); } }
.texts { display: flex; gap: 2em; } .texts > div { flex: 1; min-width: 0; }
pre { background: #f6f8fa; padding: .5em; white-space: pre-wrap; border-radius: 4px; min-height: 4em; }
pre .prompt { color: #888; } pre .new { background: #b7ebc2; }
.legend span { margin-right: 1em; white-space: nowrap; }
</style></head>
<body>
<h1>SDSAT, one forward pass at a time</h1>
<div class="cmd"><code id="command"></code></div>
<div class="legend" id="legend"></div><div class="cmd" id="marks"></div>
<nav><button id="back">◀ back</button><button id="next">next ▶</button><button id="play">▶ play all</button>
  <span id="where"></span> <span class="cmd">(← and → step too)</span></nav>
<section id="step">
  <h2 id="title"></h2><p class="what" id="what"></p>
  <div class="counts" id="counts"></div>
  <table class="pass"><tbody>
    <tr id="row-pos"><th>position</th></tr>
    <tr id="row-fed"><th>fed</th></tr>
    <tr id="row-fate"><th>check</th></tr>
    <tr id="row-out"><th>the model's output</th></tr>
  </tbody></table>
  <p class="what" id="how"></p>
  <div id="cache-before"></div><div id="cache-after"></div>
</section>
<section class="texts">
  <div><h2>this run's text</h2><pre id="text"></pre></div>
  <div><h2 id="ar-title"></h2><pre id="ar-text"></pre></div>
</section>
<script type="application/json" id="trace-data">/*DATA*/</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("trace-data").textContent);
const piece = id => id === null ? "S" : D.pieces[id];
const FATE = {accepted: "✓", rejected: "✗", unchecked: "·"};
const HOW = {  // how to read a pass's table
  draft: "The output at cur is the exact next token; the output at SAT j drafts the token j + 1 after it.",
  tree: "Each node drafts the token after its parent (hover over a node to see which); a node is accepted when " +
        "the model's output at its parent (its argmax, or its sample) is the same token: the walk goes from the " +
        "root down the accepted nodes.",
  greedy: "A draft is accepted when the model's output one column to its left is the same token.",
  sampling: "A draft d is accepted with probability min(1, p(d) / q(d)): p is the model's distribution one column " +
            "to its left, q the one d was drawn from (a copy's q is all on d). At the first rejected draft the " +
            "output is drawn from max(0, p - q), renormalised.",
  groups: " SAT group i, after real token i, drafts what follows if exactly i drafts are accepted: the accepted " +
         "group's outputs are the next pass's drafts."};
let at = 0, player = null;  // the step shown; the timer of "play all"

function el(tag, attrs, text) {  // an element with attributes (and text)
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function cell(row, child) { const td = el("td"); if (child) td.append(child); row.append(td); }
function tokenBox(ids, cls, attrs) {  // one token, or a tree draft pass's top drafts stacked
  const list = Array.isArray(ids) ? ids : [ids];
  const box = el("span", {...attrs, "data-id": list.join(","), class: "tok " + cls});
  box.textContent = list.map(piece).join("\n");
  return box;
}
function resetRow(id) { const row = document.getElementById(id); row.replaceChildren(row.firstChild); return row; }

function drawPass(s) {
  const pos = resetRow("row-pos"), fed = resetRow("row-fed"), fate = resetRow("row-fate"), out = resetRow("row-out");
  const k = s.fed.filter(([, kind]) => kind !== "sat").length - 1;  // the drafts fed after cur
  s.fed.forEach(([id, kind], i) => {
    cell(pos, el("span", {class: "pos"}, s.pos[i]));
    const about = s.parents ? {title: i ? `node ${i}, after node ${s.parents[i]} (${piece(s.fed[s.parents[i]][0])})`
                                        : "node 0, the root"} : {};
    cell(fed, tokenBox(id, kind, {"data-kind": kind, ...about}));
    const f = s.fate[i], g = (i - 1 - k) / k;  // a fused pass's SAT group, labelled where one starts
    const group = s.step === "fused" && kind === "sat" && Number.isInteger(g);
    cell(fate, f ? el("span", {class: f, "data-fate": f, title: f}, FATE[f])
                 : group ? el("span", {class: "pos"}, `group ${g}`) : null);
    const [o, mark] = s.out[i];
    cell(out, o === null ? el("span", {class: "unused", "data-mark": mark, "data-id": ""}, "·")
                         : tokenBox(o, mark, {"data-mark": mark, title: mark}));
  });
}

function drawCache(s) {  // the slots after the pass (the leaving ones drawn leaving), then after the cut
  const [start, before, after] = s.cache, kept = new Set(s.kept);
  const slotText = i => i < start ? piece(D.ids[i]) : piece(s.fed[i - start][0]);
  const row = (title, n, slot) => {
    const box = el("div", {class: "slots", "data-length": n});
    for (let i = 0; i < n; i++) box.append(slot(i));
    const wrap = el("div"); wrap.append(el("div", {}, title), box); return wrap;
  };
  document.getElementById("cache-before").replaceChildren(row(
    `KV cache after the pass: ${before} slots (${before - start} fed; red ones leave)`, before, i => {
      const mine = i >= start, stays = !mine || kept.has(i - start);
      return el("div", {class: "slot" + (mine ? (stays ? " fed" : " leaving") : ""), title: `${i}: ${slotText(i)}`,
                        "data-leaving": String(!stays)}, slotText(i));
    }));
  const keptSlots = s.kept.map(j => piece(s.fed[j][0]));
  const moved = s.step === "tree" ? " (the path's slots moved together)" : "";
  document.getElementById("cache-after").replaceChildren(row(
    `after the truncation: ${after} slots${moved}`, after, i => {
      const text = i < start ? piece(D.ids[i]) : keptSlots[i - start];
      return el("div", {class: "slot" + (i >= start ? " kept" : ""), title: `${i}: ${text}`}, text);
    }));
}

function drawText(pre, text, ends, count, prev) {  // the prompt, then new text; this pass's tokens marked
  pre.replaceChildren(el("span", {class: "prompt"}, D.prompt), text.slice(0, ends[prev]),
                      el("span", {class: "new"}, text.slice(ends[prev], ends[count])));
}

function show(i) {
  at = Math.max(0, Math.min(D.steps.length - 1, i));
  const s = D.steps[at], label = s.step === "tree" ? "verify" : s.step;
  document.body.dataset.step = at;
  document.getElementById("where").textContent = `pass ${at + 1} of ${D.steps.length}`;
  document.getElementById("title").textContent =
    `forward pass ${at + 1}: ${label}` + (s.step === "tree" ? " (a tree)" : "");
  document.getElementById("what").textContent = D.passes[label];
  document.getElementById("how").textContent = HOW[s.step] ||
    (D.greedy ? HOW.greedy : HOW.sampling) + (s.step === "fused" ? HOW.groups : "");
  const counts = document.getElementById("counts");
  counts.replaceChildren("tokens emitted: ", el("b", {id: "emitted"}, s.emitted), " · forward passes: ",
                         el("b", {id: "forwards"}, s.forwards),
                         ` · autoregressive decoding needs ${s.emitted - 1} passes for ${s.emitted} tokens`);
  drawPass(s);
  drawCache(s);
  drawText(document.getElementById("text"), D.text, D.ends, s.emitted, s.emitted - s.new);
  const shown = Math.min(s.emitted, D.ar.tokens);
  drawText(document.getElementById("ar-text"), D.ar.text, D.ar.ends, shown, shown);
}

function play() {
  const button = document.getElementById("play");
  if (player) {  // playing: pause
    clearInterval(player);
    player = null;
    button.textContent = "▶ play all";
    return;
  }
  if (at === D.steps.length - 1) show(0);
  button.textContent = "❚❚ pause";
  player = setInterval(() => { if (at === D.steps.length - 1) play(); else show(at + 1); }, 700);
}

document.getElementById("command").textContent = D.command;
const KINDS = [["cur", "cur", "the last token emitted"], ["sat", "S", "a SAT"], ["draft", "d", "a SAT's draft"],
               ["copy", "c", "a copied draft"], ["emitted", "t", "emitted"], ["bonus", "b", "the bonus token"],
               ["cut", "t", "cut: the run ended first"]];
for (const [kind, sample, words] of KINDS) {
  const item = el("span"); item.append(el("span", {class: "tok " + kind}, sample), " " + words);
  document.getElementById("legend").append(item);
}
document.getElementById("marks").append(...D.marks.map(m => el("div", {}, m)),
  el("div", {}, "␣ a space, ␣×8 eight of them, ↵ a newline, ⇥ a tab; hover over a cache slot for its position"));
const last = D.steps.length ? D.steps[D.steps.length - 1] : {emitted: 1, forwards: 0};
document.getElementById("ar-title").textContent =
  `autoregressive decoding: ${D.ar.tokens} tokens in ${D.ar.forwards} forward passes ` +
  `(this run: ${last.emitted} in ${last.forwards}); ` +
  (D.ar.same ? "the same text" : D.greedy ? "a different text" : "sampling: another draw from the same distribution");
document.getElementById("back").onclick = () => show(at - 1);
document.getElementById("next").onclick = () => show(at + 1);
document.getElementById("play").onclick = play;
document.addEventListener("keydown", e => {
  if (e.key === "ArrowLeft") show(at - 1);
  else if (e.key === "ArrowRight") show(at + 1);
});
if (D.steps.length) show(0);
else document.getElementById("step").textContent = "(no forward pass: the run ended at the prefill's token)";
document.body.dataset.renderMs = performance.now().toFixed(1);
</script>
</body></html>
"""
