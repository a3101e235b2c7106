"""A self-contained Llama in plain PyTorch, with an explicit KV cache.

It reads Hugging Face Llama / CodeLlama checkpoints (config.json + safetensors) directly:
the parameter names below are the Hugging Face names, so loading is a strict name-for-name
copy. Nothing here knows about SDSAT; the two things SDSAT needs from a model are

  * explicit position ids and an explicit attention mask in `forward`, because semantic
    adaptive tokens (SATs) sit at positions and see prefixes that a plain causal layout
    cannot express (SDSAT.md sections 2 and 4), and
  * a KV cache whose length is set explicitly (`KVCache.truncate`), so that drafts and
    SATs can be fed, looked at, and thrown away.

Layout of one forward pass (B = batch, T = new tokens, L = tokens already cached):

  tokens [B, T] -> embed [B, T, D] -> n x (attention + SwiGLU MLP, pre-RMSNorm)
                -> RMSNorm -> lm_head -> logits [B, T, V]
"""

import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_BLOCK = 64  # attention of at most this many new queries over a cache: attend_few

# The demo models this repository ships: the SAT-tuned one once it exists, else the base.
MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
BASE_MODEL = os.path.join(MODELS_DIR, "tiny-code-llama")  # the demo model before SAT tuning
SAT_MODEL = os.path.join(MODELS_DIR, "tiny-code-llama-sat")
DEFAULT_MODEL = SAT_MODEL if os.path.isdir(SAT_MODEL) else BASE_MODEL


class CheckpointError(ValueError):
    """A checkpoint directory or config that cannot be used; the message says why."""


# ----------------------------------------------------------------------------- config


@dataclass
class ModelArgs:
    """Model shape, named exactly as in a Hugging Face Llama config.json."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_key_value_heads: int | None = None  # None: same as attention heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    sat_token_id: int | None = None  # written by this project: the SAT id (SDSAT.md 1)
    sat_k: int | None = None  # written by train_sat.py: the k it was trained with
    extra: dict = field(default_factory=dict, repr=False)  # other keys, kept on save

    REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "vocab_size")

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")

    @property
    def stop_ids(self) -> list[int]:
        """End-of-sequence ids (configs store one id or a list)."""
        eos = self.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    @classmethod
    def from_config(cls, cfg: dict, where: str = "config.json") -> "ModelArgs":
        cfg = dict(cfg)
        for key in cls.REQUIRED:
            if key not in cfg:
                raise CheckpointError(f"{where} has no {key}")
        # transformers 5.x nests rope_theta; CodeLlama's own configs keep it at the top.
        rope = cfg.pop("rope_parameters", None) or {}
        if "rope_theta" not in cfg and "rope_theta" in rope:
            cfg["rope_theta"] = rope["rope_theta"]
        rope_type = rope.get("rope_type", "default")
        scaling = cfg.pop("rope_scaling", None)
        if rope_type != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
            raise CheckpointError(f"{where}: RoPE scaling ({scaling or rope}) is not supported")
        for flag in ("attention_bias", "mlp_bias"):
            if cfg.get(flag):
                raise CheckpointError(f"{where}: {flag}=true is not supported (plain Llama has no biases)")
        if cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (need silu)")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in cfg.items() if k in names}
        extra = {k: v for k, v in cfg.items() if k not in names}
        return cls(**known, extra=extra)

    def to_config(self) -> dict:
        cfg = {**self.extra, **{k: v for k, v in asdict(self).items() if k != "extra"}}
        cfg.setdefault("architectures", ["LlamaForCausalLM"])
        cfg.setdefault("model_type", "llama")
        cfg.setdefault("hidden_act", "silu")
        optional_ids = ("bos_token_id", "eos_token_id", "pad_token_id")  # null means "none"
        return {k: v for k, v in cfg.items() if v is not None or k in optional_ids}


# ----------------------------------------------------------------------------- cache


class KVCache:
    """Preallocated keys and values for every layer, plus one integer `length`.

    K and V of layer i live in `k[i]`, `v[i]`: [B, n_kv_heads, max_len, head_dim]. Sized by
    the *key/value* heads, which GQA models have fewer of than attention heads. Slots
    [0, length) are valid; a forward pass of T tokens writes slots [length, length + T)
    and then advances `length` by T.

    Truncation only moves `length` back. Stale slots are overwritten by the next write:

        before truncate(5):  | p p p p c S S S |    length = 8 (prompt, cur, 3 SATs)
        after  truncate(5):  | p p p p c . . . |    length = 5 (the SATs are gone)
    """

    def __init__(self, args: ModelArgs, max_len: int, batch_size: int = 1,
                 device=None, dtype=torch.float32):
        shape = (batch_size, args.num_key_value_heads, max_len, args.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(args.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0

    def check_room(self, n_new: int):
        if self.length + n_new > self.max_len:
            raise ValueError(f"KV cache full: {self.length} cached + {n_new} new tokens "
                             f"exceeds max_len {self.max_len} (pass a larger max_len)")

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor | None = None):
        """Store new K, V [B, n_kv, T, hd]; return the keys and values to attend over.

        Eager (slots None): at slots [length, length+T); returns the valid ones [.., length+T, ..].
        Static (slots, a tensor [T]): at those slots; returns the whole cache [.., max_len, ..],
        the same shape at every step, for a mask to hide what is not in use (StaticModel).
        """
        if slots is not None:
            self.k[layer].index_copy_(2, slots, k)
            self.v[layer].index_copy_(2, slots, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def truncate(self, n: int):
        """Keep the first n slots. Everything after them is forgotten (not erased)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {n}")
        self.length = n

    def compact(self, keep: list[int]):
        """Gather the slots `keep` (ascending) into contiguous slots starting at keep[0].

        Used after tree verification, where the accepted path is scattered over the block:

            before compact([5, 7, 10]):  | p p p p p r a b c d e f |   length = 12
            after:                       | p p p p p r b e . . . . |   length = 8

        Slots before keep[0] are untouched; the new length is keep[0] + len(keep).
        """
        keep = [int(i) for i in keep]  # checked on the host: no device sync
        if not keep or keep[0] < 0 or keep[-1] >= self.length or any(b <= a for a, b in zip(keep, keep[1:])):
            raise ValueError(f"compact needs ascending slots inside [0, {self.length}), got {keep}")
        first = keep[0]
        idx = torch.tensor(keep, device=self.k[0].device)
        for cache in (self.k, self.v):
            for layer in range(len(cache)):
                cache[layer][:, :, first:first + len(idx)] = cache[layer].index_select(2, idx)
        self.length = first + len(idx)


