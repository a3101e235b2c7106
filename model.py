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

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

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


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv, self.hd = args.num_attention_heads, args.num_key_value_heads, args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.hd, args.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int, slots=None, prefix: int = 0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.write(layer, k, v, slots)  # [B, Hkv, L + T or max_len, hd]
        if prefix:  # the prefix attends only within itself, exactly as a plain forward would
            head = self.attend(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix], "causal")
            out = torch.cat([head, self.attend(q[:, :, prefix:], k, v, mask)], dim=2)
        else:
            out = self.attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))

    def attend(self, q, k, v, mask):
        """mask: None (every query sees every key), "causal" (the plain triangle), or a tensor."""
        causal = isinstance(mask, str)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if causal else mask,
                                              is_causal=causal, enable_gqa=self.n_kv != self.n_heads)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MLP(args)

    def forward(self, x, cos, sin, mask, cache, layer, slots=None, prefix=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, slots, prefix)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        logits = self.network(tokens, positions, mask, cache, causal_prefix=causal_prefix)
        if cache is not None:
            cache.length = L + T
        return logits

    def network(self, tokens, positions, mask, cache=None, slots=None, causal_prefix: int = 0):
        """The layers themselves: logits [B, T, V], for the eager forward above and the
        compiled static path alike (StaticModel). positions [B, T]; mask as in forward.

        slots [T] (a tensor) selects the static path: the new K/V go to those cache slots,
        attention spans the whole preallocated cache (mask [B or 1, 1, T, max_len] must
        hide the slots not in use), and cache.length is neither read nor moved.
        """
        x = self.embed_tokens(tokens)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, cache, i, slots, causal_prefix,
                                                      use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i, slots, causal_prefix)
        return self.lm_head(self.norm(x))

    @property
    def device(self):
        return self.embed_tokens.weight.device

    @property
    def dtype(self):
        return self.embed_tokens.weight.dtype

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        return KVCache(self.args, max_len, batch_size, self.device, self.dtype)


# ----------------------------------------------------------------------------- compiled


