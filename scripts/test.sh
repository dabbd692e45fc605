#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them.
#   bash scripts/test.sh              # full default suite (docker tests run when an engine can start)
#   bash scripts/test.sh -k wire      # extra arguments go to pytest
# Environment: VENV (default .venv), SPLITDNN_DOCKER=0 to skip installing/starting Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
echo "==> installing splitdnn with the train, serve, ray and dev extras"
python -m pip install -q --upgrade pip
# torch first, pinned: a bare 'torch' requirement could pull a different multi-GB build.
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[train,serve,dev]"
# Ray Serve for the tail's cluster test (marked slow; it skips with the reason if this fails).
# Pinned beside the rest so it cannot move fastapi, starlette or pydantic.
python -m pip install -q -e ".[ray]" \
  "fastapi==$(python -c 'import fastapi; print(fastapi.__version__)')" \
  "pydantic==$(python -c 'import pydantic; print(pydantic.VERSION)')" \
  || echo "the ray extra did not install; the Ray tests will be skipped"

echo "==> system tools the suite calls (scripts/system-tools.txt)"
bash scripts/system-tools.sh test \
  || echo "some system tools could not be installed; the tests that need them skip and name them"

if [ "${SPLITDNN_DOCKER:-auto}" != "0" ] && [ -f scripts/ci-docker-setup.sh ]; then
  echo "==> preparing Docker (tests marked docker skip with a reason when this fails)"
  bash scripts/ci-docker-setup.sh || echo "Docker setup failed; docker tests will be skipped"
fi

echo "==> ruff"
ruff check splitdnn services gateway tests benchmarks
echo "==> pytest"
python -m pytest -ra "$@"
