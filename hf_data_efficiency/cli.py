"""Command line entry point: ``hf-data-efficiency <command>``.

``analyze`` computes curriculum metrics for the user's dataset, saves the per-sample arrays with their sorted
index and summary, draws a histogram per metric and previews a curriculum: the data eligible at each step of a
schedule, computed by the sampler's own eligibility code (``curriculum/eligibility.py``)::

    hf-data-efficiency analyze --dataset corpus.txt --tokenizer ./my_tokenizer --output-dir outputs/analysis

Every user error (a missing file, a bad config, an unwritable output folder, a bad number) prints one
``hf-data-efficiency analyze: error: ...`` line naming the argument and exits with status 2, argparse's convention.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from transformers.utils import logging

from .config import CurriculumConfig, DataEfficiencyConfig
from .curriculum.eligibility import eligibility_curve
from .fileio import atomic_save_npy, atomic_write, atomic_write_text
from .schedules import DifficultySchedule

logger = logging.get_logger(__name__)

#: The curriculum previewed when no --config is given: a vocabulary-rarity percentile curriculum with a
#: square-root pacing from the easiest 1% to all of the data over 1000 steps (the paper's GPT recipe shape).
DEMO_CURRICULUM = {
    "sampling_metrics": [
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
#: Data files read with a datasets packaged builder; any other file is plain text, one sample per line.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
#: Files that mark a ``datasets.save_to_disk`` folder (a Dataset or a DatasetDict).
_SAVED_DATASET_MARKERS = ("state.json", "dataset_dict.json")


class UsageError(Exception):
    """A bad command-line input; ``main`` prints it as one ``error:`` line and exits with status 2."""


@contextmanager
def user_input(flag: str, value: Any) -> Iterator[None]:
    """Report any failure while reading the user's ``flag`` (a path, a config, a tokenizer) as a
    :class:`UsageError` naming it: dependencies raise many exception types for bad files."""
    try:
        yield
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure here is a problem with the user's input
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UsageError(f"{flag}={str(value)!r}: {reason}") from e


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def load_dataset_arg(spec: str, split: str, text_column: str):
    """The dataset of ``--dataset``: a ``datasets.save_to_disk`` folder (``--split`` picks from a DatasetDict), a
    folder of data files, a ``.json``/``.jsonl``/``.csv``/``.parquet``/``.arrow`` file, or a text file with
    one sample per line (``--text-column``)."""
    import datasets

    path = Path(spec)
    if not path.exists():
        raise ValueError(
            "no such file or directory; give a local data file (text with one sample per line, "
            f"{', '.join(DATA_FILE_BUILDERS)}) or a folder (datasets.save_to_disk output or data files). For a Hub "
            "dataset, save it with load_dataset(...).save_to_disk(folder) first."
        )
    if path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is not None:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return datasets.Dataset.from_dict({text_column: [line for line in lines if line]})
    if not any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS):
        return datasets.load_dataset(str(path), split=split)
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UsageError(f"--split={split!r} is not a split of {path}; allowed: {', '.join(loaded)}.")
        loaded = loaded[split]
    return loaded


@contextmanager
def _quiet_datasets_errors() -> Iterator[None]:
    """datasets logs a loader failure before raising it; the CLI reports the exception itself, on one line."""
    import datasets

    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def load_tokenizer_arg(spec: str | None):
    """The tokenizer of ``--tokenizer``: a local folder for ``AutoTokenizer`` (``save_pretrained`` output)."""
    if spec is None:
        raise UsageError(
            "--tokenizer is required: the dataset has no --input-column of token ids, so its --text-column "
            "must be tokenized; give a local tokenizer folder (tokenizer.save_pretrained output)."
        )
    with user_input("--tokenizer", spec):
        if not Path(spec).is_dir():
            raise ValueError("not a local tokenizer folder (tokenizer.save_pretrained output).")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(spec, local_files_only=True)


def load_curriculum_arg(path: str | None) -> CurriculumConfig:
    """The curriculum of ``--config`` (our JSON/YAML or a DeepSpeed JSON), or :data:`DEMO_CURRICULUM`."""
    if path is None:
        return CurriculumConfig.from_dict(DEMO_CURRICULUM)
    with user_input("--config", path):
        cfg = DataEfficiencyConfig.from_pretrained(path)
        if cfg.curriculum is None:
            raise ValueError("enables no curriculum (data_sampling.curriculum_learning); nothing to preview.")
    return cfg.curriculum


def prepare_output_dir(path: str) -> Path:
    """``--output-dir``, created and checked writable before any work is done."""
    output_dir = Path(path)
    with user_input("--output-dir", path):
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    return output_dir


def _positive_int(text: str) -> int:
    """argparse type of the counts and sizes: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# curriculum preview