# ----------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in float32 (as the reference does), then scale in the model's dtype.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    """cos, sin [B, 1, T, head_dim] for explicit integer positions [B, T].

    Rotate-half convention (Hugging Face layout): dimension i is paired with i + head_dim/2,
    and both rotate by angle position * theta^(-2i/head_dim).
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                            dtype=torch.int64).float() / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, hd/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, hd]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate x [B, H, T, hd] by the angles in cos/sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


# Linear layers of a block that read the same input, whose weights packing.pack_weights stacks into
# one matrix (attribute "qkv"), so a pass makes one product of them. (Stacking gate and up
# too measured slower here: oneDNN's bf16 product of the 3072 x 576 matrix took longer than
# its two halves. The SATs' pass gained most: one product of the three changes, not three.)
STACKED = {"qkv": ("q_proj", "k_proj", "v_proj")}


def linears(module: nn.Module, group: str, x: torch.Tensor, sat=None) -> list[torch.Tensor]:
    """The outputs of the linear layers STACKED[group] of module for the same x: one
    product of their stacked weights, split, where pack_weights stacked them; else one
    product each. (With an adapter, its changes are stacked the same way: adapter.py.)"""
    names = STACKED[group]
    if not hasattr(module, group):
        return [linear(module, name, x, sat) for name in names]
    return linear(module, group, x, sat).split([getattr(module, name).weight.shape[0] for name in names], -1)


