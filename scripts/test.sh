#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the browser the page tests drive, then
# runs every test (both stores; PostgreSQL as a throwaway cluster the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-browser.sh
exec cargo test --workspace --locked "$@"
