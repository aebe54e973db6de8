#!/usr/bin/env python
"""Data-efficiency benchmark: baseline vs curriculum vs random-LTD vs both, at equal budgets.

Each arm is trained by the real training script (``scripts/examples/train_<task>.py``, one subprocess per run)
at budgets of 100/75/50% of the baseline's **effective tokens** (layer-tokens / number of layers: the
data tokens for the baseline and for a curriculum, less per data token with random-LTD, which is how
random-LTD's saving is counted). The number of optimizer steps that fits a budget is planned from the
schedules (a shorter ``seqlen_truncate`` row or a shorter kept length leaves room for more steps), and
every schedule is a fixed fraction of its run. The learning rate of a run with budget ``b`` is
``lr * b ** -lr_scaling`` for every arm, the baseline included (the paper raises the LR as data is cut).
Arms ``both-<variant>`` change the curriculum of ``both`` (``CURRICULUM_VARIANTS``: ``seqlen_reshape``, a shorter
curriculum, a raised LR, rarity from a higher percentile, sequence-length warmup alone).

Reported per arm and budget: steps, LR, data tokens, effective tokens, training seconds (evaluation
excluded), final validation perplexity/accuracy (mean and spread over seeds) and test numbers. Per arm:
the effective tokens and seconds needed to reach the baseline's final validation loss (interpolated on
the validation curves). Everything is measured by the scripts' own counters, which agree with the
Trainer's ``data_efficiency/effective_tokens`` log.

Examples::

    python scripts/benchmarks/bench_data_efficiency.py --task gpt2 --seeds 1 2          # writes docs/benchmarks.md
    python scripts/benchmarks/bench_data_efficiency.py --task vit --budgets 1.0 0.75
    python scripts/benchmarks/bench_data_efficiency.py --task gpt2 --arms baseline both --baseline_budgets 1.0 \\
        --budgets 0.7 --out_dir demo_out --no_docs                                      # what scripts/demo.sh runs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hf_data_efficiency.fileio import atomic_write_text  # noqa: E402
from hf_data_efficiency.recipe import recipe_sections  # noqa: E402
from hf_data_efficiency.routing.scheduler import RandomLTDScheduler  # noqa: E402
from hf_data_efficiency.schedules import DifficultySchedule  # noqa: E402

#: curriculum variants of the ``both`` arm (curriculum + random-LTD), run as arm ``both-<variant>``: each changes the
#: task's curriculum settings; ``lr_factor`` multiplies the run's learning rate.
CURRICULUM_VARIANTS = {
    "reshape": {"transform": "reshape"},  # seqlen_reshape: short rows, every token of the batch kept
    "short": {"fraction": 0.15},  # the curriculum over half the task's fraction of the run
    "rarity50": {"rarity_min": 50},  # the rarity percentile starts at 50 instead of the task's
    "lr_up": {"lr_factor": 1.5},  # the LR raised by 1.5x for the curriculum's easier, shorter data
    "seqlen_only": {"rarity": False},  # sequence-length warmup alone (Li et al. 2022), no rarity metric
}
ARMS = ("baseline", "curriculum", "random_ltd", "both", "auto", *(f"both-{v}" for v in CURRICULUM_VARIANTS))
DOC_BEGIN, DOC_END = "<!-- data-efficiency:begin -->", "<!-- data-efficiency:end -->"

# Per task: the script, its base flags, the batch geometry used to plan budgets, and the recipe knobs.
# fractions are of each run's own number of steps; tuned on validation splits only.
TASKS = {
    "gpt2": {
        "script": "scripts/examples/train_gpt2.py",
        "flags": {"n_layer": 6, "n_embd": 256, "n_head": 4, "block_size": 128, "per_device_train_batch_size": 16},
        "lr": 2e-3,
        "steps": 200,
        "batch": 16,
        "seq": 128,
        "layers": 6,
        "metric": "perplexity",
        "curriculum": {"fraction": 0.3, "seqlen_min": 16, "seqlen_step": 8, "rarity_min": 10, "root_degree": 2},
        "random_ltd": {"fraction": 0.7, "min_kept": 32, "step": 16},
        "arms": ("baseline", "curriculum", "random_ltd", "both"),
    },
    "vit": {
        "script": "scripts/examples/train_vit.py",
        "flags": {"dataset": "mnist", "patch_size": 4, "num_hidden_layers": 6, "hidden_size": 128},
        "lr": 1e-3,
        "steps": 300,
        "batch": 64,
        "seq": 50,
        "layers": 6,
        "metric": "accuracy",
        "random_ltd": {"fraction": 0.7, "min_kept": 16, "step": 2},
        "arms": ("baseline", "random_ltd"),
    },
    "bert": {
        "script": "scripts/examples/train_bert.py",
        "flags": {"task": "cls", "max_seq_length": 128},
        "lr": 1e-4,
        "steps": 40,
        "batch": 16,
        "seq": 128,
        "layers": 6,
        "metric": "accuracy",
        "random_ltd": {"fraction": 0.7, "min_kept": 64, "step": 16},
        "arms": ("baseline", "random_ltd"),
    },
}
# the same model and settings on a second offline LM corpus (BBC News articles, packed into 128-token blocks)
TASKS["gpt2_bbc"] = {**TASKS["gpt2"], "flags": {"dataset_name": "bbc", **TASKS["gpt2"]["flags"]}}


# ----- planning ------------------------------------------------------------------------------------
def curriculum_settings(task: dict, arm: str) -> tuple[str, dict]:
    """``arm``'s base arm and curriculum settings: the task's, changed by the variant of a ``both-<variant>`` arm."""
    base, _, variant = arm.partition("-")
    settings = {"transform": "truncate", "rarity": True, "lr_factor": 1.0, **(task.get("curriculum") or {})}
    return base, {**settings, **CURRICULUM_VARIANTS.get(variant, {})}


def arm_flags(task: dict, arm: str, steps: int) -> dict:
    """The data-efficiency flags of ``arm`` for a run of ``steps`` optimizer steps (``auto``: the recipe's)."""
    if arm == "auto":
        return {"data_efficiency_recipe": "auto"}
    arm, c = curriculum_settings(task, arm)
    flags: dict = {}
    if arm in ("curriculum", "both"):
        total = max(1, round(c["fraction"] * steps))
        flags.update(
            seqlen_curriculum=c["transform"],
            seqlen_curriculum_min_difficulty=c["seqlen_min"],
            seqlen_curriculum_max_difficulty=task["seq"],
            seqlen_curriculum_difficulty_step=c["seqlen_step"],
            seqlen_curriculum_total_curriculum_step=total,
        )
    if arm in ("curriculum", "both") and c["rarity"]:
        flags.update(
            curriculum_metrics="vocab_rarity",
            curriculum_difficulty_type="percentile",
            curriculum_schedule_type="fixed_root",
            curriculum_root_degree=c["root_degree"],
            curriculum_min_difficulty=c["rarity_min"],
            curriculum_max_difficulty=100,
            curriculum_difficulty_step=1,
            curriculum_total_curriculum_step=total,
        )
    if arm in ("random_ltd", "both"):
        r = task["random_ltd"]
        flags.update(
            random_ltd=True,
            random_ltd_min_value=r["min_kept"],
            random_ltd_max_value=task["seq"],
            random_ltd_seq_per_step=r["step"],
            random_ltd_require_steps=max(1, round(r["fraction"] * steps)),
        )
    return flags


def planned_effective_tokens(task: dict, arm: str, steps: int) -> float:
    """Effective tokens (layer-tokens / layers) that ``steps`` steps of ``arm`` consume, from the schedules.

    Step ``k`` (1-based) truncates (or reshapes) rows to ``seqlen_schedule(k)`` and random-LTD keeps
    ``kept_length(k - 1)`` tokens (the kept length is updated at the beginning of a step from the
    number of finished steps). Random-LTD drops tokens in every layer but the first and the last.
    """
    flags = arm_flags(task, arm, steps)
    k = np.arange(1, steps + 1)
    rows = np.full(steps, float(task["seq"]))
    if "seqlen_curriculum" in flags:
        sched = DifficultySchedule.from_dict(
            {
                "min_difficulty": flags["seqlen_curriculum_min_difficulty"],
                "max_difficulty": flags["seqlen_curriculum_max_difficulty"],
                "schedule_type": "fixed_linear",
                "schedule_config": {
                    "total_curriculum_step": flags["seqlen_curriculum_total_curriculum_step"],
                    "difficulty_step": flags["seqlen_curriculum_difficulty_step"],
                },
            }
        )
        rows = np.array([min(sched(int(s)), task["seq"]) for s in k], dtype=float)
    # seqlen_reshape cuts each row into ceil(seq / length) rows of that length (the last one padded)
    row_count = np.ceil(task["seq"] / rows) if flags.get("seqlen_curriculum") == "reshape" else np.ones(steps)
    per_row = rows * task["layers"]
    if arm == "auto":
        recipe = recipe_sections("auto", num_layers=task["layers"], seq_len=task["seq"], steps=steps)
        flags.update(
            {f"random_ltd_{k}": v for k, v in recipe.get("random_ltd", {}).items()}, random_ltd="random_ltd" in recipe
        )
    if flags.get("random_ltd"):
        sched = RandomLTDScheduler(
            flags["random_ltd_min_value"],
            flags["random_ltd_max_value"],
            flags["random_ltd_require_steps"],
            flags["random_ltd_seq_per_step"],
        )
        kept = np.minimum([sched.kept_length(int(s) - 1) for s in k], rows)
        dropping = task["layers"] - 2
        per_row = rows * 2 + kept * dropping
    return float((per_row * row_count * task["batch"]).sum() / task["layers"])


def plan_steps(task: dict, arm: str, budget_tokens: float) -> int:
    """Fewest steps whose planned effective tokens reach ``budget_tokens`` (schedules scale with the run)."""
    full = task["batch"] * task["seq"]
    steps = max(1, math.floor(budget_tokens / full))
    while planned_effective_tokens(task, arm, steps) < budget_tokens * 0.999:
        steps += max(1, steps // 200)
    return steps


# ----- running -------------------------------------------------------------------------------------
def to_cli(flags: dict) -> list[str]:
    out = []
    for key, value in flags.items():
        out.append(f"--{key}")
        out.append(str(value).lower() if isinstance(value, bool) else str(value))
    return out


def run_name(arm: str, budget: float, seed: int, lr: float | None = None) -> str:
    """A run's folder and record name; ``lr`` only for the runs of an LR grid."""
    return f"{arm}_b{int(round(budget * 100))}_s{seed}" + (f"_lr{lr:g}" if lr is not None else "")


def run_dir(out_dir: str, task_name: str, arm: str, budget: float, seed: int, lr: float | None = None) -> Path:
    return Path(out_dir) / task_name / run_name(arm, budget, seed, lr)


#: what a committed run record keeps: enough to re-tabulate a study on another machine without rerunning it
RECORD_KEYS = (
    "tokens",
    "layer_tokens",
    "effective_tokens",
    "train_seconds",
    "train_cpu_seconds",
    "curve",
    "final",
    "bench",
    "data_efficiency_config",
)


def record_path(records_dir: str, task_name: str, arm: str, budget: float, seed: int, lr: float | None) -> Path:
    return Path(records_dir) / task_name / f"{run_name(arm, budget, seed, lr)}.json"


def load_finished(args, task_name: str, arm: str, budget: float, seed: int, lr: float | None) -> dict | None:
    """A finished run's record: its results.json under ``--out_dir``, else its committed record under
    ``--records_dir``; ``None`` when neither exists."""
    path = run_dir(args.out_dir, task_name, arm, budget, seed, lr) / "results.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("final") and "bench" in record:
            return record
    if args.records_dir:
        path = record_path(args.records_dir, task_name, arm, budget, seed, lr)
        if path.exists():
            return json.loads(path.read_text())
    return None


def run_one(task_name: str, task: dict, arm: str, budget: float, seed: int, args, lr: float | None = None) -> dict:
    """Train one run (or reuse its finished record unless ``--overwrite``); ``lr`` overrides the task's LR."""
    budget_tokens = budget * task["steps"] * task["batch"] * task["seq"]
    steps = task["steps"] if arm == "baseline" and budget == 1.0 else plan_steps(task, arm, budget_tokens)
    grid_lr = lr
    run_key = (task_name, arm, budget, seed, grid_lr)
    lr = lr if lr is not None else task["lr"] * budget ** (-args.lr_scaling)
    lr *= curriculum_settings(task, arm)[1]["lr_factor"]
    out = run_dir(args.out_dir, task_name, arm, budget, seed, grid_lr)
    result_file = out / "results.json"
    if not args.overwrite:
        record = load_finished(args, task_name, arm, budget, seed, grid_lr)
        if record is not None:
            print(f"[bench] reuse {task_name} {run_name(arm, budget, seed, grid_lr)}", flush=True)
            write_record(args, record, run_key)
            return record
    flags = {
        **task["flags"],
        **arm_flags(task, arm, steps),
        "output_dir": str(out),
        "max_steps": steps,
        "learning_rate": lr,
        "seed": seed,
        "eval_steps": max(1, steps // args.evals_per_run),
        "logging_steps": max(1, steps // args.evals_per_run),
        "save_strategy": "no",
    }
    if task_name.startswith("gpt2"):
        flags["max_eval_samples"] = args.eval_samples
        flags["final_eval_splits"] = "validation,test"
    flags.update(args.extra)
    cmd = [sys.executable, str(ROOT / task["script"]), *to_cli(flags)]
    print(f"[bench] {task_name} {arm} budget={budget:.0%} seed={seed}: {steps} steps, lr={lr:.2e}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    t0 = time.perf_counter()
    log = out.parent / f"{out.name}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"run failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    record = json.loads(result_file.read_text())
    record["bench"] = {
        "task": task_name,
        "arm": arm,
        "budget": budget,
        "seed": seed,
        "steps": steps,
        "lr": lr,
        "process_seconds": time.perf_counter() - t0,
        "cmd": cmd,
    }
    atomic_write_text(result_file, json.dumps(record, indent=2) + "\n")
    write_record(args, record, run_key)
    return record


def write_record(args, record: dict, run_key: tuple) -> None:
    """Write the small record of a finished run (``run_key``: task, arm, budget, seed, grid LR) under
    ``--records_dir`` (when given)."""
    if not args.records_dir:
        return
    path = record_path(args.records_dir, *run_key)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({k: record[k] for k in RECORD_KEYS if k in record}, indent=1) + "\n")


def best_lr(task_name: str, task: dict, arm: str, seed: int, args) -> tuple[float, dict[float, float]]:
    """The LR of ``--lrs`` with the lowest final validation loss for ``arm`` at 100% budget and ``seed``."""
    losses = {}
    for lr in args.lrs:
        if args.only_existing and load_finished(args, task_name, arm, 1.0, seed, lr) is None:
            continue
        record = run_one(task_name, task, arm, 1.0, seed, args, lr=lr)
        losses[lr] = record["final"]["validation"]["loss"]
    if not losses:
        raise ValueError(f"no finished LR-grid run of arm {arm!r} (seed {seed}) under --out_dir/--records_dir.")
    return min(losses, key=losses.get), losses


# ----- analysis ------------------------------------------------------------------------------------
def score(record: dict, split: str, metric: str) -> float:
    final = record["final"][split]
    return final["perplexity"] if metric == "perplexity" else final["accuracy"]


def reach(curve: list[dict], target: float, key: str) -> float | None:
    """First ``key`` value at which the validation loss reaches ``target`` (linear interpolation)."""
    prev = None
    for point in curve:
        if point["eval_loss"] <= target:
            if prev is None:
                return point[key]
            frac = (prev["eval_loss"] - target) / max(prev["eval_loss"] - point["eval_loss"], 1e-12)
            return prev[key] + frac * (point[key] - prev[key])
        prev = point
    return None


def per_seed_reach(runs: list[dict], target: float, base_tokens: float, base_seconds: float) -> str:
    """The seed spread of the crossing: each run's own curve against ``target``, as fractions of the baseline's
    (seed-mean) effective tokens and wall-clock; runs that never reach it are counted, not averaged."""
    hits = [(reach(r["curve"], target, "effective_tokens"), reach(r["curve"], target, "train_seconds")) for r in runs]
    hits = [h for h in hits if h[0] is not None]
    if not hits:
        return f"0/{len(runs)} seeds reach it"
    tokens = fmt_spread([t / base_tokens for t, _ in hits], digits=2)
    seconds = fmt_spread([s / base_seconds for _, s in hits], digits=2)
    return f"{tokens}x, {seconds}x ({len(hits)}/{len(runs)} seeds)"


def mean_curve(
    records: list[dict],
    keys: tuple[str, ...] = ("effective_tokens", "tokens", "train_seconds", "train_cpu_seconds", "eval_loss"),
) -> list[dict]:
    """The seed-mean curve: each evaluation's ``keys`` averaged over ``records`` (up to the shortest curve)."""
    n = min(len(r["curve"]) for r in records)
    return [{k: float(np.mean([r["curve"][i][k] for r in records])) for k in keys} for i in range(n)]


def fmt_spread(values: list[float], digits: int = 1, pct: bool = False) -> str:
    scale = 100.0 if pct else 1.0
    mean = np.mean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {np.std(values, ddof=1) * scale:.{digits}f}"


def analyse(task_name: str, task: dict, results: dict, args) -> tuple[str, dict]:
    """Markdown section and a JSON summary for one task."""
    metric = task["metric"]
    pct = metric == "accuracy"
    label = "ppl" if metric == "perplexity" else "accuracy %"
    if ("baseline", 1.0) not in results:
        raise ValueError(f"no finished baseline run at 100% budget for {task_name} under --out_dir={args.out_dir}.")
    base_runs = results[("baseline", 1.0)]
    base_curve = mean_curve(base_runs)
    target = base_curve[-1]["eval_loss"]  # the curves' own validation subset, so crossings compare like with like
    base_tokens = base_curve[-1]["effective_tokens"]
    base_seconds = base_curve[-1]["train_seconds"]
    base_cpu = base_curve[-1]["train_cpu_seconds"]
    lines = [
        f"| arm | budget | steps | LR | data tokens | effective tokens | train s | train CPU s "
        f"| val {label} | test {label} | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary: dict = {"target_val_loss": target, "runs": {}, "reach": {}}
    for (arm, budget), runs in sorted(results.items(), key=lambda kv: (ARMS.index(kv[0][0]), -kv[0][1])):
        val = [score(r, "validation", metric) for r in runs]
        test = [score(r, "test", metric) for r in runs if "test" in r["final"]]
        row = {
            "steps": runs[0]["bench"]["steps"],
            "lr": runs[0]["bench"]["lr"],
            "tokens": float(np.mean([r["tokens"] for r in runs])),
            "effective_tokens": float(np.mean([r["effective_tokens"] for r in runs])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in runs])),
            "train_cpu_seconds": float(np.mean([r["train_cpu_seconds"] for r in runs])),
            "val": val,
            "test": test,
            "seeds": len(runs),
        }
        summary["runs"][f"{arm}@{budget}"] = row
        lines.append(
            f"| {arm} | {budget:.0%} | {row['steps']} | {row['lr']:.1e} | {row['tokens'] / 1e6:.2f}M "
            f"| {row['effective_tokens'] / 1e6:.2f}M | {row['train_seconds']:.0f} | {row['train_cpu_seconds']:.0f} "
            f"| {fmt_spread(val, pct=pct)} "
            f"| {fmt_spread(test, pct=pct) if test else '-'} | {len(runs)} |"
        )
    lines += [
        "",
        f"Effective tokens, wall-clock and CPU time each arm needs to reach the baseline's final loss on the "
        f"validation curves ({target:.3f}; the earliest crossing over all its budgets, seed-averaged curves):",
        "",
        "| arm | effective tokens | vs baseline | train s | vs baseline | train CPU s | vs baseline | reached in run "
        "| per seed: tokens, wall-clock vs baseline |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in [a for a in ARMS if any(k[0] == a for k in results)]:
        best = None
        for (a, budget), runs in results.items():
            if a != arm:
                continue
            curve = mean_curve(runs)
            tok = reach(curve, target, "effective_tokens")
            sec = reach(curve, target, "train_seconds")
            cpu = reach(curve, target, "train_cpu_seconds")
            if tok is not None and (best is None or tok < best[0]):
                best = (tok, sec, cpu, budget)
        summary["reach"][arm] = best
        if best is None:
            lines.append(f"| {arm} | not reached | - | - | - | - | - | - | - |")
        else:
            lines.append(
                f"| {arm} | {best[0] / 1e6:.2f}M | {best[0] / base_tokens:.2f}x | {best[1]:.0f} "
                f"| {best[1] / base_seconds:.2f}x | {best[2]:.0f} | {best[2] / base_cpu:.2f}x | {best[3]:.0%} budget "
                f"| {per_seed_reach(results[(arm, best[3])], target, base_tokens, base_seconds)} |"
            )
    summary["baseline_curve"] = base_curve
    return "\n".join(lines), summary


def _without_nulls(value: object) -> object:
    """``value`` without the ``None`` entries of its mappings (recursively): the settings a config sets."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    return value


def demo_table(task: dict, results: dict) -> str:
    """One row per run: the numbers ``scripts/demo.sh`` prints."""
    metric = task["metric"]
    base = results[("baseline", 1.0)]
    base_tokens = np.mean([r["effective_tokens"] for r in base])
    base_seconds = np.mean([r["train_seconds"] for r in base])
    base_cpu = np.mean([r["train_cpu_seconds"] for r in base])
    lines = [
        f"| run | steps | val {metric} | test {metric} | tokens seen | effective layer-tokens | train wall-clock "
        "| train CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (arm, budget), runs in sorted(results.items(), key=lambda kv: (ARMS.index(kv[0][0]), -kv[0][1])):
        r = runs[0]
        test = f"{score(r, 'test', metric):.1f}" if "test" in r["final"] else "-"
        lines.append(
            f"| {arm} ({budget:.0%} budget) | {r['bench']['steps']} | {score(r, 'validation', metric):.1f} | {test} "
            f"| {r['tokens'] / 1e6:.2f}M | {r['layer_tokens'] / 1e6:.2f}M ({r['effective_tokens'] / base_tokens:.2f}x) "
            f"| {r['train_seconds']:.0f} s ({r['train_seconds'] / base_seconds:.2f}x) "
            f"| {r['train_cpu_seconds']:.0f} s ({r['train_cpu_seconds'] / base_cpu:.2f}x) |"
        )
    return "\n".join(lines)


def plot(task_name: str, task: dict, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    colors = {
        "baseline": "black",
        "curriculum": "tab:blue",
        "random_ltd": "tab:orange",
        "both": "tab:green",
        "auto": "tab:red",
        **dict(
            zip(
                (f"both-{v}" for v in CURRICULUM_VARIANTS),
                ("tab:olive", "tab:cyan", "tab:purple", "tab:brown", "tab:pink"),
            )
        ),
    }
    styles = {1.0: "-", 0.75: "--", 0.5: ":"}
    for (arm, budget), runs in sorted(results.items(), key=lambda kv: (ARMS.index(kv[0][0]), -kv[0][1])):
        curve = mean_curve(runs)
        panels = (
            (axes[0], "effective_tokens", 1e6),
            (axes[1], "train_seconds", 1.0),
            (axes[2], "train_cpu_seconds", 1.0),
        )
        for ax, key, scale in panels:
            ax.plot(
                [p[key] / scale for p in curve],
                [p["eval_loss"] for p in curve],
                styles.get(budget, "-."),
                color=colors[arm],
                marker="o",
                markersize=3,
                label=f"{arm} {budget:.0%}",
            )
    axes[0].set_xlabel("effective tokens (M) = layer-tokens / layers")
    axes[1].set_xlabel("training wall-clock (s, evaluation excluded)")
    axes[2].set_xlabel("training CPU time (s, all threads, evaluation excluded)")
    for ax in axes:
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        losses = [p["eval_loss"] for runs in results.values() for p in mean_curve(runs)]
        ax.set_ylim(min(losses) - 0.05, np.percentile(losses, 80) + 0.1)
    axes[2].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{task_name}: validation loss at equal budgets (mean over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


INTRO = """How these are measured (`scripts/benchmarks/bench_data_efficiency.py`): every arm is trained by the real training
script at a budget of 100%, 75% or 50% of the baseline's *effective tokens* (layer-tokens / number of layers; equal
to the data tokens without random-LTD). The steps that fit a budget are planned from the schedules, every schedule
is a fixed fraction of its own run, and the learning rate of budget `b` is `lr * b ** -lr_scaling` for every arm,
the baseline included. Tokens are counted by hooks on every layer's attention, independently of the library, and
agree with the Trainer's `data_efficiency/effective_tokens`. Wall-clock excludes evaluation and is noisy on a shared
machine. Settings were chosen from one short validation pilot and are barely tuned; test splits were never used for
choices, only reported."""


def _subsections(body: str) -> dict[str, str]:
    pattern = r"<!-- de-task:(?P<name>[\w-]+):begin -->\n(?P<text>.*?)\n<!-- de-task:(?P=name):end -->"
    return {m["name"]: m["text"] for m in re.finditer(pattern, body, flags=re.S)}


def replace_marked_block(doc: Path, begin: str, end: str, body: str) -> None:
    """Write ``body`` between the ``begin`` and ``end`` markers of ``doc`` (appended with them when absent); nothing
    outside the markers changes. The studies re-tabulate their records into the docs with it."""
    text = doc.read_text()
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(doc, text)


def write_docs(task_name: str, section: str, doc: Path) -> None:
    """Replace this task's subsection between the data-efficiency markers of ``doc``; nothing outside them changes."""
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{DOC_BEGIN}\n{DOC_END}\n"
    if DOC_BEGIN not in text or DOC_END not in text:
        text = text.rstrip("\n") + f"\n\n{DOC_BEGIN}\n{DOC_END}\n"
    head, rest = text.split(DOC_BEGIN, 1)
    body, tail = rest.split(DOC_END, 1)
    sections = _subsections(body)
    sections[task_name] = section.strip()
    names = sorted(sections, key=lambda n: list(TASKS).index(n) if n in TASKS else len(TASKS))
    blocks = [f"<!-- de-task:{n}:begin -->\n{sections[n]}\n<!-- de-task:{n}:end -->" for n in names]
    atomic_write_text(doc, head + DOC_BEGIN + "\n" + INTRO + "\n\n" + "\n\n".join(blocks) + "\n" + DOC_END + tail)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="gpt2")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="default: every arm of the task")
    parser.add_argument("--budgets", nargs="+", type=float, default=[1.0, 0.75, 0.5])
    parser.add_argument("--baseline_budgets", nargs="+", type=float, default=None, help="default: --budgets")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--steps", type=int, default=None, help="baseline steps (100%% budget)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate at 100%% budget")
    parser.add_argument("--lr_scaling", type=float, default=0.5, help="LR of budget b = lr * b ** -lr_scaling")
    parser.add_argument("--evals_per_run", type=int, default=8)
    parser.add_argument("--eval_samples", type=int, default=256, help="gpt2: validation blocks in the curves")
    parser.add_argument("--out_dir", default="outputs/bench")
    parser.add_argument("--overwrite", action="store_true", help="rerun runs whose results already exist")
    parser.add_argument(
        "--only_existing", action="store_true", help="train nothing: tabulate the finished runs under --out_dir"
    )
    parser.add_argument("--no_docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--notes", default="", help="a paragraph appended to the docs section (interpretation)")
    parser.add_argument("--demo", action="store_true", help="print the short per-run table of scripts/demo.sh")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra script flags")
    parser.add_argument(
        "--lrs", nargs="+", type=float, default=None, help="LR grid: each arm runs at the best of these (first seed)"
    )
    parser.add_argument(
        "--records_dir",
        default=None,
        help="also write each run's small record here (commit it: --only_existing re-tabulates from it)",
    )
    args = parser.parse_args(argv)
    args.extra = dict(kv.split("=", 1) for kv in args.set)
    task = dict(TASKS[args.task])
    task["steps"] = args.steps or task["steps"]
    task["lr"] = args.lr or task["lr"]
    arms = args.arms or list(task["arms"])
    # a recipe fits every task; a curriculum variant, every task with its base arm
    unsupported = [a for a in arms if curriculum_settings(task, a)[0] not in (*task["arms"], "auto")]
    if unsupported:
        raise ValueError(f"--arms {unsupported} are not set up for task {args.task}; allowed: {task['arms']}.")
    if "baseline" not in arms:
        arms = ["baseline", *arms]
    if args.baseline_budgets is None:
        args.baseline_budgets = args.budgets
    if 1.0 not in args.baseline_budgets:
        args.baseline_budgets = [1.0, *args.baseline_budgets]
    results: dict = {}
    grid: dict = {}
    if args.lrs:  # one LR per arm, chosen on validation loss with the first seed; then every seed at that LR
        if args.budgets != [1.0] or args.baseline_budgets != [1.0]:
            raise ValueError("--lrs chooses each arm's LR at 100% budget: use it with --budgets 1.0.")
        for arm in arms:
            grid[arm] = best_lr(args.task, task, arm, args.seeds[0], args)
    for seed in args.seeds:
        for arm in arms:
            lr = grid[arm][0] if arm in grid else None
            for budget in args.baseline_budgets if arm == "baseline" else args.budgets:
                if args.only_existing and load_finished(args, args.task, arm, budget, seed, lr) is None:
                    continue
                record = run_one(args.task, task, arm, budget, seed, args, lr=lr)
                results.setdefault((arm, budget), []).append(record)
    table, summary = analyse(args.task, task, results, args)
    out = Path(args.out_dir)
    img_dir = out if args.no_docs else Path(args.docs).parent / "img"
    img = img_dir / f"data_efficiency_{args.task}.png"
    plot(args.task, task, results, img)
    # the runs' own process time (also right when --only_existing re-reads earlier runs)
    elapsed = sum(r.get("bench", {}).get("process_seconds", 0.0) for runs in results.values() for r in runs)
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--notes" in shown:
        del shown[shown.index("--notes") : shown.index("--notes") + 2]
    cmd = "python scripts/benchmarks/bench_data_efficiency.py " + " ".join(shown)
    t = task
    section = (
        f"### {args.task}: {t['script']} {' '.join(to_cli({**t['flags'], **args.extra}))}\n\n"
        f"Baseline: {t['steps']} steps x {t['batch']} x {t['seq']} tokens, LR {t['lr']:g} at 100% "
        f"(LR x budget^-{args.lr_scaling:g}); seeds {args.seeds}; "
        f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} CPU cores; "
        f"{sum(len(r) for r in results.values())} runs, {elapsed / 60:.0f} min in all.\n\n{table}\n\n"
        f"![{args.task} validation loss]({os.path.relpath(img, Path(args.docs).parent)})\n\n"
        f"Command: `{cmd.strip()}`\n" + (f"\n{args.notes.strip()}\n" if args.notes.strip() else "")
    )
    if grid:
        lines = [
            f"- {arm}: "
            + ", ".join(f"{lr:g} -> {loss:.3f}" for lr, loss in sorted(losses.items()))
            + f" (chosen: {chosen:g})"
            for arm, (chosen, losses) in grid.items()
        ]
        section += f"\nLR grid (seed {args.seeds[0]}, final validation loss):\n" + "\n".join(lines) + "\n"
        summary["lr_grid"] = {arm: {"chosen": c, "losses": losses} for arm, (c, losses) in grid.items()}
    summary.update(section=section, image=str(img))
    atomic_write_text(out / f"summary_{args.task}.json", json.dumps(summary, indent=2, default=str) + "\n")
    if args.demo:
        short = demo_table(task, results)
        for (arm, budget), runs in results.items():
            if arm == "auto":
                chosen = _without_nulls(runs[0].get("data_efficiency_config", {}))
                print(f"[bench] the auto recipe chose ({budget:.0%} budget): {json.dumps(chosen)}")
        atomic_write_text(out / "demo_table.md", short + "\n")
        print(f"\n{short}\n\n{table.split(chr(10) * 2, 1)[1]}\n\nPlot: {img}")
        return summary
    print(section)
    if not args.no_docs:
        write_docs(args.task, section, Path(args.docs))
    return summary


if __name__ == "__main__":
    main()
