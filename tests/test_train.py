"""train_sat.py: the SAT layout, the frozen-embedding loss, DDP, and kill-and-resume."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import assert_same_on_cpu_close_on_cuda, stdlib_corpus
import train_sat
import trainer
from decode import generate_ar
from decode_common import prefill
from checkpoint import load_model, save_model
from model import Llama, ModelArgs, init_weights
from sampling import Warper
import sat
from sat import IGNORE, sat_batch
from train_sat import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny corpus built by corpus.py from 80 standard-library files."""
    out = stdlib_corpus(tmp_path_factory, 80)
    with open(os.path.join(out, "corpus.json")) as f:
        assert json.load(f)["splits"]["val"]["files"] > 0
    return out


def tiny_model(vocab=400, tied=True, seed=0, sat_id=4) -> Llama:
    torch.manual_seed(seed)
    model = Llama(ModelArgs(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=vocab, tie_word_embeddings=tied,
                            sat_token_id=sat_id, max_position_embeddings=128))
    init_weights(model, std=0.1)
    return model


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("init"))
    save_model(tiny_model(), path)
    return path


def small_cfg(data, init, out, **kw) -> TrainConfig:
    base = dict(mode="sat", data=data, init=init, out=out, seq_len=32, batch_size=4, k=3, anchors=5,
                steps=1, lr=1e-2, warmup=1, bf16=False, eval_every=1000, eval_tokens=256, log_every=1000,
                ckpt_minutes=1000)
    return TrainConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- layout


def test_layout_matches_the_hand_worked_example(device):
    """The docstring's picture: N = 8, anchors 2 and 5, k = 3."""
    window = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18]], device=device)  # y0..y8
    anchors = torch.tensor([[2, 5]], device=device)
    ids, positions, mask, labels, offsets = sat_batch(window, anchors, 3, sat_id=99)
    assert {t.device for t in (ids, positions, mask, labels, offsets)} == {window.device}
    assert ids.tolist() == [[10, 11, 12, 13, 14, 15, 16, 17, 99, 99, 99, 99, 99, 99]]
    assert positions.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 6, 7, 8]]
    assert labels.tolist() == [[11, 12, 13, 14, 15, 16, 17, 18, 14, 15, 16, 17, 18, IGNORE]]
    assert offsets.tolist() == [[0] * 8 + [1, 2, 3, 1, 2, 3]]
    grid = """
        x.............
        xx............
        xxx...........
        xxxx..........
        xxxxx.........
        xxxxxx........
        xxxxxxx.......
        xxxxxxxx......
        xxx.....x.....
        xxx.....xx....
        xxx.....xxx...
        xxxxxx.....x
        xxxxxx.....xx
        xxxxxx.....xxx"""
    expected = [[c == "x" for c in row.strip()] for row in grid.strip().splitlines()]
    expected = [row + [False] * (14 - len(row)) for row in expected]
    assert mask[0, 0].tolist() == expected


def test_augmented_standard_logits_equal_plain_forward_bitwise(device):
    model = tiny_model(vocab=50).to(device).eval()
    torch.manual_seed(1)
    window = torch.randint(5, 50, (2, 41)).to(device)
    anchors = torch.stack([torch.randperm(36)[:7].sort().values for _ in range(2)]).to(device)
    ids, positions, mask, _, _ = sat_batch(window, anchors, 4, sat_id=4)
    with torch.no_grad():
        augmented = model(ids, positions=positions, mask=mask[:, :, 40:], causal_prefix=40)
        plain = model(window[:, :40])
        one_mask = model(ids, positions=positions, mask=mask)  # the same layout as one mask
    assert_same_on_cpu_close_on_cuda(augmented[:, :40], plain)
    # with a single masked attention over all T keys, only float summation order differs
    torch.testing.assert_close(one_mask, augmented, atol=1e-5, rtol=1e-5)


def test_sat_logits_equal_decoding_with_a_cache(device):
    """A SAT group in training sees what decoding's [cur, S*k] block sees after the
    cache holds y[0..p-1]: same outputs."""
    model = tiny_model(vocab=50).to(device).eval()
    window = torch.randint(5, 50, (1, 30), generator=torch.Generator().manual_seed(2)).to(device)
    p, k = 17, 4
    ids, positions, mask, _, _ = sat_batch(window, torch.tensor([[p]], device=device), k, sat_id=4)
    with torch.no_grad():
        train_out = model(ids, positions=positions, mask=mask[:, :, 29:], causal_prefix=29)[0, 29:]
        cache = model.new_cache(64)
        model(window[:, :p], cache=cache)
        block = torch.tensor([[int(window[0, p])] + [4] * k], device=device)
        decode_out = model(block, cache=cache)[0, 1:]
    torch.testing.assert_close(train_out, decode_out, atol=1e-5, rtol=1e-5)


