r"""Training: SAT fine-tuning (full, or as an adapter on a frozen base), and pretraining
the demo model.

One loop serves every mode:

    --mode sat        the paper's fine-tune: blocks and the SAT's row train (the default)
    --mode adapter    the base stays frozen; only a SAT adapter trains (adapter.py), which
                      only SATs see: the base's own outputs never change
    --mode sat-only   only the SAT's embedding row trains: a lower bound and a contrast
    --mode pretrain   plain next-token loss, every parameter trains (builds the demo model)

    python train_sat.py --init models/tiny-code-llama --data data/stdlib-tests --out runs/sat
    python train_sat.py --device cuda ...                 # one GPU (default: --device cpu)
    torchrun --nproc_per_node 2 train_sat.py ...          # DistributedDataParallel

SmolLM2-135M's SAT adapter (models/smollm2-135m-sat): 150 minutes on a 2-core CPU, on the
model's own greedy text (distill.py); the README gives the whole recipe:

    python train_sat.py --mode adapter --init models/smollm2-135m --data data/smollm2-distill \
        --out runs/smol-adapter --sat-token-id 6 --k 5 --rank 32 --anchors 32 --seq-len 255 \
        --batch-size 1 --sat-labels model --lr 2e-3 --min-lr 2e-4 --warmup 20 --weight-decay 0 \
        --steps 6000 --max-minutes 150 --snapshot-minutes 10 --threads 2 --export models/smollm2-135m-sat

The loop: AdamW, linear warm-up then cosine decay, gradient clipping and accumulation,
bfloat16 autocast where the hardware has it (CUDA, or a CPU with bf16 instructions;
float32 elsewhere unless --bf16 asks), optional gradient checkpointing, periodic held-out
evaluation, a progress line, and a checkpoint written atomically every --ckpt-minutes.
Killing a run and starting the same command again resumes it with the same data order:
batch s is drawn from a generator seeded by (seed, s), so it does not depend on earlier
steps. The SAT layout and the losses are in sat.py; the machinery in trainer.py.

What each mode freezes and learns, and why: SDSAT.md sections 2 (--mode sat) and 12.
"""

import argparse
import copy
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

if __name__ == "__main__":  # Ctrl-C while torch is still loading: exit quietly, status 130
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

import torch
import torch.distributed as dist

from adapter import grow_rank, new_adapter
from checkpoint import load_adapter, load_model, save_adapter, save_model, write_json
from model import BASE_MODEL, CheckpointError, Llama, ModelArgs, init_weights
from sat import adapter_loss, choose_anchors, describe, evaluate, evaluate_adapter, lm_loss, sat_loss
from tokenizer import FILES as TOKENIZER_FILES
from trainer import (TokenData, adapter_minutes, distributed, fmt_time, load_checkpoint, lr_at, make_optimizer,
                     resolve_precision, save_checkpoint, snapshot_model, take_snapshot)


@dataclass
class TrainConfig:
    mode: str = "sat"  # sat | adapter | sat-only | pretrain
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
    anchors_from: int = 0  # first position an anchor may take (distill.py data: --prompt-tokens - 1)
    sat_token_id: int | None = None  # default: the config's sat_token_id, else append a row
    std_loss: str = "ce"  # ce | kl
    std_weight: float = 1.0  # lambda
    offset_weights: str = ""  # e.g. "1,1,1,0.5,0.5": weight of CE at SAT offset j
    sat_labels: str = "data"  # data | self (the starting model's own greedy continuation) | model (its argmax at p+j)
    soft_labels: float = 0.0  # adapter mode: weight w of KL(p_model || p_SAT) beside (1 - w) CE(label)
    train_layers: int = 0  # sat mode: train only the top N blocks (0 = all); the rest stay frozen
    sat_row: bool = True  # train the SAT's embedding row; off: an existing token's row stays as it is, and
    #                       no gradient flows below the trained blocks (a much cheaper backward pass)
    rank: int = 32  # adapter mode: rank of each linear layer's change
    init_adapter: str | None = None  # adapter mode: start from this adapter directory's weights
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
    bf16: bool | None = None  # None: on CUDA and on CPUs with bf16 instructions, else float32
    grad_checkpointing: bool = False
    zero: bool = False  # shard AdamW's moments across ranks (torchrun only)
    seed: int = 1337
    # bookkeeping
    eval_every: int = 100
    eval_tokens: int = 32768
    final_eval_tokens: int = 0  # held-out tokens of the final evaluation (0 = all of them)
    log_every: int = 10
    ckpt_minutes: float = 5.0
    snapshot_minutes: float = 0.0  # adapter mode: keep the adapter every N minutes (the learning curve)
    max_minutes: float = 0.0  # stop after this many minutes of training (0 = when --steps are done)


