"""A llama.cpp GGUF Llama file -> the Hugging Face layout that model.py loads.

    python convert_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m

GGUF is llama.cpp's single-file format: metadata (shape, rope, tokenizer) as key/value
pairs, then the tensors, most of them quantized in blocks. Reading it needs the `gguf`
package, llama.cpp's own Python reader, which also dequantizes every block type we accept.
Four things differ from the Hugging Face layout and are undone here:

  * names:   blk.3.attn_q.weight -> model.layers.3.self_attn.q_proj.weight, and so on;
  * values:  quantized blocks -> float (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K);
  * rows:    llama.cpp rotates interleaved pairs (x0, x1), (x2, x3), ... while Hugging Face
             rotates halves (x_i, x_{i + hd/2}); its converter permuted the q and k rows
             of every head to match. We permute them back (`unpermute`);
  * tokenizer: a `gpt2` (byte-level BPE) vocabulary becomes tokenizer.json for the
             `tokenizers` library, a `llama` (sentencepiece) one becomes tokenizer.model.

The output directory appears whole or not at all: everything is written into a
temporary directory next to it, which is renamed at the end.
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

ARCH = "llama"
QUANT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
SHARD_BYTES = 2 << 30  # files of at most 2 GiB, as Hugging Face shards them

# GGUF tensor name -> Hugging Face name ("{i}" is the layer).
NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# Pre-tokenizers (GGUF's tokenizer.ggml.pre) we know how to rebuild for `tokenizers`:
# the byte-level split of GPT-2, after splitting every digit on its own where named.
PRE_TOKENIZERS = {"default": False, "gpt-2": False, "smollm": True}  # name -> split digits


class ConvertError(ValueError):
    """A GGUF file this converter cannot handle; the message names what."""


# ----------------------------------------------------------------------------- reading


def open_gguf(path: str):
    from gguf import GGUFReader
    try:
        return GGUFReader(path)
    except (ValueError, OSError, struct.error) as e:
        raise ConvertError(f"{path} is not a readable GGUF file ({e})") from None


def field(reader, key: str, default=None):
    """A metadata value (int, float, str, or list), or default when the key is absent."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def f32(x: float) -> float:
    return float(str(np.float32(x)))


