#!/usr/bin/env bash
# Create the environment if needed, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 TOKENIZERS_PARALLELISM=false
ruff check hf_data_efficiency scripts tests
ruff format --check hf_data_efficiency scripts tests
python -m pytest -q "$@"