# ---------------------------------------------------------------------------------------------
def _schedule(metric) -> DifficultySchedule:
    return DifficultySchedule.from_dict(metric.to_dict(), schedule_fn=metric.schedule_fn)


def curriculum_preview(
    arrays: dict[str, np.ndarray], curriculum: CurriculumConfig, steps: int, num_samples: int
) -> dict[str, Any]:
    """The data eligible at steps ``1..steps``, exactly as ``CurriculumSampler`` admits it.

    ``eligible_count[i]`` equals ``sampler.num_eligible(i + 1)`` and ``difficulty`` its ``difficulty_at``: the
    running-maximum difficulty of each sampling metric (``value``: ``metric <= difficulty``; ``percentile``: stable
    rank below ``percentile_count(N, difficulty)``; every metric must hold). ``eligible`` and ``per_metric`` are
    fractions of ``num_samples``. A ``seqlen_truncate`` / ``seqlen_reshape`` transform is reported as the fraction
    of real tokens kept (needs ``seqlen``).
    """
    step_axis = np.arange(1, steps + 1)
    sampling = curriculum.sampling_metrics
    missing = [m.name for m in sampling if m.name not in arrays]
    if missing:
        raise UsageError(
            f"the curriculum uses metric(s) {missing}, which were not computed; computed: {list(arrays)}."
        )
    schedules = {m.name: _schedule(m) for m in sampling}
    curve = eligibility_curve(arrays, sampling, schedules, step_axis, num_samples)
    full = np.flatnonzero(curve.eligible >= num_samples)
    out: dict[str, Any] = {
        "steps": step_axis.tolist(),
        "num_samples": num_samples,
        "difficulty": {name: d.tolist() for name, d in curve.difficulty.items()},
        "eligible_count": curve.eligible.tolist(),
        "eligible": (curve.eligible / num_samples).tolist(),
        "per_metric": {name: (c / num_samples).tolist() for name, c in curve.per_metric.items()},
        "first_full_step": int(step_axis[full[0]]) if full.size else None,
    }
    transform = curriculum.transform
    if transform is not None:
        if "seqlen" not in arrays:
            raise UsageError(f"previewing {transform.name} needs the 'seqlen' metric.")
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
    try:
        import matplotlib
    except ImportError as e:
        raise UsageError(
            "the analyze command draws its plots with matplotlib, which is not installed; install the 'plots' extra: "
            "pip install 'hf-data-efficiency[plots]'."
        ) from e

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
    _save_fig(fig, path)


def _save_fig(fig, path: Path) -> None:
    fig.tight_layout()
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


def _tokenize(ds, args: argparse.Namespace):
    """``ds`` with the ``--input-column`` token ids, tokenizing ``--text-column`` when needed."""
    if args.input_column in ds.column_names:
        return ds
    if args.text_column not in ds.column_names:
        raise UsageError(
            f"--dataset={args.dataset!r} has neither --input-column={args.input_column!r} nor --text-column="
            f"{args.text_column!r}; its columns are {ds.column_names}."
        )
    tokenizer = load_tokenizer_arg(args.tokenizer)
    kwargs = {"truncation": True, "max_length": args.max_length}
    with user_input("--tokenizer", args.tokenizer):
        ds = ds.map(
            lambda batch: tokenizer(batch[args.text_column], **kwargs),
            batched=True,
            num_proc=args.num_proc,
            remove_columns=ds.column_names,
            desc="Tokenizing",
        )
    if args.input_column not in ds.column_names:
        raise UsageError(f"--tokenizer={args.tokenizer!r} produced no {args.input_column!r} column (--input-column).")
    return ds


def _metric_columns(ds, args: argparse.Namespace, curriculum: CurriculumConfig) -> tuple[Any, list[str]]:
    """``ds`` with every metric of ``--metrics`` and of the curriculum as a column, and their names, resolved as in
    training (:func:`~hf_data_efficiency.engine.add_metric_columns`) except that a curriculum's DeepSpeed index
    paths are not read: analyze computes the metrics."""
    from .engine import add_metric_columns

    names = [*args.metrics, *(m.name for m in curriculum.sampling_metrics)]
    names += ["seqlen"] if curriculum.transform is not None else []
    names = list(dict.fromkeys(names))
    flag = "--metrics" if all(n in args.metrics for n in names) else "--metrics/--config"
    with user_input(flag, ",".join(names)):
        ds, _ = add_metric_columns(ds, names, num_proc=args.num_proc, input_column=args.input_column)
    return ds, names


