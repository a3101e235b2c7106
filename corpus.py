"""The demo model's training corpus: Python source that every Python install has.

    python corpus.py --out data/stdlib            # list, split, train tokenizer, tokenize

Files come from the standard library (`sysconfig.get_paths()["stdlib"]`), optionally with
its test suites. Each file goes to the held-out split when a hash of its path (relative
to the stdlib) falls in the lowest 5%: deterministic, and a file is never in both splits.

Output: tokenizer.model, train.bin / val.bin (uint16 token ids; each file is
<s> ids </s>), and corpus.json (which files, bytes and tokens per split).
"""

import argparse
import hashlib
import json
import os
import sysconfig
import time

import numpy as np

from tokenizer import Tokenizer, train as train_tokenizer

HELD_OUT_PERCENT = 5
# Generated tables and tool data that are not code a person wrote.
SKIP_DIRS = {"site-packages", "encodings", "pydoc_data", "lib2to3", "__pycache__", "idlelib", "turtledemo"}
TEST_DIRS = {"test", "tests", "idle_test"}


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def list_files(root: str, with_tests: bool = False) -> list[str]:
    """Relative paths of the .py files under root, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        parts = set() if rel_dir == "." else set(rel_dir.split(os.sep))
        if parts & SKIP_DIRS or (not with_tests and parts & TEST_DIRS):
            dirnames[:] = []
            continue
        out += [os.path.normpath(os.path.join(rel_dir, f)) for f in filenames if f.endswith(".py")]
    return sorted(out)


def is_held_out(rel_path: str) -> bool:
    h = int(hashlib.sha1(rel_path.encode()).hexdigest(), 16)
    return h % 100 < HELD_OUT_PERCENT


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return f.read()


def tokenize_files(tok: Tokenizer, root: str, files: list[str]) -> tuple[np.ndarray, int]:
    ids, n_bytes = [], 0
    for rel in files:
        text = read_text(os.path.join(root, rel))
        n_bytes += len(text.encode("utf-8"))
        ids += tok.encode(text, bos=True, eos=True)
    return np.array(ids, dtype=np.uint16), n_bytes


def build(out: str, vocab_size: int = 8192, with_tests: bool = False, root: str | None = None):
    root = root or stdlib_root()
    os.makedirs(out, exist_ok=True)
    files = list_files(root, with_tests)
    splits = {"train": [f for f in files if not is_held_out(f)],
              "val": [f for f in files if is_held_out(f)]}
    t0 = time.time()
    # The tokenizer sees only training files, so held-out text is truly unseen.
    train_tokenizer([os.path.join(root, f) for f in splits["train"]],
                    os.path.join(out, "tokenizer"), vocab_size)
    tok = Tokenizer(os.path.join(out, "tokenizer.model"))
    print(f"tokenizer: {tok.vocab_size} pieces in {time.time() - t0:.0f}s")
    report = {"root": root, "with_tests": with_tests, "held_out_percent": HELD_OUT_PERCENT,
              "vocab_size": tok.vocab_size, "splits": {}}
    for name, names in splits.items():
        ids, n_bytes = tokenize_files(tok, root, names)
        ids.tofile(os.path.join(out, f"{name}.bin.tmp"))
        os.replace(os.path.join(out, f"{name}.bin.tmp"), os.path.join(out, f"{name}.bin"))
        report["splits"][name] = {"files": len(names), "bytes": n_bytes, "tokens": int(len(ids)),
                                  "paths": names}
        print(f"{name}: {len(names)} files, {n_bytes / 1e6:.2f} MB, {len(ids) / 1e6:.2f}M tokens "
              f"({n_bytes / len(ids):.2f} bytes/token)")
    with open(os.path.join(out, "corpus.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/stdlib", help="output directory")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--with-tests", action="store_true", help="also use the stdlib test suites")
    p.add_argument("--root", default=None, help="source tree to use instead of the stdlib")
    args = p.parse_args()
    if args.root and not os.path.isdir(args.root):
        raise SystemExit(f"error: --root {args.root} is not a directory")
    build(args.out, args.vocab_size, args.with_tests, args.root)


if __name__ == "__main__":
    main()
