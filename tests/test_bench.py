"""bench.py's bookkeeping: the numbers it reports are computed from the runs it makes."""

import pytest
import torch

import bench
import bench_latency
from quantize import quantize_int8
import bench_prompts
import bench_report
import machine
from decode_tree import TREE_DEPTH5, build_tree
from model import Llama, ModelArgs, init_weights
from sampling import Warper


def tiny_model() -> Llama:
    torch.manual_seed(0)
    model = Llama(ModelArgs(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=10, sat_token_id=9, eos_token_id=None))
    init_weights(model, std=0.5)
    return model.eval()


def test_repeated_ngram_fraction():
    assert bench.repeated_ngram_fraction([1, 2, 3, 4, 5, 6]) == 0
    # 1 2 3 4 | 1 2 3 4: grams (1234)(2341)(3412)(4123)(1234) -> one repeat of five
    assert bench.repeated_ngram_fraction([1, 2, 3, 4, 1, 2, 3, 4]) == 1 / 5
    assert bench.repeated_ngram_fraction([7] * 10) == 6 / 7


def test_summary_is_consistent_with_the_runs():
    model = tiny_model()
    methods = [bench.Method("ar", "ar"), bench.Method("sdsat k=2", "chain", 2), bench.Method("sdsat tree", "tree", 5),
               bench.Method("fused k=2", "fused", 2), bench.Method("sdsat k=2 T=1", "chain", 2, Warper(1.0)),
               bench.Method("lookup", "lookup", drafts=10),
               bench.Method("draft tree", "draft_tree", shape=bench.Shape(copies=2, copy_len=3)),
               bench.Method("draft tree, chain k=3", "draft_tree", shape=bench.FUSED_CHAIN)]
    prompts = {"p": [[1, 2, 3, 4], [5, 6, 7, 1, 2]]}
    res = bench.bench_dtype(model, prompts, methods, 24, 9, [], build_tree(TREE_DEPTH5), seed=0)["p"]
    assert res["ar"]["speedup"] == 1.0 and res["ar"]["tokens_per_forward"] == 1.0
    for name in ("sdsat k=2", "sdsat tree", "fused k=2", "lookup", "draft tree", "draft tree, chain k=3"):
        r = res[name]
        assert r["exact_match"] == 2  # float32 greedy: identical to autoregressive
        assert r["new_tokens"] == 48
        assert abs(r["tokens_per_forward"] - (48 - 2) / r["forwards"]) < 1e-12
        assert abs(r["speedup"] - r["tokens_per_s"] / res["ar"]["tokens_per_s"]) < 1e-12
    assert res["sdsat k=2"]["ceiling"] == 2.0 and res["fused k=2"]["ceiling"] == 3
    assert res["fused k=2"]["tokens_fed_per_forward"] == 1 + 2 + 3 * 2
    assert res["lookup"]["tokens_fed_per_forward"] == 11 and res["lookup"]["ceiling"] == 11
    assert len(res["lookup"]["acceptance_by_position"]) == 10
    assert res["draft tree"]["tokens_fed_per_forward"] == 1 + 2 * 3  # cur + 2 copies of 3
    assert res["draft tree, chain k=3"]["tokens_fed_per_forward"] == 1 + 3 + 4 * 3  # fused k = 3's
    copies_only, chain = res["draft tree"]["accepted_from"], res["draft tree, chain k=3"]["accepted_from"]
    assert copies_only["sat"] == copies_only["both"] == 0 and chain["copy"] == chain["both"] == 0  # their sources
    assert res["sdsat k=2 T=1"]["exact_match"] is None  # sampling: no exact-match claim
    # two-step: 2 forwards per iteration, 2 + accepted tokens per iteration
    r = res["sdsat k=2"]
    assert 1 <= r["tokens_per_forward"] <= r["ceiling"]


