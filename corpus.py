"""Training data as token files: the demo model's corpus, or your own for a real model.

    python corpus.py --out data/stdlib-tests --with-tests          # the demo model's corpus
    python corpus.py --out data/smollm2 --with-tests --tokenizer models/smollm2-135m   # its ids
    python corpus.py --out data/mycode --root ~/src/project --ext .py .js \\
        --tokenizer ~/CodeLlama-7b-hf                                # your files, CodeLlama ids
    python corpus.py --out data/mydocs --jsonl docs.jsonl --text-field text --tokenizer ...

Documents are source files under a directory (by default this machine's Python standard
library, `sysconfig.get_paths()["stdlib"]`, without its test suites unless --with-tests)
or the lines of a JSONL file. A document goes to the held-out split when a hash of its
name (path relative to the root, or "line N") falls in the lowest 5%: deterministic, and
never in both splits. Without --tokenizer, a new code tokenizer is trained on the
training split only.

Output: the tokenizer (tokenizer.model, or tokenizer.json with its tokenizer_config.json),
train.bin and val.bin (uint16 ids; each document is [BOS] ids EOS) and corpus.json
(documents, bytes and tokens per split, and the sha256 of the tokenizer file, which
train_sat.py compares with the model's before it trains).
"""

import argparse
import hashlib
import json
import os
import shutil
import sysconfig
import time

import numpy as np

from tokenizer import FILES as TOKENIZER_FILES, Tokenizer, tokenizer_file, tokenizer_hash, train as train_tokenizer

