"""quantize.py: weight-only int8 with per-channel scales, in memory and on disk; int4 with
a scale and a minimum per group of 32 weights, in memory.

Anchors: the round trip moves no weight by more than half its row's scale; the int8
product equals the product with the dequantized weight; greedy speculative decoding of an
int8 model equals greedy AR of the same int8 model; the checkpoint loads without pickle to
the same logits, and a damaged one is one error line.
"""

import os
import subprocess
import sys

import pytest
import torch

from checkpoint import load_model, save_model
from model import CheckpointError
from quantize import GROUP, Int4Linear, Int8Linear, dequantize_groups, quantize_groups, quantize_int4, quantize_int8, quantize_rows
from test_decode import PROMPT, REPEATING, run, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.quick
def test_round_trip_is_within_half_a_scale_per_channel():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * torch.logspace(-3, 1, 64)[:, None]
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert torch.equal(q.abs().amax(1), torch.full((64,), 127, dtype=torch.int8))  # each row spans the range
    error = (q.float() * scale[:, None] - w).abs()
    assert (error <= scale[:, None] / 2 + 1e-7 * w.abs()).all()  # rounding: half a step at most
    assert error.amax() > 0  # and it is a real rounding, not a copy


def test_int8_product_is_the_dequantized_product(device):
    layer = Int8Linear.from_float(torch.randn(40, 24, generator=torch.Generator().manual_seed(1)).to(device))
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(2)).to(device)
    dequantized = layer.weight.float() * layer.weight_scale[:, None]
    torch.testing.assert_close(layer(x), x @ dequantized.T, atol=1e-4, rtol=1e-4)


@pytest.mark.quick
@pytest.mark.parametrize("method", ["sdsat", "tree", "fused", "lookup"])
@pytest.mark.parametrize("quantize, layer, shape", [(quantize_int8, Int8Linear, {}),
                                                    (quantize_int4, Int4Linear, dict(dim=64, vocab=64))],
                         ids=["int8", "int4"])  # int4: rows of whole groups of 32, 16-row blocks
def test_greedy_speculative_decoding_of_a_quantized_model_equals_its_ar(method, quantize, layer, shape, device):
    model = quantize(tiny_model(seed=3, device=device, **shape))
    assert sum(isinstance(m, layer) for m in model.modules()) == 7 * model.args.num_hidden_layers + 1
    for prompt in (PROMPT, REPEATING):
        want, _, _ = run(model, prompt, "ar", 40)
        got, stats, _ = run(model, prompt, method, 40, k=3)
        assert got == want and stats.forwards < 40


def test_the_checkpoint_loads_to_the_same_logits_and_a_damaged_one_is_one_line(tmp_path):
    base = tmp_path / "base"
    save_model(tiny_model(seed=3), str(base))
    out = tmp_path / "int8"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "quantize.py"), "--model", str(base), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded, want = load_model(str(out)), quantize_int8(tiny_model(seed=3))
    assert isinstance(loaded.lm_head, Int8Linear) and loaded.lm_head.weight.dtype == torch.int8
    tokens = torch.tensor([PROMPT])
    with torch.no_grad():
        assert torch.equal(loaded(tokens), want(tokens))
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # cut short
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        load_model(str(out))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--model", str(out), "--latency-only",
                           "--dtype", "float32"], capture_output=True, text=True)  # needs no tokenizer
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "model.safetensors" in proc.stderr


@pytest.mark.quick
def test_int4_round_trip_is_within_half_a_step_per_group():
    w = torch.randn(16, 4 * GROUP, generator=torch.Generator().manual_seed(4)) * torch.logspace(-3, 1, 16)[:, None]
    q, scale, low = quantize_groups(w)
    assert q.min() == 0 and q.max() == 15 and scale.shape == low.shape == (16, 4)
    groups = q.view(16, 4, GROUP)
    assert (groups.amin(-1) == 0).all() and (groups.amax(-1) == 15).all()  # each group spans the range
    error = (dequantize_groups(q, scale, low) - w).abs().view(16, 4, GROUP)
    assert (error <= scale[..., None] / 2 + 1e-6 * w.abs().view(16, 4, GROUP)).all()
    assert error.amax() > 0


@pytest.mark.parametrize("rows", [48, 40])  # a multiple of 16 takes torch's int4 kernel on a CPU; 40 does not
def test_int4_product_is_the_dequantized_product(rows, device):
    weight = torch.randn(rows, 2 * GROUP, generator=torch.Generator().manual_seed(5)).to(device)
    layer = Int4Linear(weight)
    x = torch.randn(2, 5, 2 * GROUP, generator=torch.Generator().manual_seed(6)).to(device)
    dequantized = dequantize_groups(*quantize_groups(weight))
    assert hasattr(layer, "packed") == (torch.device(device).type == "cpu" and rows % 16 == 0)
    torch.testing.assert_close(layer(x), x @ dequantized.T, atol=1e-4, rtol=1e-4)


def test_int4_of_rows_not_a_multiple_of_its_group_is_one_line(tmp_path):
    from decode import load_or_exit
    save_model(tiny_model(seed=3, dim=48), str(tmp_path / "m"))  # rows of 48 weights: not groups of 32
    with pytest.raises(SystemExit) as e:
        load_or_exit(str(tmp_path / "m"), "cpu", torch.float32, quantize="int4")
    assert str(e.value) == "error: --quantize int4: int4 needs rows of a multiple of 32 weights, not 48"
