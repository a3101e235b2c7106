"""Tests for convert_gguf.py: a tiny random Llama written to GGUF exactly as llama.cpp's
converter does (q/k rows permuted to interleaved pairs, weights in F32 or quantized to
Q8_0 blocks), converted back, must give the original logits; its tokenizers must encode
text exactly like the originals; what the converter cannot handle is one clear error and
no output directory.

The GGUF files are written with the `gguf` package's own writer and quantizer, so the
reference is llama.cpp's format, not our reading of it.
"""

import glob
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import sentencepiece as spm
import torch

gguf = pytest.importorskip("gguf")
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import convert_gguf  # noqa: E402
from checkpoint import load_model
from model import BASE_MODEL, Llama, ModelArgs, init_weights  # noqa: E402
from tokenizer import Tokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STDLIB = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
TRAIN_TEXT, HELD_OUT = STDLIB[:30], STDLIB[30:60]
CRAFTED = ["", "x = 1234567\n", "\tdef f():\n\t\treturn 'ü→😀 日本語'\r\n", "   a    b  ", "<|endoftext|> tail"]
SPECIALS = ["<|endoftext|>", "<s>", "</s>"]


def read(path):
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def llama_cpp_permute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """What llama.cpp's converter does to q/k rows: each head's halves become interleaved pairs."""
    out_dim, in_dim = w.shape
    return w.reshape(n_heads, 2, out_dim // n_heads // 2, in_dim).swapaxes(1, 2).reshape(out_dim, in_dim)


@pytest.fixture(scope="module")
def bpe() -> HFTokenizer:
    """A small byte-level BPE trained here, with SmolLM2's pre-tokenizer (digits split)."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([read(p) for p in TRAIN_TEXT], trainer)
    return tok


def bpe_vocab(tok: HFTokenizer):
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    return tokens, merges


def tiny_model(vocab_size: int, seed: int = 0) -> Llama:
    args = ModelArgs(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=vocab_size, rope_theta=10000.0, rms_norm_eps=1e-5,
                     max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = Llama(args)
    init_weights(model, std=0.1)
    with torch.no_grad():  # norms away from 1, so a swapped norm would show
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model.eval()


GGUF_NAMES = {v: k for k, v in convert_gguf.NAMES.items()}


def gguf_name(hf: str) -> str:
    parts = hf.split(".")
    if parts[1] == "layers":
        return GGUF_NAMES["model.layers.{i}." + ".".join(parts[3:])].format(i=parts[2])
    return GGUF_NAMES[hf]


def write_gguf(path: str, model: Llama, qtype, tokenizer: str = "gpt2", bpe_tok=None, sp_path=None,
               arch: str = "llama", pre: str = "smollm"):
    """model -> GGUF the way llama.cpp's converter writes it. Norms stay F32, as there."""
    a = model.args
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(a.num_hidden_layers)
    w.add_context_length(a.max_position_embeddings)
    w.add_embedding_length(a.hidden_size)
    w.add_feed_forward_length(a.intermediate_size)
    w.add_head_count(a.num_attention_heads)
    w.add_head_count_kv(a.num_key_value_heads)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.rms_norm_eps)
    w.add_rope_dimension_count(a.head_dim)
    if tokenizer != "llama":  # "gpt2", or a name the converter must refuse
        tokens, merges = bpe_vocab(bpe_tok)
        w.add_tokenizer_model(tokenizer)
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges(merges)
    else:
        sp = spm.SentencePieceProcessor(model_file=sp_path)
        n = sp.get_piece_size()
        kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                 else 4 if sp.id_to_piece(i) in ("\n", "\t") else 1 for i in range(n)]  # tokenizer.train's user symbols
        w.add_tokenizer_model(tokenizer)
        w.add_token_list([sp.id_to_piece(i) for i in range(n)])
        w.add_token_scores([sp.get_score(i) for i in range(n)])
        w.add_token_types(kinds)
        w.add_add_space_prefix(False)
        w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for name, p in model.state_dict().items():
        hf = "model." + name if not name.startswith("lm_head") else name
        x = p.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            x = llama_cpp_permute(x, a.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            x = llama_cpp_permute(x, a.num_key_value_heads)
        if x.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(hf), gguf.quantize(x, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(hf), x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def logits(model: Llama, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.args.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        return model(tokens)


@pytest.fixture(scope="module")
def original(bpe) -> Llama:
    return tiny_model(bpe.get_vocab_size())


def test_f32_gguf_converts_to_the_same_logits(tmp_path, original, bpe):
    path = str(tmp_path / "m.gguf")
    write_gguf(path, original, gguf.GGMLQuantizationType.F32, bpe_tok=bpe)
    convert_gguf.convert(path, str(tmp_path / "out"), progress=lambda *a: None)
    converted = load_model(str(tmp_path / "out"))
    assert torch.equal(logits(converted), logits(original))  # bit for bit
    assert not os.path.exists(str(tmp_path / "out") + ".converting")


def test_q8_0_gguf_converts_to_the_dequantized_model(tmp_path, original, bpe):
    """Q8_0 stores each block of 32 weights as int8 q and one f16 scale d = max|x| / 127:
    x ~ d * q. Two bounds follow and are checked:
      * every weight is within half a step of its block, |x' - x| <= d / 2 (+ f16 rounding
        of d itself: at most 127 q-units times 2^-11 relative, so d * (0.5 + 127 * 2^-11));
      * the logits equal, exactly, those of the original model with every matrix replaced
        by its quantize -> dequantize round trip (quantization is along rows, so llama.cpp's
        row permutation commutes with it)."""
    path = str(tmp_path / "m.gguf")
    q8 = gguf.GGMLQuantizationType.Q8_0
    write_gguf(path, original, q8, bpe_tok=bpe)
    convert_gguf.convert(path, str(tmp_path / "out"), progress=lambda *a: None)
    converted = load_model(str(tmp_path / "out"))
    reference = tiny_model(original.args.vocab_size)
    conv_params = dict(converted.named_parameters())
    with torch.no_grad():
        for name, p in reference.named_parameters():
            if p.dim() != 2:
                continue
            x = p.numpy()
            blocks = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1, keepdims=True)  # max|x| per block
            err = np.abs(conv_params[name].numpy().reshape(blocks.shape[0], -1, 32) - x.reshape(blocks.shape[0], -1, 32))
            assert (err <= blocks / 127 * (0.5 + 127 * 2 ** -11) + 1e-7).all(), name
            p.copy_(torch.from_numpy(gguf.dequantize(gguf.quantize(x, q8), q8)))
    assert torch.equal(logits(converted), logits(reference))
    assert not torch.equal(logits(converted), logits(original))  # it did quantize


def test_gpt2_vocabulary_becomes_a_tokenizer_json_that_encodes_identically(tmp_path, original, bpe):
    path = str(tmp_path / "m.gguf")
    write_gguf(path, original, gguf.GGMLQuantizationType.F32, bpe_tok=bpe)
    convert_gguf.convert(path, str(tmp_path / "out"), progress=lambda *a: None)
    tok = Tokenizer(str(tmp_path / "out"))
    assert tok.path.endswith("tokenizer.json")
    for text in CRAFTED + [read(p) for p in HELD_OUT]:
        ids = tok.encode(text, bos=False)
        assert ids == bpe.encode(text).ids
        assert tok.decode(ids) == text
    assert tok.encode("<|endoftext|>", bos=False) == [bpe.token_to_id("<|endoftext|>")]  # whole, special
    assert tok.encode("12", bos=False) == [bpe.token_to_id("1"), bpe.token_to_id("2")]  # digits split
    cfg = json.load(open(tmp_path / "out" / "config.json"))
    assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, [2, 0])  # and <|endoftext|>


def test_llama_vocabulary_becomes_a_sentencepiece_model_that_encodes_identically(tmp_path):
    sp_path = os.path.join(BASE_MODEL, "tokenizer.model")
    original_sp = Tokenizer(sp_path)
    model = tiny_model(original_sp.vocab_size)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, model, gguf.GGMLQuantizationType.F32, tokenizer="llama", sp_path=sp_path)
    convert_gguf.convert(path, str(tmp_path / "out"), progress=lambda *a: None)
    tok = Tokenizer(str(tmp_path / "out"))
    assert tok.path.endswith("tokenizer.model")
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (original_sp.bos_id, original_sp.eos_id, original_sp.vocab_size)
    for text in CRAFTED + [read(p) for p in HELD_OUT[:10]]:
        assert tok.encode(text) == original_sp.encode(text)
        assert tok.decode(tok.encode(text, bos=False)) == text


