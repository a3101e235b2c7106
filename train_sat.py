"""Training: semantic adaptive token (SAT) fine-tuning, and pretraining the demo model.

One loop serves every mode:

    --mode sat        SDSAT fine-tuning with the frozen-embedding loss (the default)
    --mode sat-only   only the SAT's embedding row trains: a lower bound and a contrast
    --mode pretrain   plain next-token loss, every parameter trains (builds the demo model)

    python train_sat.py --init models/tiny-code-llama --data data/stdlib-tests --out runs/sat
    python train_sat.py --device cuda ...                 # one GPU (default: --device cpu)
    torchrun --nproc_per_node 2 train_sat.py ...          # DistributedDataParallel

The loop: AdamW, linear warm-up then cosine decay, gradient clipping and accumulation,
bfloat16 autocast, optional gradient checkpointing, periodic held-out evaluation, a
progress line, and a checkpoint written atomically every --ckpt-minutes. Killing a run
and starting the same command again resumes it with the same data order: batch s is
drawn from a generator seeded by (seed, s), so it does not depend on earlier steps.

THE SAT LAYOUT (SDSAT.md section 2). A window holds N standard tokens y[0..N-1] (and
y[N], used only as a label). For each anchor p, a group of k SATs is appended after
the standard tokens. SAT j of anchor p sits at position p + j, sees the standard tokens
up to p and the SATs of its own group up to itself, and learns y[p + 1 + j]: the token
j + 1 steps after the anchor. Standard tokens never see a SAT, so their outputs are
exactly those of a plain causal forward. N = 8, anchors p = 2 and p = 5, k = 3:

    index     0  1  2  3  4  5  6  7 |  8  9 10 | 11 12 13
    token    y0 y1 y2 y3 y4 y5 y6 y7 |  S  S  S |  S  S  S
    position  0  1  2  3  4  5  6  7 |  3  4  5 |  6  7  8
    label    y1 y2 y3 y4 y5 y6 y7 y8 | y4 y5 y6 | y7 y8  -    (- : past the window)

    mask (row attends to column, x = yes)
                0 1 2 3 4 5 6 7   8 9 10  11 12 13
     0  y0      x
     1  y1      x x
     2  y2      x x x
     3  y3      x x x x
     4  y4      x x x x x
     5  y5      x x x x x x
     6  y6      x x x x x x x
     7  y7      x x x x x x x x
     8  S p=2   x x x             x
     9  S p=2   x x x             x x
    10  S p=2   x x x             x x x
    11  S p=5   x x x x x x                 x
    12  S p=5   x x x x x x                 x  x
    13  S p=5   x x x x x x                 x  x  x

THE FROZEN-EMBEDDING LOSS. loss = CE_sat + lambda * L_std. The standard tokens'
embedding rows, the final norm and the output head are frozen; the SAT's embedding row
and the transformer blocks train. L_std is cross-entropy on the data (default) or the KL
divergence to the frozen starting model (--std-loss kl). Tied embeddings: the head *is*
the embedding matrix, so its SAT row trains with the SAT embedding (only the SAT's own
logit can move that way) and every other row stays frozen.

A REAL MODEL ON A SMALL BUDGET (SDSAT.md section 11). --train-layers N trains only the
top N blocks, so the fine-tune ships as those blocks (sat_delta.py). --no-sat-row takes an
existing special token as the SAT and leaves its row alone: with every trainable weight
in the top blocks, nothing below them needs a backward pass. --sat-labels model teaches
SAT j of anchor p the model's own prediction at position p + j, which costs nothing (those
logits are in the same forward) and is exactly what verification will check:

    python train_sat.py --init models/smollm2-135m --data data/smollm2 --out runs/smol \
        --train-layers 4 --no-sat-row --sat-token-id 6 --sat-labels model --no-bf16 ...
"""

import argparse
import copy
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from model import (BASE_MODEL, CheckpointError, Llama, ModelArgs, atomic_write, init_weights, load_model,
                   pick_device, save_model, write_json)
from sat import sat_layout
from tokenizer import FILES as TOKENIZER_FILES, tokenizer_hash

IGNORE = -100  # label of positions without a target


