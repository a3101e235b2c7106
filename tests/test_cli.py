"""Every script: --help works, and a user's mistake ends in one line starting with "error:"."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["decode.py", "bench.py", "train_sat.py", "corpus.py", "tokenizer.py", "random_checkpoint.py"]


def run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    proc = run([os.path.join(REPO, script), "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ") and "--" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["decode.py", "--method", "ar", "--tree"], "error: --tree needs --method sdsat"),
    (["decode.py", "--model", "missing-dir"], "error: model directory missing-dir does not exist"),
    (["bench.py", "--latency-only", "--sizes", "0"], "error: --sizes, --reps and --prefix must be positive"),
    (["train_sat.py", "--data", "missing-dir", "--out", "run"], "error: missing-dir has no train.bin"),
    (["corpus.py", "--out", "data", "--root", "missing-dir"], "error: --root missing-dir does not exist"),
    (["random_checkpoint.py", "--config", "missing.json", "--out", "ckpt"], "error: cannot read missing.json"),
])
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    proc = run([os.path.join(REPO, args[0]), *args[1:]], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
