#!/usr/bin/env bash
# Assemble .peers/ (gitignored; carried to the GPU machine by the lead) for benchmarks/peers.py:
#   .peers/diffusers/   diffusers' DreamBooth-LoRA example scripts (FLUX.2 Klein, Qwen-Image, Z-Image), unchanged
#   .peers/sd-scripts/  kohya's sd-scripts (train_network.py, sd3_train_network.py, library/, networks/), unchanged
#   .peers/site/        pure-python packages sd-scripts imports that the GPU machine lacks (voluptuous, toml,
#                       einops, imagesize), installed from PyPI wheels with pip --target
#   .peers/kohya-wheels/ sd-scripts' own pins of the libraries whose current versions it cannot run with (transformers 5
#                       renamed CLIPTextModel's keys and dropped CLIPFeatureExtractor): transformers 4.54.1,
#                       tokenizers 0.21.4, huggingface_hub 0.34.3 (+ requests, which it needs and the GPU machine
#                       may lack), diffusers 0.32.1 (18 MB of wheels); peers.py
#                       installs them into <dir>/kohya-site on the GPU machine, for the sd-scripts processes only
#   .peers/SOURCES.txt  the commits the files came from
# The peer code is never committed to lorakit: it comes from the mirrors that the `fetch` tool leaves under
# /work/.mirror (github:huggingface/diffusers, github:kohya-ss/sd-scripts). Usage, from the repository root:
#   bash benchmarks/peers_fetch.sh            # MIRROR=/work/.mirror by default
set -euo pipefail
MIRROR=${MIRROR:-/work/.mirror}
PY=${PY:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=$ROOT/.peers
DIFF=$MIRROR/huggingface+diffusers/repo
KOHYA=$MIRROR/kohya-ss+sd-scripts/repo
for r in "$DIFF" "$KOHYA"; do
  git --git-dir="$r" rev-parse -q --verify HEAD >/dev/null 2>&1 ||
    { echo "peers_fetch: no mirror at $r: fetch github:huggingface/diffusers and github:kohya-ss/sd-scripts first" >&2; exit 1; }
done
rm -rf "$DEST.part" && mkdir -p "$DEST.part/diffusers" "$DEST.part/sd-scripts" "$DEST.part/site"
# diffusers' scripts at the mirror's HEAD (0.40.0.dev0: the newest snapshot stored; their check_min_version accepts
# the carried 0.42.1 wheel; the 0.42.1 release itself is not in the mirror)
for s in train_dreambooth_lora_flux2_klein.py train_dreambooth_lora_qwen_image.py train_dreambooth_lora_z_image.py; do
  git --git-dir="$DIFF" show "HEAD:examples/dreambooth/$s" > "$DEST.part/diffusers/$s"
done
# sd-scripts: the two trainers and the folders they import
# (the mirror lacks one Windows DLL blob outside these paths; git names it on stderr, harmlessly: filtered out)
git --git-dir="$KOHYA" archive HEAD train_network.py sd3_train_network.py library networks \
  2> >(grep -v bitsandbytes_windows >&2) | tar -x -C "$DEST.part/sd-scripts"
{
  echo "diffusers $(git --git-dir="$DIFF" log -1 --format='%H %cs') examples/dreambooth"
  echo "sd-scripts $(git --git-dir="$KOHYA" log -1 --format='%H %cs')"
} > "$DEST.part/SOURCES.txt"
# pure-python wheels (pinned as sd-scripts' requirements.txt pins them), unpacked for any Python 3
WHEELS=(voluptuous==0.15.2 toml==0.10.2 einops==0.7.0 imagesize==1.4.1)
$PY -m pip download -q --no-deps --only-binary=:all: -d "$DEST.part/wheels" "${WHEELS[@]}"
$PY -m pip install -q --no-deps --no-compile --no-index --target "$DEST.part/site" "$DEST.part"/wheels/*.whl
rm -rf "$DEST.part/wheels" "$DEST.part/site"/*.dist-info/RECORD
# sd-scripts' pinned transformers stack, as wheels for the GPU machine's Python 3.12 / x86-64 (installed there)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$DEST.part/kohya-wheels" \
  transformers==4.54.1 tokenizers==0.21.4 huggingface_hub==0.34.3 diffusers==0.32.1 \
  requests==2.32.3 urllib3==2.2.3 idna==3.10 certifi==2024.8.30 charset-normalizer==3.4.0  # hub 0.34 needs requests
rm -rf "$DEST" && mv "$DEST.part" "$DEST"
echo "peers_fetch: $(du -sh "$DEST" | cut -f1) in $DEST"; cat "$DEST/SOURCES.txt"
