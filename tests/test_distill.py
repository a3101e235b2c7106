"""distill.py: a model's own greedy continuations as a corpus, and windows that stay inside a record."""

import json
import os

import numpy as np
import pytest
import torch

import distill
from checkpoint import save_model
from test_decode import tiny_model, uncached_greedy
from trainer import TokenData


@pytest.fixture
def corpus(tmp_path):
    """A tiny model (no tokenizer: the hash check is skipped) and a corpus of its ids, with
    BOS (1) and EOS (2) at document boundaries."""
    model_dir = tmp_path / "model"
    save_model(tiny_model(vocab=50), str(model_dir))
    data = tmp_path / "data"
    data.mkdir()
    g = np.random.default_rng(0)
    docs = [np.concatenate([[1], g.integers(3, 50, 40), [2]]) for _ in range(30)]
    np.concatenate(docs).astype(np.uint16).tofile(data / "train.bin")
    np.concatenate(docs[:5]).astype(np.uint16).tofile(data / "val.bin")
    (data / "corpus.json").write_text(json.dumps({"vocab_size": 50, "tokenizer_sha256": None}))
    return str(model_dir), str(data)


def run(model_dir, data, out, records, batch_size=3):
    return distill.distill(model_dir, data, out, records, 2, prompt_tokens=6, new_tokens=10,
                           batch_size=batch_size, seed=0, device=torch.device("cpu"), avoid=(1, 2))


def test_records_are_prompts_from_the_split_and_the_models_own_greedy_text(corpus, tmp_path):
    model_dir, data = corpus
    out = str(tmp_path / "out")
    report = run(model_dir, data, out, records=7)
    assert report["record_tokens"] == 16 and report["splits"]["train"]["records"] == 7
    records = np.fromfile(os.path.join(out, "train.bin"), dtype=np.uint16).reshape(7, 16).astype(int)
    stream = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16).astype(int).tolist()
    model = tiny_model(vocab=50)
    for r in records:
        prompt = r[:6].tolist()
        assert 1 not in prompt and 2 not in prompt  # no document boundary inside a prompt
        assert any(stream[i:i + 6] == prompt for i in range(len(stream) - 5))  # a window of the training split
        assert r[6:].tolist() == uncached_greedy(model, prompt, 10)  # batched generation = greedy, token for token
    meta = json.loads(open(os.path.join(out, "corpus.json")).read())
    assert meta["record_tokens"] == 16 and meta["splits"]["val"]["records"] == 2


def test_whole_line_prompts_end_at_a_line_end(corpus):
    _, data = corpus
    stream = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16)
    ends = {7, 11}  # ids standing for tokens that end a line
    prompts = distill.pick_prompts(stream, 20, 6, [0, False], 0, {1, 2}, ends)
    assert all(int(p[-1]) in ends and not {1, 2} & set(p.tolist()) for p in prompts)
    anywhere = distill.pick_prompts(stream, 20, 6, [0, False], 0, {1, 2})
    assert not all(int(p[-1]) in ends for p in anywhere)  # without it they end anywhere


def test_whole_lines_needs_the_tokenizer_in_one_line(corpus, tmp_path):
    model_dir, data = corpus
    with pytest.raises(SystemExit, match="--whole-lines needs"):
        distill.distill(model_dir, data, str(tmp_path / "o"), 2, 1, prompt_tokens=6, new_tokens=4, batch_size=2,
                        seed=0, device=torch.device("cpu"), avoid=(1, 2), whole_lines=True)


def test_a_killed_run_goes_on_where_it_stopped(corpus, tmp_path):
    model_dir, data = corpus
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    run(model_dir, data, whole, records=7)
    run(model_dir, data, resumed, records=4)  # the first run, cut short after 4 records ...
    partial = os.path.join(resumed, "train.bin.partial")
    os.replace(os.path.join(resumed, "train.bin"), partial)
    with open(partial, "ab") as f:
        f.write(b"\x05\x00" * 5)  # ... and a batch cut short by the kill
    run(model_dir, data, resumed, records=7)  # the same command again
    for split in ("train.bin", "val.bin"):
        assert open(os.path.join(whole, split), "rb").read() == open(os.path.join(resumed, split), "rb").read()


