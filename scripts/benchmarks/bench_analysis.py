"""Benchmark (a): curriculum metric analysis, hf-data-efficiency vs DeepSpeed's DataAnalyzer.

Both sides analyse the same tokenized data on the same cores, end to end:

- ours: ``compute_metrics(ds, ("seqlen", "vocab_rarity"))`` (token-count pass + metric pass through
  ``datasets.map``, default in-process path) and ``save_metrics`` (``.npy`` arrays, the sorted
  index and the summaries);
- DeepSpeed: ``DataAnalyzer`` with ``num_threads`` map processes (worker 0 of 1) and its reduce/merge
  step, with the metric functions of DeepSpeedExamples' data-efficiency analysis: ``seqlen``
  (``single_value_per_sample``, indexed) and the vocabulary count pass ``total_vocab_freq``
  (``accumulate_value_over_samples``). Its batches are padded LongTensors: a dict batch would make it
  count the keys as samples and corrupt the index.

Tokenization is done once, before timing. The two results are cross-checked (seqlen from DeepSpeed's
index files equals ours; its vocabulary counts equal our first pass).

Run: ``python scripts/benchmarks/bench_analysis.py --scale 4`` (Penn Treebank train x4, ~168k samples).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # offline_data


def tokenized_ptb(scale: int) -> tuple[Any, int]:
    """Penn Treebank train tokenized with the GPT-2 BPE, repeated ``scale`` times (in memory)."""
    import datasets
    from offline_data import gpt2_tokenizer, load_ptb

    tok = gpt2_tokenizer()
    base = load_ptb("train").map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    return datasets.concatenate_datasets([base] * scale), len(tok)


def run_ours(ds, out_dir: Path, num_proc: int | None) -> tuple[float, dict[str, np.ndarray]]:
    from hf_data_efficiency.curriculum.index import save_metrics
    from hf_data_efficiency.curriculum.metrics import compute_metrics, metric_arrays

    names = ["seqlen", "vocab_rarity"]
    start = time.perf_counter()
    arrays = metric_arrays(compute_metrics(ds, names, num_proc=num_proc), names)
    save_metrics(out_dir, arrays)
    return time.perf_counter() - start, arrays


def run_data_analyzer(rows: list[np.ndarray], vocab: int, out_dir: Path, threads: int, batch_size: int) -> float:
    import torch
    from deepspeed.runtime.data_pipeline.data_sampling.data_analyzer import DataAnalyzer
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    pad = vocab  # one past the vocabulary: never a real token, lands in the extra bincount bin

    class TokenRows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> np.ndarray:
            return rows[i]

    def collate(batch: list[np.ndarray]) -> torch.Tensor:  # a padded LongTensor, built without a row loop
        lengths = np.fromiter((r.size for r in batch), dtype=np.int64, count=len(batch))
        out = np.full((len(batch), max(1, int(lengths.max()))), pad, dtype=np.int64)
        out[np.arange(out.shape[1]) < lengths[:, None]] = np.concatenate(batch)
        return torch.from_numpy(out)

    def seqlen(batch: torch.Tensor) -> torch.Tensor:
        return (batch != pad).sum(dim=1).long()

    def total_vocab_freq(batch: torch.Tensor) -> torch.Tensor:
        return torch.bincount(batch.view(-1), minlength=vocab + 1)

    analyzer = DataAnalyzer(
        TokenRows(),
        num_workers=1,
        worker_id=0,
        num_threads=threads,
        batch_size=batch_size,
        metric_names=["seqlen", "total_vocab_freq"],
        metric_functions=[seqlen, total_vocab_freq],
        metric_types=["single_value_per_sample", "accumulate_value_over_samples"],
        metric_dtypes=[torch.long, torch.long],
        save_path=str(out_dir),
        collate_fn=collate,
    )
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its merge step prints once per file
        analyzer.run_map()
        analyzer.run_reduce()
    return time.perf_counter() - start


def _data_analyzer_child(data_dir: str, vocab: int, out_dir: str, threads: int, batch_size: int) -> None:
    """Entry point of the fresh process that runs one DataAnalyzer pass and records its time."""
    multiprocessing.set_start_method("fork", force=True)  # DataAnalyzer's own default on Linux
    flat = np.load(os.path.join(data_dir, "flat.npy"))
    offsets = np.load(os.path.join(data_dir, "offsets.npy"))
    rows = np.split(flat, offsets[1:-1])
    seconds = run_data_analyzer(rows, vocab, Path(out_dir), threads, batch_size)
    Path(out_dir, "seconds.json").write_text(json.dumps(seconds))


def time_data_analyzer(data_dir: Path, vocab: int, out_dir: Path, threads: int, batch_size: int) -> float:
    """Run :func:`run_data_analyzer` in a freshly spawned process.

    DataAnalyzer forks its map processes; forking a process whose OpenMP/torch thread pool is already
    running (any earlier torch op) deadlocks the children, so every run starts from a clean interpreter.
    """
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_data_analyzer_child, args=(str(data_dir), vocab, str(out_dir), threads, batch_size))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"the DataAnalyzer process failed with exit code {proc.exitcode}")
    return float(json.loads((out_dir / "seconds.json").read_text()))


def _check_same(da_dir: Path, ours: dict[str, np.ndarray], ds, n: int) -> None:
    from hf_data_efficiency.curriculum.index import metric_array_from_deepspeed_index, read_mmap_indexed
    from hf_data_efficiency.curriculum.metrics import count_tokens

    d = da_dir / "seqlen"
    da_seqlen = metric_array_from_deepspeed_index(d / "seqlen_index_to_sample", d / "seqlen_index_to_metric", n)
    if not np.array_equal(da_seqlen, ours["seqlen"]):
        raise RuntimeError("seqlen from DeepSpeed's index differs from ours")
    freq, _ = read_mmap_indexed(da_dir / "total_vocab_freq" / "total_vocab_freq_metric_value")
    counts = count_tokens(ds)
    if not np.array_equal(freq[: counts.size], counts) or freq[counts.size : -1].any():
        raise RuntimeError("DeepSpeed's vocabulary counts differ from ours")


def run_analysis_benchmark(
    scale: int = 4,
    num_proc: int | None = None,
    *,
    da_threads: int = 2,
    da_batch_size: int = 1000,
    repeats: int = 5,
    da_repeats: int = 2,
) -> dict[str, Any]:
    """Time both analyses on PTB train x ``scale``; print the lines and return the figures.

    Each side reports its best of ``repeats`` / ``da_repeats`` runs (medians are returned too).
    """
    import datasets

    datasets.disable_progress_bars()
    ds, vocab = tokenized_ptb(scale)
    n = len(ds)
    work = Path(tempfile.mkdtemp(prefix="hfde-bench-analysis-"))
    try:
        # DataAnalyzer's input (not timed): the same token rows as flat int64 + offsets for its process
        col = ds.data.column("input_ids").combine_chunks()
        offsets = col.offsets.to_numpy().astype(np.int64)
        flat = col.values.to_numpy().astype(np.int64)[offsets[0] : offsets[-1]]
        tokens = int(flat.size)
        np.save(work / "flat.npy", flat)
        np.save(work / "offsets.npy", offsets - offsets[0])
        ours_times, arrays = [], None
        for i in range(repeats):
            t, arrays = run_ours(ds, work / f"ours{i}", num_proc)
            ours_times.append(t)
        da_times = []
        for i in range(da_repeats):
            da_times.append(time_data_analyzer(work, vocab, work / f"ds{i}", da_threads, da_batch_size))
        _check_same(work / "ds0", arrays, ds, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_best, da_best = min(ours_times), min(da_times)
    result = {
        "scale": scale,
        "samples": n,
        "tokens": tokens,
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "ours_num_proc": num_proc,
        "ours_seconds": ours_times,
        "ours_samples_per_s": n / ours_best,
        "ours_median_samples_per_s": n / statistics.median(ours_times),
        "deepspeed_threads": da_threads,
        "deepspeed_batch_size": da_batch_size,
        "deepspeed_seconds": da_times,
        "deepspeed_samples_per_s": n / da_best,
        "deepspeed_median_samples_per_s": n / statistics.median(da_times),
        "ratio": da_best / ours_best,
        "ratio_median": statistics.median(da_times) / statistics.median(ours_times),
    }
    print(
        f"(a) metric analysis: PTB train x{scale} = {n:,} samples, {tokens:,} GPT-2 BPE tokens, {os.cpu_count()} cores"
    )
    print(
        f"    hf-data-efficiency compute_metrics(seqlen, vocab_rarity) + index, num_proc={num_proc}: "
        f"{ours_best:.3f} s -> {result['ours_samples_per_s']:,.0f} samples/s (best of {repeats}; "
        f"median {result['ours_median_samples_per_s']:,.0f})"
    )
    print(
        f"    deepspeed DataAnalyzer ({da_threads} threads, batch {da_batch_size}, seqlen + vocab count, map + reduce): "
        f"{da_best:.3f} s -> {result['deepspeed_samples_per_s']:,.0f} samples/s (best of {da_repeats})"
    )
    print(f"    ratio: {result['ratio']:.1f}x (medians: {result['ratio_median']:.1f}x); results cross-checked equal")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=4, help="repeat Penn Treebank train this many times")
    parser.add_argument("--num-proc", type=int, default=None, help="num_proc for compute_metrics (default in-process)")
    parser.add_argument("--da-threads", type=int, default=2, help="DataAnalyzer map processes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours (best is reported)")
    parser.add_argument("--da-repeats", type=int, default=2, help="timed runs of DataAnalyzer (best is reported)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = run_analysis_benchmark(
        args.scale, args.num_proc, da_threads=args.da_threads, repeats=args.repeats, da_repeats=args.da_repeats
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
