"""Text <-> token ids, for the two tokenizer files Llama checkpoints come with, plus
training a small code tokenizer.

  * tokenizer.model, a sentencepiece model: CodeLlama, Llama 2, and this project's demo
    model, whose tokenizer `train()` builds so that source code round-trips exactly (no
    text normalisation, no stripped or merged whitespace, byte fallback for any character
    the vocabulary lacks);
  * tokenizer.json, for the Hugging Face `tokenizers` library: the byte-level BPE of
    GPT-2-style vocabularies (SmolLM2 and most newer models; convert_gguf.py writes one).
    Its special ids and whether a text starts with BOS come from tokenizer_config.json.

Both sit behind one interface: encode, decode, vocab_size, bos/eos/pad ids, piece_id.
"""

import argparse
import hashlib
import json
import os
import sys

import sentencepiece as spm

SAT_PIECE = "<sat>"  # the demo tokenizer's reserved semantic adaptive token (SDSAT.md 1)
INFILL_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")  # CodeLlama infilling
FILES = ("tokenizer.model", "tokenizer.json")  # what a model directory may hold, in order of preference


def tokenizer_file(path: str) -> str:
    """The tokenizer file of a model directory (or path itself, if it is a file)."""
    if os.path.isfile(path):
        return path
    for name in FILES:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    adapter = os.path.join(path, "adapter.json")
    if os.path.isfile(adapter):  # a SAT adapter directory (adapter.py) reads with its base's tokenizer
        with open(adapter) as f:
            base = json.load(f).get("base")
        if base:
            return tokenizer_file(os.path.join(path, base))
    raise FileNotFoundError(f"{path} has no tokenizer ({' or '.join(FILES)})")


def tokenizer_hash(path: str) -> str:
    """sha256 of the tokenizer file: token files record it, so that ids from one
    tokenizer are never fed to a model that reads them with another."""
    with open(tokenizer_file(path), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Tokenizer:
    def __init__(self, path: str):
        self.path = tokenizer_file(path)
        self.sp = self.hf = None
        if self.path.endswith(".json"):
            self._init_json()
        else:
            self.sp = spm.SentencePieceProcessor(model_file=self.path)
            self.vocab_size = self.sp.get_piece_size()
            self.bos_id, self.eos_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
            self.add_bos = True  # sentencepiece Llamas always start with <s>
        ids = [self.piece_id(p) for p in INFILL_PIECES]
        self.prefix_id, self.suffix_id, self.middle_id, self.eot_id = ids

    def _init_json(self):
        from tokenizers import Tokenizer as HFTokenizer
        try:
            self.hf = HFTokenizer.from_file(self.path)
        except Exception as e:  # the library raises its own exception type for bad files
            raise ValueError(f"{self.path} is not a tokenizers file ({e})") from None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        cfg_path = os.path.join(os.path.dirname(self.path), "tokenizer_config.json")
        cfg = {}
        if os.path.isfile(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        name = lambda key: cfg[key]["content"] if isinstance(cfg.get(key), dict) else cfg.get(key)  # noqa: E731
        self.bos_id, self.eos_id, self.pad_id = (
            -1 if name(k) is None else self.hf.token_to_id(name(k)) for k in ("bos_token", "eos_token", "pad_token"))
        self.add_bos = bool(cfg.get("add_bos_token", False)) and self.bos_id >= 0

    def piece_id(self, piece: str) -> int | None:
        """Id of a piece, or None when the vocabulary does not have it."""
        if self.hf is not None:
            return self.hf.token_to_id(piece)
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def id_to_piece(self, i: int) -> str:
        return self.hf.id_to_token(i) if self.hf is not None else self.sp.id_to_piece(i)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Ids of text; bos=True starts with BOS where this tokenizer uses one."""
        ids = self.hf.encode(text, add_special_tokens=False).ids if self.hf is not None else self.sp.encode(text)
        return ([self.bos_id] if bos and self.add_bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        """Text of ids. Ids outside the vocabulary (a SAT appended past it) give nothing."""
        ids = [int(i) for i in ids if 0 <= i < self.vocab_size]
        if self.hf is not None:
            return self.hf.decode(ids, skip_special_tokens=False)
        return self.sp.decode(ids)

    def encode_infill(self, prefix: str, suffix: str) -> list[int]:
        """CodeLlama prefix-suffix-middle prompt; the model then writes the middle and
        ends it with `eot_id`.  Layout: <s> ▁<PRE> prefix ▁<SUF> suffix ▁<MID>
        (CodeLlama encodes the suffix with its leading dummy space removed)."""
        if self.prefix_id is None or self.sp is None:
            raise ValueError("this tokenizer has no CodeLlama infilling pieces (▁<PRE> ...)")
        # Encoding adds a dummy "▁" before the suffix; encode a marker in front instead and
        # drop the marker's own pieces ("▁", "☺" in CodeLlama; byte pieces elsewhere).
        marker = self.sp.encode("☺")
        suffix_ids = self.sp.encode("☺" + suffix)[len(marker):]
        return ([self.bos_id, self.prefix_id] + self.sp.encode(prefix)
                + [self.suffix_id] + suffix_ids + [self.middle_id])


def train(files: list[str], model_prefix: str, vocab_size: int = 8192,
          max_sentence_bytes: int = 8192, threads: int = 2) -> str:
    """Train a BPE code tokenizer on text files; writes model_prefix + '.model'.

    Ids 0-3 are unk, bos (<s>), eos (</s>), pad; id 4 is the SAT, a control symbol that
    no text ever encodes to. Each training "sentence" is one line of a file.
    """
    def lines():
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        yield line[:max_sentence_bytes]

    spm.SentencePieceTrainer.train(
        sentence_iterator=lines(), model_prefix=model_prefix, model_type="bpe",
        vocab_size=vocab_size, character_coverage=0.9999, byte_fallback=True,
        normalization_rule_name="identity",  # no NFKC: keep every character as it is
        remove_extra_whitespaces=False,  # keep runs of spaces (indentation)
        add_dummy_prefix=False,  # no invented leading space
        allow_whitespace_only_pieces=True,  # "    " (an indent) can be one piece
        split_digits=True, split_by_whitespace=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, control_symbols=[SAT_PIECE],
        user_defined_symbols=["\n", "\t"],  # sentencepiece would otherwise drop these
        max_sentence_length=max_sentence_bytes, num_threads=threads,
        train_extremely_large_corpus=False, minloglevel=2)
    return model_prefix + ".model"


def main():
    p = argparse.ArgumentParser(description="Encode text: print the ids, the pieces and the decoded round trip.")
    from model import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="tokenizer.model or tokenizer.json, or a directory holding one (default: %(default)s)")
    p.add_argument("text", help="text to encode")
    args = p.parse_args()
    try:
        tok = Tokenizer(args.model)
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
    ids = tok.encode(args.text)
    print(ids)
    print([tok.id_to_piece(i) for i in ids])
    print(repr(tok.decode(ids)))


if __name__ == "__main__":
    main()
