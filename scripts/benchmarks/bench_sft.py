"""SFT benchmark through trl: plain SFT against ``--data_efficiency_recipe auto``, at equal compute, on Penn Treebank.

Corpus (offline): PTB's first ``--train_rows`` training sentences as a language-modeling dataset (``{"text": sentence}``), a character
tokenizer over PTB's characters, rows truncated to 128 tokens by trl (``max_length``); validation: the first
``--eval_rows`` sentences of PTB's validation split. Model: GPT-2 ``--layers`` x ``--width`` from scratch. Both arms
train with ``DataEfficiencySFTTrainer`` (without options it is trl's ``SFTTrainer``), batch 32, LR ``--lr`` with
linear decay after 5% warmup, the same seed (so the same data order) per seed:

* ``baseline``: ``--steps`` steps;
* ``auto``: the recipe (random-LTD on every layer but the first and the last, kept length from a quarter of the rows
  to all of them over 70% of the steps), for the steps whose planned *effective tokens* (layer-tokens / layers, padding
  included) equal the baseline's: more, cheaper steps at equal compute. The plan uses the mean padded width of random
  batches; the measured effective tokens of both arms (forward hooks on every layer's attention,
  ``scripts/examples/_examples.CurveRecorder``) are reported.

Reported per run (``docs/bench_records/sft/<arm>_s<seed>.json``) and over the seeds: the final validation loss
(nats per character), the validation curve against effective tokens, measured effective tokens and wall-clock. The LR is
the same for both arms (no grid), so this is a check of the recipe through trl, not a tuned comparison.

Run: ``python scripts/benchmarks/bench_sft.py`` (3 seeds, about 15 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "examples"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _examples import CurveRecorder, char_gpt2  # noqa: E402
from offline_data import char_tokenizer, load_ptb  # noqa: E402

from hf_data_efficiency import RandomLTDScheduler  # noqa: E402
from hf_data_efficiency.recipe import recipe_sections  # noqa: E402

ARMS = ("baseline", "auto")
BATCH = 32
MAX_LENGTH = 128


def planned_auto_steps(lengths: np.ndarray, args: argparse.Namespace) -> tuple[int, float, float]:
    """The auto arm's steps (and both arms' planned effective tokens): the fewest steps whose effective tokens reach
    the baseline's, from the mean padded width of random batches and the recipe's kept-length schedule."""
    rng = np.random.default_rng(0)
    widths = np.array([lengths[rng.integers(0, len(lengths), BATCH)].max() for _ in range(4000)])
    baseline = args.steps * BATCH * widths.mean()
    dropped = args.layers - 2

    def effective(steps: int) -> float:
        section = recipe_sections("auto", num_layers=args.layers, seq_len=MAX_LENGTH, steps=steps)["random_ltd"]
        scheduler = RandomLTDScheduler.from_dict(section)
        kept = np.array([scheduler.kept_length(k) for k in range(steps)])
        per_step = [(args.layers - dropped) * widths.mean() + dropped * np.minimum(k, widths).mean() for k in kept]
        return BATCH * float(np.sum(per_step)) / args.layers

    steps = args.steps
    while effective(steps) < baseline:
        steps += 1
    return steps, baseline, effective(steps)


def run(arm: str, seed: int, steps: int, data: Any, valid: Any, tokenizer: Any, args: argparse.Namespace) -> dict:
    from hf_data_efficiency.integrations.trl import DataEfficiencySFTConfig, DataEfficiencySFTTrainer

    torch.manual_seed(seed)
    model = char_gpt2(tokenizer, args.layers, args.width, MAX_LENGTH)
    out = Path(tempfile.mkdtemp(prefix=f"bench_sft_{arm}_"))
    config = DataEfficiencySFTConfig(
        output_dir=str(out),
        seed=seed,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 20),
        max_length=MAX_LENGTH,
        eval_strategy="steps",
        eval_steps=max(1, steps // 4),
        per_device_eval_batch_size=64,
        logging_steps=max(1, steps // 4),
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
        data_efficiency_recipe="auto" if arm == "auto" else None,
    )
    recorder = CurveRecorder(model, out)
    trainer = DataEfficiencySFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        eval_dataset=valid,
        processing_class=tokenizer,
        callbacks=[recorder],
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    recorder.remove()
    final = trainer.evaluate()["eval_loss"]
    return {
        "arm": arm,
        "seed": seed,
        "steps": steps,
        "final_eval_loss": float(final),
        "effective_tokens": recorder.layer_tokens / recorder.num_layers,
        "train_seconds": recorder.train_seconds(),
        "wall_seconds": seconds,
        "curve": recorder.curve,
        "data_efficiency_config": trainer.data_efficiency_config.to_dict(),
    }


def summarise(records: list[dict]) -> str:
    rows = [
        "| arm | steps | effective tokens (M) | final validation loss (nats/char) | train s |",
        "|---|---|---|---|---|",
    ]
    for arm in ARMS:
        runs = [r for r in records if r["arm"] == arm]
        if not runs:
            continue
        loss = [r["final_eval_loss"] for r in runs]
        tokens = [r["effective_tokens"] / 1e6 for r in runs]
        seconds = [r["train_seconds"] for r in runs]
        rows.append(
            f"| {arm} | {runs[0]['steps']} | {np.mean(tokens):.3f} ± {np.std(tokens):.3f} | "
            f"{np.mean(loss):.4f} ± {np.std(loss):.4f} | {np.mean(seconds):.0f} ± {np.std(seconds):.0f} |"
        )
    by_seed = {r["seed"]: {} for r in records}
    for r in records:
        by_seed[r["seed"]][r["arm"]] = r["final_eval_loss"]
    wins = sum(1 for s in by_seed.values() if len(s) == 2 and s["auto"] < s["baseline"])
    return "\n".join(rows) + f"\n\nauto below the baseline on {wins} of {len(by_seed)} seeds."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=300, help="baseline steps")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train_rows", type=int, default=20000, help="the first N training sentences")
    parser.add_argument("--eval_rows", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench_records" / "sft"))
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from datasets import Dataset

    train = load_ptb("train").select(range(args.train_rows))
    alphabet = "".join(sorted(set("".join(train["text"]))))
    tokenizer = char_tokenizer(alphabet)
    valid = Dataset.from_dict({"text": load_ptb("valid")["text"][: args.eval_rows]})
    lengths = np.minimum(np.array([len(t) + 1 for t in train["text"]]), MAX_LENGTH)  # characters + EOS
    auto_steps, planned_base, planned_auto = planned_auto_steps(lengths, args)
    print(f"auto: {auto_steps} steps for {planned_auto / planned_base:.3f}x the baseline's planned effective tokens")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        for arm in ARMS:
            record = run(arm, seed, args.steps if arm == "baseline" else auto_steps, train, valid, tokenizer, args)
            record["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
            records.append(record)
            (out / f"{arm}_s{seed}.json").write_text(json.dumps(record, indent=1) + "\n")
            print(
                f"seed {seed} {arm}: {record['steps']} steps, effective tokens {record['effective_tokens'] / 1e6:.3f}M, "
                f"validation loss {record['final_eval_loss']:.4f}, {record['train_seconds']:.0f} s",
                flush=True,
            )
    print(summarise(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
