"""Text <-> token ids with sentencepiece, plus training a small code tokenizer.

Works with CodeLlama's `tokenizer.model` and with the demo model's own tokenizer, which
`train()` builds so that source code round-trips exactly: no text normalisation, no
stripped or merged whitespace, byte fallback for any character the vocabulary lacks.
"""

import argparse
import os
import sys

import sentencepiece as spm

SAT_PIECE = "<sat>"  # the demo tokenizer's reserved semantic adaptive token (SDSAT.md 1)
INFILL_PIECES = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")  # CodeLlama infilling


class Tokenizer:
    def __init__(self, path: str):
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no sentencepiece model at {path}")
        self.sp = spm.SentencePieceProcessor(model_file=path)
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.pad_id = self.sp.pad_id()
        ids = [self.piece_id(p) for p in INFILL_PIECES]
        self.prefix_id, self.suffix_id, self.middle_id, self.eot_id = ids

    def piece_id(self, piece: str) -> int | None:
        """Id of a piece, or None when the vocabulary does not have it."""
        i = self.sp.piece_to_id(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else i

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def decode(self, ids) -> str:
        """Text of ids. Ids outside the vocabulary (a SAT appended past it) give nothing."""
        return self.sp.decode([int(i) for i in ids if 0 <= i < self.vocab_size])

    def encode_infill(self, prefix: str, suffix: str) -> list[int]:
        """CodeLlama prefix-suffix-middle prompt; the model then writes the middle and
        ends it with `eot_id`.  Layout: <s> ▁<PRE> prefix ▁<SUF> suffix ▁<MID>
        (CodeLlama encodes the suffix with its leading dummy space removed)."""
        if self.prefix_id is None:
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
    p = argparse.ArgumentParser(description="Encode text with a sentencepiece model: print the ids, the pieces and the decoded round trip.")
    from model import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL, help="tokenizer.model, or a directory holding one")
    p.add_argument("text", help="text to encode")
    args = p.parse_args()
    try:
        tok = Tokenizer(args.model)
    except (FileNotFoundError, OSError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    ids = tok.encode(args.text)
    print(ids)
    print([tok.sp.id_to_piece(i) for i in ids])
    print(repr(tok.decode(ids)))


if __name__ == "__main__":
    main()
