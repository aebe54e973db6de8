#!/usr/bin/env bash
# The demo: a tiny GPT-2 trained from scratch on Penn Treebank on CPU, twice -- a plain baseline, and the same model
# with --data_efficiency_recipe auto (which chooses random-LTD on the middle layers for this model, sequence length
# and run length, and prints its choice), given DEMO_BUDGET (default 1.0: the same) effective layer-tokens as the
# baseline. Shorter kept lengths early on leave room for more optimizer steps within that budget. With
# DEMO_BUDGET < 1 the learning rate is raised as budget ** -0.5. Prints validation/test perplexity, tokens seen,
# effective layer-tokens and wall-clock, plus the tokens and time each run needs to reach the baseline's final
# validation loss, and saves a plot of validation loss against tokens, wall-clock and CPU time. About 13 minutes
# on 2 cores, plus environment setup the first time.
#
#   bash scripts/demo.sh                      # DEMO_STEPS=200 DEMO_BUDGET=1.0 DEMO_OUT=outputs/demo
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

echo "== [1/2] environment (.venv, CPU-only PyTorch; skipped when already installed)"
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
export PYTHONWARNINGS=ignore
echo "   ready after $(( $(date +%s) - start )) s"

STEPS=${DEMO_STEPS:-200}
BUDGET=${DEMO_BUDGET:-1.0}
OUT=${DEMO_OUT:-outputs/demo}
echo "== [2/2] training: baseline ($STEPS steps) vs the auto recipe (${BUDGET} of its effective tokens)"
echo "   logs: $OUT/gpt2/*.log"
python scripts/benchmarks/bench_data_efficiency.py --task gpt2 --arms auto --baseline_budgets 1.0 --budgets "$BUDGET" \
  --steps "$STEPS" --evals_per_run 6 --out_dir "$OUT" --no_docs --demo --overwrite

echo
echo "Effective layer-tokens: tokens that went through each transformer layer, summed over layers (random-LTD"
echo "layers see only the kept tokens). Wall-clock excludes evaluation. Perplexities: validation = PTB valid,"
echo "test = PTB test (never used for tuning). Total demo time: $(( $(date +%s) - start )) s."