class StaticModel:
    """The compiled decoding path. It stands in for the model in the decode loops, which
    call it exactly as they call Llama.forward on a cache.

    Eager decoding attends over cache slots [0, L + T), a shape that grows at every step:
    torch.compile would recompile each time, or compile for dynamic shapes, slowly. Here
    every tensor that enters the compiled graph has a shape fixed by the block width T:

        tokens, positions [1, T]; slots [T]: where the new K/V go (L .. L + T - 1)
        mask [1, 1, T, max_len]: over the whole preallocated cache, stale slots hidden

            cache slots   0 1 2 3 4 5 6 7 8 9       L = 4, T = 3, max_len = 10
                          p p p p c S S . . .       written this step: 4, 5, 6
            mask row 0    x x x x x . . . . .       (causal: slot <= its own slot)
            mask row 2    x x x x x x x . . .

    so one graph serves every step of one width: 1 for AR, 1 + k for two-step, the tree
    and the fused widths. The cache length stays the Python int that the loops move;
    truncation is still only a length change, since slots beyond it are masked and later
    overwritten. The graph runs Llama.network, the code the eager forward runs.

    On CUDA the graph is also captured as a CUDA graph (mode "reduce-overhead"), which
    removes the launch cost of each kernel; on a CPU inductor's generated C++ removes the
    framework overhead. The prompt is prefilled eagerly (its length varies) into `cache`,
    the one cache this path writes.
    """

    def __init__(self, model: Llama, max_len: int):
        self.model, self.args = model, model.args
        self.cache = model.new_cache(max_len)
        self.cuda_graphs = model.device.type == "cuda"
        # One graph per width; a full benchmark uses more widths than dynamo's default of 8.
        # (cache_size_limit: the name torch 2.5 knows; later versions call it recompile_limit.)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        # dynamic=False: never trade a fixed shape for a dynamic one on a second width.
        if self.cuda_graphs:
            for t in self.cache.k + self.cache.v:  # the graph writes them in place: fixed addresses
                torch._dynamo.mark_static_address(t)
            self.step = torch.compile(static_step, fullgraph=True, dynamic=False, mode="reduce-overhead")
        else:  # the graph's C++ kernels are called from generated C++ too, not from Python:
            # each kernel is short on a CPU, so the calls would cost as much as the work.
            self.step = torch.compile(static_step, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})

    @property
    def device(self):
        return self.model.device

    @property
    def dtype(self):
        return self.model.dtype

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [1, T, V], as Llama.forward: positions [1, T] and a boolean mask
        [1, 1, T, L + T] are optional, and cache.length grows by T."""
        if cache is not self.cache:
            raise ValueError("the compiled path writes only its own cache: pass StaticModel.cache")
        T, L = tokens.shape[1], cache.length
        cache.check_room(T)
        slots = torch.arange(L, L + T, device=tokens.device)  # [T]
        if mask is not None:  # cover the whole cache: the slots after L + T are hidden
            mask = F.pad(mask, (0, cache.max_len - (L + T)), value=False)
        logits = self.step(self.model, tokens, positions, mask, cache, slots)
        cache.length = L + T
        # A CUDA graph overwrites its output at the next replay, while a loop may still
        # hold these logits (a draft distribution, say): give the loop its own copy.
        return logits.clone() if self.cuda_graphs else logits


def static_step(model: Llama, tokens, positions, mask, cache: KVCache, slots):
    """The compiled function of StaticModel: defaults derived from the write slots, then
    the network. Causal: a new token sees every slot up to its own, nothing stale."""
    if positions is None:
        positions = slots[None]  # [1, T]
    if mask is None:
        keys = torch.arange(cache.max_len, device=slots.device)
        mask = (keys[None, :] <= slots[:, None])[None, None]  # [1, 1, T, max_len]
    return model.network(tokens, positions, mask, cache, slots)


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


# ----------------------------------------------------------------------------- checkpoints
#
# On disk, Hugging Face layout: config.json, and model.safetensors or shards listed in
# model.safetensors.index.json. Tensor names are "model." + our parameter names, except
# lm_head.weight (absent when the embeddings are tied).


def hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else "model." + name


def expected_tensors(model: Llama) -> dict[str, tuple]:
    names = {hf_name(n): tuple(p.shape) for n, p in model.named_parameters()}  # tied: listed once
    return names


def read_config(path: str) -> ModelArgs:
    if not os.path.isdir(path):
        raise CheckpointError(f"model directory {path} does not exist")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise CheckpointError(f"{path} has no config.json")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {e}") from None
    return ModelArgs.from_config(cfg, cfg_path)


def safetensors_files(path: str) -> dict[str, str]:
    """Map tensor name -> file that holds it, from the index or the single file."""
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        return {name: os.path.join(path, file) for name, file in weight_map.items()}
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {name: single for name in f.keys()}
    raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json")


def _open_safetensors(file: str):
    from safetensors import SafetensorError, safe_open
    if not os.path.isfile(file):
        raise CheckpointError(f"shard {file} is missing")
    try:
        return safe_open(file, framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from None


def pick_device(name: str) -> torch.device:
    """The device of a script's --device NAME (cpu or cuda), or one line saying CUDA is missing."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, list[str]] | None:
    """(the CPU's model name, its bf16 instructions) from Linux's /proc/cpuinfo, or None
    where it cannot be read. The instructions are x86's avx512_bf16 and amx_bf16, or Arm's
    bf16. Without them PyTorch's bf16 matmuls take a slow path: on this project's machine
    of later sessions (none of them) a 6-token bf16 forward of the demo model costs 2.9x a
    1-token one, against 0.9x on its first machine, and bf16 runs slower than float32."""
    name, flags = "", set()
    try:
        with open(cpuinfo) as f:
            for line in f:  # the first processor's block: up to the first blank line
                key, _, value = line.partition(":")
                if not line.strip() and (name or flags):
                    break
                if key.strip() in ("model name", "CPU part") and not name:
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags = set(value.split())
    except OSError:
        return None
    return name or "unknown CPU", sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def slow_bf16_warning(device: torch.device, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """A warning for bf16 on a CPU that reports no bf16 instructions, else None."""
    info = cpu_info(cpuinfo) if device.type == "cpu" else None
    if info is None or info[1]:
        return None
    return (f"warning: this CPU ({info[0]}) reports no bf16 instructions (avx512_bf16, amx_bf16, bf16): "
            "PyTorch's bfloat16 matmuls take a slow path on it, usually slower than --dtype float32")


def load_model(path: str, device="cpu", dtype: torch.dtype = torch.float32) -> Llama:
    """Load a Hugging Face layout checkpoint, strictly, without pickle.

    The model is built on the meta device (no memory), then materialised once on `device`
    in `dtype`; tensors are read one at a time from memory-mapped safetensors files and
    converted on the way, so the host never holds two copies of the model.
    """
    args = read_config(path)
    with torch.device("meta"):
        model = Llama(args)
    expected = expected_tensors(model)
    where = safetensors_files(path)
    shapes = {}
    for file in sorted(set(where.values())):
        with _open_safetensors(file) as f:
            for name in f.keys():
                shapes[name] = tuple(f.get_slice(name).get_shape())
    problems = []
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [f"{n} {list(shapes[n])} (expected {list(expected[n])})"
             for n in sorted(set(expected) & set(shapes)) if shapes[n] != expected[n]]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{path} does not match its config.json: " + "; ".join(problems))

    model = model.to_empty(device=device).to(dtype)  # one uninitialised copy, right dtype
    if args.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight  # to_empty keeps ties; be explicit
    params = {hf_name(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, file in sorted(where.items()):
            # Opening the file per tensor unmaps the pages read so far: the process holds
            # the model plus one tensor, not the model plus every page of the file.
            with _open_safetensors(file) as f:
                params[name].copy_(f.get_tensor(name))  # converts dtype and device
    return model.eval()


def save_model(model: Llama, path: str, dtype: torch.dtype | None = None):
    """Write config.json and model.safetensors (Hugging Face layout), atomically each."""
    from safetensors.torch import save_file
    os.makedirs(path, exist_ok=True)
    tensors = {hf_name(n): p.detach().to("cpu", dtype or p.dtype).contiguous()
               for n, p in model.named_parameters()}
    if model.args.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    atomic_write(os.path.join(path, "model.safetensors"),
                 lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = model.args.to_config()
    if dtype is not None:  # transformers 5 reads "dtype", older versions "torch_dtype"
        config["dtype"] = config["torch_dtype"] = str(dtype).removeprefix("torch.")
    write_json(os.path.join(path, "config.json"), config)


def atomic_write(final_path: str, write):
    """Call write(tmp_path), then rename onto final_path: readers never see half a file."""
    tmp = final_path + ".tmp"
    write(tmp)
    os.replace(tmp, final_path)


def write_text(path: str, text: str):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def write_json(path: str, obj):
    write_text(path, json.dumps(obj, indent=1, default=str) + "\n")
