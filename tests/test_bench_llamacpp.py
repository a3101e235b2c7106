"""bench_llamacpp.py without llama.cpp: reading llama-bench's JSON, the one-line errors, and
a whole run on the demo model beside a stand-in llama-bench that prints a fixed sample."""

import json
import os
import stat
import subprocess
import sys

import pytest

import bench_llamacpp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A HAND-WRITTEN sample of `llama-bench -o json`'s format (the fields of llama.cpp b11434's
# llama-bench.cpp, values made up, most fields left out): a prompt test and a decode test.
SAMPLE = [
    {"build_commit": "unknown", "build_number": 11434, "model_filename": "m.gguf", "model_type": "llama 135M BF16",
     "n_threads": 1, "n_prompt": 512, "n_gen": 0, "n_depth": 0, "avg_ts": 900.0, "samples_ts": [899.0, 901.0]},
    {"build_commit": "unknown", "build_number": 11434, "model_filename": "m.gguf", "model_type": "llama 135M BF16",
     "n_threads": 1, "n_prompt": 0, "n_gen": 64, "n_depth": 96, "avg_ts": 100.0, "samples_ts": [99.0, 100.0, 101.0]},
]


def fake_llama_bench(tmp_path) -> str:
    """An executable that answers as llama-bench does, with SAMPLE's decode row, and records its arguments."""
    path = tmp_path / "llama-bench"
    row = json.dumps([SAMPLE[1]])
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/args\ncat <<'EOF'\n{row}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def one_line_error(argv) -> str:
    with pytest.raises(SystemExit) as e:
        bench_llamacpp.main(argv)
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_decode_rows_keep_the_decode_test_only():
    rows = bench_llamacpp.decode_rows(json.dumps(SAMPLE, indent=2))
    assert [r["n_gen"] for r in rows] == [64] and rows[0]["samples_ts"] == [99.0, 100.0, 101.0]


def test_output_that_is_not_json_is_one_line():
    with pytest.raises(SystemExit) as e:
        bench_llamacpp.decode_rows("main: error: failed to load model\n")
    assert str(e.value).startswith("error: llama-bench's output is not JSON") and "\n" not in str(e.value)


def test_missing_binary_and_gguf_are_one_line(tmp_path):
    missing = str(tmp_path / "nowhere" / "llama-bench")
    assert f"no llama-bench at {missing}" in one_line_error(["--llama-bench", missing, "--gguf", "m.gguf"])
    build = tmp_path / "build"  # a build directory without bin/llama-bench
    build.mkdir()
    message = one_line_error(["--llama-bench", str(build), "--gguf", "m.gguf"])
    assert f"no llama-bench at {build}/bin/llama-bench" in message
    gguf = str(tmp_path / "m.gguf")
    assert one_line_error(["--llama-bench", fake_llama_bench(tmp_path), "--gguf", gguf]) == \
        f"error: GGUF file {gguf} does not exist"


def test_help():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench_llamacpp.py"), "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "llama-bench -t 1 -p 0" in proc.stdout


def test_a_round_beside_a_stand_in(tmp_path):
    """Every side gets a row; llama-bench is asked for one thread, no prompt test, our depth."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    out = tmp_path / "out"
    bench_llamacpp.main(["--llama-bench", fake_llama_bench(tmp_path), "--gguf", str(gguf),
                         "--model", os.path.join(REPO, "models", "tiny-code-llama-sat"), "--dtype", "float32",
                         "--n-prompts", "1", "--new-tokens", "8", "--rounds", "2", "--reps", "3", "--out", str(out)])
    record = json.loads((out / "llamacpp.json").read_text())
    assert [r["side"] for r in record["rows"]] == ["llama.cpp", "ours, ar", "ours, draft tree", "ours, lookup"]
    assert record["rows"][0]["samples"] == [100.0, 100.0] and record["llama_cpp_version"] == "b11434 (commit unknown)"
    assert all(r["rounds"] == 2 and r["min"] > 0 for r in record["rows"])
    args = (tmp_path / "args").read_text().split("\n")[0].split()
    assert args == ["-m", str(gguf), "-t", "1", "-p", "0", "-n", "8", "-d", str(record["depth"]), "-r", "3",
                    "-o", "json"]
    assert "| llama.cpp | m.gguf | 100.0 | 100.0 | 100.0 |" in (out / "llamacpp.md").read_text()
