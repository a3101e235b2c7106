"""Tests for checkpoint.py: loading and saving the Hugging Face layout.

Loader errors come from files on disk rewritten or damaged by hand, each checked for one
clear message; saved checkpoints are read back by our loader and by transformers.
"""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from checkpoint import load_model, save_model
from model import CheckpointError
from test_model import hf_model, our_model, read_json, save_hf, tokens, write_json


# ----------------------------------------------------------------------------- loader errors


@pytest.fixture
def ckpt(tmp_path):
    """A valid single-file checkpoint of a small GQA model, saved by transformers."""
    return save_hf(hf_model(num_key_value_heads=2), tmp_path / "ckpt")


def load_error(path, root, *needles) -> str:
    """load_model(path) must raise CheckpointError whose message, with the temporary
    directory's name blanked out (it contains the test's name), mentions every needle."""
    with pytest.raises(CheckpointError) as e:
        load_model(str(path))
    msg = str(e.value).replace(str(root), "<tmp>")
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def test_load_missing_directory(tmp_path):
    load_error(tmp_path / "nope", tmp_path, "does not exist")


def test_load_missing_config_key(ckpt, tmp_path):
    cfg = read_json(os.path.join(ckpt, "config.json"))
    del cfg["num_hidden_layers"]
    write_json(os.path.join(ckpt, "config.json"), cfg)
    load_error(ckpt, tmp_path, "num_hidden_layers")


def test_load_missing_files(ckpt, tmp_path):
    os.remove(os.path.join(ckpt, "model.safetensors"))
    load_error(ckpt, tmp_path, "model.safetensors")
    os.remove(os.path.join(ckpt, "config.json"))
    load_error(ckpt, tmp_path, "config.json")


def test_load_bad_config_json(ckpt, tmp_path):
    with open(os.path.join(ckpt, "config.json"), "w") as f:
        f.write("{not json")
    load_error(ckpt, tmp_path, "JSON")


