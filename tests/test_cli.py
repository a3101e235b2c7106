"""Every script: --help works and shows every default, a user's mistake ends in one line
starting with "error:" before anything is printed, and Ctrl-C ends a run quietly."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from conftest import stdlib_corpus
from model import BASE_MODEL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["decode.py", "bench.py", "train_sat.py", "corpus.py", "tokenizer.py", "random_checkpoint.py",
           "sat_delta.py", "convert_gguf.py"]


def run(args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)


@pytest.mark.quick
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, tmp_path):
    proc = run([os.path.join(REPO, script), "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ") and "--" in proc.stdout


def options(help_text: str) -> dict[str, str]:
    """--help's option entries: the first line's flags and metavar -> the help text."""
    entries, head = {}, None
    for line in help_text.split("options:", 1)[1].splitlines():
        if re.match(r"  -", line):
            head, _, text = line.strip().partition("  ")
            entries[head] = text.strip()
        elif head and line.strip():
            entries[head] += " " + line.strip()
    return entries


@pytest.mark.parametrize("script", ["decode.py", "bench.py", "train_sat.py"])
def test_every_option_has_help_with_its_default(script, tmp_path):
    entries = options(run([os.path.join(REPO, script), "--help"], tmp_path).stdout)
    assert len(entries) > 10
    for head, text in entries.items():
        flags = head.split(", ")
        takes_value = " " in flags[-1] or flags[-1] == "--no-" + flags[0][2:]  # a metavar, or --x/--no-x
        if head != "-h, --help":
            assert text, f"{script} {head} has no help"
        if takes_value:
            assert "default" in text, f"{script} {head}: {text!r} does not say its default"


def test_choices_are_listed(tmp_path):
    train = run([os.path.join(REPO, "train_sat.py"), "--help"], tmp_path).stdout
    decode = run([os.path.join(REPO, "decode.py"), "--help"], tmp_path).stdout
    for flag, choices in (("--mode", "{sat,adapter,sat-only,pretrain}"), ("--std-loss", "{ce,kl}"),
                          ("--sat-labels", "{data,self,model}")):
        assert f"{flag} {choices}" in train
    assert "--method {ar,sdsat,fused" in decode


@pytest.fixture(scope="module")
def long_position_model(tmp_path_factory):
    """The demo model with 10 million positions in its config: only memory can stop a huge --k."""
    src, out = os.path.join(REPO, "models", "tiny-code-llama-sat"), tmp_path_factory.mktemp("long")
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    with open(out / "config.json", "w") as f:
        json.dump({**config, "max_position_embeddings": 10**7}, f)
    for name in ("model.safetensors", "tokenizer.model"):
        os.symlink(os.path.join(src, name), out / name)
    return str(out)


@pytest.mark.quick
@pytest.mark.parametrize("args, message", [
    (["decode.py", "--method", "ar", "--tree"], "error: --tree does nothing with --method ar"),
    (["decode.py", "--method", "fused", "--tree"], "error: --tree does nothing with --method fused"),
    (["decode.py", "--method", "ar", "--trace"], "error: --trace does nothing with --method ar"),
    (["decode.py", "--method", "ar", "--k", "3"], "error: --k does nothing with --method ar"),
    (["decode.py", "--sat-token-id", "4"], "error: --sat-token-id does nothing with --method ar"),
    (["decode.py", "--method", "sdsat", "--tree", "--k", "3"], "error: --k does nothing with --tree"),
    (["decode.py", "--method", "sdsat", "--sat-token-id", "99999"], "error: SAT id 99999 is outside the vocabulary"),
    (["decode.py", "--method", "fused", "--k", "1000", "--max-new-tokens", "8"],
     "error: --method fused --k 1000 puts SATs up to position 2018"),
    (["decode.py", "--method", "sdsat", "--k", "600"], "error: --method sdsat --k 600 puts SATs up to position 739"),
    (["decode.py", "--method", "sdsat", "--tree", "--max-new-tokens", "497"], "error: --tree puts SATs up to"),
    (["decode.py", "--copies", "3"], "error: --copies does nothing with --method ar (it is for --method lookup)"),
    (["decode.py", "--method", "lookup", "--copies", "0"], "error: --copies must be at least 1, got 0"),
    (["decode.py", "--max-len", "0"], "error: prompt of 11 tokens + 128 new tokens exceeds --max-len 0"),
    (["decode.py", "--model", "missing-dir"], "error: model directory missing-dir does not exist"),
    (["decode.py", "--model", os.path.join(REPO, "README.md")], f"error: {REPO}/README.md is a file: give the model's"),
    (["decode.py", "--max-new-tokens", "100000"],
     "error: prompt of 11 tokens + 100000 new tokens exceed the model's 512 positions (max_position_embeddings): "
     "use --max-new-tokens 501 or fewer"),
    (["decode.py", "--prompt-file", "missing.py"], "error: --prompt-file missing.py does not exist"),
    (["decode.py", "--method", "sdsat", "--html", "missing-dir/p.html"],
     "error: --html missing-dir/p.html: the folder missing-dir does not exist"),
    (["decode.py", "--prompt-file", "missing.py", "--prompt", "x"], "error: give --prompt or --prompt-file, not both"),
    (["bench.py", "--latency-only", "--project-from", "missing.json"], "error: --project-from missing.json"),
    (["bench.py", "--model", "missing-dir"], "error: model directory missing-dir does not exist"),
    (["bench.py", "--sat-token-id", "99999"], "error: SAT id 99999 is outside the vocabulary"),
    (["bench.py", "--latency-only", "--sizes", "0"], "error: --sizes, --reps and --prefix must be positive"),
    (["bench.py", "--fused-k", "1000"], "error: a forward of 1002001 tokens after a 192-token prompt"),
    (["bench.py", "--k", "0"], "error: --k and --fused-k must be at least 1"),
    (["bench.py", "--n-prompts", "0"], "error: --n-prompts must be at least 1, got 0"),  # was: 0 meant the default
    (["bench.py", "--max-new-tokens", "0"], "error: --max-new-tokens must be at least 1, got 0"),
    (["bench.py", "--threads", "-1"], "error: --threads must be at least 1, got -1"),
    (["train_sat.py", "--data", "missing-dir", "--out", "run"], "error: missing-dir has no train.bin"),
    (["train_sat.py", "--data", "d", "--out", "run", "--batch-size", "0"], "error: --batch-size must be at least 1, got 0"),
    (["train_sat.py", "--data", "d", "--out", "run", "--seq-len", "0"], "error: --seq-len must be at least 2, got 0"),
    (["train_sat.py", "--data", "d", "--out", "run", "--lr", "0"], "error: --lr must be above 0, got 0.0"),
    (["train_sat.py", "--data", "d", "--out", "run", "--threads", "0"], "error: --threads must be at least 1, got 0"),
    (["corpus.py", "--out", "data", "--root", "missing-dir"], "error: --root missing-dir does not exist"),
    (["random_checkpoint.py", "--config", "missing.json", "--out", "ckpt"], "error: cannot read missing.json"),
    (["sat_delta.py", "make", "--base", "b", "--tuned", "t", "--out", "d", "--rank", "0"],
     "error: --rank must be at least 1"),
])
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    proc = run([os.path.join(REPO, args[0]), *args[1:]], tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
    if args[0] != "train_sat.py":  # (it names the model it starts from first)
        assert proc.stdout == ""  # refused before any output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_train_on_cuda_without_cuda_is_one_line(tmp_path):
    proc = run([os.path.join(REPO, "train_sat.py"), "--device", "cuda", "--data", "d", "--out", "run"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --device cuda but CUDA is not available")


@pytest.mark.parametrize("method, k", [("sdsat", "3000"), ("fused", "3000")])
def test_k_beyond_memory_is_refused_before_anything_is_allocated(method, k, long_position_model, tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), "--model", long_position_model, "--method", method, "--k", k,
                "--max-new-tokens", "4"], tmp_path)
    if method == "sdsat":  # 3,001 tokens a pass: it fits, and runs
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 1 and proc.stdout == ""
    assert re.fullmatch(r"error: --method fused --k 3000 needs about [\d,]+ GiB at once \(a KV cache of 9,006,\d+ "
                        r"tokens, a forward pass of 9,006,001\), more than the [\d,]+ GiB of .*", proc.stderr.strip())


def test_sampling_options_at_temperature_0_warn_in_one_line(tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "2"], tmp_path)
    assert proc.returncode == 0
    assert "warning: greedy decoding (--temperature 0) ignores --top-p, --seed\n" in proc.stderr


def test_stdout_ends_with_a_newline(tmp_path):
    for extra in ([], ["--method", "sdsat", "--trace"]):
        proc = run([os.path.join(REPO, "decode.py"), "--prompt", "x = (", "--max-new-tokens", "3", *extra], tmp_path)
        assert proc.returncode == 0 and proc.stdout.endswith("\n"), proc.stdout


@pytest.mark.parametrize("extra", [["--method", "sdsat"], ["--method", "sdsat", "--tree"], ["--method", "fused"]])
def test_trace_teaches(extra, tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), *extra, "--trace", "--max-new-tokens", "40"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("✓ accepted   ✗ rejected   · never checked") == 1  # the legend, once
    assert "\033[" not in out  # colours only on a terminal
    passes = [line.split()[0] for line in out.split("\n\n")[1].splitlines()]
    if "fused" in extra:  # one draft pass for the first drafts, then only fused passes
        assert passes[0] == "draft" and set(passes[1:]) == {"fused"} and "next drafts from group" in out
        assert "unaccepted drafts and all 30 SATs dropped" in out
    else:  # a draft pass, then its verify pass
        assert passes[::2] == ["draft"] * len(passes[::2]) and passes[1::2] == ["verify"] * len(passes[1::2])
        assert "| cache" in out and ": the SATs are dropped" in out
    if "--tree" in extra:
        assert "other nodes dropped" in out and "no branch holds the model's choice" in out
    else:  # a rejected draft and those after it, never checked, look different
        assert re.search(r"'✗ '[^']*'·", out)
    assert "guess" not in out  # one word for one idea: a draft


def test_one_trace_line_per_forward_pass(tmp_path):
    """The fused loop's first draft pass too. Every loop's records, in process: tests/test_decode.py."""
    proc = run([os.path.join(REPO, "decode.py"), "--trace", "--prompt", "class Point:", "--method", "fused",
                "--max-new-tokens", "12"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n\n")[1].splitlines()
    forwards = int(re.search(r"(\d+) decode forwards", proc.stderr).group(1))
    assert len(lines) == forwards > 2


def sigint_after(cmd: list[str], ready: str, tmp_path, stream: str = "stdout"):
    """Start cmd, wait for a line starting with `ready` on the stream, press Ctrl-C."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=tmp_path)
    for line in getattr(proc, stream):
        if line.startswith(ready):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A tiny corpus built by corpus.py from 20 standard-library files, with its own tokenizer."""
    return stdlib_corpus(tmp_path_factory, 20)


def test_ctrl_c_is_quiet_with_status_130(tmp_path, data_dir):
    # decode: during generation (the prompt line is printed just before the loop starts)
    rc, err = sigint_after([os.path.join(REPO, "decode.py"), "--method", "sdsat", "--max-new-tokens", "400",
                            "--prompt", "import os\n"], "import os", tmp_path)
    assert rc == 130 and "Traceback" not in err, err
    rc, err = sigint_after([os.path.join(REPO, "bench.py"), "--latency-only", "--reps", "100000", "--sizes", "1",
                            "--dtype", "float32", "--out", str(tmp_path)], "float32:", tmp_path, "stderr")
    assert rc == 130 and "Traceback" not in err, err
    rc, err = sigint_after([os.path.join(REPO, "train_sat.py"), "--mode", "pretrain", "--data", data_dir,
                            "--out", str(tmp_path / "run"), "--dim", "32", "--n-layers", "1", "--n-heads", "2",
                            "--ffn", "64", "--seq-len", "32", "--batch-size", "2", "--steps", "100000",
                            "--log-every", "1", "--eval-every", "100000", "--threads", "1"], "step ", tmp_path)
    assert rc == 130 and "Traceback" not in err, err


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "import os"}', "def f(): pass"], "error: my_prompts.jsonl line 2: not JSON"),
    (['{"text": "import os"}'], 'error: my_prompts.jsonl line 1: expected an object with a non-empty "prompt"'),
])
def test_bench_prompts_file_mistake_is_one_line_error(lines, message, tmp_path):
    (tmp_path / "my_prompts.jsonl").write_text("\n".join(lines) + "\n")
    proc = run([os.path.join(REPO, "bench.py"), "--prompts-file", "my_prompts.jsonl"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(message), proc.stderr


def test_bench_peers_without_transformers_is_one_line(tmp_path):
    (tmp_path / "transformers.py").write_text("raise ImportError('not installed here')\n")  # shadows the real one
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench.py"), "--peers"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: --peers runs transformers' generate, and transformers is not installed "
                                   "(pip install transformers)")


def test_data_from_another_tokenizer_is_refused_with_the_command_that_rebuilds_it(tmp_path, data_dir):
    proc = run([os.path.join(REPO, "train_sat.py"), "--data", data_dir, "--out", "run"], tmp_path)  # the demo model
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {data_dir} was tokenized with another tokenizer than"), line
    assert line.endswith(f"python corpus.py --out {data_dir} --with-tests --tokenizer {BASE_MODEL}"), line


@pytest.mark.parametrize("method, copies", [("lookup", 2), ("lookup", 3)])
def test_copies_caps_the_drafts_copied_per_pass(method, copies, tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), "--method", method, "--copies", str(copies), "--trace",
                "--max-new-tokens", "48"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    counts = [int(m) for m in re.findall(r"\+ (\d+) copied drafts?", proc.stdout)]
    assert counts and max(counts) == copies  # the demo's text repeats: the cap is reached, never passed


def test_prompt_file_is_read_as_utf8_and_a_binary_file_is_one_line(tmp_path):
    (tmp_path / "p.py").write_text("def größe(x):\n", encoding="utf-8")
    proc = run([os.path.join(REPO, "decode.py"), "--prompt-file", "p.py", "--max-new-tokens", "3"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("def größe(x):\n"), proc.stderr
    (tmp_path / "b.bin").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    proc = run([os.path.join(REPO, "decode.py"), "--prompt-file", "b.bin"], tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: --prompt-file b.bin is not UTF-8 text (byte 0: invalid start byte)"


def test_an_empty_prompt_starts_from_bos_whichever_way_it_comes(tmp_path):
    import decode
    (tmp_path / "empty.py").write_text("")
    given = run([os.path.join(REPO, "decode.py"), "--prompt", "", "--max-new-tokens", "6"], tmp_path)
    from_file = run([os.path.join(REPO, "decode.py"), "--prompt-file", "empty.py", "--max-new-tokens", "6"], tmp_path)
    assert given.returncode == from_file.returncode == 0, given.stderr + from_file.stderr
    assert given.stdout == from_file.stdout and not given.stdout.startswith(decode.DEFAULT_PROMPT)


@pytest.mark.skipif(not os.path.isdir(os.path.join(REPO, "models", "smollm2-135m")),
                    reason="models/smollm2-135m missing: run bash get_smollm2.sh")
def test_an_empty_prompt_without_bos_is_one_line(tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), "--model", os.path.join(REPO, "models", "smollm2-135m-sat"),
                "--prompt", ""], tmp_path)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: the prompt is empty and this model's tokenizer has no BOS token to "
                                   "start from: give some text")


def test_a_byte_order_mark_is_not_prompt_text(tmp_path):
    import decode
    (tmp_path / "bom.py").write_bytes("\ufeffdef größe(x):\r\n".encode("utf-8"))
    assert decode.read_prompt_file(str(tmp_path / "bom.py")) == "def größe(x):\r\n"  # and line ends as they are


@pytest.mark.parametrize("extra, warned", [(["--k", "12"], True), (["--k", "5"], False), (["--tree"], False)])
def test_k_beyond_the_trained_k_warns_in_one_line(extra, warned, tmp_path):
    proc = run([os.path.join(REPO, "decode.py"), "--method", "sdsat", *extra, "--max-new-tokens", "4"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = ("warning: --k 12, but this model's SATs were trained with k = 5: SATs past 5 were never taught, "
               "their drafts will rarely be accepted\n")
    assert (warning in proc.stderr) == warned
    assert proc.stderr.count("warning") == warned


def test_train_sat_help_shows_its_examples_whole_and_they_parse(tmp_path):
    """The docstring's examples survive --help (a backslash at a line's end used to join
    lines), and every option they use exists."""
    import train_sat
    text = run([os.path.join(REPO, "train_sat.py"), "--help"], tmp_path).stdout
    assert "--data data/smollm2-distill \\\n        --out runs/smol-adapter" in text
    commands = re.findall(r"python train_sat\.py ((?:[^\n]*\\\n)*[^\n]*)", train_sat.__doc__)
    assert len(commands) >= 3
    known = set(re.findall(r"--[a-z][a-z0-9-]*", text))
    for command in commands:
        for flag in re.findall(r"--[a-z][a-z0-9-]*", command):
            assert flag in known, (flag, command)


def test_bench_writes_to_an_ignored_directory_by_default(tmp_path):
    import bench
    assert bench.OUT == "runs/bench"
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(bench.OUT, "bench.json")], cwd=REPO)
    assert ignored.returncode == 0  # git ignores it: committed results change only with --out
