"""The documents a newcomer reads: the install line comes first, commands run as printed
in bash, every option a command uses exists, and the pages speak of the project only."""

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", "SDSAT.md", "DEMO_MODEL.md", "BENCHMARKS.md", "LESSON.md"]


def read(name: str) -> str:
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        return f.read()


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands(text: str) -> list[str]:
    """Every command of the bash blocks and of inline code, with continuations joined."""
    lines = []
    for block in shell_blocks(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += re.findall(r"`((?:python|bash) [^`]+)`", text)
    return [line.split("  #")[0].strip() for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.quick
def test_quick_start_installs_the_ci_torch_first():
    """The block a newcomer copies installs the pinned CPU torch that CI tests before the
    requirements (whose torch>=2.5 would otherwise pull the newest build)."""
    block = shell_blocks(read("README.md").split("## Quick start", 1)[1])[0]
    pins = re.findall(r"torch==[\d.]+", read(".ci/run"))
    lines = [line for line in block.splitlines() if line.startswith("pip install")]
    assert pins and lines[0].startswith(f"pip install {pins[0]}")
    assert any("-r requirements.txt" in line for line in lines[1:])


@pytest.mark.parametrize("doc", DOCS)
def test_no_single_quoted_backslash_escapes(doc):
    """In bash '...\\n...' is a backslash and an n, not a newline: such a prompt makes the
    model continue something else than the text shows. $'...' is what works."""
    for command in commands(read(doc)):
        for quoted in re.findall(r"(?<!\$)'([^']*)'", command):
            assert not re.search(r"\\[nt]", quoted), f"{doc}: {command}"


@pytest.mark.parametrize("doc", DOCS)
def test_every_option_in_a_command_exists(doc):
    """Each `python SCRIPT.py --option` of the docs names an option the script has."""
    helps = {}
    for command in commands(read(doc)):
        script = re.match(r"(?:torchrun [^ ]+ )?(?:python )?([a-z_]+\.py)", command)
        if not script or not os.path.isfile(os.path.join(REPO, script.group(1))):
            continue
        name = script.group(1)
        if name not in helps:
            out = subprocess.run([sys.executable, os.path.join(REPO, name), "--help"], capture_output=True,
                                 text=True, cwd=REPO)
            helps[name] = set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout))
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", command):
            assert flag in helps[name] or flag in ("--nproc_per_node",), f"{doc}: {name} has no {flag}"


@pytest.mark.parametrize("doc", DOCS)
def test_pages_speak_of_the_project_only(doc):
    """No development history: issues, targets, sessions."""
    text = read(doc)
    for phrase in (r"\bissues?\b", r"\btargets?:? \d", r"\bsessions?\b"):
        found = re.search(phrase, text, re.I)
        assert not found, f"{doc}: {text[max(0, found.start() - 60):found.end() + 60]!r}"


def test_the_readme_states_train_sats_default_mode():
    """What `python train_sat.py` does without --mode, as its --help says it."""
    text = subprocess.run([sys.executable, os.path.join(REPO, "train_sat.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO).stdout
    default = re.search(r"--mode \{[^}]*\}\n.*?\(default: ([\w-]+)\)", text, re.S).group(1)
    training = read("README.md").split("## Training SATs", 1)[1].split("\n## ", 1)[0]
    assert f"`--mode {default}` (the default)" in training and "recommended" not in training


def test_the_readme_says_which_smollm2_it_runs():
    """The instruction-tuned model, from the 4-bit GGUF that get_smollm2.sh fetches, in float32."""
    gguf = re.search(r"^GGUF_NAME=(\S+)$", read("get_smollm2.sh"), re.M).group(1)
    section = read("README.md").split("## A real model", 1)[1].split("\n## ", 1)[0]
    assert gguf == "SmolLM2-135M-Instruct.Q4_1.gguf"
    for words in ("SmolLM2-135M-Instruct", gguf, "4 bits", "float32"):
        assert words in section, words


@pytest.mark.parametrize("doc", ["README.md", "SDSAT.md", "LESSON.md"])
def test_one_word_for_a_draft(doc):
    """A token the model proposes ahead is a draft, in the docs as in the trace and the CLI
    (tests/test_cli.py); "guess" once named the same thing."""
    found = re.search(r"\bguess", read(doc), re.I)
    assert not found, f"{doc}: {read(doc)[max(0, found.start() - 60):found.end() + 60]!r}"
