"""Training: pretraining the demo model, and (next) semantic adaptive token fine-tuning.

One loop serves every mode:

    --mode pretrain   plain next-token loss, all parameters train (builds the demo model)

    python corpus.py --out data/stdlib
    python train_sat.py --mode pretrain --data data/stdlib --out runs/base --steps 6000

The loop: AdamW, linear warm-up then cosine decay, gradient clipping, bfloat16 autocast
(on CPU too), periodic held-out evaluation, a progress line, and a checkpoint written
atomically every --ckpt-minutes. Killing the run and starting the same command again
resumes from the checkpoint with the same data order: batch s is drawn from a generator
seeded by (seed, s), so it does not depend on what happened before step s.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from model import CheckpointError, Llama, ModelArgs, atomic_write, init_weights, load_model, save_model


@dataclass
class TrainConfig:
    mode: str = "pretrain"
    data: str = "data/stdlib"
    out: str = "runs/base"
    init: str | None = None  # model directory to start from (None: random init)
    # model shape for --mode pretrain from scratch
    dim: int = 320
    n_layers: int = 8
    n_heads: int = 5
    ffn: int = 864
    tie_embeddings: bool = True
    # optimisation
    seq_len: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    steps: int = 6000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    bf16: bool = True
    seed: int = 1337
    # bookkeeping
    eval_every: int = 250
    eval_tokens: int = 65536
    log_every: int = 10
    ckpt_minutes: float = 5.0


# ----------------------------------------------------------------------------- data


class TokenData:
    """train.bin / val.bin from corpus.py, memory-mapped."""

    def __init__(self, path: str):
        for name in ("train.bin", "val.bin"):
            if not os.path.isfile(os.path.join(path, name)):
                raise SystemExit(f"error: {path} has no {name}: run python corpus.py --out {path}")
        self.train = np.memmap(os.path.join(path, "train.bin"), dtype=np.uint16, mode="r")
        self.val = np.memmap(os.path.join(path, "val.bin"), dtype=np.uint16, mode="r")
        with open(os.path.join(path, "corpus.json")) as f:
            self.meta = json.load(f)

    def batch(self, step: int, cfg: TrainConfig, rank: int = 0, world: int = 1):
        """Random windows [B, seq_len + 1] for step `step`: the same on every run."""
        g = np.random.default_rng([cfg.seed, step])
        starts = g.integers(0, len(self.train) - cfg.seq_len - 1, size=cfg.batch_size * world)
        starts = starts[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        return torch.from_numpy(np.stack([self.train[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))

    def val_windows(self, seq_len: int, max_tokens: int | None):
        """Consecutive non-overlapping windows of the held-out stream, from the start."""
        n = (len(self.val) - 1) // seq_len
        if max_tokens:
            n = min(n, max(1, max_tokens // seq_len))
        for i in range(n):
            yield torch.from_numpy(self.val[i * seq_len:(i + 1) * seq_len + 1].astype(np.int64))[None]


# ----------------------------------------------------------------------------- loss


def lm_loss(model: Llama, tokens: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of tokens [B, T + 1]."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: Llama, data: TokenData, cfg: TrainConfig, max_tokens: int | None) -> dict:
    """Held-out cross-entropy (nats/token) and bits per byte over the first max_tokens."""
    model.eval()
    total, count = 0.0, 0
    for w in data.val_windows(cfg.seq_len, max_tokens):
        with torch.autocast("cpu", torch.bfloat16, enabled=cfg.bf16 and w.device.type == "cpu"):
            logits = model(w[:, :-1].to(model.device))
        total += F.cross_entropy(logits.flatten(0, 1).float(), w[:, 1:].flatten().to(model.device),
                                 reduction="sum").item()
        count += w.shape[1] - 1
    model.train()
    val = data.meta["splits"]["val"]
    ce = total / count
    return {"val_loss": ce, "val_bpb": ce * val["tokens"] / val["bytes"] / math.log(2), "val_tokens": count}


# ----------------------------------------------------------------------------- schedule


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


def save_checkpoint(path: str, model: Llama, opt: torch.optim.Optimizer, state: dict):
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters()}
    names = {p: n for n, p in model.named_parameters()}
    for p, s in opt.state.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{key}.{names[p]}"] = s[key].detach().cpu().reshape(-1 if key == "step" else s[key].shape)
    meta = {"state": json.dumps(state), "model_args": json.dumps(model.args.to_config())}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: str, model: Llama, opt: torch.optim.Optimizer) -> dict:
    with safe_open(path, framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[f"param.{n}"])
    for n, p in model.named_parameters():
        if f"adam.step.{n}" in tensors:
            opt.state[p] = {"step": tensors[f"adam.step.{n}"].reshape(()),
                            "exp_avg": tensors[f"adam.exp_avg.{n}"].to(p.device),
                            "exp_avg_sq": tensors[f"adam.exp_avg_sq.{n}"].to(p.device)}
    return state


# ----------------------------------------------------------------------------- setup


def build_model(cfg: TrainConfig, vocab_size: int, special: dict) -> Llama:
    if cfg.init:
        return load_model(cfg.init, dtype=torch.float32).train()
    args = ModelArgs(hidden_size=cfg.dim, intermediate_size=cfg.ffn, num_hidden_layers=cfg.n_layers,
                     num_attention_heads=cfg.n_heads, vocab_size=vocab_size,
                     max_position_embeddings=cfg.seq_len, tie_word_embeddings=cfg.tie_embeddings,
                     rope_theta=10000.0, rms_norm_eps=1e-5, **special)
    torch.manual_seed(cfg.seed)
    model = Llama(args)
    init_weights(model)
    return model.train()


def make_optimizer(model: Llama, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def special_ids(data_dir: str) -> dict:
    from tokenizer import SAT_PIECE, Tokenizer
    tok = Tokenizer(os.path.join(data_dir, "tokenizer.model"))
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
            "sat_token_id": tok.piece_id(SAT_PIECE)}


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig):
    data = TokenData(cfg.data)
    os.makedirs(cfg.out, exist_ok=True)
    ckpt_path = os.path.join(cfg.out, "checkpoint.safetensors")
    model = build_model(cfg, data.meta["vocab_size"], special_ids(cfg.data))
    opt = make_optimizer(model, cfg)
    n_params = sum(p.numel() for p in model.parameters())
    state = {"step": 0, "tokens": 0, "elapsed": 0.0, "log": [], "config": asdict(cfg)}
    if os.path.isfile(ckpt_path):
        state = load_checkpoint(ckpt_path, model, opt)
        if state["config"]["steps"] != cfg.steps or state["config"]["mode"] != cfg.mode:
            print(f"note: resuming a run started with steps={state['config']['steps']}; now {cfg.steps}")
        state["config"] = asdict(cfg)
        print(f"resumed from {ckpt_path} at step {state['step']}")
    print(f"{cfg.mode}: {n_params / 1e6:.2f}M parameters, {cfg.batch_size * cfg.grad_accum * cfg.seq_len} "
          f"tokens/step, {cfg.steps} steps, {len(data.train) / 1e6:.2f}M training tokens")

    t_start, t_ckpt = time.time(), time.time()
    elapsed0, step0 = state["elapsed"], state["step"]
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    while state["step"] < cfg.steps:
        step = state["step"]
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            tokens = data.batch(step * cfg.grad_accum + micro, cfg)
            with torch.autocast("cpu", torch.bfloat16, enabled=cfg.bf16):
                loss = lm_loss(model, tokens)
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item() / cfg.grad_accum
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
            print(f"step {done}/{cfg.steps}  loss {loss_sum:.4f}  lr {lr:.2e}  {rate:.0f} tok/s  "
                  f"elapsed {fmt_time(state['elapsed'])}  eta {fmt_time(eta)}", flush=True)
        if done % cfg.eval_every == 0 or done == cfg.steps:
            ev = evaluate(model, data, cfg, None if done == cfg.steps else cfg.eval_tokens)
            state["log"].append({"step": done, "train_loss": loss_sum, **ev, "elapsed": state["elapsed"]})
            print(f"eval step {done}: val loss {ev['val_loss']:.4f}  bpb {ev['val_bpb']:.4f}", flush=True)
        if now - t_ckpt > cfg.ckpt_minutes * 60 or done == cfg.steps:
            save_checkpoint(ckpt_path, model, opt, state)
            t_ckpt = time.time()
    return model, state


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in TrainConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(flag, type=f.type if f.type in (int, float) else str, default=f.default)
    p.add_argument("--export", default=None, help="after training, save the model (bf16) here")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = vars(p.parse_args())
    export, threads = a.pop("export"), a.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**a)
    try:
        model, state = train(cfg)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if export:
        save_model(model, export, dtype=torch.bfloat16)
        shutil.copy(os.path.join(cfg.data, "tokenizer.model"), os.path.join(export, "tokenizer.model"))
        with open(os.path.join(export, "training.json"), "w") as f:
            json.dump({k: v for k, v in state.items()}, f, indent=1)
        print(f"exported to {export}")


if __name__ == "__main__":
    main()