def test_self_distillation_labels_are_the_greedy_continuation(device):
    teacher = tiny_model(vocab=50, seed=3).to(device).eval()
    window = torch.randint(5, 50, (2, 33), generator=torch.Generator().manual_seed(4)).to(device)
    anchors = torch.tensor([[3, 10, 20], [0, 7, 28]], device=device)
    k = 3
    labels = sat.greedy_continuation_labels(teacher, window, anchors, k).view(2, 3, k)
    for b in range(2):
        for a, p in enumerate(anchors[b].tolist()):
            cache = teacher.new_cache(64)
            prompt = window[b, :p + 1].tolist()
            out, _ = generate_ar(teacher, cache, prefill(teacher, cache, prompt), k + 1, Warper())
            assert labels[b, a].tolist() == out[1:], (b, p)


# ----------------------------------------------------------------------------- what trains


def one_step(data_dir, init_dir, tmp_path, device, **kw):
    """(the starting model, the trained one, its state); training runs on `device`, both
    models come back on the CPU."""
    cfg = small_cfg(data_dir, init_dir, str(tmp_path / "run"), **kw)
    model, state = train_sat.train(cfg, device)
    return load_model(init_dir), model.cpu(), state


@pytest.mark.parametrize("tied", [True, False])
def test_freezing_after_an_optimiser_step(data_dir, tmp_path, device, tied):
    init = str(tmp_path / "init")
    save_model(tiny_model(tied=tied), init)
    before, after, _ = one_step(data_dir, init, tmp_path, device, steps=2)
    sat = 4
    rows = torch.ones(400, dtype=torch.bool)
    rows[sat] = False
    assert torch.equal(before.embed_tokens.weight[rows], after.embed_tokens.weight[rows])
    assert not torch.equal(before.embed_tokens.weight[sat], after.embed_tokens.weight[sat])
    assert torch.equal(before.norm.weight, after.norm.weight)
    if not tied:
        assert torch.equal(before.lm_head.weight, after.lm_head.weight)
    assert not torch.equal(before.layers[0].mlp.up_proj.weight, after.layers[0].mlp.up_proj.weight)
    assert after.args.sat_token_id == sat and after.args.sat_k == 3


@pytest.mark.parametrize("tied", [True, False])
def test_sat_only_leaves_standard_logits_bit_identical(data_dir, tmp_path, device, tied):
    init = str(tmp_path / "init")
    save_model(tiny_model(tied=tied), init)
    before, after, _ = one_step(data_dir, init, tmp_path, device, mode="sat-only", steps=3)
    assert not torch.equal(before.embed_tokens.weight[4], after.embed_tokens.weight[4])
    x = torch.randint(5, 400, (2, 30), generator=torch.Generator().manual_seed(5))
    after.eval()
    with torch.no_grad():
        a, b = before(x), after(x)
    keep = torch.ones(400, dtype=torch.bool)
    if tied:  # the head's SAT row is the SAT embedding row: only the SAT's own logit moves
        keep[4] = False
    assert torch.equal(a[..., keep], b[..., keep])


def test_appends_a_sat_row_when_there_is_no_spare_id(data_dir, tmp_path, device):
    init = str(tmp_path / "init")
    save_model(tiny_model(sat_id=None, tied=False), init)
    before, after, _ = one_step(data_dir, init, tmp_path, device)
    assert after.args.vocab_size == 401 and after.args.sat_token_id == 400
    assert after.lm_head.weight.shape[0] == 401
    torch.testing.assert_close(after.embed_tokens.weight[:400], before.embed_tokens.weight)
    out = str(tmp_path / "saved")
    save_model(after, out)
    assert load_model(out).args.sat_token_id == 400


@pytest.mark.parametrize("kw", [dict(std_loss="kl"), dict(sat_labels="self")])
def test_kl_and_self_distillation_modes_train(data_dir, init_dir, tmp_path, device, kw):
    before, after, state = one_step(data_dir, init_dir, tmp_path, device, steps=2, **kw)
    assert state["step"] == 2
    assert not torch.equal(before.layers[1].self_attn.q_proj.weight, after.layers[1].self_attn.q_proj.weight)


def test_export_keeps_the_report_of_every_fine_tuning_phase(data_dir, init_dir, tmp_path, device):
    """Fine-tune twice: the second export's training.json holds both phases, in order."""
    for phase, init in ((1, init_dir), (2, str(tmp_path / "phase1"))):
        cfg = small_cfg(data_dir, init, str(tmp_path / f"run{phase}"), steps=phase, seed=phase)
        model, state = train_sat.train(cfg, device)
        train_sat.export(model, state, cfg, str(tmp_path / f"phase{phase}"))
    with open(tmp_path / "phase1" / "training.json") as f:
        assert "phases" not in json.load(f)  # the init was not a fine-tune
    with open(tmp_path / "phase2" / "training.json") as f:
        report = json.load(f)
    assert [p["config"]["init"] for p in report["phases"]] == [init_dir, str(tmp_path / "phase1")]
    assert [p["step"] for p in report["phases"]] == [1, 2] and report["step"] == 2


