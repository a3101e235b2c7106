"""Tests for tokenizer.py: exact round trips of source code, the special ids, and the
CodeLlama infilling layout.

The tokenizer under test is trained here, in about a second, on 60 files of this machine's
Python standard library, and checked on 100 other files of it: text it has never seen must
come back byte for byte, whitespace and all.
"""

import glob
import os
import shutil
import sysconfig

import pytest
import sentencepiece as spm

import tokenizer
from tokenizer import INFILL_PIECES, Tokenizer

STDLIB_FILES = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))
TRAIN_FILES, HELD_OUT_FILES = STDLIB_FILES[:60], STDLIB_FILES[60:160]

CRAFTED = [
    "",
    "\tx\t\ty\n\t\n",  # tabs
    "a    b        c",  # runs of spaces
    "def f():\n\n\n    return 1\n",  # blank lines
    "x = 1   \ny = 2\t \n",  # trailing whitespace
    "   leading\n  spaces",  # leading spaces
    "\n\n\n",
    " ",
    "ü→😀 ∑ 日本語",  # not in a 2000-piece code vocabulary: byte fallback
    "a\r\nb\r\n",  # Windows line ends
    "\x00\x7f\u00a0\u2028",  # control characters, no-break space, line separator
    "ﬁ ＡＢ",  # characters NFKC would rewrite
    "<s></s><unk><pad><sat>",  # the special pieces' names, as text
]


