#!/usr/bin/env python
"""What scoring a dataset with ``ReferenceLoss`` costs against a plain no-grad forward over the same data.

Both arms run the same model (the selection study's GPT-2 4x128, vocabulary compacted to 4,096 ids) over the same
PTB rows in batches of ``--batch_size``:

* **plain forward**: the rows padded per batch, ``model(input_ids, attention_mask)`` under ``torch.inference_mode``,
  the logits discarded; in dataset order, and (variable-length rows) sorted by length as ReferenceLoss does;
* **ReferenceLoss.map**: the whole ``datasets.map`` pass that writes the ``reference_loss`` column (the padding, the
  per-token losses, the per-sample means and the Arrow writes included); also ``token_losses=True``, which writes the
  per-token column too.

The arms alternate, ``--rounds`` times, in ABBA order; each arm's time is compared with the plain forward of the same
round, and the median of those ratios is reported, as process CPU time on one thread (the machine is shared, so
wall-clock is noisy) and wall-clock. Goal (issue #25): ReferenceLoss <= 1.1x the plain
forward. Data: ``packed`` 128-token blocks (no padding) and ``line`` samples (one PTB sentence each, 2-128 tokens)::

    python scripts/benchmarks/bench_reference_loss.py --rows 1000 --rounds 6
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "examples"))

from train_gpt2 import DataArguments, ModelArguments, build_model, compact_vocabulary, load_raw_text, tokenize  # noqa: E402

from hf_data_efficiency import ReferenceLoss  # noqa: E402


def plain_forward(model, rows: list[list[int]], batch_size: int, sort: bool) -> None:
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i])) if sort else range(len(rows))
    order = list(order)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = [rows[i] for i in order[start : start + batch_size]]
            width = max(len(r) for r in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = torch.as_tensor(r)
                mask[i, : len(r)] = 1
            model(input_ids=ids, attention_mask=mask)


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(mode: str, args: argparse.Namespace) -> dict:
    """Time every arm on ``mode`` samples; print the table; return the medians and ratios."""
    from offline_data import gpt2_tokenizer

    data_args = DataArguments(sample_mode=mode, block_size=128, max_vocab=4096)
    lm = tokenize(load_raw_text(data_args), gpt2_tokenizer(), data_args)
    lm, kept = compact_vocabulary(lm, gpt2_tokenizer().eos_token_id, 4096)
    data = lm["train"].select(range(min(args.rows, len(lm["train"]))))
    torch.manual_seed(0)
    model = build_model(ModelArguments(n_layer=4, n_embd=128, n_head=4), len(kept) + 1, 128, 0).eval()
    rows = data["input_ids"]
    scorer = ReferenceLoss(model, batch_size=args.batch_size)
    arms = {
        "plain forward (dataset order)": lambda: plain_forward(model, rows, args.batch_size, sort=False),
        "ReferenceLoss.map": lambda: scorer.map(data),
        "ReferenceLoss.map, token_losses=True": lambda: scorer.map(data, token_losses=True),
    }
    if mode == "line":
        arms["plain forward (sorted by length)"] = lambda: plain_forward(model, rows, args.batch_size, sort=True)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    timed(arms["plain forward (dataset order)"])  # warm-up
    names = list(arms)
    for r in range(args.rounds):  # ABBA order: a slow phase of the shared machine hits both ends of a round
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(arms[name]))
    tokens = int(sum(len(r) for r in rows))
    plain = times["plain forward (dataset order)"]
    print(f"\n{mode}: {len(rows)} rows, {tokens} tokens, batch {args.batch_size}, {args.rounds} rounds")
    print(
        "| arm | CPU s (median) | vs plain (median of per-round ratios) | wall s (median) | vs plain | tokens/s (CPU) |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
    for name, ts in times.items():
        cpu, wall = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        ratio_cpu = statistics.median(t[0] / p[0] for t, p in zip(ts, plain))
        ratio_wall = statistics.median(t[1] / p[1] for t, p in zip(ts, plain))
        print(f"| {name} | {cpu:.2f} | {ratio_cpu:.2f}x | {wall:.2f} | {ratio_wall:.2f}x | {tokens / cpu:,.0f} |")
        results[name] = {"cpu": cpu, "wall": wall, "ratio_cpu": ratio_cpu, "ratio_wall": ratio_wall}
    assert np.isfinite(np.array(scorer(data[:64]))).all()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--modes", nargs="+", default=["packed", "line"], choices=["packed", "line"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    return {mode: measure(mode, args) for mode in args.modes}


if __name__ == "__main__":
    main()
