"""decode.py --html (trace_html.py): the page's data says what the trace records say, and a
real browser (headless Chromium, offline) shows it: every step's tokens, marks and cache
lengths, forward and back, with buttons, arrow keys and "play all".

The browser tests need Debian's chromium and the playwright package, driven at that browser
(no browser download: `playwright install` is never run). Without them the tests are
skipped, except in CI, where they fail.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from checkpoint import load_model
from model import DEFAULT_MODEL
from sampling import Warper
from test_decode import run
from tokenizer import Tokenizer
from trace_html import page_data, visible, write_page
from trace_view import trace_kind

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2 = os.path.join(REPO, "models", "smollm2-135m")
SCREENSHOT = os.path.join(REPO, "bench_results", "html", "step.png")
PROMPT = "class Point:"
RUNS = [(method, temperature) for method in ("sdsat", "tree", "fused", "lookup", "draft-tree")
        for temperature in (0, 0.8)]


@pytest.fixture(scope="module")
def demo():
    return load_model(DEFAULT_MODEL), Tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def runs(demo):
    """decoded(), once per method and temperature for the whole module."""
    done = {}

    def get(method, temperature):
        if (method, temperature) not in done:
            done[method, temperature] = decoded(demo, method, temperature)
        return done[method, temperature]
    return get


def decoded(demo, method, temperature, max_new=40):
    """A run of the demo model with its trace records, and autoregressive decoding's run:
    (records, the page's data, the new tokens, the run's Stats)."""
    model, tok = demo
    prompt, warper, records = tok.encode(PROMPT), Warper(temperature, top_p=0.95 if temperature else 1.0), []
    tokens, stats, _ = run(model, prompt, method, max_new, warper, k=5, trace=records.append)
    ar, ar_stats, _ = run(model, prompt, "ar", max_new, warper)
    kind = trace_kind({"tree": "sdsat", "draft-tree": "tree"}.get(method, method), method == "tree")
    data = page_data(records, tok, prompt, tokens, kind, "python decode.py ...", warper.greedy, ar, ar_stats.forwards)
    return records, data, tokens, stats


def embedded(path) -> dict:
    """The JSON that a written page carries."""
    with open(path, encoding="utf-8") as f:
        return json.loads(re.search(r'<script type="application/json" id="trace-data">(.*?)</script>',
                                    f.read(), re.S).group(1))


def expected(r: dict) -> dict:
    """What the page must show for record r, read off the record in the trace's own terms:
    the ids fed (None for a SAT), the fates of the drafts fed, the ids emitted, the ids cut
    off by the run's end, the cache's length after the pass and after the truncation."""
    if r["step"] == "draft":
        fed, fates, chosen = [r["cur"]] + [None] * r["sats"], [], [r["x"]]
    else:
        n, m = r["accepted"], len(r["drafts"])
        chosen = r["drafts"][:n] + [r["bonus"]]
        if r["step"] in ("tree", "draft-tree"):  # the tree's fates: checked apart (tree_fates)
            fed, fates = r["nodes"] + [None] * (r["sats"] if r["step"] == "draft-tree" else 0), None
        else:
            fed = [r["cur"]] + r["drafts"] + [None] * r["sats"]
            fates = ["accepted"] * n + ["rejected"] * (n < m) + ["unchecked"] * (m - n - 1)
    return dict(fed=fed, fates=fates, emitted=r["emitted"], cut=chosen[len(r["emitted"]):],
                cache=[r["cache_before"], r["cache_after"]])


def shown(step: dict) -> dict:
    """The same things, read off one step of the page's data."""
    return dict(fed=[t for t, _ in step["fed"]], fates=[f for f in step["fate"] if f],
                emitted=[t for t, mark in step["out"] if mark in ("emitted", "bonus")],
                cut=[t for t, mark in step["out"] if mark == "cut"], cache=step["cache"][1:])


def tree_fates(r: dict, step: dict):
    """The path's nodes accepted; the last node's children (none was the model's choice) rejected."""
    fates = dict(zip(range(1, len(r["nodes"])), step["fate"][1:]))
    assert [r["nodes"][i] for i, f in fates.items() if f == "accepted"] == r["drafts"]
    assert all(fates[c] == "rejected" for c, p in enumerate(r["parents"]) if p == r["path"][-1])


