#!/usr/bin/env python
"""Model-based data selection at equal compute, reference forwards included (issue #25).

Corpora: PTB, BBC News, and ``noisy_bbc`` (BBC News with 40% junk documents in its training split: random words,
shuffled articles, repeated boilerplate; validation stays clean). Per corpus, one **reference model** of the trained
architecture is trained on a held-out clean slice (the last 10% of the training documents, which no arm trains on);
its cost is reported separately. Arms, each over the same seeds:

* ``baseline``: plain training;
* ``ltd``: random-LTD as ``--data_efficiency_recipe auto`` chooses it;
* ``select`` / ``select_ltd``: excess-loss token selection (ratio 0.6), online: one reference forward per micro-batch;
* ``filter`` / ``filter_ltd``: the ``reference_loss`` metric as a filter: a constant percentile curriculum that keeps
  the 70% of samples with the lowest reference loss. Only what is trained on is scored: a random subset of
  ``steps x batch / 0.7`` samples.

**Equal compute.** Every arm gets the baseline's effective tokens (layer-tokens / layers), the reference forwards
included at 1/3 of a training token each (same architecture; ``hf_data_efficiency.curriculum.reference``): an arm's
steps are the most whose planned compute stays within the budget. The runs' own counters (hooks on the layers and on
the reference model, independent of the library's) are what the tables report.

Runs are skipped when their record exists (``--records_dir``); ``--only_existing`` re-tabulates from the records.
With every corpus and the committed records, the tables are written into docs/benchmarks.md between the
``selection`` markers::

    python scripts/benchmarks/bench_selection.py --seeds 1 2 3 --jobs 2
    python scripts/benchmarks/bench_selection.py --seeds 1 2 3 --only_existing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data_efficiency import (  # noqa: E402
    fmt_spread,
    mean_curve,
    planned_effective_tokens,
    reach,
    replace_marked_block,
    to_cli,
)

from hf_data_efficiency.fileio import atomic_write_text  # noqa: E402

CORPORA = {"ptb": "ptb", "bbc": "bbc", "noisy": "noisy_bbc"}
TITLES = {"ptb": "PTB", "bbc": "BBC News", "noisy": "noisy BBC News"}
DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN, DOC_END = "<!-- selection:begin -->", "<!-- selection:end -->"
DEFAULT_RECORDS = ROOT / "docs" / "bench_records" / "selection"
ARMS = ("baseline", "ltd", "select", "select_ltd", "filter", "filter_ltd")
#: the trained (and reference) model, the data and the batch
MODEL = {"n_layer": 4, "n_embd": 128, "n_head": 4, "block_size": 128, "per_device_train_batch_size": 8}
DATA = {"max_vocab": 4096, "held_out_fraction": 0.1}
BATCH, SEQ, LAYERS = 8, 128, 4
RATIO = 0.6  # token selection keeps 60% of each micro-batch's tokens (RHO-1 used 60-70%)
KEEP = 70  # the filter keeps the 70% of samples with the lowest reference loss
REFERENCE_COST = 1.0 / 3.0  # per reference-forward token, same architecture
#: what a committed record keeps
RECORD_KEYS = ("tokens", "layer_tokens", "effective_tokens", "reference_effective_tokens", "train_seconds",
               "train_cpu_seconds", "curve", "final", "bench", "data_efficiency_config")  # fmt: skip


# ----- planning -------------------------------------------------------------------------------------------
def _ltd_task() -> dict:
    """The bench_data_efficiency task shape planned_effective_tokens reads (for the ``auto`` recipe's random-LTD)."""
    return {"seq": SEQ, "layers": LAYERS, "batch": BATCH}


def filter_samples(steps: int) -> int:
    """Samples a filter arm scores for ``steps`` steps: enough that the kept 70% fill them once."""
    return math.ceil(steps * BATCH * 100 / KEEP)


def planned_compute(arm: str, steps: int) -> float:
    """Effective tokens of ``steps`` steps of ``arm``: training (random-LTD per the ``auto`` recipe) plus the
    reference forwards (per step for selection, the scored subset for the filter)."""
    train = planned_effective_tokens(_ltd_task(), "auto", steps) if arm.endswith("ltd") else steps * BATCH * SEQ
    if arm.startswith("select"):
        train += steps * BATCH * SEQ * REFERENCE_COST
    if arm.startswith("filter"):
        train += filter_samples(steps) * SEQ * REFERENCE_COST
    return train


def plan_steps(arm: str, budget: float) -> int:
    """The most steps of ``arm`` whose planned compute stays within ``budget`` (0.1% tolerance)."""
    steps = max(1, int(budget // (BATCH * SEQ)))
    while planned_compute(arm, steps) > budget * 1.001 and steps > 1:
        steps -= 1
    while planned_compute(arm, steps + 1) <= budget * 1.001:
        steps += 1
    return steps


def arm_flags(arm: str, steps: int, reference: str) -> dict:
    flags: dict = {}
    if arm.endswith("ltd"):
        flags["data_efficiency_recipe"] = "auto"
    if arm.startswith("select"):
        flags.update(
            token_selection="excess_loss", token_selection_ratio=RATIO, token_selection_reference_model=reference
        )
    if arm.startswith("filter"):
        flags.update(
            curriculum_metrics="reference_loss",
            curriculum_difficulty_type="percentile",
            curriculum_min_difficulty=KEEP,
            curriculum_max_difficulty=KEEP,
            curriculum_total_curriculum_step=1,
            curriculum_reference_model=reference,
            max_train_samples=filter_samples(steps),
            train_subset_seed=0,
        )
    return flags


# ----- running ----------------------------------------------------------------------------------------------
def record_path(args, corpus: str, name: str) -> Path:
    return Path(args.records_dir) / corpus / f"{name}.json"


def run(args, corpus: str, name: str, flags: dict) -> dict:
    """Train one run with train_gpt2.py (or reuse its record) and write its record."""
    path = record_path(args, corpus, name)
    if path.exists():
        return json.loads(path.read_text())
    if args.only_existing:
        return {}
    out = Path(args.out_dir) / corpus / name
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "scripts/examples/train_gpt2.py"), *to_cli(flags), "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"[selection] start {corpus} {name}: {flags.get('max_steps')} steps", flush=True)
    t0 = time.perf_counter()
    with open(out.parent / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}; see {out.parent / name}.log")
    record = json.loads((out / "results.json").read_text())
    record["reference_effective_tokens"] = record["curve"][-1].get("reference_effective_tokens", 0.0)
    record["bench"] = {
        "corpus": corpus,
        "run": name,
        "steps": flags["max_steps"],
        "lr": flags["learning_rate"],
        "seed": flags["seed"],
        "process_seconds": time.perf_counter() - t0,
        "cmd": [str(c) for c in cmd[1:]],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({k: record[k] for k in RECORD_KEYS if k in record}, indent=1) + "\n")
    print(f"[selection] done {corpus} {name} in {record['bench']['process_seconds']:.0f} s", flush=True)
    return record


def base_flags(args, corpus: str, steps: int, seed: int) -> dict:
    return {
        **MODEL,
        **DATA,
        "dataset_name": CORPORA[corpus],
        "max_steps": steps,
        "learning_rate": args.lr,
        "seed": seed,
        "eval_steps": max(1, steps // args.evals_per_run),
        "logging_steps": max(1, steps // args.evals_per_run),
        "max_eval_samples": args.eval_samples,
        "final_eval_splits": "validation",
        "save_strategy": "no",
    }


def reference_dir(args, corpus: str) -> Path:
    return Path(args.out_dir) / corpus / "reference"


def train_reference(args, corpus: str) -> dict:
    """The corpus's reference model: the trained architecture on the held-out clean slice (seed 1)."""
    flags = {**base_flags(args, corpus, args.reference_steps, 1), "train_split": "held_out"}
    record = run(args, corpus, "reference", flags)
    if not args.only_existing and not (reference_dir(args, corpus) / "config.json").exists():
        raise RuntimeError(
            f"{corpus}: the reference record exists but not its model under {reference_dir(args, corpus)}"
        )
    return record


def run_arm(args, corpus: str, arm: str, seed: int) -> dict:
    budget = args.steps * BATCH * SEQ
    steps = args.steps if arm == "baseline" else plan_steps(arm, budget)
    flags = {**base_flags(args, corpus, steps, seed), **arm_flags(arm, steps, str(reference_dir(args, corpus)))}
    return run(args, corpus, f"{arm}_s{seed}", flags)


# ----- analysis ---------------------------------------------------------------------------------------------
def analyse(args, corpus: str, results: dict, reference: dict) -> tuple[str, dict]:
    base = results.get("baseline")
    if not base:
        return f"{corpus}: no baseline records.", {}
    base_curve = mean_curve(base)
    target = base_curve[-1]["eval_loss"]
    base_tokens, base_seconds = base_curve[-1]["effective_tokens"], base_curve[-1]["train_seconds"]
    lines = [
        "| arm | seeds | steps | effective tokens (reference share) | final val loss | val ppl | effective tokens to "
        "reach the baseline's final val loss | wall-clock to reach it | per seed: tokens |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict = {"target": target, "arms": {}}
    for arm in ARMS:
        runs = results.get(arm)
        if not runs:
            continue
        losses = [r["final"]["validation"]["loss"] for r in runs]
        ppl = [math.exp(v) for v in losses]
        eff = float(np.mean([r["curve"][-1]["effective_tokens"] for r in runs]))
        ref = float(np.mean([r["curve"][-1].get("reference_effective_tokens", 0.0) for r in runs]))
        curve = mean_curve(runs)
        tok, sec = reach(curve, target, "effective_tokens"), reach(curve, target, "train_seconds")
        seeds = [reach(r["curve"], target, "effective_tokens") for r in runs]
        hit = [s / base_tokens for s in seeds if s is not None]
        per_seed = f"{fmt_spread(hit, digits=2)}x ({len(hit)}/{len(runs)})" if hit else f"0/{len(runs)} reach it"
        summary["arms"][arm] = {"loss": losses, "effective_tokens": eff, "reach_tokens": tok, "reach_seconds": sec}
        lines.append(
            f"| {arm} | {len(runs)} | {runs[0]['bench']['steps']} | {eff / 1e6:.3f}M ({ref / eff:.0%}) "
            f"| {fmt_spread(losses, digits=3)} | {fmt_spread(ppl)} "
            f"| {f'{tok / base_tokens:.2f}x' if tok is not None else 'not reached'} "
            f"| {f'{sec / base_seconds:.2f}x' if sec is not None else '-'} | {per_seed} |"
        )
    ref_note = ""
    if reference:
        ref_note = (
            f"Reference model (trained separately, not counted above): {reference['bench']['steps']} steps on the "
            f"held-out slice, {reference['effective_tokens'] / 1e6:.3f}M effective tokens "
            f"({reference['effective_tokens'] / base_tokens:.2f}x the baseline's), final clean validation loss "
            f"{reference['final']['validation']['loss']:.3f}."
        )
    summary["reference"] = reference.get("final", {})
    return "\n".join(lines) + ("\n\n" + ref_note if ref_note else ""), summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", nargs="+", choices=list(CORPORA), default=list(CORPORA))
    parser.add_argument(
        "--arms", nargs="+", choices=ARMS, default=["baseline", "ltd", "select", "select_ltd", "filter"]
    )
    parser.add_argument(
        "--filter_corpora", nargs="+", choices=list(CORPORA), default=["noisy"], help="corpora the filter arms run on"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=200, help="baseline steps")
    parser.add_argument("--reference_steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--evals_per_run", type=int, default=8)
    parser.add_argument("--eval_samples", type=int, default=128)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--out_dir", default="outputs/selection")
    parser.add_argument("--records_dir", default=str(DEFAULT_RECORDS))
    parser.add_argument("--only_existing", action="store_true", help="train nothing: tabulate the records")
    parser.add_argument("--plan", action="store_true", help="print each arm's planned steps and compute, then stop")
    args = parser.parse_args(argv)
    budget = args.steps * BATCH * SEQ
    if args.plan:
        for arm in args.arms:
            steps = args.steps if arm == "baseline" else plan_steps(arm, budget)
            print(f"{arm}: {steps} steps, {planned_compute(arm, steps) / budget:.3f}x the baseline's compute")
        return {}
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        references = dict(zip(args.corpora, pool.map(lambda c: train_reference(args, c), args.corpora)))
        jobs = [
            (c, a, s)
            for a in args.arms
            for s in args.seeds
            for c in args.corpora
            if not a.startswith("filter") or c in args.filter_corpora
        ]
        done = list(pool.map(lambda job: (job, run_arm(args, *job)), jobs))
    results: dict = {}
    for (corpus, arm, _), record in done:
        if record:
            results.setdefault(corpus, {}).setdefault(arm, []).append(record)
    summary, sections = {}, []
    for corpus in args.corpora:
        table, summary[corpus] = analyse(args, corpus, results.get(corpus, {}), references.get(corpus) or {})
        sections.append(f"#### {TITLES[corpus]}\n\n{table}")
    process = sum(r["bench"]["process_seconds"] for arms in results.values() for runs in arms.values() for r in runs)
    process += sum(r["bench"]["process_seconds"] for r in references.values() if r)
    runs_done = sum(len(v) for a in results.values() for v in a.values())
    text = "\n\n".join(sections) + f"\n\n{runs_done} runs + references: {process / 3600:.2f} process-hours.\n\n"
    text += "Command (re-tabulates from the records): `python scripts/benchmarks/bench_selection.py --only_existing`"
    print(text)
    if args.corpora == list(CORPORA) and args.records_dir == str(DEFAULT_RECORDS):
        replace_marked_block(DOC, DOC_BEGIN, DOC_END, text)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out_dir) / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