@dataclass
class TrainConfig:
    mode: str = "sat"  # sat | sat-only | pretrain
    data: str = "data/stdlib-tests"
    out: str = "runs/sat"
    init: str | None = None  # model directory to start from (pretrain: None = random)
    # model shape, for --mode pretrain from scratch
    dim: int = 256
    n_layers: int = 8
    n_heads: int = 4
    ffn: int = 704
    tie_embeddings: bool = True
    # SAT
    k: int = 5  # SATs per anchor
    anchors: int = 32  # anchors per window; 0 = every position (dense)
    sat_token_id: int | None = None  # default: the config's sat_token_id, else append a row
    std_loss: str = "ce"  # ce | kl
    std_weight: float = 1.0  # lambda
    offset_weights: str = ""  # e.g. "1,1,1,0.5,0.5": weight of CE at SAT offset j
    sat_labels: str = "data"  # data | self (the starting model's own greedy continuation) | model (its argmax at p+j)
    train_layers: int = 0  # sat mode: train only the top N blocks (0 = all); the rest stay frozen
    sat_row: bool = True  # train the SAT's embedding row; off: an existing token's row stays as it is, and
    #                       no gradient flows below the trained blocks (a much cheaper backward pass)
    # optimisation
    seq_len: int = 512
    batch_size: int = 16  # per process
    grad_accum: int = 1
    steps: int = 1000
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = True
    grad_checkpointing: bool = False
    zero: bool = False  # shard AdamW's moments across ranks (torchrun only)
    seed: int = 1337
    # bookkeeping
    eval_every: int = 100
    eval_tokens: int = 32768
    final_eval_tokens: int = 0  # held-out tokens of the final evaluation (0 = all of them)
    log_every: int = 10
    ckpt_minutes: float = 5.0


# --help for every TrainConfig field (main() turns each field into an option), and the
# values a field can take where it is a choice.
HELP = {
    "mode": "sat: SAT fine-tuning with the frozen-embedding loss; sat-only: train only the SAT's embedding row; "
            "pretrain: plain next-token loss, every parameter trains",
    "data": "directory with train.bin, val.bin and corpus.json, made by corpus.py",
    "out": "run directory: checkpoint, report; the same command again resumes from it",
    "init": "model directory to start from (default: the demo base model for the sat modes, random weights "
            "for pretrain)",
    "dim": "hidden size, for --mode pretrain from scratch",
    "n_layers": "transformer blocks, for --mode pretrain from scratch",
    "n_heads": "attention heads, for --mode pretrain from scratch",
    "ffn": "SwiGLU intermediate size, for --mode pretrain from scratch",
    "tie_embeddings": "the output head shares the embedding matrix, for --mode pretrain from scratch",
    "k": "SATs per anchor: SAT j learns the token j + 1 steps ahead",
    "anchors": "anchors per window, each followed by k SATs; 0 = every position",
    "sat_token_id": "the SAT's id (default: the config's sat_token_id, else a new embedding row is appended)",
    "std_loss": "what keeps the standard tokens' predictions in place: ce, cross-entropy on the data; "
                "kl, KL divergence to the frozen starting model",
    "std_weight": "lambda in loss = CE_sat + lambda * L_std",
    "offset_weights": "weights of the SAT cross-entropy per offset j, e.g. 1,1,1,0.5,0.5 "
                      "(default: empty, every offset weighs 1)",
    "sat_labels": "what SAT j learns: data, the text's token j + 1 ahead; self, the starting model's own greedy "
                  "continuation; model, the model's own prediction at position p + j of the text",
    "seq_len": "tokens per training window",
    "batch_size": "windows per step, per process",
    "grad_accum": "micro-batches accumulated per optimiser step",
    "steps": "optimiser steps",
    "lr": "peak learning rate, after the warm-up",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup": "steps of linear warm-up",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "maximum gradient norm",
    "bf16": "bfloat16 autocast",
    "grad_checkpointing": "recompute activations in the backward pass: less memory, more time",
    "zero": "shard AdamW's moments across ranks (torchrun only)",
    "seed": "seed of the data order and the anchors",
    "eval_every": "steps between held-out evaluations",
    "eval_tokens": "held-out tokens per evaluation",
    "final_eval_tokens": "held-out tokens of the final evaluation (0 = all of them)",
    "train_layers": "sat mode: train only the top N transformer blocks, freeze the rest (0 = all blocks)",
    "sat_row": "train the SAT's embedding row; --no-sat-row keeps an existing token's row as it is, so no "
               "gradient flows below the trained blocks (a much cheaper backward pass)",
    "log_every": "steps between progress lines",
    "ckpt_minutes": "minutes between checkpoints",
}
CHOICES = {"mode": ["sat", "sat-only", "pretrain"], "std_loss": ["ce", "kl"], "sat_labels": ["data", "self", "model"]}
# The smallest value each number may take; 0 has a meaning where it is allowed (see HELP).
MINIMUM = {"dim": 1, "n_layers": 1, "n_heads": 1, "ffn": 1, "k": 1, "anchors": 0, "std_weight": 0,
           "train_layers": 0, "seq_len": 2, "batch_size": 1, "grad_accum": 1, "steps": 0, "min_lr": 0,
           "warmup": 0, "weight_decay": 0, "grad_clip": 0, "eval_every": 1, "eval_tokens": 1,
           "final_eval_tokens": 0, "log_every": 1, "ckpt_minutes": 0}