def hf_config(reader) -> dict:
    """config.json of the Hugging Face LlamaForCausalLM this file holds."""
    arch = field(reader, "general.architecture")
    if arch != ARCH:
        raise ConvertError(f"architecture {arch!r} is not supported (only {ARCH!r})")
    a = lambda key, default=None: field(reader, f"{ARCH}.{key}", default)  # noqa: E731
    if a("rope.scaling.type") not in (None, "none"):
        raise ConvertError(f"rope scaling {a('rope.scaling.type')!r} is not supported")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names:
        raise ConvertError("rope_freqs.weight (Llama 3 rope scaling) is not supported")
    heads, hidden = a("attention.head_count"), a("embedding_length")
    head_dim = a("attention.key_length", hidden // heads)
    if a("rope.dimension_count", head_dim) != head_dim:
        raise ConvertError(f"partial rotary ({a('rope.dimension_count')} of {head_dim} dims) is not supported")
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    bos, eos = field(reader, "tokenizer.ggml.bos_token_id"), field(reader, "tokenizer.ggml.eos_token_id")
    # Byte-level BPE vocabularies end documents with <|endoftext|>; a chat-tuned file names
    # its end-of-turn token as eos instead. Stop at both.
    eos_ids = [i for i in (eos, tokens.index("<|endoftext|>") if "<|endoftext|>" in tokens else None)
               if i is not None]
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": hidden, "intermediate_size": a("feed_forward_length"),
        "num_hidden_layers": a("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": a("attention.head_count_kv", heads), "head_dim": head_dim,
        # GGUF stores float32: 1e-5 reads back as 9.99999974e-06. Keep the shortest float32 spelling.
        "rms_norm_eps": f32(a("attention.layer_norm_rms_epsilon")), "rope_theta": f32(a("rope.freq_base", 10000.0)),
        "max_position_embeddings": a("context_length"), "vocab_size": a("vocab_size", len(tokens)),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": bos, "eos_token_id": list(dict.fromkeys(eos_ids)) if len(set(eos_ids)) > 1 else eos,
        "pad_token_id": field(reader, "tokenizer.ggml.padding_token_id"),
        "gguf_source": {"name": field(reader, "general.name"), "file_type": field(reader, "general.file_type")},
    }


def hf_name(gguf_name: str) -> str:
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        pattern, layer = ".".join(["blk", "{i}"] + parts[2:]), parts[1]
        if pattern in NAMES:
            return NAMES[pattern].format(i=layer)
    elif gguf_name in NAMES:
        return NAMES[gguf_name]
    raise ConvertError(f"tensor {gguf_name!r} has no place in a Llama (not supported)")


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: within each head, rows come as interleaved pairs
    (r0, r_{hd/2}), (r1, r_{hd/2+1}), ...; Hugging Face wants the first halves, then the
    second halves. w: [n_heads * hd, in]."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


def tensors(reader, config: dict, dtype: str):
    """Yield (Hugging Face name, numpy array in `dtype`), one tensor at a time."""
    from gguf import dequantize
    import torch
    for t in reader.tensors:
        name = hf_name(t.name)
        w = dequantize(t.data, t.tensor_type).astype(np.float32)  # [out, in] (GGUF shape reversed)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, config["num_key_value_heads"])
        yield name, torch.from_numpy(np.ascontiguousarray(w)).to(getattr(torch, dtype))


def check_types(reader):
    bad = sorted({t.tensor_type.name for t in reader.tensors} - set(QUANT_TYPES))
    if bad:
        raise ConvertError(f"tensor type(s) {', '.join(bad)} not supported (supported: {', '.join(QUANT_TYPES)})")


# ----------------------------------------------------------------------------- tokenizers


def gpt2_tokenizer_json(reader, path: str):
    """tokenizer.json for a byte-level BPE vocabulary (GGUF tokenizer model `gpt2`)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ConvertError(f"pre-tokenizer {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ")) for m in field(reader, "tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    split = [pre_tokenizers.Digits(individual_digits=True)] if PRE_TOKENIZERS[pre] else []
    tok.pre_tokenizer = pre_tokenizers.Sequence(split + [pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are whole, never split and never produced by plain text.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == 3])
    tok.save(path)


def llama_tokenizer_model(reader, path: str):
    """tokenizer.model for a sentencepiece vocabulary (GGUF tokenizer model `llama`).

    A sentencepiece model file is one protobuf message (ModelProto). We write the few
    fields sentencepiece needs by hand: the pieces (text, score, type), the trainer spec
    (BPE, special ids, byte fallback) and the normalizer spec (CodeLlama's: no
    normalisation, whitespace as "▁", a dummy prefix unless the GGUF says otherwise).
    """
    tokens = field(reader, "tokenizer.ggml.tokens")
    scores = field(reader, "tokenizer.ggml.scores", [0.0] * len(tokens))
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))  # same numbering as sentencepiece
    ids = {k: field(reader, f"tokenizer.ggml.{k}_token_id", -1) for k in ("unknown", "bos", "eos", "padding")}
    pieces = b"".join(_pb_bytes(1, _pb_bytes(1, t.encode()) + _pb_float(2, s) + _pb_varint(3, kind))
                      for t, s, kind in zip(tokens, scores, types))
    trainer = (_pb_varint(3, 2) + _pb_varint(4, len(tokens)) + _pb_varint(35, int(6 in types))
               + _pb_varint(40, ids["unknown"]) + _pb_varint(41, ids["bos"]) + _pb_varint(42, ids["eos"])
               + _pb_varint(43, ids["padding"]))
    normalizer = (_pb_bytes(1, b"identity") + _pb_varint(3, int(field(reader, "tokenizer.ggml.add_space_prefix", True)))
                  + _pb_varint(4, 0) + _pb_varint(5, 1))
    with open(path, "wb") as f:
        f.write(pieces + _pb_bytes(2, trainer) + _pb_bytes(3, normalizer))


def _pb_key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 fields are ten-byte two's complement
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _pb_varint(number: int, n: int) -> bytes:
    return _pb_key(number, 0) + _varint(n)


def _pb_float(number: int, x: float) -> bytes:
    return _pb_key(number, 5) + struct.pack("<f", x)


def _pb_bytes(number: int, data: bytes) -> bytes:
    return _pb_key(number, 2) + _varint(len(data)) + data


def write_tokenizer(reader, out: str, config: dict):
    kind = field(reader, "tokenizer.ggml.model")
    if kind == "gpt2":
        gpt2_tokenizer_json(reader, os.path.join(out, "tokenizer.json"))
        tokens = field(reader, "tokenizer.ggml.tokens")
        eos = config["eos_token_id"]
        name = lambda i: None if i is None else tokens[i]  # noqa: E731
        tok_cfg = {"bos_token": name(config["bos_token_id"]), "eos_token": name(eos[0] if isinstance(eos, list) else eos),
                   "pad_token": name(config["pad_token_id"]),
                   "add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False))}
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(tok_cfg, f, indent=1)
    elif kind == "llama":
        llama_tokenizer_model(reader, os.path.join(out, "tokenizer.model"))
    else:
        raise ConvertError(f"tokenizer model {kind!r} is not supported (supported: gpt2, llama)")


# ----------------------------------------------------------------------------- writing


def convert(gguf_path: str, out: str, dtype: str = "float32", progress=print):
    """Convert; the output directory appears only when everything succeeded."""
    from safetensors.torch import save_file
    reader = open_gguf(gguf_path)
    config = hf_config(reader)  # every check runs before anything is written
    check_types(reader)
    for t in reader.tensors:
        hf_name(t.name)
    if field(reader, "tokenizer.ggml.model") not in ("gpt2", "llama"):
        raise ConvertError(f"tokenizer model {field(reader, 'tokenizer.ggml.model')!r} is not supported (supported: gpt2, llama)")
    tmp = out.rstrip("/") + ".converting"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        config["torch_dtype"] = config["dtype"] = dtype
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        write_tokenizer(reader, tmp, config)
        shards, current, size = [], {}, 0  # shards: the tensor names of each file written
        for i, (name, w) in enumerate(tensors(reader, config, dtype)):
            current[name] = w
            size += w.numel() * w.element_size()
            if size >= SHARD_BYTES:
                shards.append(list(current))  # names only: the tensors are freed once written
                save_file(current, os.path.join(tmp, f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
                current, size = {}, 0
            if (i + 1) % 50 == 0:
                progress(f"  {i + 1}/{len(reader.tensors)} tensors")
        if not shards:
            save_file(current, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        else:
            if current:
                shards.append(list(current))
                save_file(current, os.path.join(tmp, f"shard-{len(shards)}.tmp"), metadata={"format": "pt"})
            weight_map = {}
            for s, names in enumerate(shards, 1):
                file = f"model-{s:05d}-of-{len(shards):05d}.safetensors"
                os.replace(os.path.join(tmp, f"shard-{s}.tmp"), os.path.join(tmp, file))
                weight_map.update({n: file for n in names})
            with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", help="a llama.cpp GGUF file of a Llama model")
    p.add_argument("--out", required=True, help="output directory (Hugging Face layout); replaced if it exists")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written tensors (default: %(default)s; bfloat16 halves the size)")
    a = p.parse_args()
    if not os.path.isfile(a.gguf):
        sys.exit(f"error: {a.gguf} does not exist")
    try:
        print(f"converting {a.gguf} -> {a.out}")
        cfg = convert(a.gguf, a.out, a.dtype)
    except ConvertError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(130)
    print(f"wrote {a.out}: {cfg['num_hidden_layers']} layers, hidden {cfg['hidden_size']}, "
          f"vocab {cfg['vocab_size']}, {a.dtype}")


if __name__ == "__main__":
    main()
