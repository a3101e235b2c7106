"""The semantic adaptive token layout, and what SAT training learns from it.

Shared by training (train_sat.py) and the one-step fused decoder (decode_fused.py): a
window of n standard tokens y[0..n-1] followed by one group of k SATs per anchor p. SAT j
(1..k) of the group anchored at p sits at position p + j, sees the standard tokens up to p
and the SATs of its own group up to itself, and learns y[p + 1 + j]: the token j + 1 steps
after the anchor. Standard tokens never see a SAT, so their outputs are exactly those of a
plain causal forward. n = 8, anchors p = 2 and p = 5, k = 3:

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

Appending the groups after the text, rather than interleaving them, keeps the standard
part identical to plain training; the mask does the rest (SDSAT.md section 2).

The losses:
  * sat_loss, the paper's full fine-tune (--mode sat): one forward of the whole layout;
    loss = CE_sat + lambda * L_std, the frozen-embedding loss.
  * adapter_loss (--mode adapter): the base is frozen and only SAT rows change, so the
    standard tokens run once without autograd, into a KV cache, and only the SAT groups
    run with gradients, attending to that cache through the same mask.
  * lm_loss: plain next-token loss, for pretraining the demo model.

And the held-out evaluation of both kinds of training (evaluate, evaluate_adapter).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from model import Llama

IGNORE = -100  # label of positions without a target


def sat_layout(n: int, anchors: torch.Tensor, k: int):
    """Positions [B, T] and boolean mask [B, 1, T, T] for N standard tokens + |A| groups of k.

    Every token gets three numbers: the last standard index it may see (`sees_upto`), its
    group (-1 for standard tokens) and its offset j in the group (0 for standard tokens).
    Then: a column that is a standard token is visible if its index <= sees_upto of the
    row; a column that is a SAT is visible if it is in the row's group at offset <= the row's.
    """
    B, A = anchors.shape
    T, dev = n + A * k, anchors.device
    j = torch.arange(1, k + 1, device=dev).repeat(A).expand(B, -1)  # [B, A*k] offsets 1..k
    anchor = anchors.repeat_interleave(k, dim=1)  # [B, A*k] each SAT's anchor
    group = torch.arange(A, device=dev).repeat_interleave(k).expand(B, -1)
    std_idx = torch.arange(n, device=dev).expand(B, -1)
    positions = torch.cat([std_idx, anchor + j], 1)  # [B, T]
    sees_upto = torch.cat([std_idx, anchor], 1)  # [B, T]
    groups = torch.cat([torch.full((B, n), -1, device=dev), group], 1)
    offsets = torch.cat([torch.zeros(B, n, dtype=torch.long, device=dev), j], 1)
    col = torch.arange(T, device=dev)
    std_col = (col < n)[None, None, :] & (col[None, None, :] <= sees_upto[:, :, None])
    same_group = (groups[:, :, None] == groups[:, None, :]) & (groups[:, :, None] >= 0)
    sat_col = same_group & (offsets[:, None, :] <= offsets[:, :, None])
    return positions, (std_col | sat_col)[:, None]


def choose_anchors(step: int, cfg, n: int, batch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Anchors [B, A], sorted, distinct, in [cfg.anchors_from, n - 1 - k] so every SAT has a label."""
    first, last = cfg.anchors_from, n - 1 - cfg.k
    if cfg.anchors == 0 or cfg.anchors > last - first:
        return torch.arange(first, last + 1).expand(batch, -1)
    g = np.random.default_rng([cfg.seed, step, 1])
    rows = [first + np.sort(g.choice(last + 1 - first, cfg.anchors, replace=False)) for _ in range(batch * world)]
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