# --help for every TrainConfig field (main() turns each into an option); a choice's values.
HELP = {
    "mode": "sat: SAT fine-tuning with the frozen-embedding loss; adapter: a SAT adapter on a frozen base; "
            "sat-only: train only the SAT's embedding row; pretrain: plain next-token loss, every parameter trains",
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
    "anchors_from": "first window position an anchor may take; with distill.py records, its --prompt-tokens "
                    "- 1 puts every anchor where the model's own text begins (default: 0)",
    "sat_token_id": "the SAT's id (default: the config's sat_token_id, else a new embedding row is appended)",
    "std_loss": "what keeps the standard tokens' predictions in place: ce, cross-entropy on the data; "
                "kl, KL divergence to the frozen starting model",
    "std_weight": "lambda in loss = CE_sat + lambda * L_std",
    "offset_weights": "weights of the SAT cross-entropy per offset j, e.g. 1,1,1,0.5,0.5 "
                      "(default: empty, every offset weighs 1)",
    "sat_labels": "what SAT j learns: data, the text's token j + 1 ahead; self, the starting model's own greedy "
                  "continuation; model, the model's own prediction at position p + j of the text",
    "soft_labels": "adapter mode: weight w of the soft loss, KL from the model's own distribution at the SAT's "
                   "target position to the SAT's; the loss is (1 - w) CE(label) + w KL (0: hard labels only)",
    "seq_len": "tokens per training window",
    "batch_size": "windows per step, per process",
    "grad_accum": "micro-batches accumulated per optimiser step",
    "steps": "optimiser steps",
    "lr": "peak learning rate, after the warm-up",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup": "steps of linear warm-up",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "maximum gradient norm",
    "bf16": "bfloat16 autocast (default: on with CUDA or a CPU with bf16 instructions, else float32)",
    "rank": "adapter mode: rank of the low-rank change of every linear layer",
    "init_adapter": "adapter mode: start from this adapter directory's weights, e.g. the shipped one when the "
                    "run directory is gone (default: a new adapter)",
    "max_minutes": "stop after this many minutes of training, as if --steps were done (0 = no limit)",
    "snapshot_minutes": "adapter mode: save the adapter every N minutes of training into OUT/snapshots, for "
                        "a learning curve; 0 = never",
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
CHOICES = {"mode": ["sat", "adapter", "sat-only", "pretrain"], "std_loss": ["ce", "kl"], "sat_labels": ["data", "self", "model"]}
# The smallest value each number may take; 0 has a meaning where it is allowed (see HELP).
MINIMUM = {"dim": 1, "n_layers": 1, "n_heads": 1, "ffn": 1, "k": 1, "anchors": 0, "anchors_from": 0, "std_weight": 0,
           "train_layers": 0, "seq_len": 2, "batch_size": 1, "grad_accum": 1, "steps": 0, "min_lr": 0,
           "warmup": 0, "weight_decay": 0, "grad_clip": 0, "eval_every": 1, "eval_tokens": 1,
           "final_eval_tokens": 0, "log_every": 1, "ckpt_minutes": 0, "rank": 1, "snapshot_minutes": 0, "max_minutes": 0}


def check_config(cfg: "TrainConfig"):
    """One line, before anything is loaded, for a number out of its range (rather than a
    ZeroDivisionError or an empty batch many lines later)."""
    for name, least in MINIMUM.items():
        value = getattr(cfg, name)
        if value < least:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least {least}, got {value}")
    if cfg.lr <= 0:
        raise SystemExit(f"error: --lr must be above 0, got {cfg.lr}")
    if not 0 <= cfg.soft_labels <= 1:
        raise SystemExit(f"error: --soft-labels must be between 0 and 1, got {cfg.soft_labels}")
    if cfg.soft_labels and cfg.mode != "adapter":
        raise SystemExit("error: --soft-labels is for --mode adapter")
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise SystemExit(f"error: --{name.replace('_', '-')} {getattr(cfg, name)}: use {', '.join(allowed)}")
    if cfg.anchors_from > cfg.seq_len - 1 - cfg.k:
        raise SystemExit(f"error: --anchors-from {cfg.anchors_from} leaves no anchor whose {cfg.k} SATs fit a "
                         f"window of {cfg.seq_len}: use {cfg.seq_len - 1 - cfg.k} or less")


# ----------------------------------------------------------------------------- the modes
#
# Each mode in one place: what it loads, what trains, its loss and its evaluation. The loop
# in train() below then reads the same for every mode.


def load_init(cfg: TrainConfig, device, dtype=torch.float32) -> Llama:
    if not cfg.init:
        raise SystemExit(f"error: --mode {cfg.mode} needs --init: the model to fine-tune")
    return load_model(cfg.init, device=device, dtype=dtype).train()


@dataclass
class Mode:
    model: Llama
    trained: torch.nn.Module  # whose parameters train: the model, or its adapter
    trainable: int  # parameters that train
    loss: Callable  # (net, window [B, N + 1], batch number s) -> (loss, info); net: the model as called (DDP)
    evaluate: Callable  # (tokens: held-out tokens, None = all) -> dict
    sat_id: int | None = None
    after_backward: Callable = lambda: None
    snapshots: bool = False  # keep the adapter every --snapshot-minutes (the learning curve)


def pretrain_mode(cfg: TrainConfig, data: TokenData, device, rank: int, world: int) -> Mode:
    """Plain next-token loss; every parameter of a new (or --init) model trains."""
    if cfg.init:
        model = load_init(cfg, device)
    else:
        args = ModelArgs(hidden_size=cfg.dim, intermediate_size=cfg.ffn, num_hidden_layers=cfg.n_layers,
                         num_attention_heads=cfg.n_heads, vocab_size=data.meta["vocab_size"],
                         max_position_embeddings=cfg.seq_len, tie_word_embeddings=cfg.tie_embeddings,
                         rope_theta=10000.0, rms_norm_eps=1e-5, **special_ids(cfg.data))
        torch.manual_seed(cfg.seed)
        model = Llama(args)
        init_weights(model)
        model = model.to(device).train()
    return Mode(model, model, sum(p.numel() for p in model.parameters()),
                loss=lambda net, window, s: lm_loss(net, window),
                evaluate=lambda tokens: evaluate(model, data, cfg, tokens))


def sat_mode(cfg: TrainConfig, data: TokenData, device, rank: int, world: int) -> Mode:
    """--mode sat (blocks and the SAT's embedding row) and sat-only (the row alone): the
    frozen-embedding loss, CE_sat + lambda * L_std (sat.sat_loss)."""
    model = load_init(cfg, device)
    teacher = None
    if cfg.std_loss == "kl" or cfg.sat_labels == "self":
        teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the frozen start
        if cfg.bf16:  # it only runs under bf16 autocast: half the memory, same matmuls
            teacher = teacher.to(torch.bfloat16)
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
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n != "embed_tokens.weight")

    def loss(net, window, s):
        anchors = choose_anchors(s, cfg, cfg.seq_len, cfg.batch_size, rank, world).to(device)
        return sat_loss(net, window, anchors, cfg, sat_id, teacher)
    return Mode(model, model, trainable + (model.args.hidden_size if cfg.sat_row else 0), loss,
                evaluate=lambda tokens: evaluate(model, data, cfg, tokens, sat_id), sat_id=sat_id,
                after_backward=lambda: keep_frozen_rows(model, sat_id))