def linear(module: nn.Module, name: str, x: torch.Tensor, sat=None) -> torch.Tensor:
    """module.<name>(x), a linear layer of a block; with sat = (the block's low-rank
    changes, the SAT rows), the SAT adapter's change is added at the SAT rows only
    (adapter.py). Every other row is the base layer's output, exactly. The SAT rows are an
    int n, the last n tokens of every sequence (the change is computed for those alone), or
    a mask [B, T, 1], True at SAT tokens (computed for every row, then chosen)."""
    y = getattr(module, name)(x)
    if sat is None:
        return y
    changes, rows = sat
    if isinstance(rows, int):  # added in place: a fresh output, which backward does not read
        y[:, -rows:] += changes[name](x[:, -rows:])
        return y
    return torch.where(rows, y + changes[name](x).to(y.dtype), y)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.hd, args.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, slots=None, prefix: int = 0, sat=None):
        B, T, _ = x.shape
        q, k, v = linears(self, "qkv", x, sat)
        q = q.view(B, T, self.n_heads, self.hd).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v, slots)  # [B, Hkv, L + T or max_len, hd]
        if prefix:  # the prefix attends only within itself, exactly as a plain forward would
            head = self.attend(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], "causal")
            out = torch.cat([head, self.attend(q[:, :, prefix:], k, v, mask)], dim=2)
        else:
            out = self.attend(q, k, v, mask)
        return linear(self, "o_proj", out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd), sat)

    def attend(self, q, k, v, mask):
        """mask: None (every query sees every key), "causal" (the plain triangle), or a tensor.
        A few queries over a cache (decoding: one token, or a speculative block) take
        attend_few; a prompt or a training window takes SDPA."""
        if not isinstance(mask, str) and q.shape[2] <= SHORT_BLOCK:
            return attend_few(q, k, v, mask)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if isinstance(mask, str) else mask,
                                              is_causal=isinstance(mask, str), enable_gqa=self.n_kv != self.n_heads)


def attend_few(q, k, v, mask):
    """Attention of a few queries [B, H, T, hd] over keys and values [B, Hkv, N, hd]: two
    plain matrix products and a softmax, in float64, the result in q's dtype.

    Why not SDPA: here a query's output does not depend on the queries beside it, nor on
    masked keys after its own (on this CPU; tests/test_bf16_exact.py). SDPA's CPU kernel
    computes a row differently in a block of 1 or of 6. So a speculative pass of 1 + k
    tokens computes each row as a one-token pass would, and in bf16 greedy speculative
    text equals greedy AR (the linear layers already are batch-invariant on this CPU).
    Why float64: a tree's row skips its siblings' keys, zeros in the middle of its sums
    that shift how they group; float64 makes that difference far too small to survive
    rounding to bf16 or float32. The products are tiny: a pass costs 0.7 ms (1 new token)
    to 2.6 ms (6) more than with SDPA (bf16, 128 cached tokens, quiet).

    Query heads that share a key/value head (GQA: head h reads key head h // g) are
    stacked as rows of one product: [B, Hkv, g * T, hd] @ [B, Hkv, hd, N]."""
    B, H, T, hd = q.shape
    kv_heads = k.shape[1]
    g = H // kv_heads
    rows = q.double().reshape(B, kv_heads, g * T, hd)
    scores = (rows @ k.double().transpose(-1, -2)).view(B, kv_heads, g, T, -1) * hd ** -0.5
    if mask is not None:  # [B or 1, 1, T, N] -> [B or 1, 1, 1, T, N]: the same for each head
        mask = mask.unsqueeze(2)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.double()
    weights = scores.softmax(-1).view(B, kv_heads, g * T, -1)
    return (weights @ v.double()).view(B, H, T, hd).to(q.dtype)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x, sat=None):
        h = F.silu(linear(self, "gate_proj", x, sat)) * linear(self, "up_proj", x, sat)  # SwiGLU
        return linear(self, "down_proj", h, sat)


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, mask, cache, layer, slots=None, prefix=0, sat=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, slots, prefix, sat)
        return x + self.mlp(self.post_attention_layernorm(x), sat)


# ----------------------------------------------------------------------------- model