def check_config(cfg: "TrainConfig"):
    """One line, before anything is loaded, for a number out of its range (rather than a
    ZeroDivisionError or an empty batch many lines later)."""
    for name, least in MINIMUM.items():
        value = getattr(cfg, name)
        if value < least:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least {least}, got {value}")
    if cfg.lr <= 0:
        raise SystemExit(f"error: --lr must be above 0, got {cfg.lr}")


# ----------------------------------------------------------------------------- data


class TokenData:
    """train.bin / val.bin (uint16 token ids) and corpus.json, from corpus.py."""

    def __init__(self, path: str):
        for name in ("train.bin", "val.bin", "corpus.json"):
            if not os.path.isfile(os.path.join(path, name)):
                raise SystemExit(f"error: {path} has no {name}: run python corpus.py --out {path} --with-tests "
                                 "--tokenizer MODEL (the model you will fine-tune; none to pretrain)")
        self.train = np.memmap(os.path.join(path, "train.bin"), dtype=np.uint16, mode="r")
        self.val = np.memmap(os.path.join(path, "val.bin"), dtype=np.uint16, mode="r")
        with open(os.path.join(path, "corpus.json")) as f:
            self.meta = json.load(f)
        self.path = path

    def check_tokenizer(self, model_dir: str):
        """Refuse ids made by another tokenizer than the model's: they would train silently
        on the wrong tokens (the loss just stays high)."""
        try:
            theirs = tokenizer_hash(model_dir)
        except FileNotFoundError:
            return  # a bare checkpoint (no tokenizer file): nothing to compare with
        ours = self.meta.get("tokenizer_sha256") or tokenizer_hash(self.path)
        if ours != theirs:
            raise SystemExit(f"error: {self.path} was tokenized with another tokenizer than {model_dir}'s: "
                             f"rebuild it with python corpus.py --out {self.path} --with-tests --tokenizer {model_dir}")

    def batch(self, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Windows [B, seq_len + 1] for step `step`: the same on every run, and the ranks of
        a distributed run split one global batch between them."""
        g = np.random.default_rng([cfg.seed, step])
        starts = g.integers(0, len(self.train) - cfg.seq_len - 1, size=cfg.batch_size * world)
        starts = starts[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        return torch.from_numpy(np.stack([self.train[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))

    def val_windows(self, seq_len: int, max_tokens: int | None):
        """Consecutive non-overlapping windows [1, seq_len + 1] of the held-out stream."""
        n = (len(self.val) - 1) // seq_len
        if max_tokens:
            n = min(n, max(1, max_tokens // seq_len))
        for i in range(n):
            yield torch.from_numpy(self.val[i * seq_len:(i + 1) * seq_len + 1].astype(np.int64))[None]


# ----------------------------------------------------------------------------- the SAT layout


def choose_anchors(step: int, cfg: TrainConfig, n: int, batch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Anchors [B, A], sorted, distinct, in [0, n - 1 - k] so every SAT has a label."""
    last = n - 1 - cfg.k
    if cfg.anchors == 0 or cfg.anchors > last:
        return torch.arange(last + 1).expand(batch, -1)
    g = np.random.default_rng([cfg.seed, step, 1])
    rows = [np.sort(g.choice(last + 1, cfg.anchors, replace=False)) for _ in range(batch * world)]
    return torch.from_numpy(np.stack(rows[rank * batch:(rank + 1) * batch]))


def sat_batch(window: torch.Tensor, anchors: torch.Tensor, k: int, sat_id: int):
    """Input ids, positions, mask, labels and offsets for windows [B, N + 1]."""
    B, n = window.shape[0], window.shape[1] - 1
    A = anchors.shape[1]
    positions, mask = sat_layout(n, anchors, k)
    j = torch.arange(1, k + 1, device=window.device).repeat(A).expand(B, -1)
    target = anchors.repeat_interleave(k, dim=1) + 1 + j  # y index of SAT (p, j)'s label
    sat_labels = window.gather(1, target.clamp(max=n)).masked_fill(target > n, IGNORE)
    ids = torch.cat([window[:, :n], torch.full_like(sat_labels, sat_id)], 1)
    labels = torch.cat([window[:, 1:], sat_labels], 1)
    offsets = torch.cat([torch.zeros_like(window[:, :n]), j], 1)
    return ids, positions, mask, labels, offsets


@torch.no_grad()
def greedy_continuation_labels(teacher: Llama, window: torch.Tensor, anchors: torch.Tensor, k: int):
    """SAT labels from the starting model's own greedy continuation (self-distillation).

    For anchor p the model would generate g1, g2, ... after y[0..p]; SAT j should predict
    g_{j+1}. The SAT layout doubles as a branch layout: put g1..g_m in the group's slots
    instead of SATs and one forward pass continues every branch at once (k + 1 passes).
    """
    B, n = window.shape[0], window.shape[1] - 1
    A = anchors.shape[1]
    positions, mask = sat_layout(n, anchors, k)
    logits = teacher(window[:, :n])
    g = [logits.gather(1, anchors[:, :, None].expand(-1, -1, logits.shape[-1])).argmax(-1)]  # g1 [B, A]
    branch = torch.zeros(B, A, k, dtype=torch.long, device=window.device)
    for m in range(1, k + 1):
        branch[:, :, m - 1] = g[-1]
        ids = torch.cat([window[:, :n], branch.reshape(B, A * k)], 1)
        out = teacher(ids, positions=positions, mask=mask[:, :, n:], causal_prefix=n)[:, n:].reshape(B, A, k, -1)
        g.append(out[:, :, m - 1].argmax(-1))  # the token after g_m
    return torch.stack(g[1:], -1).reshape(B, A * k)  # SAT j's label: g_{j+1}


# ----------------------------------------------------------------------------- losses


def lm_loss(model: Llama, window: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy of windows [B, N + 1] (pretraining)."""
    logits = model(window[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten())
    return loss, {"ce": loss.item()}


def sat_loss(model: Llama, window, anchors, cfg: TrainConfig, sat_id: int, teacher: Llama | None):
    """CE_sat + lambda * L_std on one SAT-augmented batch; also CE per offset j."""
    n = window.shape[1] - 1
    ids, positions, mask, labels, offsets = sat_batch(window, anchors, cfg.k, sat_id)
    if cfg.sat_labels == "self":
        labels[:, n:] = greedy_continuation_labels(teacher, window, anchors, cfg.k)
    logits = model(ids, positions=positions, mask=mask[:, :, n:], causal_prefix=n).float()  # [B, T, V]
    if cfg.sat_labels == "model":
        # SAT j of anchor p learns what the model itself predicts at standard position p + j
        # (given the true text up to there): the token its verification pass will check.
        # Free: those logits are in this very forward. Positions of SATs are p + j.
        own = logits[:, :n].detach().argmax(-1).gather(1, positions[:, n:].clamp(max=n - 1))
        labels[:, n:] = own.masked_fill(labels[:, n:] == IGNORE, IGNORE)
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view(labels.shape)
    valid = labels != IGNORE
    info, sat_terms, weights = {}, [], offset_weights(cfg)
    for j in range(1, cfg.k + 1):
        sel = valid & (offsets == j)
        ce_j = ce[sel].mean()
        info[f"ce_sat{j}"] = ce_j.item()
        sat_terms.append(weights[j - 1] * ce_j)
    ce_sat = sum(sat_terms) / sum(weights)
    std_logits = logits[:, :n]
    if cfg.std_loss == "kl":
        with torch.no_grad():
            ref = teacher(window[:, :n]).float().log_softmax(-1)
        l_std = F.kl_div(std_logits.log_softmax(-1), ref, log_target=True, reduction="batchmean") / n
    else:
        l_std = ce[:, :n].mean()
    info.update(ce_sat=ce_sat.item(), l_std=l_std.item(), ce_std=ce[:, :n].mean().item())
    return ce_sat + cfg.std_weight * l_std, info


def offset_weights(cfg: TrainConfig) -> list[float]:
    if not cfg.offset_weights:
        return [1.0] * cfg.k
    w = [float(x) for x in cfg.offset_weights.split(",")]
    if len(w) != cfg.k:
        raise SystemExit(f"error: --offset-weights has {len(w)} values for k={cfg.k}")
    return w


@torch.no_grad()
def evaluate(model: Llama, data: TokenData, cfg: TrainConfig, max_tokens: int | None, sat_id=None) -> dict:
    """Held-out CE of the standard tokens (nats/token) and bits per byte, over the first
    max_tokens (None: all); with a SAT id also SAT top-1 accuracy per offset j, over at
    most cfg.eval_tokens (anchors at every 8th position)."""
    was_training = model.training
    model.eval()
    dev = model.device
    autocast = torch.autocast(dev.type, torch.bfloat16, enabled=cfg.bf16)
    total, count = 0.0, 0
    for w in data.val_windows(cfg.seq_len, max_tokens):
        with autocast:
            logits = model(w[:, :-1].to(dev))
        total += F.cross_entropy(logits[0].float(), w[0, 1:].to(dev), reduction="sum").item()
        count += w.shape[1] - 1
    val = data.meta["splits"]["val"]
    out = {"val_loss": total / count, "val_tokens": count,
           "val_bpb": total / count * val["tokens"] / val["bytes"] / math.log(2)}
    if sat_id is not None:
        hits, seen = torch.zeros(cfg.k), torch.zeros(cfg.k)
        for w in data.val_windows(cfg.seq_len, cfg.eval_tokens):
            n = w.shape[1] - 1
            anchors = torch.arange(0, n - cfg.k, 8)[None]
            ids, positions, mask, labels, offsets = sat_batch(w, anchors, cfg.k, sat_id)
            with autocast:
                logits = model(ids.to(dev), positions=positions.to(dev), mask=mask[:, :, n:].to(dev),
                               causal_prefix=n)
            right = (logits[0, n:].argmax(-1).cpu() == labels[0, n:]).float()
            hits += right.view(-1, cfg.k).sum(0)
            seen += right.numel() // cfg.k
        out["sat_top1"] = (hits / seen).tolist()
    model.train(was_training)
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- checkpoints
#
# runs/NAME/checkpoint.safetensors holds the float32 parameters, AdamW's moments and, in
# its metadata, the step, the config and the log. One file, replaced atomically: a kill at
# any moment leaves either the old checkpoint or the new one.


def param_order(model: Llama, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own numbering (the order of its param groups)."""
    names = {p: n for n, p in model.named_parameters()}
    return [names[p] for group in opt.param_groups for p in group["params"]]


def save_checkpoint(path: str, model: Llama, opt: torch.optim.Optimizer, state: dict, rank: int = 0):
    """Called on every rank: a sharded (ZeRO) optimizer first gathers its state on rank 0."""
    if hasattr(opt, "consolidate_state_dict"):  # ZeroRedundancyOptimizer
        opt.consolidate_state_dict(to=0)
    if rank != 0:
        return
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    order = param_order(model, opt)
    for i, s in opt.state_dict()["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{key}.{order[i]}"] = s[key].detach().cpu().reshape(-1 if key == "step" else s[key].shape)
    meta = {"state": json.dumps(state), "model_args": json.dumps(model.args.to_config())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: str, model: Llama, opt: torch.optim.Optimizer) -> dict:
    with safe_open(path, framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[f"param.{n}"])
    params = dict(model.named_parameters())
    order = param_order(model, opt)
    moments = {i: {"step": tensors[f"adam.step.{n}"].reshape(()),
                   "exp_avg": tensors[f"adam.exp_avg.{n}"].to(params[n].device),
                   "exp_avg_sq": tensors[f"adam.exp_avg_sq.{n}"].to(params[n].device)}
               for i, n in enumerate(order) if f"adam.step.{n}" in tensors}
    groups, i = [], 0
    for group in opt.param_groups:
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": list(range(i, i + len(group["params"])))})
        i += len(group["params"])
    opt.load_state_dict({"state": moments, "param_groups": groups})
    return state


# ----------------------------------------------------------------------------- what trains


def build_model(cfg: TrainConfig, vocab_size: int, special: dict, device) -> Llama:
    if cfg.init:
        return load_model(cfg.init, device=device, dtype=torch.float32).train()
    if cfg.mode != "pretrain":
        raise SystemExit("error: --mode sat needs --init: the model to fine-tune")
    args = ModelArgs(hidden_size=cfg.dim, intermediate_size=cfg.ffn, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, vocab_size=vocab_size,
                     max_position_embeddings=cfg.seq_len, tie_word_embeddings=cfg.tie_embeddings,
                     rope_theta=10000.0, rms_norm_eps=1e-5, **special)
    torch.manual_seed(cfg.seed)
    model = Llama(args)
    init_weights(model)
    return model.to(device).train()


def add_sat_row(model: Llama) -> int:
    """Append one vocabulary row for the SAT (embedding = mean of the others). Returns its id."""
    emb = model.embed_tokens.weight.data
    new = torch.cat([emb, emb.mean(0, keepdim=True)])
    model.embed_tokens = torch.nn.Embedding.from_pretrained(new, freeze=False)
    if model.args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    else:
        head = model.lm_head.weight.data
        model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0] + 1, bias=False, device=head.device)
        model.lm_head.weight.data = torch.cat([head, head.mean(0, keepdim=True)])
    model.args.vocab_size += 1
    return model.args.vocab_size - 1


