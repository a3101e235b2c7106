"""Tests for sat_delta.py: a fine-tune that changed a few blocks and one embedding row is
shipped as just those, and rebuilt on its base into exactly the fine-tuned model."""

import json
import os

import pytest
import torch

import sat_delta
from checkpoint import load_model, save_model
from model import CheckpointError, Llama, ModelArgs, init_weights


def tiny(seed=0) -> Llama:
    args = ModelArgs(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                     vocab_size=50, tie_word_embeddings=True)
    torch.manual_seed(seed)
    m = Llama(args)
    init_weights(m)
    return m


def test_make_then_apply_rebuilds_the_tuned_model(tmp_path):
    base, tuned = tiny(), tiny()
    with torch.no_grad():
        for p in tuned.layers[2].parameters():
            p.add_(0.01)
        tuned.embed_tokens.weight[7] += 0.5  # the SAT row
    tuned.args.sat_token_id, tuned.args.sat_k = 7, 5
    save_model(base, str(tmp_path / "base"))  # float32, as convert_gguf.py writes it
    save_model(tuned, str(tmp_path / "tuned"), dtype=torch.bfloat16)  # as train_sat.py exports
    kept = sat_delta.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "delta"))
    assert kept["model.embed_tokens.weight"] == "rows [7]"
    assert {n for n, how in kept.items() if how == "whole"} == {f"model.{n}" for n, _ in tuned.layers[2].named_parameters(prefix="layers.2")}
    sat_delta.apply(str(tmp_path / "base"), str(tmp_path / "delta"), str(tmp_path / "rebuilt"))
    rebuilt, exported = load_model(str(tmp_path / "rebuilt")), load_model(str(tmp_path / "tuned"))
    base_params = dict(base.named_parameters())
    for name, p in rebuilt.named_parameters():
        if name.startswith("layers.2.") or name == "embed_tokens.weight":
            want = exported.state_dict()[name].clone()
            if name == "embed_tokens.weight":  # only the SAT row comes from the delta
                want = base_params[name].detach().clone()
                want[7] = exported.embed_tokens.weight[7]
            assert torch.equal(p, want), name
        else:
            assert torch.equal(p, base_params[name]), name  # untouched, still float32
    cfg = json.load(open(tmp_path / "rebuilt" / "config.json"))
    assert (cfg["sat_token_id"], cfg["sat_k"]) == (7, 5)


def test_a_delta_over_the_cap_is_refused(tmp_path):
    base, tuned = tiny(), tiny(seed=1)  # everything differs
    save_model(base, str(tmp_path / "base"))
    save_model(tuned, str(tmp_path / "tuned"))
    with pytest.raises(CheckpointError, match="over the 0.01 MiB cap"):
        sat_delta.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "delta"), max_mib=0.01)
    assert not os.path.exists(tmp_path / "delta")


def test_a_low_rank_change_ships_as_two_factors(tmp_path):
    """Every block changed by an exact rank-2 matrix: --rank 2 stores two thin factors per
    weight matrix and rebuilds the tuned weights to bf16 rounding; rank 1 cannot."""
    base, tuned = tiny(), tiny()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in tuned.layers.parameters():
            if p.dim() == 2:
                p.add_(0.05 * torch.randn(p.shape[0], 2, generator=g) @ torch.randn(2, p.shape[1], generator=g))
            else:
                p.add_(0.01)  # norm weights: vectors, stored whole
        tuned.embed_tokens.weight[7] += 0.5
    save_model(base, str(tmp_path / "base"))
    save_model(tuned, str(tmp_path / "tuned"))
    kept = sat_delta.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "delta"), rank=2)
    matrices = {f"model.{n}" for n, p in tuned.layers.named_parameters(prefix="layers") if p.dim() == 2}
    assert {n for n, how in kept.items() if how == "rank 2, 100% of the change"} == matrices
    assert kept["model.embed_tokens.weight"] == "rows [7]"
    sat_delta.apply(str(tmp_path / "base"), str(tmp_path / "delta"), str(tmp_path / "rebuilt"))
    rebuilt = dict(load_model(str(tmp_path / "rebuilt")).named_parameters())
    before = dict(base.named_parameters())
    for name, p in tuned.named_parameters():
        if f"model.{name}" in matrices:  # the factors' bf16 rounding, relative to the change
            atol = 0.01 * (p - before[name]).abs().max().item()
        else:  # stored whole (or as rows) in bf16: rounding of the value itself
            atol = 2**-8 * p.abs().max().item()
        torch.testing.assert_close(rebuilt[name], p, atol=atol, rtol=0, msg=name)
    one = sat_delta.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "delta1"), rank=1)
    assert all(how.startswith("rank 1") and how != "rank 1, 100% of the change"
               for n, how in one.items() if n in matrices)


@pytest.mark.parametrize("other", [dict(hidden_size=16, intermediate_size=24, num_attention_heads=1),  # width
                                   dict(vocab_size=6)])  # the SAT row's id is past the end
def test_a_delta_on_another_base_is_refused_and_writes_nothing(other, tmp_path):
    base, tuned = tiny(), tiny()
    with torch.no_grad():
        tuned.embed_tokens.weight[7] += 0.5
        tuned.layers[2].mlp.down_proj.weight.add_(0.01)
    save_model(base, str(tmp_path / "base"))
    save_model(tuned, str(tmp_path / "tuned"), dtype=torch.bfloat16)
    sat_delta.make(str(tmp_path / "base"), str(tmp_path / "tuned"), str(tmp_path / "delta"))
    torch.manual_seed(0)
    wrong = Llama(ModelArgs(**{**dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2,
                                      vocab_size=50, tie_word_embeddings=True), **other}))
    init_weights(wrong)
    save_model(wrong, str(tmp_path / "wrong"))
    with pytest.raises(CheckpointError, match="does not fit .*another base model"):
        sat_delta.apply(str(tmp_path / "wrong"), str(tmp_path / "delta"), str(tmp_path / "rebuilt"))
    assert not os.path.exists(tmp_path / "rebuilt") and not os.path.exists(tmp_path / "rebuilt.building")
