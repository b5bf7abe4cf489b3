#!/usr/bin/env bash
# Set up a venv (CPU torch) and run the test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
# Every optional extra, so their tests run: lm-eval, the Hydra launchers, the notebook stack, the server.
.venv/bin/pip install -q -e ".[test,eval,launchers,notebook,serve]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
# One BLAS thread per process: multi-rank tests start several processes on few cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# Two worker processes (the CI machine has 2 cores), one test file per worker at a time (module
# fixtures such as built engines are made once); DIFFULEX_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -q --durations=15 -n "${DIFFULEX_TEST_WORKERS:-2}" --dist loadfile "$@"