def setup_sat(model: Llama, cfg: TrainConfig) -> int:
    """Choose the SAT id, freeze what must not train; returns the SAT id."""
    sat_id = cfg.sat_token_id if cfg.sat_token_id is not None else model.args.sat_token_id
    if sat_id is None:
        sat_id = add_sat_row(model)
        print(f"no spare SAT id given: appended row {sat_id} to the vocabulary")
    elif not 0 <= sat_id < model.args.vocab_size:
        raise SystemExit(f"error: SAT id {sat_id} is outside the vocabulary (0..{model.args.vocab_size - 1})")
    model.args.sat_token_id, model.args.sat_k = sat_id, cfg.k
    if cfg.train_layers > model.args.num_hidden_layers:
        raise SystemExit(f"error: --train-layers {cfg.train_layers}, but the model has "
                         f"{model.args.num_hidden_layers} blocks (0 = all of them)")
    first = model.args.num_hidden_layers - cfg.train_layers if cfg.train_layers else 0
    for name, p in model.named_parameters():
        block = name.startswith("layers.") and int(name.split(".")[1]) >= first
        p.requires_grad = (name == "embed_tokens.weight" and cfg.sat_row) or (block and cfg.mode == "sat")
    return sat_id


def keep_frozen_rows(model: Llama, sat_id: int):
    """Zero the gradient of every embedding row but the SAT's (called after backward).

    With zero gradients from the first step on, AdamW's moments for those rows stay zero
    and so do their updates; the embedding is excluded from weight decay (make_optimizer)."""
    grad = model.embed_tokens.weight.grad
    if grad is not None:
        sat_row = grad[sat_id].clone()
        grad.zero_()
        grad[sat_id] = sat_row


