"""Acceptance without timing (bench.py --acceptance): how many drafts the model accepts,
and what the draft tree's shape chooser reads (decode_tree.choose_shape).

For each model and prompt set, greedy two-step decoding with k SATs in float32: accepted
drafts per iteration, the share of iterations that accepted at least j drafts, and, for
the tree, every anchor's ranks of the model's token among each SAT's candidates and how
often copies of earlier text hold (copy_holds, per position; copy_walk, per pass). None of
it depends on the machine: the text is the model's own, and a draft holds where it equals
that text.
"""

import json
import os

import torch

from bench_report import progress
from decode import generate_sdsat, load_or_exit
from decode_common import prefill
from decode_lookup import lookup_matches
from model import Llama
from sampling import Warper
from sat import adapter_forward, draft_ranks, rank_stats


@torch.inference_mode()
def acceptance(model_dirs: list[str], prompts: dict, k: int, max_new: int, sat_id: int | None, device,
               label: str | None = None) -> list[dict]:
    """--acceptance: mean accepted drafts per iteration of greedy two-step decoding, k SATs,
    float32, per model and prompt set, and the share of iterations that accepted at least j
    drafts. No timing: acceptance does not depend on the machine.
    A row also gives the model's minutes of training, where its training.json says."""
    rows = []
    for path in model_dirs:
        model = load_or_exit(path, device, torch.float32)
        sat = model.args.sat_token_id if sat_id is None else sat_id
        row = {"model": path, "k": k, "max_new_tokens": max_new} | ({"run": label} if label else {})
        report = os.path.join(path, "training.json")
        if os.path.isfile(report):
            with open(report) as f:
                r = json.load(f)
            row["minutes"] = round(r["minutes"] if "minutes" in r else
                                   (r.get("elapsed_before", 0) + r.get("elapsed", 0)) / 60, 2)
        texts, all_ranks = [], []  # for the draft tree's table: every text, every anchor's ranks
        for name, encoded in prompts.items():
            counts, ranked = [], ([], [])  # accepted drafts of every iteration; SAT logits, the model's tokens
            for i, ids in enumerate(encoded):
                progress(f"{os.path.basename(path)} {name} {i + 1}/{len(encoded)}")
                cache = model.new_cache(len(ids) + max_new + k + 1)
                logits = prefill(model, cache, ids)
                text, stats = generate_sdsat(model, cache, logits, max_new, Warper(), k, sat, model.args.stop_ids)
                counts += stats.accepted
                texts.append((ids + text, len(ids)))
                for part, got in zip(ranked, sat_candidates(model, ids + text, len(ids), k, sat)):
                    part.append(got)
            row[name] = round(sum(counts) / max(1, len(counts)), 3)
            # where drafts fail: the share of iterations that accepted at least j drafts, j = 1..k
            row[f"{name}_at_least"] = [round(sum(c >= j for c in counts) / max(1, len(counts)), 3)
                                       for j in range(1, k + 1)]
            sat_logits, own = torch.cat(ranked[0]), torch.cat(ranked[1])
            # what a draft tree can use: hit rates at ranks 1, 2, 4 per SAT; calibration; every anchor's ranks
            row[f"{name}_ranks"] = rank_stats(sat_logits, own)
            all_ranks += draft_ranks(sat_logits, own).tolist()
        row["tree_table"] = {"k": k, "sat_ranks": all_ranks, "copy_holds": copy_holds(texts),
                             "copy_walk": copy_walk(texts)}
        progress("")
        print(json.dumps({key: v for key, v in row.items() if key != "tree_table"}), flush=True)
        rows.append(row)
    return rows


def agreed(copy: list[int], text: list[int]) -> int:
    """How many leading tokens of a copy equal the text's."""
    return next((i for i, (a, b) in enumerate(zip(copy, text)) if a != b), min(len(copy), len(text)))


def copy_holds(texts: list[tuple[list[int], int]], max_copies: int = 3, max_len: int = 10) -> dict:
    """How often copies hold, from the model's own greedy text (ids, prompt length): for c =
    1..max_copies, holds[c][i] = the share of positions after the prompt where one of the
    first c copies (lookup_matches) equals the next i + 1 tokens of the text. No model runs:
    a copy holds exactly where it equals what the model wrote."""
    hits, seen = {c: [0] * max_len for c in range(1, max_copies + 1)}, 0
    for ids, start in texts:
        for t in range(start - 1, len(ids) - 1):
            copies, future = lookup_matches(ids[:t + 1], max_copies, max_len), ids[t + 1:t + 1 + max_len]
            held = [agreed(cp, future) for cp in copies]
            for c in hits:
                best = max(held[:c], default=0)
                for i in range(best):
                    hits[c][i] += 1
            seen += 1
    return {str(c): [round(h / max(1, seen), 4) for h in v] for c, v in hits.items()}


def copy_walk(texts: list[tuple[list[int], int]], max_copies: int = 3, max_len: int = 10) -> dict:
    """What a pass of copies alone yields, walked as decoding walks: from the prompt's end,
    each pass verifies the first c copies (lookup_matches) of at most `length` tokens,
    accepts the longest that holds, adds the model's own next token, and the next pass
    starts after them. walk[c][length - 1] = [accepted copies a pass, the share of passes
    that accepted at least one]. copy_holds counts every position alike, and so weighs the
    middle of a long repeat as often as a pass could start there: it promises more (3.5
    tokens a pass for one copy of 10 on SmolLM2's 48-token texts) than a walk gets there
    (1.86; 2.37 on 96-token texts, where bench measured 2.45 for lookup)."""
    walk = {}
    for c in range(1, max_copies + 1):
        walk[str(c)] = []
        for length in range(1, max_len + 1):
            accepted, any_held, passes = 0, 0, 0
            for ids, start in texts:
                t = start - 1  # the last token written; the pass proposes what follows it
                while t < len(ids) - 1:
                    future = ids[t + 1:t + 1 + length]
                    held = max((agreed(cp, future) for cp in lookup_matches(ids[:t + 1], c, length)), default=0)
                    held = min(held, len(ids) - 2 - t)  # the bonus token must lie inside the text
                    accepted, any_held, passes = accepted + held, any_held + (held > 0), passes + 1
                    t += held + 1
            walk[str(c)].append([round(accepted / max(1, passes), 4), round(any_held / max(1, passes), 4)])
    return walk


def sat_candidates(model: Llama, ids: list[int], prompt_len: int, k: int, sat_id: int):
    """The SAT groups of a draft pass at every position of the model's own text after the
    prompt, in one forward (the training layout, sat.adapter_forward): (SAT logits [A, k, V],
    the model's own tokens [A, k]) for anchors p = prompt_len - 1 .. len(ids) - 2 - k. The
    text is the model's greedy text, so each group sees what a draft pass there would."""
    window = torch.tensor([ids + [0]], device=model.device)  # + one unread label slot
    anchors = torch.arange(prompt_len - 1, len(ids) - k, device=model.device)[None]
    logits, _, own_logits, _ = adapter_forward(model, window, anchors, k, sat_id)
    return logits.view(-1, k, logits.shape[-1]).float(), own_logits.argmax(-1).view(-1, k)
