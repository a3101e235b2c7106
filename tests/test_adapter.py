"""The SAT adapter (adapter.py): only SAT rows see it, so the base's own outputs never move.

Anchors: standard-position logits equal the base model's bit for bit (training layout and
decoding); greedy decoding of every method with the adapter equals the base model's greedy
autoregressive output; one training step moves SAT outputs and nothing else; the adapter
directory round-trips exactly and refuses another base in one line.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import sat
import train_sat
from adapter import grow_rank, new_adapter
from checkpoint import load_model, save_adapter, save_model
from model import CheckpointError, Llama
from test_decode import run, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [1, 3, 0, 2, 5, 7, 11, 4]


def with_adapter(model: Llama, rank: int = 4, scale: float = 0.5, seed: int = 1) -> Llama:
    """The model with a random, non-zero adapter on it (a trained one is not needed to
    show what it cannot touch)."""
    adapter = new_adapter(model, rank, model.args.sat_token_id, 3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.device))
    return model


@pytest.mark.quick
def test_standard_logits_equal_the_base_in_decoding(device):
    base = tiny_model(device=device)
    model = with_adapter(tiny_model(device=device))
    sat_id = model.args.sat_token_id
    # A draft pass, a hybrid pass (guesses, then SATs), a verify pass. A real token never
    # sees a SAT (causal: every SAT comes after it), so every real token's row must match.
    for fed in ([4, sat_id, sat_id, sat_id], [4, 9, 8, sat_id, sat_id, sat_id], [4, 9, 8]):
        tokens = torch.tensor([PROMPT + fed], device=device)
        got, want = model(tokens), base(tokens)
        standard = tokens[0] != sat_id
        assert torch.equal(got[0, standard], want[0, standard])
        if not standard.all():  # and the adapter does act at the SATs
            assert not torch.allclose(got[0, ~standard], want[0, ~standard])
    cache_a, cache_b = model.new_cache(32), base.new_cache(32)
    model(torch.tensor([PROMPT], device=device), cache=cache_a)
    base(torch.tensor([PROMPT], device=device), cache=cache_b)
    draft = torch.tensor([[4, sat_id, sat_id, sat_id]], device=device)
    assert torch.equal(model(draft, cache=cache_a)[0, 0], base(draft, cache=cache_b)[0, 0])


def test_standard_logits_equal_the_base_in_the_training_layout(device):
    base = tiny_model(device=device)
    model = with_adapter(tiny_model(device=device))
    window = torch.randint(0, 40, (2, 17), generator=torch.Generator().manual_seed(0)).to(device)
    anchors = torch.tensor([[0, 4, 9], [2, 3, 12]], device=device)
    n = window.shape[1] - 1
    ids, positions, mask, _, _ = sat.sat_batch(window, anchors, 3, model.args.sat_token_id)
    got = model(ids, positions=positions, mask=mask[:, :, n:], causal_prefix=n)
    assert torch.equal(got[:, :n], base(window[:, :n]))
    # The cached training forward (standard tokens once, then only the SATs) gives the SAT
    # rows of the one-pass layout.
    sat_logits, _, _, _ = sat.adapter_forward(model, window, anchors, 3, model.args.sat_token_id)
    torch.testing.assert_close(sat_logits, got[:, n:], atol=1e-5, rtol=1e-5)


@pytest.mark.quick
@pytest.mark.parametrize("method", ["sdsat", "tree", "fused", "draft-tree"])
def test_greedy_decoding_with_the_adapter_equals_base_ar(method, device):
    base = tiny_model(seed=3, device=device)
    model = with_adapter(tiny_model(seed=3, device=device))
    for prompt in (PROMPT, [2, 2, 7, 1, 30, 31]):
        want, _, _ = run(base, prompt, "ar", 40)
        got, stats, _ = run(model, prompt, method, 40, k=3)
        assert got == want, method
        assert stats.iterations > 0


@pytest.mark.parametrize("labels, soft", [("data", 0.0), ("model", 0.5), ("model", 1.0)])
def test_a_training_step_moves_sat_outputs_only(labels, soft, device):
    """Hard labels, soft ones (KL to the model's distribution) and a mix alike."""
    model = tiny_model(device=device)
    base = tiny_model(device=device)
    new_adapter(model, 4, model.args.sat_token_id, 3)
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    cfg = train_sat.TrainConfig(mode="adapter", k=3, sat_labels=labels, soft_labels=soft)
    window = torch.randint(0, 40, (2, 17), generator=torch.Generator().manual_seed(0)).to(device)
    anchors = torch.tensor([[0, 4, 9], [2, 3, 12]], device=device)
    opt = torch.optim.AdamW(model.adapter.parameters(), lr=1e-2)
    tokens = torch.tensor([PROMPT + [4] + [model.args.sat_token_id] * 3], device=device)
    before = model(tokens).detach()
    loss, info = sat.adapter_loss(model, window, anchors, cfg, model.args.sat_token_id)
    assert ("kl" in info) == bool(soft)
    loss.backward()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    opt.step()
    after = model(tokens).detach()
    n = len(PROMPT) + 1
    assert torch.equal(after[0, :n], before[0, :n])
    assert torch.equal(after[0, :n], base(tokens)[0, :n])
    assert not torch.allclose(after[0, n:], before[0, n:])
    for (name, p), q in zip(model.named_parameters(), base.parameters()):  # the base itself never moves
        if not name.startswith("adapter."):
            assert torch.equal(p, q), name


@pytest.mark.parametrize("bf16", [False, True])
def test_adapter_training_learns_and_exports(tmp_path, bf16):
    """A few adapter steps on a tiny model lower the SAT loss; the export loads as a model
    that computes what the trained one does. The precision is forced both ways, so the test
    means the same on a CPU with bf16 instructions (where train_sat.py's default is bf16
    autocast on a bf16 base) and on one without (float32)."""
    import numpy as np
    data = tmp_path / "data"
    data.mkdir()
    g = np.random.default_rng(0)
    cycle = g.integers(0, 40, 23)  # a repeating text: easy to look ahead in
    ids = np.tile(cycle, 60).astype(np.uint16)
    ids.tofile(data / "train.bin")
    ids[:300].tofile(data / "val.bin")
    meta = {"vocab_size": 50, "splits": {"val": {"tokens": 300, "bytes": 900}}}
    (data / "corpus.json").write_text(json.dumps(meta))
    init = tmp_path / "base"
    save_model(tiny_model(), str(init))
    cfg = train_sat.TrainConfig(mode="adapter", init=str(init), data=str(data), out=str(tmp_path / "run"),
                                k=3, rank=4, anchors=0, seq_len=32, batch_size=2, steps=30, lr=1e-2,
                                min_lr=1e-3, warmup=2, weight_decay=0.0, eval_every=30, eval_tokens=64,
                                log_every=30, sat_token_id=49, sat_labels="model", bf16=bf16)
    model, state = train_sat.train(cfg)
    assert state["start"]["sat_agree"][0] < state["log"][-1]["sat_agree"][0]
    train_sat.export(model, state, cfg, str(tmp_path / "adapter"))
    assert model.dtype == (torch.bfloat16 if bf16 else torch.float32)  # a bf16 run keeps its frozen base in bf16
    loaded = load_model(str(tmp_path / "adapter"), dtype=model.dtype)  # compared in the trained model's dtype
    assert loaded.adapter.rank == 4 and loaded.args.sat_k == 3
    tokens = torch.tensor([[1, 2, 3, 49, 49, 49]])
    with torch.no_grad():  # the export holds the adapter in bf16, the trained model in float32
        torch.testing.assert_close(loaded(tokens), model.eval()(tokens), atol=0.05, rtol=0.05)
    # a second phase from the export (--init-adapter), its rank grown to 6, keeps both phases' reports
    cfg2 = train_sat.TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "run2"), "steps": 2, "rank": 6,
                                    "init_adapter": str(tmp_path / "adapter"), "snapshot_minutes": 60.0})
    model2, state2 = train_sat.train(cfg2)
    assert model2.adapter.rank == 6
    train_sat.export(model2, state2, cfg2, str(tmp_path / "adapter2"))
    report = json.loads((tmp_path / "adapter2" / "training.json").read_text())
    assert [p["config"]["init_adapter"] for p in report["phases"]] == [None, str(tmp_path / "adapter")]
    assert [p["step"] for p in report["phases"]] == [30, 2]
    # and its last snapshot, exported on its own (--export-snapshot), is the same adapter with the same reports
    snapshot = state2["snapshots"][-1]["path"]
    model3, state3 = train_sat.snapshot_model(cfg2, snapshot, "cpu")
    train_sat.export(model3, state3, cfg2, str(tmp_path / "adapter3"))
    again = json.loads((tmp_path / "adapter3" / "training.json").read_text())
    assert [p["step"] for p in again["phases"]] == [30, 2] and again["exported_from"] == snapshot
    for (n, p), (m, q) in zip(load_model(str(tmp_path / "adapter3")).adapter.named_parameters(),
                              load_model(str(tmp_path / "adapter2")).adapter.named_parameters()):
        assert n == m and torch.equal(p, q)
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "training.json").write_text(json.dumps({"step": 99, "minutes": 1.0}))
    with pytest.raises(SystemExit, match="from step 99, after the run's checkpoint"):
        train_sat.snapshot_model(cfg2, str(tmp_path / "later"), "cpu")


