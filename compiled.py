"""The compiled decoding path: fixed-shape forwards, one compiled transformer block for every layer.

Eager decoding attends over cache slots [0, L + T), a shape that grows at every step:
torch.compile would recompile each time, or compile for dynamic shapes, slowly. Here every
tensor that enters a compiled graph has a shape fixed by the block width T:

    tokens, positions [1, T]; slots [T]: where the new K/V go (L .. L + T - 1)
    mask [1, 1, T, max_len]: over the whole preallocated cache, stale slots hidden

        cache slots   0 1 2 3 4 5 6 7 8 9       L = 4, T = 3, max_len = 10
                      p p p p c S S . . .       written this step: 4, 5, 6
        mask row 0    x x x x x . . . . .       (causal: slot <= its own slot)
        mask row 2    x x x x x x x . . .

so one graph serves every step of one width: 1 for AR, 1 + k for two-step, the tree and
the fused widths. The cache length stays the Python int that the loops move; truncation
is still only a length change, since slots beyond it are masked and later overwritten.

Regional compilation. What is compiled is one transformer block (`static_block`), not the
network: every layer calls the same graph with its own weights and its own cache tensors,
so compile time depends on the width, not on the depth (30 blocks of SmolLM2 compile as
fast as one). The final norm and the output head are a second small graph; the embedding
lookup and the rotary angles run eagerly, once per forward. The blocks run exactly the
code of the eager model (model.Block), with the cache written at `slots`.

Kernels. On a CPU, inductor generates C++ for each graph and calls its kernels from C++
too (cpp_wrapper); `autotune=True` also lets it time its own C++ matrix-product templates
against oneDNN/MKL and keep the faster (max-autotune; SDSAT.md section 12 has what each
option measured). On CUDA, each graph is also captured as a CUDA graph (mode
"reduce-overhead"), which removes the launch cost of every kernel.
"""

import time

import torch
import torch.nn.functional as F

from model import Block, KVCache, Llama, rope_cos_sin


class LayerSlots:
    """One layer's cache tensors, written at explicit slots: what Attention's `cache.write`
    does on the static path (the whole cache comes back; the mask hides unused slots)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v

    def write(self, layer, k, v, slots):
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


def static_block(block: Block, x, cos, sin, mask, k_cache, v_cache, slots, sat=None):
    """The compiled region: one block over a fixed-shape slice of tokens. It takes the
    layer's weights (the module) and cache tensors as inputs, so one graph serves every layer."""
    return block(x, cos, sin, mask, LayerSlots(k_cache, v_cache), 0, slots, 0, sat)


def static_head(model: Llama, x):
    """The second compiled region: final norm and output head."""
    return model.lm_head(model.norm(x))


class StaticModel:
    """Stands in for the model in the decode loops, which call it exactly as they call
    Llama.forward on a cache. The prompt is prefilled eagerly (its length varies) into
    `cache`, the one cache this path writes."""

    def __init__(self, model: Llama, max_len: int, autotune: bool = False, compile: bool = True):
        self.model, self.args = model, model.args
        self.cache = model.new_cache(max_len)
        self.cuda_graphs = model.device.type == "cuda"
        # One graph per width and region; a full benchmark uses more than dynamo's default.
        # (cache_size_limit: the name torch 2.5 knows; later versions call it recompile_limit.)
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        if self.cuda_graphs:
            for t in self.cache.k + self.cache.v:  # written in place by the graphs: fixed addresses
                torch._dynamo.mark_static_address(t)
            options = dict(mode="max-autotune" if autotune else "reduce-overhead")
        else:
            settings = {"cpp_wrapper": True}  # kernels called from generated C++, not from Python
            if autotune:
                settings.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
            options = dict(options=settings)
        # dynamic=False: never trade a fixed shape for a dynamic one on a second width.
        # compile=False runs the same static code eagerly (tests check its logic with it).
        build = (lambda f: torch.compile(f, fullgraph=True, dynamic=False, **options)) if compile else (lambda f: f)
        self.block, self.head = build(static_block), build(static_head)

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
        model, dev = self.model, tokens.device
        slots = torch.arange(L, L + T, device=dev)  # [T]
        positions = slots[None] if positions is None else positions.view(1, T)
        keys = torch.arange(cache.max_len, device=dev)
        if mask is None:  # causal: a new token sees every slot up to its own, nothing stale
            mask = (keys[None, :] <= slots[:, None])[None, None]  # [1, 1, T, max_len]
        else:  # cover the whole cache: the slots after L + T are hidden
            mask = F.pad(mask, (0, cache.max_len - (L + T)), value=False)
        x = model.embed_tokens(tokens)  # [1, T, D]
        adapt = model.has_sat(tokens)  # a Python bool: a block graph with the adapter, one without
        rows = None
        if adapt:
            rows = (tokens == model.adapter.sat_id)[..., None]
            x = torch.where(rows, model.adapter.embed.to(x.dtype), x)
        cos, sin = rope_cos_sin(positions, self.args.head_dim, self.args.rope_theta, x.dtype)
        for i, layer in enumerate(model.layers):
            sat = (model.adapter.layers[i], rows) if adapt else None
            x = self.block(layer, x, cos, sin, mask, cache.k[i], cache.v[i], slots, sat)
        logits = self.head(model, x)
        cache.length = L + T
        # A CUDA graph overwrites its output at the next replay, while a loop may still
        # hold these logits (a draft distribution, say): give the loop its own copy.
        return logits.clone() if self.cuda_graphs else logits

    @torch.inference_mode()
    def warm_up(self, widths: list[int], with_sat: bool = False) -> dict[int, float]:
        """Compile every width now (seconds each). It writes scratch values into the cache:
        call it before the prefill. with_sat: also the graphs with the SAT adapter."""
        seconds = {}
        for T in widths:
            t0 = time.perf_counter()
            for sat in ([False, True] if with_sat and self.model.adapter is not None else [False]):
                self.cache.truncate(0)
                token = self.model.adapter.sat_id if sat else 0
                self(torch.full((1, T), token, device=self.device), cache=self.cache)
            if self.cuda_graphs:
                torch.cuda.synchronize()
            seconds[T] = time.perf_counter() - t0
        self.cache.truncate(0)
        return seconds