def read(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:  # newline="": keep \r\n as it is
        return f.read()


def pieces_text(sp: spm.SentencePieceProcessor, ids: list[int]) -> str:
    """Text of ids by concatenating pieces (▁ -> space, <0xAB> -> that byte). Unlike
    sp.decode, this never strips a leading space, so it shows exactly what ids hold."""
    out = b""
    for i in ids:
        piece = sp.id_to_piece(i)
        out += bytes([int(piece[3:5], 16)]) if sp.is_byte(i) else piece.replace("▁", " ").encode()
    return out.decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    assert len(HELD_OUT_FILES) >= 50, "this Python's stdlib has too few top-level files"
    return tokenizer.train(TRAIN_FILES, str(tmp_path_factory.mktemp("tok") / "code"), vocab_size=2000)


@pytest.fixture(scope="module")
def tok(model_path) -> Tokenizer:
    return Tokenizer(model_path)


def test_special_ids(tok):
    assert tok.vocab_size == 2000
    assert (tok.sp.unk_id(), tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.piece_id("<sat>") == 4
    assert tok.sp.is_control(4)
    assert tok.piece_id("<unk>") == 0  # the unk piece itself is found...
    assert tok.piece_id("▁<PRE>") is None  # ...a missing piece is None, not unk's id
    assert tok.prefix_id is None and tok.eot_id is None


def test_bos_and_eos(tok):
    body = tok.encode("x = 1\n", bos=False)
    assert tok.encode("x = 1\n") == [1] + body  # bos on by default
    assert tok.encode("x = 1\n", bos=True, eos=True) == [tok.bos_id] + body + [tok.eos_id]
    assert tok.encode("", bos=True, eos=True) == [1, 2]


def test_round_trip_held_out_stdlib_files(tok):
    for path in HELD_OUT_FILES:
        text = read(path)
        ids = tok.encode(text, bos=False)
        assert tok.decode(ids) == text, f"{path} does not round-trip"
        # no unk (a lost character), no bos/eos/pad, and never the SAT
        assert not {0, 1, 2, 3, 4} & set(ids), path


@pytest.mark.parametrize("text", CRAFTED, ids=repr)
def test_round_trip_crafted(tok, text):
    ids = tok.encode(text, bos=False)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text
    assert not {0, 1, 2, 3, 4} & set(ids)


def test_sat_text_is_not_the_sat(tok):
    ids = tok.encode("<sat>", bos=False)
    assert tok.piece_id("<sat>") not in ids
    assert tok.decode(ids) == "<sat>"


def test_decode_skips_ids_outside_the_vocabulary(tok):
    ids = tok.encode("x=1", bos=False)
    assert tok.decode(ids + [tok.vocab_size + 5]) == "x=1"
    assert tok.decode([tok.vocab_size] + ids + [tok.vocab_size, -1]) == "x=1"
    assert tok.decode([tok.bos_id]) == "" and tok.decode([tok.eos_id]) == ""
    assert tok.decode([tok.bos_id, tok.pad_id, tok.piece_id("<sat>"), tok.eos_id]) == ""


def test_directory_holding_tokenizer_model(model_path, tok, tmp_path):
    shutil.copy(model_path, tmp_path / "tokenizer.model")
    assert Tokenizer(str(tmp_path)).encode("x = 1") == tok.encode("x = 1")


def test_missing_model_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        Tokenizer("nonexistent")
    with pytest.raises(FileNotFoundError):
        Tokenizer(str(tmp_path))  # a directory without tokenizer.model


def test_encode_infill_needs_infilling_pieces(tok):
    with pytest.raises(ValueError, match="infilling"):
        tok.encode_infill("def f(x):\n", "\n    return y\n")


# ---------------------------------------------------------------------------- infilling

INFILL_CASES = [  # (prefix, suffix)
    ("def f(x):\n    y = ", "\n    return y\n"),
    ("def f(x):\n", "    return x\n"),
    ("print(", ")\n"),
    ("a = [", "x for x in range(3)]"),
    ("s = ", " 'spaced'"),  # a suffix that really starts with a space keeps it
    ("", "x"),
    ("x = 1\n", ""),
    ("t = '", "é☺'\n"),
]


def train_codellama_like(prefix: str, extra_symbols: list[str]) -> Tokenizer:
    """A tiny sentencepiece model set up like CodeLlama's: BPE, byte fallback, no
    normalisation, and a dummy-prefix space added to every text it encodes."""
    lines = [line for path in TRAIN_FILES[:20] for line in open(path, encoding="utf-8") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe", vocab_size=600,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, split_digits=True,
        user_defined_symbols=list(INFILL_PIECES) + extra_symbols,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return Tokenizer(prefix + ".model")


def check_infill_layout(tok: Tokenizer):
    sp = tok.sp
    assert None not in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id)
    assert [sp.id_to_piece(i) for i in (tok.prefix_id, tok.suffix_id, tok.middle_id, tok.eot_id)] \
        == list(INFILL_PIECES)
    for prefix, suffix in INFILL_CASES:
        ids = tok.encode_infill(prefix, suffix)
        head = [tok.bos_id, tok.prefix_id] + sp.encode(prefix) + [tok.suffix_id]
        assert ids[:len(head)] == head and ids[-1] == tok.middle_id, (prefix, suffix)
        suffix_ids = ids[len(head):-1]
        # The suffix is encoded without the dummy-prefix space: its ids hold exactly its text.
        assert pieces_text(sp, suffix_ids) == suffix, (suffix, [sp.id_to_piece(i) for i in suffix_ids])
        # Where the dummy-prefixed encoding starts with a lone "▁", the rest of it is exactly
        # the encoding without the dummy prefix: the ids must match one for one.
        with_dummy = sp.encode(suffix)
        if with_dummy and sp.id_to_piece(with_dummy[0]) == "▁":
            assert suffix_ids == with_dummy[1:], suffix


@pytest.fixture(scope="module")
def codellama_like(tmp_path_factory) -> Tokenizer:
    # CodeLlama's vocabulary has "☺" as one piece, which encode_infill relies on.
    tok = train_codellama_like(str(tmp_path_factory.mktemp("infill") / "cl"), ["☺"])
    assert tok.sp.encode("☺", out_type=str) == ["▁", "☺"]
    return tok


@pytest.fixture(scope="module")
def codellama_like_without_smiley(tmp_path_factory) -> Tokenizer:
    tok = train_codellama_like(str(tmp_path_factory.mktemp("infill") / "cl_nosmiley"), [])
    assert tok.piece_id("☺") is None
    return tok


def test_encode_infill_layout(codellama_like):
    check_infill_layout(codellama_like)


def test_encode_infill_layout_without_smiley_piece(codellama_like_without_smiley):
    check_infill_layout(codellama_like_without_smiley)
