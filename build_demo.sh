#!/usr/bin/env bash
# Rebuild the shipped demo models from scratch on this machine's Python standard library.
# Corpus and tokenizer: ~30 s. Base model: ~1.7 h on 2 CPU cores. SAT fine-tune: see README.
# Resumable: run it again after an interruption and every step continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")"
threads=${THREADS:-2}
[ -f data/stdlib-tests/corpus.json ] || python corpus.py --out data/stdlib-tests --with-tests
python train_sat.py --mode pretrain --data data/stdlib-tests --out runs/base \
  --dim 384 --n-layers 6 --n-heads 6 --ffn 1024 --seq-len 512 --batch-size 16 \
  --steps 950 --lr 2e-3 --min-lr 2e-4 --warmup 50 --eval-every 100 --eval-tokens 32768 \
  --threads "$threads" --export models/tiny-code-llama
