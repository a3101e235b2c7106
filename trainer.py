"""The training machinery of train_sat.py: token windows, the learning-rate schedule,
processes (DistributedDataParallel), and checkpoints that make a killed run resumable.

Nothing here knows what trains or what the loss is: train_sat.py decides that (and
sat.py holds the SAT layout and its losses).
"""

import json
import math
import os

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoint import atomic_write, save_adapter
from machine import cpu_info, pick_device, slow_bf16_warning
from tokenizer import tokenizer_hash


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

    def batch(self, step: int, cfg, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Windows [B, seq_len + 1] for step `step`: the same on every run, and the ranks of
        a distributed run split one global batch between them. A corpus of fixed-length
        records (distill.py's: "record_tokens" in corpus.json) keeps each window inside one."""
        g = np.random.default_rng([cfg.seed, step])
        starts = self.starts(g, len(self.train), cfg.seq_len, cfg.batch_size * world)
        starts = starts[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
        return torch.from_numpy(np.stack([self.train[s:s + cfg.seq_len + 1] for s in starts]).astype(np.int64))

    def starts(self, g: np.random.Generator, length: int, seq_len: int, n: int) -> np.ndarray:
        record = self.meta.get("record_tokens")
        if not record:
            return g.integers(0, length - seq_len - 1, size=n)
        if seq_len + 1 > record:
            raise SystemExit(f"error: --seq-len {seq_len} does not fit {self.path}'s records of {record} tokens: "
                             f"use --seq-len {record - 1} or less")
        return g.integers(0, length // record, size=n) * record + g.integers(0, record - seq_len, size=n)

    def val_windows(self, seq_len: int, max_tokens: int | None):
        """Consecutive non-overlapping windows [1, seq_len + 1] of the held-out stream (of
        records: the first window of each record)."""
        record = self.meta.get("record_tokens")
        step = record or seq_len
        n = (len(self.val) - 1 - seq_len) // step + 1
        if max_tokens:
            n = min(n, max(1, max_tokens // seq_len))
        for i in range(n):
            yield torch.from_numpy(self.val[i * step:i * step + seq_len + 1].astype(np.int64))[None]

# ----------------------------------------------------------------------------- schedule


def lr_at(step: int, cfg) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------- optimiser and precision


def make_optimizer(model: torch.nn.Module, cfg, world: int = 1) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `model` (in adapter mode, the adapter). No
    weight decay on norms and vectors, and none on the embedding while SAT training (decay
    would move the frozen rows). With --zero under torchrun, each rank keeps the
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


def resolve_precision(cfg, device: torch.device, log=print):
    """--bf16 unset: bfloat16 autocast on CUDA and on a CPU with bf16 instructions, float32
    on any other CPU (its bf16 matmuls take a slow path: 20x slower here). Says which."""
    info = cpu_info() if device.type == "cpu" else None
    fast = device.type == "cuda" or (info is not None and bool(info[1]))
    if cfg.bf16 is None:
        cfg.bf16 = fast
        why = ("CUDA" if device.type == "cuda" else f"this CPU has {', '.join(info[1])}" if fast else
               f"this CPU ({info[0] if info else 'unknown'}) has no bf16 instructions; --bf16 to use it anyway")
        log(f"precision: {'bfloat16 autocast' if cfg.bf16 else 'float32'} ({why})")
    elif cfg.bf16 and (warning := slow_bf16_warning(device)):
        log(warning)


# ----------------------------------------------------------------------------- processes


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


# ----------------------------------------------------------------------------- checkpoints
#
# runs/NAME/checkpoint.safetensors holds the trainable parameters (float32), AdamW's moments and, in
# its metadata, the step, the config and the log. One file, replaced atomically: a kill at
# any moment leaves either the old checkpoint or the new one.


def param_order(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own numbering (the order of its param groups)."""
    names = {p: n for n, p in model.named_parameters()}
    return [names[p] for group in opt.param_groups for p in group["params"]]


def save_checkpoint(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict, rank: int = 0):
    """Called on every rank: a sharded (ZeRO) optimizer first gathers its state on rank 0."""
    if hasattr(opt, "consolidate_state_dict"):  # ZeroRedundancyOptimizer
        opt.consolidate_state_dict(to=0)
    if rank != 0:
        return
    # What trains, and nothing else: frozen weights come back from --init.
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    order = param_order(model, opt)
    for i, s in opt.state_dict()["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            tensors[f"adam.{key}.{order[i]}"] = s[key].detach().cpu().reshape(-1 if key == "step" else s[key].shape)
    meta = {"state": json.dumps(state)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_checkpoint(path: str, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    with safe_open(path, framework="pt") as f:
        state = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f"param.{n}" in tensors:
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


# ----------------------------------------------------------------------------- adapter snapshots


def adapter_minutes(path: str) -> float:
    """Minutes of training behind an adapter directory, from its training.json (0 if none)."""
    report = os.path.join(path, "training.json")
    if not os.path.isfile(report):
        return 0.0
    with open(report) as f:
        r = json.load(f)
    return (r.get("elapsed_before", 0.0) + r.get("elapsed", 0.0)) / 60


def take_snapshot(model, state: dict, cfg, final: bool = False):
    """Keep the adapter (float32) every --snapshot-minutes, and at the end, named by its
    minutes of training."""
    minutes = (state.get("elapsed_before", 0.0) + state["elapsed"]) / 60
    last = state.setdefault("snapshots", [])
    if last and minutes - last[-1]["minutes"] < cfg.snapshot_minutes and not final:
        return
    path = os.path.join(cfg.out, "snapshots", f"min{minutes:07.2f}")
    save_adapter(model, path, cfg.init, torch.float32, {"step": state["step"], "minutes": minutes})
    last.append({"step": state["step"], "minutes": minutes, "path": path})


def snapshot_model(cfg, path: str, device):
    """--export-snapshot: the base with a snapshot's adapter on it, and the run's report as
    it stood at that snapshot (the run's checkpoint, its log cut at the snapshot's step),
    so that train_sat.export writes it as the run's end would have."""
    from checkpoint import load_adapter, load_model
    ckpt = os.path.join(cfg.out, "checkpoint.safetensors")
    if not (os.path.isfile(ckpt) and os.path.isfile(os.path.join(path, "training.json"))):
        raise SystemExit(f"error: --export-snapshot {path} is not a snapshot of the run in --out {cfg.out}")
    with safe_open(ckpt, framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    with open(os.path.join(path, "training.json")) as f:
        at = json.load(f)
    if at["step"] > state["step"]:
        raise SystemExit(f"error: --export-snapshot {path} is from step {at['step']}, after the run's checkpoint "
                         f"(step {state['step']}): its report is gone")
    state["log"] = [row for row in state.get("log", []) if row["step"] <= at["step"]]
    state["snapshots"] = [s for s in state.get("snapshots", []) if s["step"] <= at["step"]]
    state.update(step=at["step"], elapsed=at["minutes"] * 60 - state.get("elapsed_before", 0.0), exported_from=path)
    model = load_model(cfg.init, device=device)
    load_adapter(model, path, cfg.init)
    return model, state