def adapter_mode(cfg: TrainConfig, data: TokenData, device, rank: int, world: int) -> Mode:
    """The base, frozen (in bf16 under bf16 autocast: half the memory, the same products),
    and a SAT adapter that trains (float32): a new one, or --init-adapter's."""
    model = load_init(cfg, device, torch.bfloat16 if cfg.bf16 else torch.float32)
    sat_id = cfg.sat_token_id if cfg.sat_token_id is not None else model.args.sat_token_id
    if sat_id is None:
        raise SystemExit("error: --mode adapter needs --sat-token-id: an id of the vocabulary the model never "
                         "writes (a spare special token); the adapter gives it an embedding of its own")
    if cfg.sat_labels == "self":
        raise SystemExit("error: --mode adapter learns from --sat-labels data or model (for the model's own "
                         "greedy text, train on a corpus written by distill.py)")
    model.requires_grad_(False)
    if cfg.init_adapter:
        adapter = load_adapter(model, cfg.init_adapter, cfg.init, torch.float32)
        if adapter.sat_id != sat_id or adapter.rank > cfg.rank:
            raise SystemExit(f"error: --init-adapter {cfg.init_adapter} has rank {adapter.rank} and SAT id "
                             f"{adapter.sat_id}, not --rank {cfg.rank} (or less) and SAT id {sat_id}")
        grow_rank(adapter, cfg.rank, seed=cfg.seed)  # a larger --rank starts from the same outputs
        adapter.sat_k = cfg.k
    else:
        adapter = new_adapter(model, cfg.rank, sat_id, cfg.k, seed=cfg.seed, dtype=torch.float32)
    model.args.sat_k = cfg.k
    adapter.requires_grad_(True)

    def loss(net, window, s):
        anchors = choose_anchors(s, cfg, cfg.seq_len, cfg.batch_size, rank, world).to(device)
        return adapter_loss(model, window, anchors, cfg, sat_id, net)
    return Mode(model, adapter, sum(p.numel() for p in adapter.parameters()), loss,
                evaluate=lambda tokens: evaluate_adapter(model, data, cfg, sat_id), sat_id=sat_id, snapshots=True)