class Llama(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.num_hidden_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.grad_checkpointing = False  # training: recompute block activations in backward
        self.adapter = None  # an adapter.SATAdapter, acting only at SAT tokens, or None

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: KVCache | None = None,
                causal_prefix: int = 0) -> torch.Tensor:
        """Logits [B, T, V] for tokens [B, T].

        positions: [B, T] or [T] integer position ids; default: the T slots after the cache.
        mask: which keys each new token may see, over all L + T keys (L = cache.length):
              boolean [B or 1, 1, T, L + T] (True = may attend) or additive float (0 or
              -inf). Default: causal, i.e. every cached token plus the new block's triangle.
        cache: if given, the new K/V are written at [L, L + T) and cache.length grows by T.
        causal_prefix: P > 0 says the first P tokens form a plain causal sequence that sees
              nothing after it (SAT training: the standard tokens). They get their own
              causal attention, bit-identical to a forward of them alone; `mask` then
              covers only the other rows: [B or 1, 1, T - P, T]. Not with a cache.
        """
        B, T = tokens.shape
        L = cache.length if cache is not None else 0
        if cache is not None:
            cache.check_room(T)
            if causal_prefix:
                raise ValueError("causal_prefix is for uncached (training) forwards")
        if positions is None:
            positions = torch.arange(L, L + T, device=tokens.device)
        positions = positions.expand(B, T) if positions.dim() == 1 else positions
        if mask is None:
            # One new token sees everything; a block with no cache is the plain triangle
            # (SDPA's fast causal path); a block after a cache needs an explicit mask.
            mask = None if T == 1 else "causal" if L == 0 else causal_mask(L, T, tokens.device)
        elif mask.dtype != torch.bool:
            mask = mask.to(self.embed_tokens.weight.dtype)
        logits = self.network(tokens, positions, mask, cache, causal_prefix=causal_prefix,
                              adapt=self.has_sat(tokens))
        if cache is not None:
            cache.length = L + T
        return logits

    def has_sat(self, tokens: torch.Tensor) -> bool:
        """Whether the SAT adapter must run: there is one and a SAT is among the tokens.
        (A host sync on a GPU; a forward with no SAT then runs exactly the base.)"""
        return self.adapter is not None and bool((tokens == self.adapter.sat_id).any())

    def network(self, tokens, positions, mask, cache=None, slots=None, causal_prefix: int = 0,
                adapt: bool = False):
        """The layers themselves: logits [B, T, V], for the eager forward above and the
        compiled static path alike (compiled.py). positions [B, T]; mask as in forward.

        slots [T] (a tensor) selects the static path: the new K/V go to those cache slots,
        attention spans the whole preallocated cache (mask [B or 1, 1, T, max_len] must
        hide the slots not in use), and cache.length is neither read nor moved.
        adapt: run the SAT adapter at the SAT tokens (has_sat says when it must).
        """
        x = self.embed_tokens(tokens)  # [B, T, D]
        rows = None
        if adapt:  # SAT rows take the adapter's own embedding
            is_sat = (tokens == self.adapter.sat_id)[..., None]  # [B, T, 1]
            x = torch.where(is_sat, self.adapter.embed.to(x.dtype), x)
            rows = sat_tail(is_sat[..., 0])
            rows = is_sat if rows is None else rows  # a mask where SATs are not one tail
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            sat = (self.adapter.changes(i), rows) if adapt else None
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, i, slots, causal_prefix, sat,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, slots, causal_prefix, sat)
        return self.lm_head(self.norm(x))

    @property
    def device(self):
        return self.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.embed_tokens.weight.dtype

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        return KVCache(self.args, max_len, batch_size, self.device, self.dtype)


def sat_tail(is_sat: torch.Tensor) -> int | None:
    """n if the SATs of is_sat [B, T] are the last n tokens of every row (every SDSAT block
    puts them there: a draft pass [cur, S * k], a training group after the text), else
    None. (One host sync; linear() then changes those n rows alone.)"""
    n = int(is_sat[0].sum())
    return n if n and bool(is_sat[:, -n:].all()) and int(is_sat.sum()) == n * is_sat.shape[0] else None


def causal_mask(n_cached: int, n_new: int, device=None) -> torch.Tensor:
    """Boolean [1, 1, T, L + T]: new token t sees all L cached keys and new keys <= t."""
    keys = torch.arange(n_cached + n_new, device=device)
    queries = torch.arange(n_new, device=device) + n_cached
    return (keys[None, :] <= queries[:, None])[None, None]


def init_weights(model: Llama, std: float = 0.02):
    """Random initialisation for training from scratch (GPT-2 style, scaled residuals)."""
    for name, p in model.named_parameters():
        if p.dim() == 1:
            nn.init.ones_(p)
        else:
            scale = 1 / math.sqrt(2 * model.args.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1
            nn.init.normal_(p, std=std * scale)
