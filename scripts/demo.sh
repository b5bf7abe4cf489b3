#!/usr/bin/env bash
# Set up a venv (CPU torch) and run the main job on the embedded tiny model.
# Usage: bash scripts/demo.sh [hydra overrides], e.g. strategy=d2f model=tiny_dream
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e .
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline
exec .venv/bin/python experiments/generate.py "$@"