def test_projection_arithmetic():
    lat = {1: 0.010, 6: 0.012, 36: 0.030}
    reference = {"results": {"bfloat16": {"sets": {"p": {
        "_repeated_4gram_fraction_ar": 0.5,
        "ar": {"kind": "ar", "temperature": 0, "tokens_fed_per_forward": 1, "tokens_per_forward": 1.0},
        "sdsat k=5": {"kind": "chain", "temperature": 0, "tokens_fed_per_forward": 6, "tokens_per_forward": 1.8},
        "sdsat k=5 T=1.0": {"kind": "chain", "temperature": 1.0, "tokens_fed_per_forward": 6, "tokens_per_forward": 1.2},
        "fused k=5": {"kind": "fused", "temperature": 0, "tokens_fed_per_forward": 36, "tokens_per_forward": 2.4}}}}}}
    proj = {p["method"]: p for p in bench_latency.projected_speedups(lat, reference)}
    assert set(proj) == {"sdsat k=5", "fused k=5"}  # greedy draft methods only
    assert abs(proj["sdsat k=5"]["projected_speedup"] - 1.8 * 0.010 / 0.012) < 1e-12
    assert abs(proj["fused k=5"]["projected_speedup"] - 2.4 / 3) < 1e-12
    assert abs(proj["fused k=5"]["cost_ratio"] - 3.0) < 1e-12


def test_random_checkpoint_loads_strictly(tmp_path):
    import random_checkpoint
    from checkpoint import load_model
    config = {**random_checkpoint.CODELLAMA, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "sat_token_id": 299}
    names = random_checkpoint.write_random_checkpoint(config, str(tmp_path), shard_gib=60_000 / 2**30)
    assert len(names) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    model = load_model(str(tmp_path), dtype=torch.float32)  # strict: every name and shape checked
    params = torch.cat([p.flatten() for p in model.parameters() if p.dim() == 2])
    assert abs(params.std().item() - 0.02) < 0.002 and abs(params.mean().item()) < 0.001
    assert model.args.sat_token_id == 299 and model.args.num_key_value_heads == 2
    bench_lat = bench_latency.forward_latency(model, [1, 3], prefix=4, reps=1)
    assert set(bench_lat) == {1, 3} and all(t > 0 for t in bench_lat.values())


def test_prompts_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "def f(x):\\n", "id": "f"}\n\n{"prompt": "import os"}\n')
    assert bench_prompts.file_prompts(str(path)) == [{"id": "f", "text": "def f(x):\n"}, {"id": "3", "text": "import os"}]


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a"}', '{"prompt": "b"'], "mine.jsonl line 2: not JSON"),
    (['{"prompt": "a"}', '{"id": "x"}'], 'mine.jsonl line 2: expected an object with a non-empty "prompt" string'),
    (['["a"]'], 'mine.jsonl line 1: expected an object'),
    (['{"prompt": 3}'], 'mine.jsonl line 1: expected an object'),
    (['', '  '], "mine.jsonl holds no prompts"),
])
def test_prompts_file_malformed_line_is_named(lines, message, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as e:
        bench_prompts.file_prompts(str(path))
    assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value)


CPUINFO = "processor\t: 0\nmodel name\t: Some CPU 9000\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
ARM_CPUINFO = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: {flags}\nCPU part\t: 0xd4f\n"


