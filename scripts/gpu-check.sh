#!/usr/bin/env bash
# The GPU check of the CUDA trainer, in three steps (docs/benchmarks.md, "The GPU check"):
#
#   scripts/gpu-check.sh prepare   here, on a machine without a GPU: builds `redline` with --features
#                                  cuda (scripts/cuda-env.sh), and packs what the GPU machine lacks into
#                                  .gpu/ (the binary, libcudart, SmolLM2's config and tokenizer, the TRL
#                                  peer script) and .whl/ (TRL and datasets as wheels); both are in
#                                  .gitignore, and travel as the device tool's `carry`
#   scripts/gpu-check.sh run       there, on the GPU machine (an H200: 16 cores, torch, no network),
#                                  from the repository root, in at most 8 minutes
#   scripts/gpu-check.sh dry-run   here: the same steps on the CPU, with a shrunken model and tiny
#                                  settings, so that the script is known to work save for the GPU
#
# `run` writes its report (gpu-check.md) and log to $OUT when set (the device tool's folder), else to
# target/gpu-check/. It holds the GPU to the CPU (logits and 5 DPO steps on the tiny fixture, within
# 1e-3, in f32), times the top-k metrics on SmolLM2's 49152-token vocabulary and greedy generation,
# and trains a SmolLM2-135M-shaped model with DPO in bf16 and in f32, Redline and TRL on the same
# batch and length, with steps/s, tokens/s and MFU (`redline bench train --model`).
#
# Settings (environment): GPU_CHECK_BATCHES (bf16 batch sizes, default "8 32"), GPU_CHECK_BATCH_F32
# (default 8), GPU_CHECK_MAX_LENGTH (default 512), GPU_CHECK_STEPS (timed steps, default 10),
# GPU_CHECK_DEVICE (default cuda), REDLINE_PEERS_VENV (dry-run and prepare: a venv with torch,
# transformers, gguf and TRL; default .peers-venv).
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
root=$PWD
mode=${1:-run}
peers_venv=$(realpath -m "${REDLINE_PEERS_VENV:-.peers-venv}")
target=${CARGO_TARGET_DIR:-target}
smollm2=target/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$smollm2" ] || smollm2=${REDLINE_SMOLLM2:-$smollm2}

# SmolLM2-135M's config.json and tokenizer, read from its GGUF with transformers (the weights are
# made on the GPU machine: the GGUF does not fit what travels).
describe_smollm2() {
    local to=$1
    [ -f "$to/config.json" ] && return 0
    [ -f "$smollm2" ] || scripts/fetch-smollm2.sh
    "$peers_venv/bin/python" - "$(dirname "$smollm2")" "$(basename "$smollm2")" "$to" <<'EOF'
import sys
from transformers import AutoConfig, AutoTokenizer
folder, name, out = sys.argv[1:]
AutoConfig.from_pretrained(folder, gguf_file=name).save_pretrained(out)
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
EOF
}

case $mode in
prepare)
    eval "$(scripts/cuda-env.sh)"
    start=$SECONDS
    cargo build --release --locked --features cuda --bin redline
    echo "gpu-check: release build with --features cuda took $((SECONDS - start)) s" >&2
    mkdir -p .gpu/lib .gpu/peers
    strip -o .gpu/redline "$target/release/redline"
    gzip -9 -f .gpu/redline
    cp -L "$CUDA_HOME/lib/libcudart.so.13" .gpu/lib/
    cp "${REDLINE_PEERS_DIR:-../shared/peers}/trl_dpo.py" .gpu/peers/
    describe_smollm2 .gpu/smollm2
    # TRL and the datasets library, which the GPU image lacks (its torch, transformers and
    # accelerate serve), as wheels for its Python 3.12.
    rm -rf .whl && mkdir .whl
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    du -sh .gpu .whl >&2
    echo "gpu-check: ready; on the GPU machine run scripts/gpu-check.sh run, carrying .gpu and .whl" >&2
    exit 0
    ;;
run | dry-run) ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|run|dry-run" >&2
    exit 2
    ;;
esac