def _rewrite_tensors(ckpt, edit):
    file = os.path.join(ckpt, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_load_missing_tensor(ckpt, tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_tensors(ckpt, lambda t: t.pop(name))
    load_error(ckpt, tmp_path, "missing", name)


def test_load_wrong_shape(ckpt, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite_tensors(ckpt, lambda t: t.update({name: torch.zeros(127, 64)}))
    load_error(ckpt, tmp_path, "wrong shape", name)


def test_load_unexpected_tensor(ckpt, tmp_path):
    name = "model.layers.0.self_attn.q_proj.bias"
    _rewrite_tensors(ckpt, lambda t: t.update({name: torch.zeros(64)}))
    load_error(ckpt, tmp_path, "unexpected", name)


def test_load_tied_checkpoint_with_untied_config(tmp_path):
    """A tied checkpoint (no lm_head.weight) under an untied config is a missing tensor."""
    path = save_hf(hf_model(tie_word_embeddings=True), tmp_path / "ckpt")
    cfg = read_json(os.path.join(path, "config.json"))
    cfg["tie_word_embeddings"] = False
    write_json(os.path.join(path, "config.json"), cfg)
    load_error(path, tmp_path, "missing", "lm_head.weight")


@pytest.mark.parametrize("keep", [0.5, 0.99, 20, 4, 0])
def test_load_truncated_file(ckpt, tmp_path, keep):
    file = os.path.join(ckpt, "model.safetensors")
    data = open(file, "rb").read()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    with open(file, "wb") as f:
        f.write(data[:n])
    load_error(ckpt, tmp_path)  # a CheckpointError, not whatever safetensors raises


def test_load_corrupt_file(ckpt, tmp_path):
    file = os.path.join(ckpt, "model.safetensors")
    size = os.path.getsize(file)
    with open(file, "wb") as f:
        f.write(torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(0),
                              dtype=torch.uint8).numpy().tobytes())
    load_error(ckpt, tmp_path)


def test_load_sharded_errors(tmp_path):
    path = save_hf(hf_model(), tmp_path / "sharded", max_shard_size="20KB")
    index = read_json(os.path.join(path, "model.safetensors.index.json"))
    shard = os.path.join(path, sorted(set(index["weight_map"].values()))[-1])
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:  # a truncated shard
        f.write(data[:len(data) // 2])
    load_error(path, tmp_path)
    os.remove(shard)  # a shard listed in the index but absent
    load_error(path, tmp_path, "missing", os.path.basename(shard))


# ----------------------------------------------------------------------------- save


def test_save_load_roundtrip_float32(tmp_path, device):
    m = our_model(num_key_value_heads=2, rope_theta=1e6, device=device)
    save_model(m, str(tmp_path))
    m2 = load_model(str(tmp_path), device=device)
    strip = lambda a: {k: v for k, v in vars(a).items() if k != "extra"}  # noqa: E731
    assert strip(m2.args) == strip(m.args)
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert sd2[k].dtype == torch.float32 and sd2[k].device == sd[k].device
        assert torch.equal(sd[k], sd2[k]), k
    assert m2.lm_head.weight.data_ptr() != m2.embed_tokens.weight.data_ptr()


def test_save_load_roundtrip_bfloat16(tmp_path, device):
    m = our_model(num_key_value_heads=2, device=device)
    save_model(m, str(tmp_path), dtype=torch.bfloat16)
    assert read_json(os.path.join(tmp_path, "config.json"))["torch_dtype"] == "bfloat16"
    on_disk = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert all(t.dtype == torch.bfloat16 for t in on_disk.values())
    m2 = load_model(str(tmp_path), device=device, dtype=torch.bfloat16)
    for (k, p), (k2, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert k == k2 and p2.dtype == torch.bfloat16
        assert torch.equal(p.detach().to(torch.bfloat16), p2), k
    with torch.no_grad():  # and it runs in bf16, close to the float32 model
        x = tokens(1, 8, device=device)
        assert m2(x).dtype == torch.bfloat16
        assert (m2(x).float() - m(x)).abs().max() < 0.2


def test_save_load_tied(tmp_path, device):
    m = our_model(tie_word_embeddings=True, device=device)
    assert m.lm_head.weight is m.embed_tokens.weight
    save_model(m, str(tmp_path))
    assert "lm_head.weight" not in load_file(os.path.join(tmp_path, "model.safetensors"))
    m2 = load_model(str(tmp_path), device=device)
    assert m2.args.tie_word_embeddings
    assert m2.lm_head.weight is m2.embed_tokens.weight
    for (k, p), (k2, p2) in zip(m.named_parameters(), m2.named_parameters()):
        assert k == k2 and torch.equal(p, p2), k
    x = tokens(1, 8, device=device)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    m2b = load_model(str(tmp_path), device=device, dtype=torch.bfloat16)  # still tied after a dtype cast
    assert m2b.lm_head.weight is m2b.embed_tokens.weight
    assert m2b.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("tied", [False, True])
def test_saved_checkpoint_loads_in_transformers(tied, tmp_path, device):
    """save_model writes a real Hugging Face checkpoint: transformers gives the same logits."""
    m = our_model(num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=tied, device=device)
    save_model(m, str(tmp_path))
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval().to(device)
    x = tokens(1, 12, device=device)
    with torch.no_grad():
        assert (m(x) - hf(x).logits).abs().max().item() <= 1e-4


def test_save_keeps_extra_config_keys(tmp_path):
    hf = hf_model()
    path = save_hf(hf, tmp_path / "a")
    m = load_model(path)
    save_model(m, str(tmp_path / "b"))
    cfg = read_json(tmp_path / "b" / "config.json")
    assert cfg["initializer_range"] == 0.02  # a key model.py does not know about
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 2


def test_save_load_keeps_null_special_ids(tmp_path):
    m = our_model(bos_token_id=None, eos_token_id=None)
    save_model(m, str(tmp_path))
    m2 = load_model(str(tmp_path))
    assert m2.args.stop_ids == []  # else decoding would stop at token 2
    assert m2.args.bos_token_id is None


def test_save_bfloat16_config_dtype_consistent(tmp_path):
    m = load_model(save_hf(hf_model(), tmp_path / "a"))  # config.json has "dtype": "float32"
    save_model(m, str(tmp_path / "b"), dtype=torch.bfloat16)
    cfg = read_json(tmp_path / "b" / "config.json")
    assert cfg.get("dtype", "bfloat16") == cfg.get("torch_dtype", "bfloat16") == "bfloat16"
