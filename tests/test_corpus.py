"""corpus.py: the held-out split, the token files, JSONL input and an existing tokenizer."""

import json
import os
import shutil
import sysconfig

import numpy as np
import pytest

import corpus
from tokenizer import Tokenizer


def stdlib_sample(tmp_path, n=70):
    src = tmp_path / "src"
    src.mkdir()
    std = sysconfig.get_paths()["stdlib"]
    for name in sorted(f for f in os.listdir(std) if f.endswith(".py"))[:n]:
        shutil.copy(os.path.join(std, name), src / name)
    return str(src)


def test_split_tokens_and_report(tmp_path):
    src = stdlib_sample(tmp_path)
    out = str(tmp_path / "data")
    report = corpus.build(out, vocab_size=400, root=src)
    train, val = report["splits"]["train"], report["splits"]["val"]
    assert set(train["paths"]).isdisjoint(val["paths"])
    assert sorted(train["paths"] + val["paths"]) == sorted(os.listdir(src))
    assert val["paths"] == [p for p in sorted(os.listdir(src)) if corpus.is_held_out(p)] and val["paths"]
    tok = Tokenizer(os.path.join(out, "tokenizer.model"))
    ids = np.fromfile(os.path.join(out, "val.bin"), dtype=np.uint16).tolist()
    expected = []
    for p in val["paths"]:
        expected += tok.encode(corpus.read_text(os.path.join(src, p)), bos=True, eos=True)
    assert ids == expected and val["tokens"] == len(ids)
    with open(os.path.join(out, "corpus.json")) as f:
        assert json.load(f)["splits"]["val"]["bytes"] == sum(
            len(corpus.read_text(os.path.join(src, p)).encode()) for p in val["paths"])


def test_jsonl_with_an_existing_tokenizer(tmp_path):
    src = stdlib_sample(tmp_path, 40)
    first = corpus.build(str(tmp_path / "a"), vocab_size=400, root=src)
    docs = [{"text": corpus.read_text(os.path.join(src, p)), "id": p} for p in sorted(os.listdir(src))]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tok_path = str(tmp_path / "a" / "tokenizer.model")
    report = corpus.build(str(tmp_path / "b"), jsonl=str(jsonl), tokenizer=tok_path)
    assert report["vocab_size"] == first["vocab_size"]
    assert open(tmp_path / "b" / "tokenizer.model", "rb").read() == open(tok_path, "rb").read()
    names = report["splits"]["train"]["paths"] + report["splits"]["val"]["paths"]
    assert sorted(names, key=lambda s: int(s.split()[1])) == [f"line {i + 1}" for i in range(len(docs))]
    total = first["splits"]["train"]["tokens"] + first["splits"]["val"]["tokens"]
    assert report["splits"]["train"]["tokens"] + report["splits"]["val"]["tokens"] == total


@pytest.mark.parametrize("second_line, message", [
    ("not json", "line 2: not JSON"),
    ("[1, 2]", "line 2: expected an object with a string field 'text'"),
    ('{"text": 5}', "line 2: expected an object with a string field 'text'"),
    ('{"body": "x = 1"}', "line 2: expected an object with a string field 'text'"),
])
def test_a_bad_jsonl_line_is_named(second_line, message, tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "import os"}\n' + second_line + "\n")
    with pytest.raises(SystemExit, match=message):
        corpus.documents(None, str(jsonl), "text", False, (".py",))