def test_windows_stay_inside_one_record(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    records = np.arange(10 * 16).reshape(10, 16) % 40
    records[:, 0] = 49  # a marker at every record start
    records.astype(np.uint16).tofile(data / "train.bin")
    records[:2].astype(np.uint16).tofile(data / "val.bin")
    (data / "corpus.json").write_text(json.dumps({"vocab_size": 50, "record_tokens": 16}))

    class Cfg:
        seed, seq_len, batch_size = 0, 11, 64
    batch = TokenData(str(data)).batch(0, Cfg)
    assert batch.shape == (64, 12)
    assert all(49 not in row[1:].tolist() for row in batch)  # no record start after the first token
    Cfg.seq_len = 16
    with pytest.raises(SystemExit, match="does not fit"):
        TokenData(str(data)).batch(0, Cfg)


def test_a_benchmark_prompt_in_the_training_split_is_refused_in_one_line(corpus, tmp_path):
    model_dir, data = corpus
    stream = np.fromfile(os.path.join(data, "train.bin"), dtype=np.uint16).astype(int).tolist()
    inside = [("HumanEval/7", [9, 9] + stream[100:124]), ("short", [5, 6, 7])]  # ids [2, 26) are the stream's
    outside = [("held-out file a.py", [9, 9] + [49] * 24)]  # never in the stream (ids 3..49 at random)
    assert distill.find_overlaps(np.asarray(stream, dtype=np.uint16), inside) == [("HumanEval/7", 100)]
    assert distill.find_overlaps(np.asarray(stream, dtype=np.uint16), outside) == []
    with pytest.raises(SystemExit, match=r"^error: .* holds the text of HumanEval/7, prompts bench.py measures with "
                                         r"\(in token 100\)"):
        distill.distill(model_dir, data, str(tmp_path / "o"), 2, 1, prompt_tokens=6, new_tokens=4, batch_size=2,
                        seed=0, device=torch.device("cpu"), avoid=(1, 2), benchmark_prompts=inside)
    assert not os.path.exists(tmp_path / "o")  # refused before anything is written
    report = distill.distill(model_dir, data, str(tmp_path / "o2"), 2, 1, prompt_tokens=6, new_tokens=4,
                             batch_size=2, seed=0, device=torch.device("cpu"), avoid=(1, 2), benchmark_prompts=outside)
    assert report["splits"]["train"]["records"] == 2


def test_the_command_refuses_a_corpus_holding_a_held_out_file(tmp_path):
    """End to end: a corpus built from the stdlib's held-out file under another name (so it
    lands in the training split) is refused by distill.py in one line, naming the prompt and
    the document; corpus.py --exclude of that document makes a corpus distill.py takes."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import corpus
    from model import DEFAULT_MODEL
    held_out = json.load(open(os.path.join(DEFAULT_MODEL, "corpus.json")))["splits"]["val"]["paths"][0]
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], held_out), src / "copied_here.py")
    assert not corpus.is_held_out("copied_here.py")
    data = tmp_path / "data"
    corpus.build(str(data), vocab_size=400, root=str(src))
    model_dir = tmp_path / "model"
    save_model(tiny_model(vocab=400), str(model_dir))
    shutil.copy(data / "tokenizer.model", model_dir / "tokenizer.model")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, "distill.py"), "--model", str(model_dir), "--data",
                           str(data), "--out", str(tmp_path / "out"), "--records", "2",
                           "--val-records", "1", "--prompt-tokens", "8", "--new-tokens", "4"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {data}'s training split holds the text of held-out file {held_out}")
    assert proc.stderr.endswith("(in copied_here.py): rebuild the corpus with corpus.py --exclude copied_here.py\n")
    held = next(f"v{i}.py" for i in range(1000) if corpus.is_held_out(f"v{i}.py"))  # a document of each split
    kept = next(f"t{i}.py" for i in range(1000) if not corpus.is_held_out(f"t{i}.py"))
    shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], "abc.py"), src / held)
    shutil.copy(os.path.join(sysconfig.get_paths()["stdlib"], "bisect.py"), src / kept)
    corpus.build(str(data), vocab_size=400, root=str(src), exclude=["copied_here.py"])
    shutil.copy(data / "tokenizer.model", model_dir / "tokenizer.model")  # retrained without it
    proc = subprocess.run(proc.args, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
