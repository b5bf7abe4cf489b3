#!/usr/bin/env bash
# Set up a venv (CPU torch), show held-out problems through the shipped trained tiny models
# (experiments/demo.py), then run the main job on the embedded default (trained tiny LLaDA2).
# Usage: bash scripts/demo.sh [hydra overrides for generate.py], e.g. strategy=dmax
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[notebook]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
.venv/bin/python experiments/demo.py
exec .venv/bin/python experiments/generate.py "$@"
