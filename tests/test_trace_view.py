"""The --trace lines, from hand-made records: counts agree with their nouns, and tokens
that a run's end cuts off are not shown as emitted."""

import pytest

from tokenizer import Tokenizer
from model import DEFAULT_MODEL
from trace_view import trace_printer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(DEFAULT_MODEL)


def lines(tok, kind, *records, capsys) -> list[str]:
    trace = trace_printer(tok, colour=False, kind=kind)
    for record in records:
        trace(record)
    return capsys.readouterr().out.split("\n\n", 1)[1].splitlines()  # after the legend


def ids(tok, *words) -> list[int]:
    return [tok.encode(w, bos=False)[0] for w in words]


def test_one_of_each_is_singular(tok, capsys):
    a, b, c = ids(tok, "def", "class", "return")
    draft = dict(step="draft", cur=a, sats=1, x=b, drafts=[c], emitted=[b], cache_before=12, cache_after=11)
    verify = dict(step="verify", cur=b, sats=0, drafts=[c, a], accepted=1, bonus=b, emitted=[c, b],
                  cache_before=14, cache_after=13)
    tree = dict(step="tree", cur=b, sats=0, nodes=[b, c, a], parents=[-1, 0, 0], path=[0], drafts=[], accepted=0,
                bonus=a, rejected=[c, a], emitted=[a], cache_before=14, cache_after=12)
    draft_line, verify_line = lines(tok, "chain", draft, verify, capsys=capsys)
    assert "+ 1 SAT →" in draft_line
    assert verify_line.endswith("| cache 14 → 13: 1 unaccepted draft dropped")
    [tree_line] = lines(tok, "tree", tree, capsys=capsys)
    assert tree_line.endswith("the path's 1 token moved together, 2 other nodes dropped")


def test_tokens_past_the_end_of_the_run_are_cut(tok, capsys):
    a, b, c, d = ids(tok, "def", "class", "return", "import")
    full = dict(step="verify", cur=a, sats=0, drafts=[b, c, d], accepted=2, bonus=a, emitted=[b, c, a],
                cache_before=10, cache_after=9)
    cut = {**full, "emitted": [b]}  # --max-new-tokens left room for one token
    full_line, cut_line = lines(tok, "chain", full, cut, capsys=capsys)
    assert "→ 'class' 'return' + bonus 'def' |" in full_line and "✂" not in full_line
    assert "→ 'class' ✂ 'return' + bonus 'def' |" in cut_line