@pytest.mark.parametrize("text, flags, says", [
    (CPUINFO, "fpu sse2 avx2 fma", "Some CPU 9000; bf16 instructions: none"),
    (CPUINFO, "fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", "Some CPU 9000; bf16 instructions: amx_bf16, avx512_bf16"),
    (ARM_CPUINFO, "fp asimd sve bf16 i8mm", "0xd4f; bf16 instructions: bf16"),
])
def test_cpu_description_names_the_bf16_instructions(text, flags, says, tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(text.format(flags=flags))
    assert bench_report.cpu_description(str(info)) == says
    warning = machine.slow_bf16_warning(torch.device("cpu"), str(info))
    assert (warning is not None) == says.endswith("none")
    assert machine.slow_bf16_warning(torch.device("cuda"), str(info)) is None  # a GPU: not about the CPU
    assert machine.slow_bf16_warning(torch.device("cpu"), str(tmp_path / "missing")) is None  # not Linux: say nothing


def test_forward_work_counts_every_weight_a_forward_reads():
    """Bytes and FLOPs of the floor, against a count made here from the parameters."""
    for tied in (False, True):
        args = ModelArgs(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=10, tie_word_embeddings=tied)
        model = Llama(args)
        blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith("layers."))
        head = 10 * 32  # the head reads the whole matrix; a lookup reads T rows of an untied embedding
        norm = 32  # the final norm (the blocks' own are in `blocks`)
        T, prefix = 3, 5
        cache = 2 * 2 * 2 * 8 * (prefix + T) * 4  # layers x (K, V) x kv heads x head_dim x keys x 4 bytes
        nbytes, flops = bench_latency.forward_work(model, T, prefix)
        assert nbytes == (blocks + head + norm + (0 if tied else T * 32)) * 4 + cache  # tied: read once, whole
        attention = 4 * 2 * 4 * 8 * T * (prefix + T)
        matmuls = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight")) + head
        assert flops == 2 * T * matmuls + attention  # the matrices multiply; norms are not matrix products
        quantize_int8(model)  # int8 matrices: a byte a weight; a tied embedding then is a lookup again
        nbytes, flops = bench_latency.forward_work(model, T, prefix)
        scales = sum(b.numel() for n, b in model.named_buffers() if n.endswith("weight_scale"))  # float32
        assert nbytes == matmuls + (scales + 2 * 2 * 32 + norm + T * 32) * 4 + cache
        assert flops == 2 * T * matmuls + attention


def test_latency_table_shows_multiples_of_the_floor():
    res = {"forward_latency_s": {1: 0.010, 6: 0.020}, "compiled_latency_s": {1: 0.006, 6: 0.008},
           "floor": {"bandwidth_bytes_per_s": 1e10, "gemm_flops_per_s": 5e10,
                     "widths": {1: {"floor_s": 0.005, "bound": "memory"}, 6: {"floor_s": 0.0055, "bound": "memory"}}}}
    table = bench_report.latency_table(res, "float32", 128)
    assert "| 1 | 10.0 | 1.00 | 5.0 | 2.00 | memory | 6.0 | 1.00 | 1.20 |" in table
    assert "| 6 | 20.0 | 2.00 | 5.5 | 3.64 | memory | 8.0 | 1.33 | 1.45 |" in table


def test_acceptance_counts_what_the_two_step_loop_accepts(tmp_path):
    from checkpoint import save_model
    from decode import generate_sdsat
    from decode_common import prefill
    model = tiny_model()
    save_model(model, str(tmp_path / "m"))
    prompts = {"p": [[1, 2, 3, 4], [5, 6, 7, 1, 2]]}
    row = bench.acceptance([str(tmp_path / "m")], prompts, 2, 20, 9, torch.device("cpu"), "run")[0]
    accepted = iterations = 0
    histogram = [0, 0, 0]  # iterations that accepted 0, 1, 2 drafts
    for ids in prompts["p"]:
        cache = model.new_cache(64)
        _, stats = generate_sdsat(model, cache, prefill(model, cache, ids), 20, Warper(), 2, 9)
        accepted, iterations = accepted + sum(stats.accepted), iterations + len(stats.accepted)
        for a in stats.accepted:
            histogram[a] += 1
    assert row["p"] == round(accepted / iterations, 3) and row["run"] == "run"
    assert row["p_at_least"] == [round((histogram[1] + histogram[2]) / iterations, 3),
                                 round(histogram[2] / iterations, 3)]


def test_progress_in_a_log_file_is_one_line_each(capsys):
    """Piped into a log (not a terminal), progress is plain lines, not carriage returns."""
    bench.progress("heldout prompt 1/4: ar")
    bench.progress("heldout prompt 2/4: ar")
    bench.progress("")
    assert capsys.readouterr().err == "  heldout prompt 1/4: ar\n  heldout prompt 2/4: ar\n"
