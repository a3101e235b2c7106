"""Write a checkpoint of random weights in a real model's shape, to time or load-test
without downloading anything.

    python random_checkpoint.py --shape codellama-7b --out /tmp/cl7b     # 12.55 GiB, 2.6 min here
    python bench.py --model /tmp/cl7b --latency-only --dtype bfloat16     # forward cost against tokens fed

The files have the Hugging Face layout that CodeLlama ships: config.json, and bf16
safetensors shards of at most --shard-gib each with model.safetensors.index.json. The
weights are N(0, 0.02) noise, so the model's text is gibberish, but every forward pass
costs exactly what the real model's does. Tensors are generated and written one at a
time, so the process never holds more than the largest one (the 500 MiB embedding).

A safetensors file is an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the raw bytes.
"""

import argparse
import json
import os
import struct
import sys

import torch

from checkpoint import atomic_write, hf_name, write_json
from model import Llama, ModelArgs

SHAPES = {  # the configs CodeLlama ships, as far as the shape goes
    "codellama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32),
    "codellama-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40),
}
CODELLAMA = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=32016, rms_norm_eps=1e-5,
                 rope_theta=1e6, max_position_embeddings=16384, bos_token_id=1, eos_token_id=2,
                 tie_word_embeddings=False, hidden_act="silu", torch_dtype="bfloat16", sat_token_id=32011)


def tensor_shapes(config: dict) -> list[tuple[str, tuple]]:
    """Every stored tensor's Hugging Face name and shape, in model order."""
    with torch.device("meta"):
        model = Llama(ModelArgs.from_config(config))
    shapes = [(hf_name(n), tuple(p.shape)) for n, p in model.named_parameters()]
    if config.get("tie_word_embeddings"):
        shapes = [(n, s) for n, s in shapes if n != "lm_head.weight"]
    return shapes


def write_shard(path: str, shapes: list[tuple[str, tuple]], gen: torch.Generator):
    header, offset = {}, 0
    for name, shape in shapes:
        nbytes = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)) + head)
            for _, shape in shapes:
                w = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16)
                f.write(w.view(torch.int16).numpy().tobytes())
    atomic_write(path, write)


def write_random_checkpoint(config: dict, out: str, shard_gib: float = 5.0, seed: int = 0) -> list[str]:
    """Write config.json and random bf16 shards; returns the shard file names."""
    shapes = tensor_shapes(config)
    shards, size = [[]], 0
    for name, shape in shapes:
        nbytes = 2 * torch.Size(shape).numel()
        if shards[-1] and size + nbytes > shard_gib * 2**30:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    os.makedirs(out, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        names = ["model.safetensors"]
    for i, (name, part) in enumerate(zip(names, shards)):
        print(f"writing {name} ({i + 1}/{len(shards)}, {len(part)} tensors)", file=sys.stderr)
        write_shard(os.path.join(out, name), part, gen)
    if len(shards) > 1:
        weight_map = {n: name for name, part in zip(names, shards) for n, _ in part}
        write_json(os.path.join(out, "model.safetensors.index.json"), {"metadata": {}, "weight_map": weight_map})
    write_json(os.path.join(out, "config.json"), config)
    return names


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--shape", choices=list(SHAPES), default="codellama-7b")
    p.add_argument("--config", help="a config.json to copy the shape from instead of --shape")
    p.add_argument("--shard-gib", type=float, default=5.0, help="largest shard size")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.config:
        try:
            with open(a.config) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"error: cannot read {a.config}: {e}")
    else:
        config = {**CODELLAMA, **SHAPES[a.shape]}
    try:
        ModelArgs.from_config(config)
    except (KeyError, ValueError) as e:
        raise SystemExit(f"error: {a.config or a.shape}: {e}")
    if a.shard_gib <= 0:
        raise SystemExit("error: --shard-gib must be positive")
    names = write_random_checkpoint(config, a.out, a.shard_gib, a.seed)
    total = sum(os.path.getsize(os.path.join(a.out, n)) for n in names)
    print(f"wrote {a.out}: {len(names)} file(s), {total / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