def test_kl_std_loss_is_zero_at_the_start(data_dir, init_dir, device):
    """KL to the frozen starting model vanishes before any update."""
    cfg = small_cfg(data_dir, init_dir, "unused", std_loss="kl")
    model = load_model(init_dir, device=device)
    teacher = load_model(init_dir, device=device)
    window = trainer.TokenData(data_dir).batch(0, cfg).to(device)
    anchors = sat.choose_anchors(0, cfg, cfg.seq_len, cfg.batch_size).to(device)
    _, info = sat.sat_loss(model, window, anchors, cfg, 4, teacher)
    assert abs(info["l_std"]) < 1e-6 and info["ce_std"] > 1


@pytest.mark.quick
def test_anchors_start_where_asked_and_every_group_fits():
    cfg = TrainConfig(k=5, anchors=8, anchors_from=40, seed=3)
    rows = sat.choose_anchors(7, cfg, 63, 4)
    assert rows.shape == (4, 8) and rows.min() >= 40 and rows.max() <= 63 - 1 - 5
    assert all(torch.equal(r, r.unique()) for r in rows)  # sorted, distinct
    cfg.anchors = 0  # dense: every position from anchors_from on
    assert sat.choose_anchors(0, cfg, 63, 1).tolist() == [list(range(40, 58))]
    cfg.anchors_from = 0  # the default draws the same anchors as before the option existed
    cfg.anchors = 8
    g = np.random.default_rng([3, 7, 1])
    assert sat.choose_anchors(7, cfg, 63, 1).tolist() == [sorted(g.choice(58, 8, replace=False).tolist())]
    with pytest.raises(SystemExit, match="--anchors-from 60 leaves no anchor"):
        train_sat.check_config(TrainConfig(k=5, seq_len=63, anchors_from=60))


