"""Curriculum benchmarks: (a) metric analysis, (b) sampler vs DeepSpeed, (c) our sampler at 100M samples.

(a) runs ``scripts/benchmarks/bench_analysis.py`` (compute_metrics vs DeepSpeed's DataAnalyzer).

(b) global batches/s and peak RSS of ``CurriculumSampler`` against deepspeed's ``DeepSpeedDataSampler`` on
the same curriculum: one value-based seqlen-like metric (random ints in [1, 1024]), ``fixed_linear`` from
64 to 1024 in steps of 8 over 2,500 steps, batch 32, world 1, GA 1. DeepSpeed runs single-process on gloo
(``deepspeed.init_distributed``) with index files built by its own mmap builders (one ``index_to_sample``
row per metric value, ``index_to_metric`` = that value). Each sampler runs in a fresh subprocess, so its
peak RSS (``VmHWM``) is its own; we time ``--batches`` global batches after the first, across the
curriculum. Ours is consumed through ``__iter__`` (one int at a time, as a DataLoader does).

(c) ours alone on ``--scale-n`` synthetic uint16 seqlens: seconds from construction to the first batch,
and peak RSS.

Run: ``python scripts/benchmarks/bench_curriculum.py`` (all parts, about 3-4 minutes on 2 cores);
``--only sampler`` / ``--only scale`` / ``--only analysis`` for one part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GLOBAL_BATCH = 32
MIN_D, MAX_D, TOTAL_STEPS, D_STEP = 64, 1024, 2500, 8


def _metric_values(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, MAX_D + 1, n, dtype=np.uint16)


def _peak_rss_mb() -> float:
    """Peak RSS of this process image. ``VmHWM`` rather than ``ru_maxrss``, which Linux carries over ``execve``
    from the forking parent (a large driver process would inflate every child's figure)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measurement(batches: int, elapsed: float, first_s: float, base_rss_mb: float, state: float | None) -> dict:
    """One sampler's figures: throughput after the first batch, time to it, and memory."""
    peak = _peak_rss_mb()
    return {
        "batches_per_s": batches / elapsed,
        "first_batch_s": first_s,
        "peak_rss_mb": peak,
        "rss_growth_mb": peak - base_rss_mb,
        "state_bytes_per_sample": state,
    }


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _schedule() -> dict[str, Any]:
    return {
        "min_difficulty": MIN_D,
        "max_difficulty": MAX_D,
        "schedule_type": "fixed_linear",
        "schedule_config": {"total_curriculum_step": TOTAL_STEPS, "difficulty_step": D_STEP},
        "difficulty_type": "value",
        "clustering_type": "schedule_based",
    }


# ----------------------------------------------------------------------------- children
def child_ours(n: int, batches: int) -> dict[str, Any]:
    from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig
    from hf_data_efficiency.curriculum.sampler import CurriculumSampler

    values = _metric_values(n)
    base = _rss_mb()
    cfg = CurriculumConfig(sampling_metrics=[CurriculumMetricConfig(name="seqlen", **_schedule())])
    start = time.perf_counter()
    sampler = CurriculumSampler({"seqlen": values}, cfg, GLOBAL_BATCH)
    stream = iter(sampler)
    first = list(islice(stream, GLOBAL_BATCH))
    first_s = time.perf_counter() - start
    assert len(first) == GLOBAL_BATCH
    start = time.perf_counter()
    done = 0
    while done < batches:  # epochs roll over as in training
        got = sum(1 for _ in islice(stream, GLOBAL_BATCH * (batches - done)))
        done += got // GLOBAL_BATCH
        if done < batches:
            stream = iter(sampler)
    return _measurement(batches, time.perf_counter() - start, first_s, base, sampler.nbytes / n)


def child_deepspeed(n: int, batches: int, index_dir: str) -> dict[str, Any]:
    import deepspeed
    import torch.distributed as tdist
    from deepspeed.runtime.data_pipeline.config import get_data_efficiency_config
    from deepspeed.runtime.data_pipeline.data_sampling.data_sampler import DeepSpeedDataSampler

    deepspeed.init_distributed(dist_backend="gloo")
    metric = {
        **_schedule(),
        "index_to_sample_path": f"{index_dir}/seqlen_index_to_sample",
        "index_to_metric_path": f"{index_dir}/seqlen_index_to_metric",
    }
    ds_config = {
        "data_efficiency": {
            "enabled": True,
            "seed": 1234,
            "data_sampling": {
                "enabled": True,
                "num_epochs": 1000,
                "curriculum_learning": {
                    "enabled": True,
                    "data_cluster_path": f"{index_dir}/clusters",
                    "curriculum_metrics": {"seqlen": metric},
                },
            },
        }
    }
    base = _rss_mb()
    start = time.perf_counter()
    sampler = DeepSpeedDataSampler(
        get_data_efficiency_config(ds_config),
        one_epoch_total_samples=n,
        micro_batch_size=GLOBAL_BATCH,
        data_parallel_rank=0,
        data_parallel_size=1,
        data_parallel_group=tdist.group.WORLD,
        gradient_accumulation_steps=1,
        global_rank=0,
    )
    stream = iter(sampler)
    first = next(stream)
    first_s = time.perf_counter() - start
    assert len(first) == GLOBAL_BATCH
    start = time.perf_counter()
    for batch in islice(stream, batches):
        assert len(batch) == GLOBAL_BATCH
    return _measurement(batches, time.perf_counter() - start, first_s, base, None)


def build_deepspeed_index(n: int, index_dir: str) -> float:
    """DeepSpeed's curriculum index for the benchmark metric, written with its own mmap builders."""
    from deepspeed.runtime.data_pipeline.data_sampling.utils import (
        close_mmap_dataset_builder,
        create_mmap_dataset_builder,
        find_fit_int_dtype,
    )

    start = time.perf_counter()
    values = _metric_values(n)
    order = np.argsort(values, kind="stable")
    uniq, first = np.unique(values[order], return_index=True)
    bounds = list(first[1:]) + [n]
    sample_path, metric_path = f"{index_dir}/seqlen_index_to_sample", f"{index_dir}/seqlen_index_to_metric"
    samples = create_mmap_dataset_builder(sample_path, find_fit_int_dtype(0, n))
    metrics = create_mmap_dataset_builder(metric_path, find_fit_int_dtype(int(uniq.min()), int(uniq.max())))
    for value, lo, hi in zip(uniq, first, bounds):
        samples.add_item_numpy(np.sort(order[lo:hi]))
        metrics.add_item_numpy(np.array([value]))
    close_mmap_dataset_builder(samples, sample_path)
    close_mmap_dataset_builder(metrics, metric_path)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- driver
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_child(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark child {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def run_sampler_benchmark(sizes: list[int], batches: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        ours = _run_child("ours", str(n), str(batches))
        with tempfile.TemporaryDirectory(prefix="hfde-bench-ds-") as index_dir:
            index_s = build_deepspeed_index(n, index_dir)
            env = {
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(_free_port()),
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1",
            }
            theirs = _run_child("deepspeed", str(n), str(batches), index_dir, env=env)
        theirs["index_build_s"] = index_s
        rows.append(
            {"n": n, "ours": ours, "deepspeed": theirs, "ratio": ours["batches_per_s"] / theirs["batches_per_s"]}
        )
        print(
            f"(b) N={n:,}: ours {ours['batches_per_s']:,.0f} batches/s, {ours['peak_rss_mb']:.0f} MB peak RSS, "
            f"{ours['state_bytes_per_sample']:.2f} B/sample; DeepSpeedDataSampler {theirs['batches_per_s']:,.0f} "
            f"batches/s, {theirs['peak_rss_mb']:.0f} MB; ratio {rows[-1]['ratio']:.1f}x",
            flush=True,
        )
    return rows


def markdown(analysis: dict[str, Any] | None, sampler: list[dict[str, Any]], scale: dict[str, Any] | None) -> str:
    out = []
    if analysis:
        out += [
            "| (a) metric analysis | samples | ours samples/s | DataAnalyzer samples/s | ratio |",
            "|---|---|---|---|---|",
            f"| seqlen + vocab_rarity + index | {analysis['samples']:,} | {analysis['ours_samples_per_s']:,.0f} | "
            f"{analysis['deepspeed_samples_per_s']:,.0f} | {analysis['ratio']:.1f}x |",
            "",
        ]
    if sampler:
        out += [
            "| (b) sampler | N | global batches/s | ratio | peak RSS (MB) | RSS growth (MB) | state B/sample |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in sampler:
            o, d = row["ours"], row["deepspeed"]
            out.append(
                f"| CurriculumSampler | {row['n']:,} | {o['batches_per_s']:,.0f} | {row['ratio']:.1f}x | "
                f"{o['peak_rss_mb']:.0f} | {o['rss_growth_mb']:.0f} | {o['state_bytes_per_sample']:.2f} |"
            )
            out.append(
                f"| DeepSpeedDataSampler | {row['n']:,} | {d['batches_per_s']:,.0f} | 1x | {d['peak_rss_mb']:.0f} | "
                f"{d['rss_growth_mb']:.0f} | - |"
            )
        out.append("")
    if scale:
        out += [
            "| (c) CurriculumSampler alone | N | first batch (s) | peak RSS (MB) | state B/sample | batches/s |",
            "|---|---|---|---|---|---|",
            f"| synthetic uint16 seqlen | {scale['n']:,} | {scale['first_batch_s']:.1f} | {scale['peak_rss_mb']:.0f} | "
            f"{scale['state_bytes_per_sample']:.2f} | {scale['batches_per_s']:,.0f} |",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=["analysis", "sampler", "scale"], action="append", help="run only these parts"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000, 5_000_000], help="(b) dataset sizes")
    parser.add_argument("--batches", type=int, default=5000, help="(b) timed global batches after the first")
    parser.add_argument("--scale-n", type=int, default=100_000_000, help="(c) synthetic dataset size")
    parser.add_argument("--analysis-scale", type=int, default=4, help="(a) Penn Treebank train repetitions")
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, n, batches, *rest = args.child
        fn = child_ours if kind == "ours" else child_deepspeed
        print(json.dumps(fn(int(n), int(batches), *rest)), flush=True)
        return 0

    parts = set(args.only or ["analysis", "sampler", "scale"])
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}", flush=True)
    analysis = scale = None
    sampler: list[dict[str, Any]] = []
    if "analysis" in parts:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
        try:
            from bench_analysis import run_analysis_benchmark
        except ImportError as e:
            print(f"(a) skipped: scripts/benchmarks/bench_analysis.py is not available ({e}).")
        else:
            analysis = run_analysis_benchmark(scale=args.analysis_scale)
    if "sampler" in parts:
        sampler = run_sampler_benchmark(args.sizes, args.batches)
    if "scale" in parts:
        scale = {"n": args.scale_n, **_run_child("ours", str(args.scale_n), "2000")}
        print(
            f"(c) N={args.scale_n:,}: first batch after {scale['first_batch_s']:.1f} s, "
            f"peak RSS {scale['peak_rss_mb']:.0f} MB, {scale['state_bytes_per_sample']:.2f} B/sample",
            flush=True,
        )
    print()
    print(markdown(analysis, sampler, scale))
    if args.json:
        Path(args.json).write_text(json.dumps({"analysis": analysis, "sampler": sampler, "scale": scale}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
