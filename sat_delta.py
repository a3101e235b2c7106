"""Ship a fine-tune as the tensors it changed, and rebuild it on top of its base.

    python sat_delta.py make  --base models/smollm2-135m --tuned runs/sat-export --out models/smollm2-135m-sat-delta
    python sat_delta.py make  ... --rank 48     # every block tuned: ship a low-rank change
    python sat_delta.py apply --base models/smollm2-135m --delta models/smollm2-135m-sat-delta --out models/smollm2-135m-sat

SAT fine-tuning changes the blocks (all, or the top N with `train_sat.py --train-layers N`)
and the SAT's embedding row. Everything else is the base model, which users convert
themselves (convert_gguf.py), so the project ships only what changed:

  delta/model.safetensors   every changed tensor, whole, in bf16; a 2-D tensor of which
                            only some rows changed (the embedding) as those rows plus
                            their indices: NAME.rows [r, D] and NAME.row_ids [r];
                            with --rank R, a changed weight matrix W as the best rank-R
                            approximation of its change (truncated SVD), in two factors
                            NAME.delta_a [out, R] and NAME.delta_b [R, in]:
                            W = W_base + delta_a @ delta_b (the change is taken from
                            the base rounded to the tuned dtype: rounding is no change)
                            metadata "config": the config.json keys that changed
  delta/training.json       the fine-tune's report, and corpus.json, its data's split,
                            copied from the tuned directory

A tensor counts as unchanged when the tuned one equals the base one rounded to the tuned
dtype: train_sat.py exports in bf16, so a frozen float32 weight comes back rounded.
"""

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoint import atomic_write, read_config, safetensors_files, write_json
from model import CheckpointError

DELTA_FILE = "model.safetensors"
REPORTS = ("training.json", "corpus.json")  # the fine-tune's report and its data's split