HELD_OUT_PERCENT = 5
# Generated tables and tool data in the stdlib, not code a person wrote.
SKIP_DIRS = {"site-packages", "encodings", "pydoc_data", "lib2to3", "__pycache__", "idlelib", "turtledemo"}
TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_files(root: str, with_tests: bool = False, exts=(".py",)) -> list[str]:
    """Relative paths of the source files under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = set() if rel_dir == "." else set(rel_dir.split(os.sep))
        if parts & SKIP_DIRS or (not with_tests and parts & TEST_DIRS):
            dirnames[:] = []
            continue
        out += [os.path.normpath(os.path.join(rel_dir, f)) for f in filenames if f.endswith(tuple(exts))]
    return sorted(out)


def is_held_out(name: str) -> bool:
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def documents(root: str | None, jsonl: str | None, text_field: str, with_tests: bool, exts) -> dict[str, str]:
    """name -> text, for every document."""
    if jsonl:
        docs = {}
        with open(jsonl, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise SystemExit(f"error: {jsonl} line {i + 1}: not JSON ({e.msg})")
                    if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                        raise SystemExit(f"error: {jsonl} line {i + 1}: expected an object with a string field {text_field!r}")
                    docs[f"line {i + 1}"] = row[text_field]
        return docs
    return {rel: read_text(os.path.join(root, rel)) for rel in list_files(root, with_tests, exts)}


def build(out: str, vocab_size: int = 8192, with_tests: bool = False, root: str | None = None,
          tokenizer: str | None = None, jsonl: str | None = None, text_field: str = "text", exts=(".py",),
          exclude=()):
    """exclude: document names left out of both splits (distill.py names the training
    documents that hold a benchmark prompt's text: the stdlib copies code between files)."""
    root = None if jsonl else os.path.abspath(root or stdlib_root())
    os.makedirs(out, exist_ok=True)
    docs = documents(root, jsonl, text_field, with_tests, exts)
    if missing := sorted(set(exclude) - set(docs)):
        raise SystemExit(f"error: --exclude {' '.join(missing)}: no such document in {jsonl or root}")
    docs = {n: text for n, text in docs.items() if n not in set(exclude)}
    if not docs:
        raise SystemExit(f"error: no documents found in {jsonl or root}")
    splits = {"train": [n for n in docs if not is_held_out(n)], "val": [n for n in docs if is_held_out(n)]}
    t0 = time.time()
    for name in TOKENIZER_FILES + ("tokenizer_config.json",):  # no stale tokenizer of an earlier build
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    model_path = os.path.join(out, "tokenizer.model")
    if tokenizer:
        src = tokenizer_file(tokenizer)
        model_path = os.path.join(out, "tokenizer.json" if src.endswith(".json") else "tokenizer.model")
        shutil.copy(src, model_path)
        config = os.path.join(os.path.dirname(src), "tokenizer_config.json")  # special ids of a tokenizer.json
        if src.endswith(".json") and os.path.isfile(config):
            shutil.copy(config, out)
    else:  # trained on the training split only, so held-out text is truly unseen
        tmp = os.path.join(out, "train_text.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(docs[n] + "\n" for n in splits["train"])
        train_tokenizer([tmp], os.path.join(out, "tokenizer"), vocab_size)
        os.remove(tmp)
        os.remove(os.path.join(out, "tokenizer.vocab"))
    tok = Tokenizer(model_path)
    if tok.vocab_size > 65536:
        raise SystemExit(f"error: a vocabulary of {tok.vocab_size} does not fit the uint16 token files")
    print(f"tokenizer: {tok.vocab_size} pieces ({time.time() - t0:.0f}s)")
    report = {"root": root, "jsonl": jsonl, "with_tests": with_tests, "excluded": sorted(exclude),
              "held_out_percent": HELD_OUT_PERCENT,
              "vocab_size": tok.vocab_size, "tokenizer_sha256": tokenizer_hash(model_path), "splits": {}}
    for name, names in splits.items():
        ids, n_bytes = [], 0
        for n in names:
            n_bytes += len(docs[n].encode("utf-8"))
            ids += tok.encode(docs[n], bos=True, eos=True)
        arr = np.array(ids, dtype=np.uint16)
        arr.tofile(os.path.join(out, f"{name}.bin.tmp"))
        os.replace(os.path.join(out, f"{name}.bin.tmp"), os.path.join(out, f"{name}.bin"))
        report["splits"][name] = {"files": len(names), "bytes": n_bytes, "tokens": len(ids), "paths": names}
        print(f"{name}: {len(names)} documents, {n_bytes / 1e6:.2f} MB, {len(ids) / 1e6:.2f}M tokens "
              f"({n_bytes / max(1, len(ids)):.2f} bytes/token)")
    with open(os.path.join(out, "corpus.json.tmp"), "w") as f:
        json.dump(report, f, indent=1)
    os.replace(os.path.join(out, "corpus.json.tmp"), os.path.join(out, "corpus.json"))
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/stdlib-tests", help="output directory")
    p.add_argument("--root", default=None, help="directory of source files (default: the stdlib)")
    p.add_argument("--ext", nargs="+", default=[".py"], help="file endings to read under --root")
    p.add_argument("--with-tests", action="store_true", help="also read test/ and tests/ directories")
    p.add_argument("--jsonl", default=None, help="a JSONL file of documents instead of --root")
    p.add_argument("--text-field", default="text", help="the JSONL field holding the text")
    p.add_argument("--tokenizer", default=None,
                   help="use this tokenizer (tokenizer.model, tokenizer.json, or a model directory) instead of "
                        "training one; give the model you will fine-tune")
    p.add_argument("--vocab-size", type=int, default=8192, help="size of a newly trained tokenizer")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NAME",
                   help="leave these documents out (paths relative to --root, or 'line N' of --jsonl); distill.py "
                        "names those that hold a benchmark prompt's text")
    a = p.parse_args()
    for path, what in ((a.root, "--root"), (a.jsonl, "--jsonl"), (a.tokenizer, "--tokenizer")):
        if path and not os.path.exists(path):
            raise SystemExit(f"error: {what} {path} does not exist")
    build(a.out, a.vocab_size, a.with_tests, a.root, a.tokenizer, a.jsonl, a.text_field, a.ext, a.exclude)


if __name__ == "__main__":
    main()
