"""Streaming curriculum benchmark: throughput against the plain stream, and peak RSS against the buffer size.

Data: synthetic token rows (uniform lengths in [16, 64], ids < 1000) written as int32 parquet shards in a temporary
folder, read back with ``load_dataset("parquet", streaming=True)``. Curriculum: ``seqlen`` (value), ``fixed_linear``
from 24 to 64 over the first half of the run, batch 32, GA 1, one process, ``buffer_full='drop'``.

* **Throughput:** samples/s of iterating the plain stream (example by example, as a DataLoader does), and of
  iterating ``StreamingCurriculum`` over the same stream (read in Arrow chunks, metrics computed on the fly,
  buffered, selected, tagged): samples read and served per second, alternating, best of ``--repeats``. The overhead
  compares samples read (served plus dropped) with the plain stream.
* **Memory:** each (stream length, buffer size) runs ``StreamingCurriculum`` to the end in a fresh process and reports
  its peak RSS (``VmHWM``) and the baseline after imports, so the figure is the stream's own.

* **Quality** (``--quality_seeds 1 2 3``; nothing else runs then): the ``curriculum`` arm of
  ``scripts/benchmarks/bench_data_efficiency.py`` (tiny GPT-2 on PTB 128-token blocks, ``seqlen_truncate`` plus
  ``vocab_rarity`` percentile) trained map-style and streamed (``train_gpt2.py --streaming``: 16 shuffled shards,
  default streaming settings, counts estimated from the warm-up prefix), the same steps and seeds; final validation
  loss, mean and spread over the seeds. Run records go to ``docs/bench_records/streaming_quality`` (reused when
  present).

Run: ``python scripts/benchmarks/bench_streaming.py`` (small defaults, about a minute on 2 cores); the issue's scale is
``--samples 5000000 --lengths 1000000 5000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
BATCH = 32
SHARD_ROWS = 10_000


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_shards(folder: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` synthetic rows as parquet shards of at most ``SHARD_ROWS`` rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for start in range(0, n, SHARD_ROWS):
        rows = min(SHARD_ROWS, n - start)
        lengths = rng.integers(16, 65, size=rows)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        ids = rng.integers(0, 1000, size=int(offsets[-1]), dtype=np.int32)
        table = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))})
        path = folder / f"part-{start // SHARD_ROWS:05d}.parquet"
        pq.write_table(table, path)
        files.append(str(path))
    return files


def build(files: list[str], n: int, buffer_size: int):
    import datasets

    from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig, StreamingConfig
    from hf_data_efficiency.curriculum.streaming import StreamingCurriculum

    steps = max(1, n // BATCH // 2)
    metric = CurriculumMetricConfig(
        name="seqlen",
        min_difficulty=24,
        max_difficulty=64,
        schedule_config={"total_curriculum_step": steps, "difficulty_step": 1},
    )
    cfg = CurriculumConfig(sampling_metrics=[metric], streaming=StreamingConfig(buffer_size=buffer_size))
    source = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    return source, StreamingCurriculum(source, cfg, batch_size=BATCH)


def throughput(files: list[str], n: int, buffer_size: int, repeats: int) -> dict:
    plain, read, served = [], [], []
    for _ in range(repeats):
        source, stream = build(files, n, buffer_size)
        start = time.perf_counter()
        count = sum(1 for _ in source)
        plain.append(count / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in stream:
            pass
        elapsed = time.perf_counter() - start
        read.append(stream.counters.read / elapsed)
        served.append(stream.counters.served / elapsed)
    c = stream.counters
    return {
        "samples": n,
        "buffer_size": buffer_size,
        "plain_samples_per_s": max(plain),
        "curriculum_read_per_s": max(read),
        "curriculum_served_per_s": max(served),
        "overhead": 1 - max(read) / max(plain),
        "served": c.served,
        "dropped": c.dropped,
    }


def child(files: list[str], n: int, buffer_size: int) -> None:
    import datasets  # noqa: F401  (imports counted in the baseline)
    import torch  # noqa: F401

    import hf_data_efficiency.curriculum.streaming  # noqa: F401

    base = _peak_rss_mb()
    _, stream = build(files, n, buffer_size)
    start = time.perf_counter()
    for _ in stream:
        pass
    elapsed = time.perf_counter() - start
    c = stream.counters
    out = {"samples": n, "buffer_size": buffer_size, "base_rss_mb": base, "peak_rss_mb": _peak_rss_mb()}
    out.update(seconds=elapsed, served=c.served, dropped=c.dropped, read=c.read)
    print(json.dumps(out))


def quality(seeds: list[int], steps: int, records_dir: Path, out_dir: Path) -> dict:
    """Train (or reuse) the curriculum arm of ``bench_data_efficiency.py`` map-style and streamed for ``seeds``, the
    same steps each; their final validation losses."""
    import statistics

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_data_efficiency as bench

    task = {**bench.TASKS["gpt2"], "steps": steps}
    results = {}
    for mode, extra in (("map", {}), ("stream", {"streaming": "true"})):
        args = argparse.Namespace(
            out_dir=str(out_dir / mode),
            records_dir=str(records_dir / mode),
            overwrite=False,
            lr_scaling=0.0,
            evals_per_run=6,
            eval_samples=256,
            extra=extra,
        )
        runs = [bench.run_one("gpt2", task, "curriculum", 1.0, seed, args) for seed in seeds]
        losses = [r["final"]["validation"]["loss"] for r in runs]
        results[mode] = {
            "steps": runs[0]["bench"]["steps"],
            "losses": losses,
            "mean": statistics.mean(losses),
            "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        }
        print(f"quality {mode}: final validation loss {results[mode]['mean']:.4f} +- {results[mode]['std']:.4f}")
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=200_000, help="stream length of the throughput run")
    p.add_argument("--lengths", type=int, nargs="+", default=[100_000, 400_000], help="stream lengths (memory)")
    p.add_argument("--buffers", type=int, nargs="+", default=[1024, 16384], help="buffer sizes (memory)")
    p.add_argument("--buffer", type=int, default=4096, help="buffer size of the throughput run")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workdir", default=None, help="folder for the shards (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--quality_seeds", type=int, nargs="+", default=None, help="run only the quality comparison")
    p.add_argument("--quality_steps", type=int, default=200, help="steps of the quality runs")
    p.add_argument("--records_dir", default="docs/bench_records/streaming_quality", help="quality run records")
    p.add_argument("--out_dir", default="outputs/streaming_quality", help="quality run folders")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.quality_seeds:
        results = {"quality": quality(a.quality_seeds, a.quality_steps, Path(a.records_dir), Path(a.out_dir))}
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
        return
    if a.child:
        folder, n, buffer_size = a.child
        child(
            sorted(str(f) for f in Path(folder).glob("*.parquet"))[: -(-int(n) // SHARD_ROWS)],
            int(n),
            int(buffer_size),
        )
        return
    with tempfile.TemporaryDirectory(dir=a.workdir) as tmp:
        longest = max([a.samples, *a.lengths])
        files = write_shards(Path(tmp), longest)
        results = {"throughput": throughput(files[: -(-a.samples // SHARD_ROWS)], a.samples, a.buffer, a.repeats)}
        t = results["throughput"]
        print(
            f"throughput ({t['samples']:,} samples, buffer {t['buffer_size']}): plain stream "
            f"{t['plain_samples_per_s']:,.0f}/s; curriculum reads {t['curriculum_read_per_s']:,.0f}/s and serves "
            f"{t['curriculum_served_per_s']:,.0f}/s (served {t['served']:,}, dropped {t['dropped']:,}); "
            f"overhead on reading {t['overhead']:.1%}"
        )
        results["memory"] = []
        for n in a.lengths:
            for buffer_size in a.buffers:
                cmd = [sys.executable, __file__, "--child", tmp, str(n), str(buffer_size)]
                line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
                m = json.loads(line)
                results["memory"].append(m)
                print(
                    f"memory ({m['samples']:,} samples, buffer {m['buffer_size']}): peak RSS {m['peak_rss_mb']:.0f} MB "
                    f"(after imports {m['base_rss_mb']:.0f} MB, +{m['peak_rss_mb'] - m['base_rss_mb']:.0f} MB), "
                    f"{m['seconds']:.1f} s, dropped {m['dropped']:,}"
                )
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