@pytest.mark.quick
def test_accepted_drafts_stop_at_the_first_miss():
    hits = torch.tensor([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert sat.leading_hits(hits).tolist() == [2, 0, 5, 1]


# ----------------------------------------------------------------------------- DDP


def ddp_worker(rank, port, data_dir, init_dir, out_dir, zero):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    cfg = small_cfg(data_dir, init_dir, out_dir, batch_size=2, steps=2, zero=zero)
    model, _ = train_sat.train(cfg, torch.device("cpu"), rank, 2)
    if rank == 0:
        save_model(model, os.path.join(out_dir, "model"))
    torch.distributed.barrier()  # as train_sat.main: no rank tears down while another still talks
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("zero", [False, True])
def test_ddp_two_processes_equal_one_process(data_dir, init_dir, tmp_path, zero):
    """Same parameters after two steps, and (ZeRO gathering its shards) the same AdamW state
    in the checkpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "ddp")
    torch.multiprocessing.spawn(ddp_worker, args=(port, data_dir, init_dir, out, zero), nprocs=2)
    single_out = str(tmp_path / "single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same products, whatever earlier tests left set
    try:
        single, _ = train_sat.train(small_cfg(data_dir, init_dir, single_out, batch_size=4, steps=2))
    finally:
        torch.set_num_threads(threads)
    ddp = load_model(os.path.join(out, "model"))
    start = load_model(init_dir)
    for (name, a), b, c in zip(single.named_parameters(), ddp.parameters(), start.parameters()):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)
    assert any(not torch.equal(a, c) for a, c in zip(single.parameters(), start.parameters()))
    with safe_open(os.path.join(out, "checkpoint.safetensors"), "pt") as f, \
            safe_open(os.path.join(single_out, "checkpoint.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys()) and any(k.startswith("adam.exp_avg.") for k in g.keys())
        for key in g.keys():
            torch.testing.assert_close(f.get_tensor(key), g.get_tensor(key), atol=2e-6, rtol=1e-4, msg=key)


# ----------------------------------------------------------------------------- kill and resume


def pretrain_cmd(data_dir, out, device):
    return [sys.executable, os.path.join(REPO, "train_sat.py"), "--device", device.type, "--mode", "pretrain", "--data", data_dir,
            "--out", out, "--dim", "32", "--n-layers", "2", "--n-heads", "2", "--ffn", "64",
            "--seq-len", "32", "--batch-size", "4", "--steps", "8", "--warmup", "2", "--log-every", "1",
            "--eval-every", "1000", "--eval-tokens", "256", "--ckpt-minutes", "0", "--threads", "1"]


def losses(text):
    return {line.split()[1]: line.split()[3] for line in text.splitlines() if line.startswith("step ")}


def test_kill_and_resume_continues_with_the_same_data(data_dir, tmp_path, device):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(pretrain_cmd(data_dir, str(tmp_path / "ref"), device), capture_output=True, text=True,
                         env=env, check=True).stdout
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(pretrain_cmd(data_dir, out, device), stdout=subprocess.PIPE, text=True, env=env)
    first = ""
    for line in proc.stdout:
        first += line
        if line.startswith("step 4/8"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    second = subprocess.run(pretrain_cmd(data_dir, out, device), capture_output=True, text=True, env=env,
                            check=True).stdout
    resumed_at = int(second.split("resumed from")[1].split("at step")[1].split()[0])
    assert 3 <= resumed_at <= 5
    ref_losses, new = losses(ref), losses(second)
    assert set(new) == {f"{s}/8" for s in range(resumed_at + 1, 9)}
    assert all(new[s] == ref_losses[s] for s in new)  # same batches, same numbers
    with safe_open(os.path.join(out, "checkpoint.safetensors"), "pt") as f, \
            safe_open(str(tmp_path / "ref" / "checkpoint.safetensors"), "pt") as g:
        for key in g.keys():
            assert torch.equal(f.get_tensor(key), g.get_tensor(key)), key


@pytest.mark.parametrize("flags, device, bf16, said", [
    ([], "cpu", False, "precision: float32 (this CPU (Fake CPU) has no bf16 instructions; --bf16 to use it anyway)"),
    (["avx512_bf16", "amx_bf16"], "cpu", True, "precision: bfloat16 autocast (this CPU has amx_bf16, avx512_bf16)"),
])
def test_precision_follows_the_cpu_unless_asked(flags, device, bf16, said, monkeypatch):
    """bf16 autocast by default only where the hardware has bf16 products; it says which."""
    monkeypatch.setattr(trainer, "cpu_info", lambda: ("Fake CPU", sorted(flags)))
    lines = []
    cfg = TrainConfig()
    trainer.resolve_precision(cfg, torch.device(device), lines.append)
    assert cfg.bf16 is bf16 and lines == [said]
    asked = TrainConfig(bf16=True)  # asked for: kept, with the slow-path warning where it applies
    monkeypatch.setattr(trainer, "slow_bf16_warning", lambda d: None if flags else "warning: slow")
    lines.clear()
    trainer.resolve_precision(asked, torch.device(device), lines.append)
    assert asked.bf16 is True and lines == ([] if flags else ["warning: slow"])


def test_draft_ranks_hit_rates_and_calibration_worked_by_hand():
    """Two anchors, k = 2, five tokens; the SAT distributions are given as probabilities."""
    probs = torch.tensor([[[0.95, 0.02, 0.01, 0.01, 0.01],   # anchor 0, SAT 1: the model's token 0 is rank 0
                           [0.10, 0.45, 0.25, 0.10, 0.10]],  # SAT 2: token 3; 0.45 and 0.25 above it: rank 2
                          [[0.05, 0.10, 0.15, 0.30, 0.40],   # anchor 1, SAT 1: token 4, rank 0
                           [0.02, 0.02, 0.92, 0.02, 0.02]]])  # SAT 2: token 2, rank 0
    labels = torch.tensor([[0, 3], [4, 2]])
    logits = probs.log()
    assert sat.draft_ranks(logits, labels).tolist() == [[0, 2], [0, 0]]
    assert sat.draft_ranks(logits, labels, cap=2).tolist() == [[0, -1], [0, 0]]  # past the cap: -1
    stats = sat.rank_stats(logits, labels)
    assert stats["top"] == {"1": [1.0, 0.5], "2": [1.0, 0.5], "4": [1.0, 1.0]}
    # top-1 probabilities 0.95 (hit), 0.45 (miss), 0.40 (hit), 0.92 (hit): bins [0.4, 0.5) and [0.9, 1]
    assert stats["calibration"] == [{"bin": [0.4, 0.5], "count": 2, "predicted": 0.425, "hit": 0.5},
                                    {"bin": [0.9, 1.0], "count": 2, "predicted": 0.935, "hit": 1.0}]


def test_soft_loss_is_the_kl_from_the_models_distribution_to_the_sats():
    """p = (1/2, 1/2), q = (1/4, 3/4): KL(p || q) = 1/2 ln 2 + 1/2 ln (2/3), and 0 for q = p."""
    import math
    p, q = torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    got = sat.soft_loss(q.log() + 3.0, p.log() - 1.0)  # logits: any shift, the same distributions
    assert got[0].item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    assert got[1].item() == pytest.approx(0.0, abs=1e-7)