MODES = {"pretrain": pretrain_mode, "sat": sat_mode, "sat-only": sat_mode, "adapter": adapter_mode}


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


def keep_frozen_rows(model: Llama, sat_id: int):
    """Zero the gradient of every embedding row but the SAT's (called after backward).

    With zero gradients from the first step on, AdamW's moments for those rows stay zero
    and so do their updates; the embedding is excluded from weight decay (make_optimizer)."""
    grad = model.embed_tokens.weight.grad
    if grad is not None:
        sat_row = grad[sat_id].clone()
        grad.zero_()
        grad[sat_id] = sat_row


def special_ids(data_dir: str) -> dict:
    from tokenizer import SAT_PIECE, Tokenizer
    tok = Tokenizer(data_dir)
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "sat_token_id": tok.piece_id(SAT_PIECE)}


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, device=None, rank: int = 0, world: int = 1):
    check_config(cfg)
    device = device or torch.device("cpu")
    log = print if rank == 0 else (lambda *a, **k: None)
    resolve_precision(cfg, device, log)
    data = TokenData(cfg.data)
    if cfg.init:
        data.check_tokenizer(cfg.init)
    ckpt_path = os.path.join(cfg.out, "checkpoint.safetensors")
    mode = MODES[cfg.mode](cfg, data, device, rank, world)
    model = mode.model
    model.grad_checkpointing = cfg.grad_checkpointing
    opt = make_optimizer(mode.trained, cfg, world)
    state = {"step": 0, "tokens": 0, "elapsed": 0.0, "log": [], "config": asdict(cfg)}
    if os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path, mode.trained, opt)
        changed = {k: (v, state["config"].get(k)) for k, v in asdict(cfg).items() if state["config"].get(k) != v}
        if changed and state["step"] < cfg.steps:  # training goes on, under the new settings
            log("note: settings changed since the checkpoint: "
                + ", ".join(f"{k} {old!r} -> {new!r}" for k, (new, old) in changed.items()))
            state["config"] = asdict(cfg)
        log(f"resumed from {ckpt_path} at step {state['step']}")
    elif rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        state["start"] = mode.evaluate(cfg.eval_tokens)
        if cfg.init_adapter:  # the learning curve's clock goes on from the adapter's own training
            state["elapsed_before"] = adapter_minutes(cfg.init_adapter) * 60
    # gradient_as_bucket_view: DDP's all-reduce buckets are the .grad tensors, not a copy.
    ddp = torch.nn.parallel.DistributedDataParallel(model, gradient_as_bucket_view=True) if world > 1 else model
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len * world
    log(f"{cfg.mode}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters "
        f"({mode.trainable / 1e6:.2f}M trainable), {tokens_per_step} tokens/step x {cfg.steps} steps, "
        f"{world} process(es)" + (f", SAT id {mode.sat_id}, k={cfg.k}" if mode.sat_id is not None else ""))

    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.bf16)
    t_start = t_ckpt = time.time()
    elapsed0, step0 = state["elapsed"], state["step"]
    last = cfg.steps  # the final step: --steps, or the one at which --max-minutes ran out
    if cfg.max_minutes and state["elapsed"] >= cfg.max_minutes * 60:
        last = state["step"]
    while state["step"] < last:
        step = state["step"]
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        info_sum = {}
        for micro in range(cfg.grad_accum):
            s = step * cfg.grad_accum + micro
            with autocast:
                loss, info = mode.loss(ddp, data.batch(s, cfg, rank, world).to(device), s)
            (loss / cfg.grad_accum).backward()
            for key, v in info.items():
                info_sum[key] = info_sum.get(key, 0.0) + v / cfg.grad_accum
        mode.after_backward()
        torch.nn.utils.clip_grad_norm_(mode.trained.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state["step"] += 1
        state["tokens"] += tokens_per_step
        now = time.time()
        state["elapsed"] = elapsed0 + now - t_start
        done = state["step"]
        if cfg.max_minutes and state["elapsed"] >= cfg.max_minutes * 60:
            last = done
        if done % cfg.log_every == 0 or done == last:
            rate = (done - step0) * tokens_per_step / (now - t_start)
            eta = (cfg.steps - done) * tokens_per_step / rate
            detail = "  ".join(f"{k} {v:.3f}" for k, v in info_sum.items())
            log(f"step {done}/{cfg.steps}  {detail}  lr {lr:.2e}  {rate:.0f} tok/s  "
                f"elapsed {fmt_time(state['elapsed'])}  eta {fmt_time(eta)}", flush=True)
        # Every rank takes part in a checkpoint (ZeRO gathers); rank 0's clock decides when.
        due = torch.tensor([now - t_ckpt > cfg.ckpt_minutes * 60 or done == last], device=device)
        if world > 1:
            dist.broadcast(due, 0)
        if due.item():
            save_checkpoint(ckpt_path, mode.trained, opt, state, rank)  # before the long final evaluation
            t_ckpt = time.time()
        if rank == 0 and mode.snapshots and cfg.snapshot_minutes:
            take_snapshot(model, state, cfg, final=done == last)
        if rank == 0 and (done % cfg.eval_every == 0 or done == last):
            ev = mode.evaluate((cfg.final_eval_tokens or None) if done == last else cfg.eval_tokens)
            state["log"].append({"step": done, **info_sum, **ev, "elapsed": state["elapsed"]})
            log(f"eval step {done}: {describe(ev)}", flush=True)
        if done == last:
            save_checkpoint(ckpt_path, mode.trained, opt, state, rank)  # again, now with the final evaluation
    return model, state


def export(model: Llama, state: dict, cfg: TrainConfig, path: str):
    """The trained model in Hugging Face layout (bf16), with its tokenizer and reports; in
    adapter mode the adapter alone (bf16), naming its base. A run that went on from an
    earlier fine-tune (--init, or --init-adapter) keeps every phase's report, in order."""
    report = dict(state)
    start = cfg.init_adapter if cfg.mode == "adapter" else cfg.init
    if start and os.path.isfile(os.path.join(start, "training.json")):
        with open(os.path.join(start, "training.json")) as f:
            earlier = json.load(f)
        if earlier.get("config", {}).get("mode", "pretrain") != "pretrain":  # a fine-tune of a fine-tune
            report["phases"] = earlier.get("phases", [earlier]) + [state]
    if cfg.mode == "adapter":
        save_adapter(model, path, cfg.init, torch.bfloat16, report)
        print(f"exported the adapter to {path} (its base: {cfg.init})")
        return
    save_model(model, path, dtype=torch.bfloat16)
    for name in TOKENIZER_FILES + ("tokenizer_config.json", "corpus.json"):
        if os.path.isfile(os.path.join(cfg.data, name)):
            shutil.copy(os.path.join(cfg.data, name), os.path.join(path, name))
    write_json(os.path.join(path, "training.json"), report)
    print(f"exported to {path}")


def main():
    signal.signal(signal.SIGINT, signal.default_int_handler)  # loaded: Ctrl-C is KeyboardInterrupt again
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in TrainConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        text = HELP[f.name] if "default" in HELP[f.name] else HELP[f.name] + " (default: %(default)s)"
        if f.type in (bool, bool | None):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = f.type if f.type in (int, float) else int if "int" in str(f.type) else str
            p.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name), help=text)
    p.add_argument("--export", default=None, help="after training, save the model (bf16) here; in adapter mode "
                                                   "the adapter alone (default: no export)")
    p.add_argument("--export-snapshot", default=None, help="instead of training, export this snapshot of the --out "
                                                            "run to --export, with its reports (default: none)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    a = vars(p.parse_args())
    export_to, threads, device_name = a.pop("export"), a.pop("threads"), a.pop("device")
    snapshot = a.pop("export_snapshot")
    if snapshot and not export_to:
        sys.exit("error: --export-snapshot needs --export, the directory to write")
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
        model, state = snapshot_model(cfg, snapshot, device) if snapshot else train(cfg, device, rank, world)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if export_to and rank == 0:
        export(model, state, cfg, export_to)
    if world > 1:
        dist.barrier()  # no rank tears down while another still talks (gloo aborts)
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: no traceback; 130 = 128 + SIGINT. The last checkpoint stays.
        sys.exit(130)
