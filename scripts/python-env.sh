#!/usr/bin/env bash
# Prints the path of a Python venv with clients/python/requirements-test.txt installed (torch,
# transformers and TRL from PyPI) and the client itself, creating it when missing. The venv is
# cached between runs under $REDLINE_CACHE (default ~/.cache/redline), named by the hash of the
# requirements, so a change of pins builds a new one and an unchanged one costs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
reqs=clients/python/requirements-test.txt
cache=${REDLINE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/redline}
venv=$cache/py-$(sha256sum "$reqs" | cut -c1-16)
if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    mkdir -p "$cache"
    echo "python-env: creating $venv (torch, transformers, TRL from PyPI; several minutes once)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
    touch "$venv/.complete"
fi
# The client from this checkout, every time (it is small): installing it is part of what is tested.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --force-reinstall --no-deps ./clients/python >&2
echo "$venv"