def lm_loss(model: Llama, window: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy of windows [B, N + 1] (pretraining)."""
    logits = model(window[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten())
    return loss, {"ce": loss.item()}


def sat_loss(model: Llama, window, anchors, cfg, sat_id: int, teacher: Llama | None):
    """CE_sat + lambda * L_std on one SAT-augmented batch; also CE per offset j.
    cfg: a train_sat.TrainConfig (k, sat_labels, std_loss, std_weight, offset_weights)."""
    n = window.shape[1] - 1
    ids, positions, mask, labels, offsets = sat_batch(window, anchors, cfg.k, sat_id)
    if cfg.sat_labels == "self":
        labels[:, n:] = greedy_continuation_labels(teacher, window, anchors, cfg.k)
    logits = model(ids, positions=positions, mask=mask[:, :, n:], causal_prefix=n).float()  # [B, T, V]
    if cfg.sat_labels == "model":  # free: the standard logits are in this very forward
        labels[:, n:] = own_labels(logits[:, :n].detach(), positions[:, n:], labels[:, n:])
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    ce = ce.view(labels.shape)
    ce_sat, info = per_offset(ce, labels != IGNORE, offsets, cfg)
    std_logits = logits[:, :n]
    if cfg.std_loss == "kl":
        with torch.no_grad():
            ref = teacher(window[:, :n]).float().log_softmax(-1)
        l_std = F.kl_div(std_logits.log_softmax(-1), ref, log_target=True, reduction="batchmean") / n
    else:
        l_std = ce[:, :n].mean()
    info.update(ce_sat=ce_sat.item(), l_std=l_std.item(), ce_std=ce[:, :n].mean().item())
    return ce_sat + cfg.std_weight * l_std, info


def offset_weights(cfg) -> list[float]:
    if not cfg.offset_weights:
        return [1.0] * cfg.k
    w = [float(x) for x in cfg.offset_weights.split(",")]
    if len(w) != cfg.k:
        raise SystemExit(f"error: --offset-weights has {len(w)} values for k={cfg.k}")
    return w


def per_offset(ce: torch.Tensor, valid: torch.Tensor, offsets: torch.Tensor, cfg) -> tuple[torch.Tensor, dict]:
    """CE_sat, the mean SAT cross-entropy over offsets j = 1..k (weighted by
    --offset-weights), and each offset's own mean, from per-token CE, validity and offsets."""
    info, terms, weights = {}, [], offset_weights(cfg)
    for j in range(1, cfg.k + 1):
        ce_j = ce[valid & (offsets == j)].mean()
        info[f"ce_sat{j}"] = ce_j.item()
        terms.append(weights[j - 1] * ce_j)
    ce_sat = sum(terms) / sum(weights)
    info["ce_sat"] = ce_sat.item()
    return ce_sat, info


def own_labels(std_logits: torch.Tensor, positions: torch.Tensor, data_labels: torch.Tensor) -> torch.Tensor:
    """SAT j of anchor p learns what the model itself predicts at standard position p + j
    (given the text up to there): the token its verification pass will check. std_logits
    [B, n, V] of the standard tokens, positions [B, S] of the SATs (p + j); IGNORE stays."""
    n = std_logits.shape[1]
    own = std_logits.argmax(-1).gather(1, positions.clamp(max=n - 1))
    return own.masked_fill(data_labels == IGNORE, IGNORE)


def adapter_forward(model: Llama, window, anchors, k: int, sat_id: int, net=None):
    """The SAT groups of windows [B, n + 1] through the adapter model: (SAT logits [B, S, V],
    data labels [B, S], the model's own logits at each SAT's target [B, S, V], offsets j
    [B, S]), S = anchors x k.

    The standard tokens y[0..n-1] run once, without autograd, into a KV cache; they see no
    SAT, so this is the frozen base. Its logits at standard position p + j are the model's
    own distribution for the token SAT j of anchor p stands for (own_labels: their argmax).
    Then only the SAT groups run (with gradients, if enabled) at positions p + j, each
    seeing the cache up to its anchor and its own group: the layout's mask, rows n and
    after. net: the model as called (a DistributedDataParallel wrapper under torchrun),
    default the model itself."""
    net = net or model
    B, n = window.shape[0], window.shape[1] - 1
    _, positions, mask, labels, offsets = sat_batch(window, anchors, k, sat_id)
    S = positions.shape[1] - n
    cache = model.new_cache(n + S, batch_size=B)
    with torch.no_grad():
        std_logits = net(window[:, :n], cache=cache)  # [B, n, V]
    at = positions[:, n:].clamp(max=n - 1)  # [B, S]: p + j (past the window: ignored labels)
    own_logits = std_logits.gather(1, at[..., None].expand(-1, -1, std_logits.shape[-1]))  # [B, S, V]
    sats = torch.full((B, S), sat_id, device=window.device)
    logits = net(sats, positions=positions[:, n:], mask=mask[:, :, n:], cache=cache)  # [B, S, V]
    return logits, labels[:, n:], own_logits, offsets[:, n:]


def soft_loss(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_model || p_SAT) per row, [..]: how far the SAT's distribution (logits) is from
    the model's own (target_logits), over the whole vocabulary. Self-distillation with the
    full distribution (Medusa-2, EAGLE) rather than its argmax: it also teaches the order
    of the runners-up, which a token tree drafts from."""
    log_p = target_logits.float().log_softmax(-1)
    log_q = logits.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def adapter_loss(model: Llama, window, anchors, cfg, sat_id: int, net=None):
    """The SAT loss on one batch for the SAT adapter (adapter.py), whose base is frozen:
    standard outputs are the base's by construction, so there is no L_std (adapter_forward).
    Per SAT: (1 - w) CE(label) + w KL(p_model || p_SAT), w = cfg.soft_labels; the label
    is the model's argmax (--sat-labels model) or the text's token (data).
    cfg: a train_sat.TrainConfig (k, sat_labels, soft_labels, offset_weights)."""
    logits, labels, own_logits, offsets = adapter_forward(model, window, anchors, cfg.k, sat_id, net)
    valid = labels != IGNORE
    if cfg.sat_labels == "model":
        labels = own_logits.argmax(-1).masked_fill(~valid, IGNORE)
    logits = logits.float()
    ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    loss = ce.view(labels.shape)
    info = {}
    if cfg.soft_labels:
        kl = soft_loss(logits, own_logits)
        loss = (1 - cfg.soft_labels) * loss + cfg.soft_labels * kl
        info["kl"] = kl[valid].mean().item()
    ce_sat, per = per_offset(loss, valid, offsets, cfg)
    info.update(per, top1=(logits.argmax(-1) == labels)[valid].float().mean().item())
    return ce_sat, info


# ----------------------------------------------------------------------------- held-out evaluation


@torch.no_grad()
def evaluate(model: Llama, data, cfg, max_tokens: int | None, sat_id=None) -> dict:
    """Held-out CE of the standard tokens (nats/token) and bits per byte, over the first
    max_tokens (None: all); with a SAT id also SAT top-1 accuracy per offset j, over at
    most cfg.eval_tokens (anchors at every 8th position). data: a trainer.TokenData."""
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
           "val_bpb": total / count * val["tokens"] / val["bytes"] / math.log(2) if val.get("bytes") else None}
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


def leading_hits(hits: torch.Tensor) -> torch.Tensor:
    """hits [G, k] (SAT j of group g agrees with the model) -> [G], the drafts greedy
    verification accepts: the agreements before the first miss."""
    return hits.long().cumprod(1).sum(1)


@torch.no_grad()
def evaluate_adapter(model: Llama, data, cfg, sat_id: int) -> dict:
    """SAT top-1 per offset j over at most cfg.eval_tokens held-out tokens (an anchor at
    every 4th position from cfg.anchors_from): against the model's own greedy choice
    ("sat_agree", what decides acceptance) and against the text ("sat_top1"); and
    "sat_accepted", the drafts greedy decoding would accept per anchor (SATs 1, 2, ... up
    to the first disagreement), averaged. The standard tokens' loss is the base's by
    construction, so it is not measured again."""
    dev = model.device
    agree, top1, seen = torch.zeros(cfg.k), torch.zeros(cfg.k), torch.zeros(cfg.k)
    accepted, groups = 0.0, 0
    for w in data.val_windows(cfg.seq_len, cfg.eval_tokens):
        n = w.shape[1] - 1
        anchors = torch.arange(cfg.anchors_from, n - cfg.k, 4, device=dev)[None]
        with torch.autocast(dev.type, torch.bfloat16, enabled=cfg.bf16):
            logits, labels, own_logits, offsets = adapter_forward(model, w.to(dev), anchors, cfg.k, sat_id)
        guess, own = logits.argmax(-1), own_logits.argmax(-1)
        for j in range(cfg.k):
            at = (offsets == j + 1) & (labels != IGNORE)
            agree[j] += (guess == own)[at].sum().item()
            top1[j] += (guess == labels)[at].sum().item()
            seen[j] += at.sum().item()
        hits = (guess == own).view(-1, cfg.k)  # anchors keep all k SATs inside the window
        accepted, groups = accepted + leading_hits(hits).sum().item(), groups + hits.shape[0]
    return {"sat_agree": (agree / seen).tolist(), "sat_top1": (top1 / seen).tolist(),
            "sat_accepted": accepted / max(groups, 1)}


def describe(ev: dict) -> str:
    """One log line for an evaluate() or evaluate_adapter() result."""
    parts = []
    if "val_loss" in ev:
        parts.append(f"val loss {ev['val_loss']:.4f}" + (f"  bpb {ev['val_bpb']:.4f}" if ev["val_bpb"] else ""))
    if "sat_agree" in ev:
        parts.append("SAT agrees with the model " + " ".join(f"{a:.2f}" for a in ev["sat_agree"])
                     + f"  accepted/anchor {ev['sat_accepted']:.2f}")
    if "sat_top1" in ev:
        parts.append("SAT top-1 " + " ".join(f"{a:.2f}" for a in ev["sat_top1"]))
    return "  ".join(parts)


# ----------------------------------------------------------------------------- what a draft tree needs

TOP_RANKS = (1, 2, 4)  # the ranks bench.py --acceptance reports hit rates at
CALIBRATION_BINS = 10  # of the SAT's top-1 probability, [0, 0.1), ..., [0.9, 1]


def draft_ranks(sat_logits: torch.Tensor, labels: torch.Tensor, cap: int = 8) -> torch.Tensor:
    """sat_logits [N, k, V], labels [N, k] (the model's own tokens) -> [N, k]: the rank of
    the model's token among SAT j's candidates (0 = its top-1), or -1 past `cap`. A tree
    whose node at depth j holds SAT j's candidate of rank r is accepted along a path of
    ranks exactly where these rows begin with that path."""
    label_logit = sat_logits.gather(-1, labels[..., None])  # [N, k, 1]
    rank = (sat_logits > label_logit).sum(-1)  # candidates scored above the model's token
    return rank.masked_fill(rank >= cap, -1)


def rank_stats(sat_logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """What a draft tree can use, from SAT logits [N, k, V] and the model's tokens [N, k]:
    per offset j, the share of anchors whose token is SAT j's rank-1, within its top 2,
    within its top 4 ("top"); and calibration of SAT 1..k's top-1 probability, binned: per
    bin its mean predicted probability, the observed hit rate and the count."""
    ranks = draft_ranks(sat_logits, labels)
    hit = (ranks >= 0)
    top = {r: ((ranks < r) & hit).float().mean(0).tolist() for r in TOP_RANKS}
    p = sat_logits.float().softmax(-1).amax(-1).flatten()  # [N * k] the top-1 candidate's probability
    right = (ranks == 0).flatten().float()
    b = (p * CALIBRATION_BINS).long().clamp(max=CALIBRATION_BINS - 1)
    bins = []
    for i in range(CALIBRATION_BINS):
        at = b == i
        if at.any():
            bins.append({"bin": [i / CALIBRATION_BINS, (i + 1) / CALIBRATION_BINS], "count": int(at.sum()),
                         "predicted": round(p[at].mean().item(), 4), "hit": round(right[at].mean().item(), 4)})
    return {"top": {str(r): [round(x, 4) for x in v] for r, v in top.items()}, "calibration": bins}