@pytest.mark.parametrize("case, message", [
    ("arch", "architecture 'gpt2' is not supported"),
    ("quant", "tensor type(s) Q5_0 not supported"),
    ("tokenizer", "tokenizer model 'bert' is not supported"),
    ("pre", "pre-tokenizer 'qwen2' is not supported"),
])
def test_what_cannot_be_converted_is_one_line_and_no_output(tmp_path, original, bpe, case, message):
    path = str(tmp_path / "m.gguf")
    q = gguf.GGMLQuantizationType.Q5_0 if case == "quant" else gguf.GGMLQuantizationType.F32
    write_gguf(path, original, q, bpe_tok=bpe, arch="gpt2" if case == "arch" else "llama",
               tokenizer="bert" if case == "tokenizer" else "gpt2", pre="qwen2" if case == "pre" else "smollm")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "convert_gguf.py"), path, "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: {r.stderr.strip()[7:]}"] and message in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not os.path.exists(str(out) + ".converting")


def test_a_large_model_is_written_in_shards_that_load_to_the_same_logits(tmp_path, monkeypatch):
    monkeypatch.setattr(convert_gguf, "SHARD_BYTES", 100_000)  # a 7B model's 2 GiB, scaled down
    sp_path = os.path.join(BASE_MODEL, "tokenizer.model")
    model = tiny_model(Tokenizer(sp_path).vocab_size)
    path = str(tmp_path / "m.gguf")
    write_gguf(path, model, gguf.GGMLQuantizationType.F32, tokenizer="llama", sp_path=sp_path)
    convert_gguf.convert(path, str(tmp_path / "out"), progress=lambda *a: None)
    assert len(glob.glob(str(tmp_path / "out" / "model-*-of-*.safetensors"))) > 1
    assert torch.equal(logits(load_model(str(tmp_path / "out"))), logits(model))
