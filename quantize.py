"""Weight-only int8: every linear layer's weight stored as int8 with one scale per output
channel, as gpt-fast does; the activations keep the model's dtype.

    python quantize.py --model models/smollm2-135m --out models/smollm2-135m-int8
    python decode.py --model models/smollm2-135m-int8 ...        # loads as any model
    python decode.py --model models/smollm2-135m --quantize int8  # or quantize at load

A weight W [N, K] becomes int8 values Q and scales s [N] (float32), row by row:

    s[n] = max_k |W[n, k]| / 127        Q[n, k] = round(W[n, k] / s[n])      W ~ Q * s[:, None]

so no value moves by more than s[n] / 2 (the round trip, tested). The product dequantizes
on the fly, x @ W^T ~ (x @ Q^T) * s: on a CPU with torch's int8 kernel
(torch._weight_int8pack_mm), elsewhere (CUDA) by converting Q to the activations' dtype.

Half the bytes of bf16, so a 1-token forward, which reads every weight, gets faster where
it is memory-bound (CodeLlama-7B: 6.7 GB instead of 13.5 GB, it fits an 8 GB GPU). Its
cost climbs with the rows fed, faster than the bf16 product's (bench.py --latency-only
--quantize int8): that is what a speculative pass feeds, so the cost curve that SDSAT
lives on gets steeper.

On disk: config.json with "quantization": {"bits": 8, "scheme": "int8 weight-only,
per output channel"}, and model.safetensors where each linear layer's `weight` is int8
and its `weight_scale` float32 beside it; the embedding and the norms stay as they were.
Loading (checkpoint.load_model) is strict and without pickle; a damaged file is one line.
"""

import argparse
import os
import shutil
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

QUANTIZATION = {"bits": 8, "scheme": "int8 weight-only, per output channel"}


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (Q int8 [N, K], s float32 [N]) with W ~ Q * s[:, None] (module docstring)."""
    w = weight.detach().float()
    scale = w.abs().amax(1).clamp(min=1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """A linear layer with int8 weights and per-channel scales (buffers, not parameters:
    nothing here trains)."""

    def __init__(self, out_features: int, in_features: int, device=None):
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "Int8Linear":
        layer = cls(*weight.shape, device=weight.device)
        layer.weight, layer.weight_scale = quantize_rows(weight)
        return layer

    def forward(self, x):
        scale = self.weight_scale.to(x.dtype)
        if x.device.type == "cpu":  # torch's CPU kernel wants rows [M, K]
            flat = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, scale)
            return flat.view(*x.shape[:-1], -1)
        return F.linear(x, self.weight.to(x.dtype)) * scale


def swap_linears(model, make):
    """Replace every nn.Linear of the base's blocks, and the head, by make(weight), in place."""
    for block in model.layers:
        for module in (block.self_attn, block.mlp):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, make(child.weight))
    model.lm_head = make(model.lm_head.weight)  # a tied head gets its own quantized copy
    return model


def quantize_int8(model):
    """Swap every linear layer of the base (the blocks and the head) for an Int8Linear of
    its weight, in place; a SAT adapter stays in its float dtype. Returns the model."""
    swap_linears(model, Int8Linear.from_float)
    model.args.extra["quantization"] = QUANTIZATION
    return model


GROUP = 32  # int4: weights per scale and zero (llama.cpp's Q4_1 blocks are 32 too)


def quantize_groups(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [N, K] -> (Q [N, K] int32 in 0..15, scales [N, K / group], mins [N, K / group]),
    float32, with W ~ Q * scale + min in each group of `group` weights along a row: the
    group's range cut into 15 steps, so no value moves by more than scale / 2 (tested)."""
    w = weight.detach().float()
    n, k = w.shape
    if k % group:
        raise ValueError(f"int4 needs rows of a multiple of {group} weights, not {k}")
    g = w.view(n, k // group, group)
    low = g.amin(-1)
    scale = ((g.amax(-1) - low) / 15).clamp(min=1e-12)
    q = torch.round((g - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32)
    return q.view(n, k), scale, low


class Int4Linear(nn.Module):
    """Weight-only int4 at load (not saved: quantize.py writes int8 checkpoints only): 4-bit
    values, one scale and one minimum per group of 32 weights along a row. On a CPU the
    product runs torch's int4 kernel, torch.ops.aten._weight_int4pack_mm_for_cpu (row counts
    a multiple of 16), which reads W as (Q - 8) * scale + zero, so zero = min + 8 scale.
    Elsewhere (CUDA, other row counts) each call dequantizes the weight to the activations'
    dtype for F.linear: correct, not fast. A quarter of bf16's bytes.
    SmolLM2's weights come from a Q4_1 GGUF file (4 bits, groups of 32, a scale and a
    minimum each): int4 stores them nearly as they were."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        q, scale, low = quantize_groups(weight)
        if weight.device.type == "cpu" and weight.shape[0] % 16 == 0:  # the kernel's blocks: 16 rows
            zero = low + 8 * scale  # buffers not saved (persistent=False), counted by bench_latency's floor
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2), persistent=False)
            self.register_buffer("scale_zero", torch.stack([scale, zero], -1).transpose(0, 1).contiguous()
                                 .to(weight.dtype), persistent=False)
        else:
            for name, value in (("q", q.to(torch.uint8)), ("scale", scale), ("low", low)):
                self.register_buffer(name, value, persistent=False)

    def forward(self, x):
        if hasattr(self, "packed"):
            flat = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, x.shape[-1]), self.packed, GROUP,
                                                              self.scale_zero.to(x.dtype))
            return flat.view(*x.shape[:-1], -1)
        return F.linear(x, dequantize_groups(self.q, self.scale, self.low).to(x.dtype))


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """quantize_groups' inverse: Q * scale + min, [N, K] float32."""
    n, k = q.shape
    return (q.view(n, k // GROUP, GROUP).float() * scale[..., None] + low[..., None]).view(n, k)


def quantize_int4(model):
    """Swap every linear layer of the base (the blocks and the head) for an Int4Linear of
    its weight, in place, at load; a SAT adapter stays in its float dtype."""
    return swap_linears(model, Int4Linear)


QUANTIZERS = {"int8": quantize_int8, "int4": quantize_int4}  # decode.py and bench.py --quantize


def int8_shells(model):
    """The quantized layout with empty values (for checkpoint.load_model to fill)."""
    return swap_linears(model, lambda weight: Int8Linear(*weight.shape, device=weight.device))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a checkpoint directory (Hugging Face layout)")
    p.add_argument("--out", required=True, help="where to write the int8 checkpoint")
    a = p.parse_args()
    from checkpoint import is_adapter_dir, load_model, model_files_dir, save_model
    from model import CheckpointError
    from tokenizer import FILES as TOKENIZER_FILES
    try:
        if is_adapter_dir(a.model):
            raise CheckpointError(f"{a.model} is a SAT adapter: quantize its base, then give the adapter "
                                  "--quantize int8 at load")
        model = load_model(a.model)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if model.args.extra.get("quantization"):
        sys.exit(f"error: {a.model} is quantized already")
    save_model(quantize_int8(model), a.out)
    for name in TOKENIZER_FILES + ("tokenizer_config.json",):
        src = os.path.join(model_files_dir(a.model), name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(a.out, name))
    size = os.path.getsize(os.path.join(a.out, "model.safetensors"))
    print(f"wrote {a.out}: int8 weights, one float32 scale per output channel, {size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