@pytest.mark.quick
def test_growing_the_rank_changes_no_output_and_adds_room():
    model = with_adapter(tiny_model())
    sat_id = model.args.sat_token_id
    tokens = torch.tensor([PROMPT + [4, sat_id, sat_id, sat_id]])
    before = model(tokens)
    grow_rank(model.adapter, 7, seed=3)
    change = model.adapter.layers[0]["q_proj"]
    assert model.adapter.rank == 7 and change.a.shape[0] == 7 and change.b.shape[1] == 7
    assert torch.count_nonzero(change.b[:, 4:]) == 0 and torch.count_nonzero(change.a[4:]) > 0
    torch.testing.assert_close(model(tokens), before, rtol=0, atol=1e-6)  # extra zeros in each sum
    with pytest.raises(ValueError, match="rank 7 cannot grow to rank 5"):
        grow_rank(model.adapter, 5)


def test_save_load_round_trip_and_wrong_base(tmp_path):
    base_dir, other_dir, adapter_dir = tmp_path / "base", tmp_path / "other", tmp_path / "adapter"
    model = tiny_model()
    save_model(model, str(base_dir))
    with_adapter(model)
    save_adapter(model, str(adapter_dir), str(base_dir), torch.float32)
    assert json.loads((adapter_dir / "adapter.json").read_text())["base"] == str(base_dir)  # as given
    loaded = load_model(str(adapter_dir))
    tokens = torch.tensor([PROMPT + [4, 49, 49]])
    assert torch.equal(loaded(tokens), model(tokens))
    for (n, p), (m, q) in zip(loaded.adapter.named_parameters(), model.adapter.named_parameters()):
        assert n == m and torch.equal(p, q)
    # Another base (a wider vocabulary) in the adapter's place: one line, no traceback.
    save_model(tiny_model(vocab=60), str(other_dir))
    cfg = json.loads((adapter_dir / "adapter.json").read_text())
    cfg["base"] = "../other"  # relative: to the adapter directory
    (adapter_dir / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="vocab_size 50, but .*other has 60"):
        load_model(str(adapter_dir))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "decode.py"), "--model", str(adapter_dir),
                           "--prompt", "x"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: adapter") and "vocab_size" in proc.stderr


@pytest.mark.parametrize("method", ["sdsat", "tree", "fused"])
def test_sampling_with_the_adapter_keeps_the_autoregressive_distribution(method, device):
    """Lossless with an adapter too: the drafts change, the output distribution does not
    (chi-square against the exact distribution of the second and third new tokens)."""
    from test_decode import N_RUNS, SAMPLING_PROMPT, chi2_999, chi_square, exact_tokens23_dist, sampled_tokens23_counts
    from test_decode import sampling_model
    from sampling import Warper
    model = sampling_model(device=device)
    new_adapter(model, 2, model.args.sat_token_id, 2)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(device))
    warper = Warper(temperature=1.0)
    dist = exact_tokens23_dist(model, SAMPLING_PROMPT, warper)
    counts = sampled_tokens23_counts(model, SAMPLING_PROMPT, method, warper, model.args.sat_token_id)
    assert chi_square(counts, dist, N_RUNS) < chi2_999(len(dist) - 1)