def read_tensors(path: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, file in safetensors_files(path).items():
        with safe_open(file, framework="pt") as f:
            tensors[name] = f.get_tensor(name)
    return tensors


def low_rank(change: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(a [out, r], b [r, in], share of the change's squared norm kept): a @ b is the
    closest rank-r matrix to `change` (Eckart-Young: the top r singular directions)."""
    u, s, vh = torch.linalg.svd(change.float(), full_matrices=False)
    kept = float((s[:rank] ** 2).sum() / (s ** 2).sum())
    return u[:, :rank] * s[:rank], vh[:rank], kept


def make(base: str, tuned: str, out: str, max_mib: float = 32.0, rank: int | None = None) -> dict:
    """Write the delta of `tuned` over `base`; returns {name: what was kept}. With `rank`,
    a changed matrix is stored as a rank-`rank` change when that is smaller."""
    base_cfg, tuned_cfg = read_config(base).to_config(), read_config(tuned).to_config()
    a, b = read_tensors(base), read_tensors(tuned)
    if set(a) != set(b):
        raise CheckpointError(f"{base} and {tuned} hold different tensors: {sorted(set(a) ^ set(b))[:4]}")
    delta, kept = {}, {}
    for name in sorted(b):
        old, new = a[name].to(b[name].dtype), b[name]
        if old.shape != new.shape:
            raise CheckpointError(f"{name} is {list(old.shape)} in {base}, {list(new.shape)} in {tuned}")
        if torch.equal(old, new):
            continue
        rows = (old != new).flatten(1).any(1).nonzero()[:, 0] if new.dim() == 2 else None
        if rows is not None and len(rows) < new.shape[0] // 2:  # a few rows: store just those
            delta[name + ".rows"] = new[rows].to(torch.bfloat16).contiguous()
            delta[name + ".row_ids"] = rows.to(torch.int64)
            kept[name] = f"rows {rows.tolist()}"
        elif rank and new.dim() == 2 and rank * sum(new.shape) < new.numel():
            a_, b_, share = low_rank(new.float() - old.float(), rank)  # old: the base in the tuned dtype
            delta[name + ".delta_a"] = a_.to(torch.bfloat16).contiguous()
            delta[name + ".delta_b"] = b_.to(torch.bfloat16).contiguous()
            kept[name] = f"rank {rank}, {share:.0%} of the change"
        else:
            delta[name] = new.to(torch.bfloat16).contiguous()
            kept[name] = "whole"
    config = {k: v for k, v in tuned_cfg.items() if base_cfg.get(k) != v and k not in ("dtype", "torch_dtype")}
    size = sum(t.numel() * t.element_size() for t in delta.values())
    if size > max_mib * 2**20:
        raise CheckpointError(f"the delta is {size / 2**20:.1f} MiB, over the {max_mib:g} MiB cap: "
                              "train fewer blocks, or give a (lower) --rank")
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, DELTA_FILE),
                 lambda tmp: save_file(delta, tmp, metadata={"config": json.dumps(config)}))
    for name in REPORTS:
        if os.path.isfile(os.path.join(tuned, name)):
            shutil.copy(os.path.join(tuned, name), os.path.join(out, name))
    return kept


def apply(base: str, delta_dir: str, out: str):
    """base + delta -> a full checkpoint directory `out` (float32 where the base is)."""
    delta_path = os.path.join(delta_dir, DELTA_FILE)
    if not os.path.isfile(delta_path):
        raise CheckpointError(f"{delta_dir} has no {DELTA_FILE}")
    with safe_open(delta_path, framework="pt") as f:
        delta = {k: f.get_tensor(k) for k in f.keys()}
        overrides = json.loads(f.metadata()["config"])
    tensors = read_tensors(base)

    def require(fits: bool, name: str):
        if not fits:
            raise CheckpointError(f"{delta_dir}: {name} does not fit {base} (another base model?)")

    for name, t in delta.items():
        if name.endswith((".row_ids", ".delta_b")):
            continue
        if name.endswith(".delta_a"):
            target = name.removesuffix(".delta_a")
            change = t.float() @ delta[target + ".delta_b"].float()
            require(target in tensors and tensors[target].shape == change.shape, target)
            tensors[target] = (tensors[target].float() + change).to(tensors[target].dtype)
        elif name.endswith(".rows"):
            target = name.removesuffix(".rows")
            ids = delta[target + ".row_ids"]
            require(target in tensors and tensors[target].shape[1:] == t.shape[1:]
                    and int(ids.max()) < len(tensors[target]), target)
            tensors[target][ids] = t.to(tensors[target].dtype)
        else:
            require(name in tensors and tensors[name].shape == t.shape, name)
            tensors[name] = t.to(tensors[name].dtype)
    tmp = out.rstrip("/") + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.index.json", "config.json"))
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(tmp, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    write_json(os.path.join(tmp, "config.json"), {**config, **overrides})
    for name in REPORTS:
        if os.path.isfile(os.path.join(delta_dir, name)):
            shutil.copy(os.path.join(delta_dir, name), tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="write the tensors that fine-tuning changed")
    m.add_argument("--base", required=True, help="the model before fine-tuning")
    m.add_argument("--tuned", required=True, help="the fine-tuned model (train_sat.py --export)")
    m.add_argument("--out", required=True, help="directory for the delta")
    m.add_argument("--max-mib", type=float, default=32.0, help="refuse a delta larger than this (default: %(default)s)")
    m.add_argument("--rank", type=int, default=None,
                   help="store each changed weight matrix as its best rank-R change (default: whole)")
    a_ = sub.add_parser("apply", help="rebuild the fine-tuned model from its base and a delta")
    a_.add_argument("--base", required=True, help="the model the delta was made from")
    a_.add_argument("--delta", required=True, help="directory written by `make`")
    a_.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    a = p.parse_args()
    try:
        if a.command == "make":
            if a.rank is not None and a.rank < 1:
                sys.exit(f"error: --rank must be at least 1, got {a.rank}")
            kept = make(a.base, a.tuned, a.out, a.max_mib, a.rank)
            size = os.path.getsize(os.path.join(a.out, DELTA_FILE))
            print(f"wrote {a.out}/{DELTA_FILE}: {len(kept)} changed tensors, {size / 2**20:.1f} MiB")
        else:
            apply(a.base, a.delta, a.out)
            print(f"wrote {a.out}")
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