@pytest.mark.parametrize("method, temperature", RUNS)
def test_the_pages_data_equals_the_trace_records(method, temperature, runs, tmp_path):
    records, data, tokens, stats = runs(method, temperature)
    write_page(str(tmp_path / "page.html"), data)
    page = embedded(tmp_path / "page.html")
    assert len(page["steps"]) == len(records) == stats.forwards
    emitted = 1  # the prefill's token
    for r, step in zip(records, page["steps"]):
        want, got = expected(r), shown(step)
        if r["step"] in ("tree", "draft-tree"):
            tree_fates(r, step)
            want["fates"] = got["fates"]
        assert got == want
        assert [kind for _, kind in step["fed"]][0] == "cur"
        emitted += len(r["emitted"])
        assert (step["emitted"], step["forwards"]) == (emitted, records.index(r) + 1)
    assert emitted == len(tokens) and page["ids"][-len(tokens):] == tokens
    assert any(r.get("accepted") for r in records)  # something to see: drafts were accepted
    if method in ("lookup", "draft-tree"):
        assert any(kind == "copy" for s in page["steps"] for _, kind in s["fed"])


def test_a_tree_draft_pass_shows_each_sats_top_drafts(demo):
    records, data, _, _ = decoded(demo, "tree", 0, max_new=8)
    draft, step = records[0], data["steps"][0]
    assert [t for t, _ in step["out"][1:]] == draft["drafts"] and len(draft["drafts"][0]) == 4


def test_decode_py_writes_the_page_of_the_run_it_traces(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "decode.py"), "--method", "fused", "--trace",
                           "--html", "page.html", "--prompt", PROMPT, "--max-new-tokens", "16"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = embedded(tmp_path / "page.html")
    trace_lines, text = proc.stdout.split("\n\n")[1].splitlines(), proc.stdout.split("\n\n", 2)[2]
    assert len(page["steps"]) == len(trace_lines) == int(re.search(r"(\d+) decode forwards", proc.stderr).group(1))
    assert page["prompt"] + page["text"] + "\n" == text
    assert page["ar"]["same"] and page["ar"]["forwards"] == 15  # greedy float32: autoregressive's own text
    assert [f for f in os.listdir(tmp_path) if f != "page.html"] == []  # written whole: no temporary file left


# ----------------------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# What the page displays now, from its data-* attributes.
READ_PAGE = """() => {
  const all = sel => [...document.querySelectorAll(sel)];
  return {
    step: +document.body.dataset.step,
    fed: all("#row-fed [data-kind]").map(e => [e.dataset.id, e.dataset.kind, e.textContent]),
    fates: all("#row-fate [data-fate]").map(e => e.dataset.fate),
    out: all("#row-out [data-mark]").map(e => [e.dataset.id, e.dataset.mark]),
    cache: all("#cache-before .slots, #cache-after .slots").map(e => [+e.dataset.length, e.children.length]),
    leaving: all("#cache-before [data-leaving=true]").length,
    emitted: +document.getElementById("emitted").textContent,
    forwards: +document.getElementById("forwards").textContent,
    text: document.getElementById("text").textContent,
  };
}"""


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, Debian's, through playwright; every request that is not a file fails."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package: pip install -r requirements-test.txt")
    chromium = shutil.which("chromium")
    if chromium is None:
        missing("chromium: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {what} for the browser tests")
    pytest.skip(f"no {what}")


def open_page(browser, path, size=(1200, 900)):
    """The page, offline; returns (page, the requests that went elsewhere than a file)."""
    context = browser.new_context(offline=True, viewport=dict(width=size[0], height=size[1]))
    elsewhere, errors = [], []
    context.route(re.compile(r"^(?!file:)"), lambda route: (elsewhere.append(route.request.url), route.abort()))
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto("file://" + str(path))
    page.wait_for_function("document.body.dataset.renderMs !== undefined")
    assert errors == []
    return page, elsewhere


