"""LESSON.md runs: its python blocks, one after another in one namespace from the
repository's root, print exactly the output blocks that follow them."""

import contextlib
import io
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blocks(text: str) -> list[tuple[str, str]]:
    """(code, the output it must print) for each ```python block and the ``` block after it."""
    pairs = re.findall(r"```python\n(.*?)```\n```\n(.*?)```", text, re.S)
    assert len(pairs) == text.count("```python"), "every python block is followed by its output"
    return pairs


def test_the_lesson_prints_what_it_says(monkeypatch):
    with open(os.path.join(REPO, "LESSON.md"), encoding="utf-8") as f:
        pairs = blocks(f.read())
    assert len(pairs) >= 4
    monkeypatch.chdir(REPO)  # the lesson's model paths are relative, as in a shell started there
    namespace = {}
    for code, want in pairs:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "LESSON.md", "exec"), namespace)
        assert printed.getvalue() == want, code


def test_the_lesson_is_short():
    """About 40 lines of code, one sitting."""
    with open(os.path.join(REPO, "LESSON.md"), encoding="utf-8") as f:
        code = "".join(code for code, _ in blocks(f.read()))
    assert len(code.splitlines()) <= 45