out=${OUT:-$target/gpu-check}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
exec > >(tee "$out/gpu-check.log") 2>&1
report=$out/gpu-check.md
: >"$report"
status=0
# Runs one part with a time limit; a part that fails is reported and the next one still runs, while
# the whole check stays inside its 8 minutes.
part() {
    local limit=$1 title=$2
    shift 2
    if ((SECONDS + limit > 470)); then
        echo "## $title: skipped, the check is at ${SECONDS} s of its 480" | tee -a "$report"
        status=1
        return
    fi
    echo "== $title ($(date -u +%T))"
    {
        echo "## $title"
        echo
        echo '```'
        echo "$*"
        echo '```'
        echo
    } >>"$report"
    if timeout "$limit" "$@" >"$work/part.out"; then
        cat "$work/part.out" | tee -a "$report"
    else
        local rc=$?
        cat "$work/part.out" | tee -a "$report"
        echo "**failed (exit $rc)**" | tee -a "$report"
        status=1
    fi
    echo >>"$report"
}

if [ "$mode" = run ]; then
    device=${GPU_CHECK_DEVICE:-cuda}
    batches=${GPU_CHECK_BATCHES:-8 32}
    batch_f32=${GPU_CHECK_BATCH_F32:-8}
    max_length=${GPU_CHECK_MAX_LENGTH:-512}
    steps=${GPU_CHECK_STEPS:-10}
    topk_rows=4096
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    # The CUDA libraries the binary links, from the image's PyTorch wheels; libcudart also from .gpu.
    libs=$(python3 - <<'EOF'
import glob, os, site
dirs = {os.path.dirname(p) for d in site.getsitepackages()
        for p in glob.glob(f"{d}/nvidia/**/lib*.so*", recursive=True)}
print(":".join(sorted(dirs)))
EOF
    )
    # The driver's libcuda where the image keeps it, if the loader does not already know it.
    for dir in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64; do
        [ -d "$dir" ] && libs="$libs:$dir"
    done
    export LD_LIBRARY_PATH="$libs:$root/.gpu/lib:${LD_LIBRARY_PATH:-}"
    bin=$work/redline
    gzip -dc .gpu/redline.gz >"$bin"
    chmod +x "$bin"
    if ! "$bin" --version; then
        echo "gpu-check: the carried binary does not run here (ldd below); building here" >&2
        ldd "$bin" | grep -i "not found" >&2 || true
        command -v cargo >/dev/null || { echo "gpu-check: no cargo on this machine" >&2; exit 1; }
        cargo build --release --locked --offline --features cuda --bin redline
        bin=$target/release/redline
    fi
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$work/site" .whl/*.whl
        export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # `redline bench` runs its peers with VENV/bin/python: the image's own Python here.
    mkdir -p "$work/venv/bin"
    ln -s "$(command -v python3)" "$work/venv/bin/python"
    python=$work/venv/bin/python
    peers=.gpu/peers
    description=.gpu/smollm2
    model_flags=()
else
    device=cpu
    batches=2
    batch_f32=2
    max_length=64
    steps=2
    topk_rows=64
    bin=${REDLINE_BIN:-$target/debug/redline}
    [ -x "$bin" ] || cargo build --locked --bin redline
    python=$peers_venv/bin/python
    peers=${REDLINE_PEERS_DIR:-../shared/peers}
    description=$work/description
    describe_smollm2 "$description"
    model_flags=(--layers 2 --hidden 64)
fi
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$(nproc)}
model=$work/smollm2
echo "== making the SmolLM2-shaped model"
"$python" scripts/gpu_model.py "$description" "$model" "${model_flags[@]}" --words $((max_length * 3 / 4))
venv=$(dirname "$(dirname "$python")")

{
    echo "# GPU check: $("$bin" --version 2>/dev/null || echo redline), $mode on $device, $(date -u +%F)"
    echo
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
    echo
} >>"$report"
part 120 "GPU against CPU, top-k metrics, generation" \
    "$bin" bench device --device "$device" --rows "$topk_rows" --gen-model "$model" --max-new-tokens 64
for batch in $batches; do
    part 110 "DPO in bf16, batch $batch" \
        "$bin" bench train --model "$model" --device "$device" --dtype bf16 --batch "$batch" \
        --max-length "$max_length" --steps "$steps" --peers-venv "$venv" --peers-dir "$peers"
done
part 110 "DPO in f32, batch $batch_f32" \
    "$bin" bench train --model "$model" --device "$device" --dtype f32 --batch "$batch_f32" \
    --max-length "$max_length" --steps "$steps" --peers-venv "$venv" --peers-dir "$peers"
echo "gpu-check: report in $report"
exit $status