def displayed(data: dict, records: list[dict]) -> list[dict]:
    """What the browser must show at each step of a page (its data as the page carries it)."""
    def ids(t):
        return "" if t is None else ",".join(map(str, t)) if isinstance(t, list) else str(t)
    out = []
    for i, (step, r) in enumerate(zip(data["steps"], records)):
        want = expected(r)
        out.append(dict(step=i, fed=[[ids(t), kind, "S" if t is None else data["pieces"][str(t)]]
                                     for t, kind in step["fed"]],
                        fates=[f for f in step["fate"] if f] if r["step"] == "tree" else want["fates"],
                        out=[[ids(t), mark] for t, mark in step["out"]],
                        cache=[[n, n] for n in want["cache"]], leaving=want["cache"][0] - want["cache"][1],
                        emitted=step["emitted"], forwards=step["forwards"],
                        text=data["prompt"] + data["text"][:data["ends"][step["emitted"]]]))
        assert [t for t, mark in out[-1]["out"] if mark in ("emitted", "bonus")] == [str(t) for t in r["emitted"]]
    return out


@pytest.mark.parametrize("method, temperature", [("sdsat", 0), ("tree", 0.8), ("fused", 0.8), ("lookup", 0)])
def test_the_browser_shows_every_step_forward_and_back(method, temperature, runs, browser, tmp_path):
    records, data, _, _ = runs(method, temperature)
    write_page(str(tmp_path / "page.html"), data)
    page, elsewhere = open_page(browser, tmp_path / "page.html")
    want = displayed(embedded(tmp_path / "page.html"), records)
    for i, w in enumerate(want):
        assert page.evaluate(READ_PAGE) == w, f"step {i}"
        page.keyboard.press("ArrowRight")
    assert page.evaluate(READ_PAGE) == want[-1]  # the last step stays
    for w in reversed(want):  # a step back undoes a step
        assert page.evaluate(READ_PAGE) == w
        page.keyboard.press("ArrowLeft")
    assert page.evaluate(READ_PAGE) == want[0]
    assert elsewhere == []
    page.context.close()


def test_the_buttons_step_and_play_all_plays(runs, browser, tmp_path):
    records, data, _, _ = runs("sdsat", 0)
    write_page(str(tmp_path / "page.html"), data)
    page, elsewhere = open_page(browser, tmp_path / "page.html")
    step = "+document.body.dataset.step"
    page.click("#next")
    page.click("#next")
    page.click("#back")
    assert page.evaluate(step) == 1
    page.click("#play")
    page.wait_for_function(f"{step} >= 2")
    page.click("#play")  # pause
    paused = page.evaluate(step)
    page.wait_for_timeout(750)  # longer than a played step (700 ms)
    assert page.evaluate(step) == paused and elsewhere == []
    page.context.close()


@pytest.mark.skipif(not os.path.isdir(SMOLLM2) and not os.environ.get("CI"),
                    reason=f"{SMOLLM2} missing: run bash get_smollm2.sh")
def test_a_smollm2_page_is_small_opens_fast_and_makes_the_readme_screenshot(browser, tmp_path):
    """The README's command, on the real model: the page, its size, its time to the first
    drawn step, and the screenshot the README shows (a step that accepts drafts)."""
    os.symlink(os.path.join(REPO, "models"), tmp_path / "models")  # so that the page shows the README's command
    proc = subprocess.run([sys.executable, os.path.join(REPO, "decode.py"), "--model", "models/smollm2-135m-sat",
                           "--method", "sdsat", "--html", "fib.html", "--prompt", "def fibonacci(n):\n",
                           "--max-new-tokens", "40"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "fib.html"
    assert os.path.getsize(path) < 300_000  # the target for 96 new tokens; this run has 40
    page, elsewhere = open_page(browser, path, size=(1100, 600))
    assert float(page.evaluate("document.body.dataset.renderMs")) < 1000
    data = embedded(path)
    best = max(range(len(data["steps"])), key=lambda i: data["steps"][i]["fate"].count("accepted"))
    for _ in range(best):
        page.keyboard.press("ArrowRight")
    assert page.evaluate("+document.body.dataset.step") == best
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True, animations="disabled")  # the leaving slots as they end
    assert elsewhere == []
    page.context.close()
