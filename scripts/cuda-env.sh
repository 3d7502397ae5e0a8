#!/usr/bin/env bash
# Prints the environment (`export …` lines) under which `cargo build --features cuda` compiles on a
# machine with no GPU, no driver and no system CUDA:
#   eval "$(scripts/cuda-env.sh)" && cargo build --release --features cuda
# The CUDA 13.0 compiler, its headers and the runtime library come from PyPI (pinned below), installed
# once into a folder cached under $REDLINE_CACHE (default ~/.cache/redline), named by the hash of
# this script, so a change of pins installs anew and an unchanged one costs nothing.
#
# Why 13.0: candle-kernels compiles its kernels to PTX that the driver JIT-compiles when the
# program starts, and a driver only takes PTX of its own CUDA version or older; the H200 machines
# run driver 580 (CUDA 13.0). cudarc reads the version from `nvcc --version` (candle-core asks for
# `cuda-version-from-build-system`).
#
# Linking: candle-core builds cudarc with `dynamic-linking`, so the linker wants libcuda (the
# driver), libnvrtc, libcurand, libcublas and libcublasLt. None of them is needed to compile, and
# the driver cannot be had from PyPI at all, so this script makes link stubs of them, as the CUDA
# toolkit does for libcuda (lib64/stubs): empty functions under each library's real SONAME, one for
# every function cudarc's bindings declare. At run time the dynamic loader finds the real libraries
# by SONAME (on the H200 machines: the driver, and the nvidia-* wheels PyTorch installs); a stub is
# never loaded, since it lives only under lib/stubs, which no run path names. libcudart, which
# candle-kernels' own static kernels link, is the real one from the wheel.
#
# CUDA_COMPUTE_CAP defaults to 90 (Hopper: H100, H200); set it before calling to build for another.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
# The libraries to stub: cudarc's bindings folder, the library's SONAME.
stubs=(
    "driver libcuda.so.1"
    "nvrtc libnvrtc.so.13"
    "curand libcurand.so.10"
    "cublas libcublas.so.13"
    "cublaslt libcublasLt.so.13"
)
cache=${REDLINE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redline}
dir=$cache/cuda-$(sha256sum "$self" | cut -c1-16)
root=$dir/nvidia/cu13
if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "cuda-env: installing nvcc 13.0 and the CUDA headers from PyPI into $dir (once: 100 MB to fetch, 270 MB on disk)" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$dir" "${pins[@]}" >&2
    # The wheels carry only versioned libraries; the linker looks for the plain names.
    ln -sf libcudart.so.13 "$root/lib/libcudart.so"
    # cudarc's bindings, from the version Cargo.lock pins (fetched if this machine lacks it).
    cudarc_version=$(awk '/^name = "cudarc"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
    cargo fetch --locked --quiet >&2
    cudarc=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 2 -type d \
        -name "cudarc-$cudarc_version" | head -n1)
    [ -n "$cudarc" ] || { echo "cuda-env: cudarc $cudarc_version not found" >&2; exit 1; }
    mkdir -p "$root/lib/stubs"
    for entry in "${stubs[@]}"; do
        read -r bindings soname <<<"$entry"
        src=$dir/stub-${soname%%.so*}.c
        grep -oE '^pub unsafe fn [A-Za-z_0-9]+\(' "$cudarc/src/$bindings/sys/mod.rs" |
            sed -E 's/^pub unsafe fn ([A-Za-z_0-9]+)\(/void \1(void) {}/' | sort -u >"$src"
        cc -shared -fPIC -Wl,-soname,"$soname" -o "$root/lib/stubs/$soname" "$src"
        ln -sf "$soname" "$root/lib/stubs/${soname%%.so*}.so"
    done
    touch "$dir/.complete"
fi
cat <<EOF
export PATH="$root/bin:\$PATH"
export CUDA_HOME="$root"
export CUDA_ROOT="$root"
export CUDA_PATH="$root"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
EOF