def make_optimizer(model: Llama, cfg: TrainConfig, world: int = 1) -> torch.optim.Optimizer:
    """AdamW. No weight decay on norms, and none on the embedding while SAT training
    (decay would move the frozen rows). With --zero under torchrun, each rank keeps the
    AdamW moments of its share of the parameters only (ZeRO stage 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        frozen_rows = cfg.mode != "pretrain" and name == "embed_tokens.weight"
        (decay if p.dim() >= 2 and not frozen_rows else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.zero and world > 1:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, lr=cfg.lr, betas=(0.9, 0.95),
                                       eps=1e-8)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def special_ids(data_dir: str) -> dict:
    from tokenizer import SAT_PIECE, Tokenizer
    tok = Tokenizer(data_dir)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "sat_token_id": tok.piece_id(SAT_PIECE)}


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- the loop


def distributed(name: str = "cpu") -> tuple[int, int, torch.device]:
    """(rank, world size, device) for --device NAME; starts the process group under torchrun
    (one GPU per process on cuda, gloo on cpu)."""
    device = pick_device(name)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if name == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return rank, world, device


def train(cfg: TrainConfig, device=None, rank: int = 0, world: int = 1):
    check_config(cfg)
    if cfg.mode not in ("sat", "sat-only", "pretrain"):
        raise SystemExit(f"error: --mode {cfg.mode}: use sat, sat-only or pretrain")
    if cfg.std_loss not in ("ce", "kl") or cfg.sat_labels not in ("data", "self", "model"):
        raise SystemExit("error: --std-loss is ce or kl; --sat-labels is data, self or model")
    device = device or torch.device("cpu")
    log = print if rank == 0 else (lambda *a, **k: None)
    data = TokenData(cfg.data)
    if cfg.init:
        data.check_tokenizer(cfg.init)
    ckpt_path = os.path.join(cfg.out, "checkpoint.safetensors")
    model = build_model(cfg, data.meta["vocab_size"], special_ids(cfg.data), device)
    model.grad_checkpointing = cfg.grad_checkpointing
    sat_id, teacher = None, None
    if cfg.mode != "pretrain":
        if cfg.std_loss == "kl" or cfg.sat_labels == "self":
            teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the frozen start
            if cfg.bf16:  # it only runs under bf16 autocast: half the memory, same matmuls
                teacher = teacher.to(torch.bfloat16)
        sat_id = setup_sat(model, cfg)
    opt = make_optimizer(model, cfg, world)
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if p.requires_grad and (cfg.mode == "pretrain" or n != "embed_tokens.weight"))
    trainable += model.args.hidden_size if cfg.mode != "pretrain" and cfg.sat_row else 0  # the SAT row
    state = {"step": 0, "tokens": 0, "elapsed": 0.0, "log": [], "config": asdict(cfg)}
    if os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path, model, opt)
        changed = {k: (v, state["config"].get(k)) for k, v in asdict(cfg).items() if state["config"].get(k) != v}
        if changed and state["step"] < cfg.steps:  # training goes on, under the new settings
            log("note: settings changed since the checkpoint: "
                + ", ".join(f"{k} {old!r} -> {new!r}" for k, (new, old) in changed.items()))
            state["config"] = asdict(cfg)
        log(f"resumed from {ckpt_path} at step {state['step']}")
    elif rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        state["start"] = evaluate(model, data, cfg, cfg.eval_tokens, sat_id) if cfg.mode != "pretrain" else {}
    # gradient_as_bucket_view: DDP's all-reduce buckets are the .grad tensors, not a copy.
    ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True) if world > 1 else model
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * world
    log(f"{cfg.mode}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({trainable / 1e6:.2f}M trainable), {tokens_per_step} tokens/step x {cfg.steps} steps, "
        f"{world} process(es)" + (f", SAT id {sat_id}, k={cfg.k}" if sat_id is not None else ""))

    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16)
    t_start = t_ckpt = time.time()
    elapsed0, step0 = state["elapsed"], state["step"]
    while state["step"] < cfg.steps:
        step = state["step"]
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        info_sum = {}
        for micro in range(cfg.grad_accum):
            s = step * cfg.grad_accum + micro
            window = data.batch(s, cfg, rank, world)
            with autocast:
                if cfg.mode == "pretrain":
                    loss, info = lm_loss(ddp, window.to(device))
                else:
                    anchors = choose_anchors(s, cfg, cfg.seq_len, cfg.batch_size, rank, world)
                    loss, info = sat_loss(ddp, window.to(device), anchors.to(device), cfg, sat_id, teacher)
            (loss / cfg.grad_accum).backward()
            for key, v in info.items():
                info_sum[key] = info_sum.get(key, 0.0) + v / cfg.grad_accum
        if sat_id is not None:
            keep_frozen_rows(model, sat_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens_per_step
        now = time.time()
        state["elapsed"] = elapsed0 + now - t_start
        done = state["step"]
        if done % cfg.log_every == 0 or done == cfg.steps:
            rate = (done - step0) * tokens_per_step / (now - t_start)
            eta = (cfg.steps - done) * tokens_per_step / rate
            detail = "  ".join(f"{k} {v:.3f}" for k, v in info_sum.items())
            log(f"step {done}/{cfg.steps}  {detail}  lr {lr:.2e}  {rate:.0f} tok/s  "
                f"elapsed {fmt_time(state['elapsed'])}  eta {fmt_time(eta)}", flush=True)
        # Every rank takes part in a checkpoint (ZeRO gathers); rank 0's clock decides when.
        due = torch.tensor([now - t_ckpt > cfg.ckpt_minutes * 60 or done == cfg.steps], device=device)
        if world > 1:
            dist.broadcast(due, 0)
        if due.item():
            save_checkpoint(ckpt_path, model, opt, state, rank)  # before the long final evaluation
            t_ckpt = time.time()
        if rank == 0 and (done % cfg.eval_every == 0 or done == cfg.steps):
            final = cfg.final_eval_tokens or None
            ev = evaluate(model, data, cfg, final if done == cfg.steps else cfg.eval_tokens, sat_id)
            state["log"].append({"step": done, **info_sum, **ev, "elapsed": state["elapsed"]})
            log(f"eval step {done}: val loss {ev['val_loss']:.4f}  bpb {ev['val_bpb']:.4f}"
                + (f"  SAT top-1 {' '.join(f'{a:.2f}' for a in ev['sat_top1'])}" if "sat_top1" in ev else ""),
                flush=True)
        if done == cfg.steps:
            save_checkpoint(ckpt_path, model, opt, state, rank)  # again, now with the final evaluation
    return model, state


def export(model: Llama, state: dict, cfg: TrainConfig, path: str):
    """The trained model in Hugging Face layout (bf16), with its tokenizer and reports."""
    save_model(model, path, dtype=torch.bfloat16)
    for name in TOKENIZER_FILES + ("tokenizer_config.json", "corpus.json"):
        if os.path.isfile(os.path.join(cfg.data, name)):
            shutil.copy(os.path.join(cfg.data, name), os.path.join(path, name))
    report = dict(state)
    start_report = os.path.join(cfg.init, "training.json") if cfg.init else ""
    if os.path.isfile(start_report):
        with open(start_report) as f:
            start = json.load(f)
        if start.get("config", {}).get("mode", "pretrain") != "pretrain":  # a fine-tune of a fine-tune
            report["phases"] = start.get("phases", [start]) + [state]  # every phase's report, in order
    write_json(os.path.join(path, "training.json"), report)
    print(f"exported to {path}")


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in TrainConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        text = HELP[f.name] if "default" in HELP[f.name] else HELP[f.name] + " (default: %(default)s)"
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = f.type if f.type in (int, float) else int if "int" in str(f.type) else str
            p.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name), help=text)
    p.add_argument("--export", default=None, help="after training, save the model (bf16) here (default: no export)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    a = vars(p.parse_args())
    export_to, threads, device_name = a.pop("export"), a.pop("threads"), a.pop("device")
    if threads is not None and threads < 1:
        sys.exit(f"error: --threads must be at least 1, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**a)
    if cfg.mode != "pretrain" and not cfg.init:
        cfg.init = BASE_MODEL
        print(f"fine-tuning the demo base model {BASE_MODEL} (--init to choose another)")
    rank, world, device = distributed(device_name)
    try:
        model, state = train(cfg, device, rank, world)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if export_to and rank == 0:
        export(model, state, cfg, export_to)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT. The last checkpoint stays.
        sys.exit(130)