def run_analyze(args: argparse.Namespace) -> dict[str, Any]:
    """The ``analyze`` command; returns the manifest it writes to ``analysis.json``."""
    from .curriculum.index import metric_paths, save_metrics
    from .curriculum.metrics import count_tokens, get_curriculum_metric, is_registered_metric, metric_arrays
    from .curriculum.streaming import COUNTS_FILE

    curriculum = load_curriculum_arg(args.config)
    output_dir = prepare_output_dir(args.output_dir)
    with user_input("--dataset", args.dataset), _quiet_datasets_errors():
        ds = load_dataset_arg(args.dataset, args.split, args.text_column)
    if len(ds) == 0:
        raise UsageError(f"--dataset={args.dataset!r} has no samples.")
    if args.max_samples is not None and args.max_samples < len(ds):
        ds = ds.select(range(args.max_samples))
    ds, names = _metric_columns(_tokenize(ds, args), args, curriculum)
    arrays = metric_arrays(ds, names)
    summaries = save_metrics(output_dir, arrays)
    files: dict[str, Any] = {n: {k: str(p) for k, p in metric_paths(output_dir, n).items()} for n in names}
    if any(is_registered_metric(n) and get_curriculum_metric(n).needs_token_counts for n in names):
        # the counts a streaming curriculum reads (curriculum.streaming.metrics_dir) to compute rarity on the fly
        counts_path = output_dir / COUNTS_FILE
        atomic_save_npy(counts_path, count_tokens(ds, args.num_proc, input_column=args.input_column))
        files["token_counts"] = str(counts_path)
    for name in names:
        hist = output_dir / f"{name}_hist.png"
        plot_histogram(arrays[name], name, hist, bins=args.bins)
        files[name]["histogram"] = str(hist)

    steps = args.preview_steps or _default_preview_steps(curriculum)
    preview = curriculum_preview(arrays, curriculum, steps, len(ds))
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
            "eligible_at_step_1": preview["eligible"][0],
            "first_full_step": preview["first_full_step"],
        },
        "files": {**files, "curriculum_preview": str(preview_png)},
    }
    atomic_write_text(output_dir / "analysis.json", json.dumps(manifest, indent=2, default=str) + "\n")

    rows = [["metric", "count", "min", "p5", "p50", "p95", "max"]]
    for name, s in summaries.items():
        rows.append([name, f"{s['count']:,}"] + [f"{s[k]:.4g}" if s[k] is not None else "-" for k in rows[0][2:]])
    print(_format_table(rows))
    first = manifest["preview"]["first_full_step"]
    reach = (
        f"all data eligible from step {first} ({first * args.global_batch_size:,} samples drawn)"
        if first
        else f"{preview['eligible'][-1]:.1%} eligible at step {steps}"
    )
    print(f"curriculum: {preview['eligible'][0]:.2%} of the data eligible at step 1; {reach}.")
    print(f"wrote {len(names)} metric arrays, indices, summaries and plots to {output_dir}")
    return manifest


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one ``prog: error: ...`` line (exit status 2), without the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
            "eligible fraction of the data against the step, as the training sampler admits it). Without "
            "--config the preview shows a vocab_rarity percentile fixed_root 1->100 curriculum over 1000 steps."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        required=True,
        help="a datasets.save_to_disk folder, a folder of data files, a .json/.jsonl/.csv/.parquet/.arrow file, or "
        "a text file with one sample per line",
    )
    p.add_argument("--split", default="train", help="split to use from a DatasetDict folder or a folder of data files")
    p.add_argument("--text-column", default="text", help="text column to tokenize")
    p.add_argument("--input-column", default="input_ids", help="token id column (used as-is when present)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="local tokenizer folder (save_pretrained output) for AutoTokenizer; needed when the dataset has no "
        "--input-column",
    )
    p.add_argument(
        "--metrics",
        nargs="+",
        default=["seqlen", "vocab_rarity"],
        help="metrics to save: registered metrics (seqlen, vocab_rarity, seqlen_vocab_rarity, ...) or dataset "
        "columns; the metrics the curriculum needs are added",
    )
    p.add_argument("--max-length", type=_positive_int, default=1024, help="truncate tokenized samples to this length")
    p.add_argument("--max-samples", type=_positive_int, default=None, help="only analyse the first N samples")
    p.add_argument("--num-proc", type=_positive_int, default=None, help="processes for datasets.map (default: none)")
    p.add_argument("--output-dir", default="outputs/analysis", help="where arrays, summaries and PNGs go")
    p.add_argument(
        "--config",
        default=None,
        help="curriculum to preview: our JSON/YAML config or a DeepSpeed JSON with a data_efficiency block "
        "(default: the demo vocab_rarity percentile schedule)",
    )
    p.add_argument(
        "--preview-steps", type=_positive_int, default=None, help="steps to preview (default: 1.2x the schedule)"
    )
    p.add_argument("--global-batch-size", type=_positive_int, default=32, help="samples per optimizer step (top axis)")
    p.add_argument("--bins", type=_positive_int, default=50, help="histogram bins")
    p.set_defaults(func=run_analyze, command_parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 on bad arguments, with one ``error:`` line on stderr)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        try:
            args.func(args)
        except (UsageError, ValueError) as e:
            args.command_parser.error(str(e))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
