#!/usr/bin/env python
"""Group mixing and batch-size warmup study: a tiny GPT-2 on a mixture of PTB, BBC News and a junk group.

Data (built once, cached under ``--out_dir``): PTB train and BBC News train (split 90/5/5 with seed 0, as
``train_gpt2.py --dataset_name bbc``) packed into 128-token blocks with the GPT-2 BPE, the vocabulary compacted to the
4,096 ids most frequent in their union (the output layer of a tiny model would otherwise be most of its compute);
the junk group is 4,000 blocks of token ids drawn uniformly from that vocabulary (pure noise: its loss can never fall
below ln 4,096 = 8.3). Two mixtures: ``clean`` (PTB + BBC) and ``junk`` (PTB + BBC +
junk). The clean validation loss is the mean of the PTB and BBC validation losses (the first 64 validation blocks of
each), evaluated every ``steps / 10`` steps.

Arms (every run a GPT-2 4x128 from scratch, batch 16, LR 2e-3 cosine with 5% warmup, the same seed for the weights
and the data):

* mixing, on each mixture: ``stratified`` (the control), ``natural`` (in proportion to group sizes) and ``online``;
  ``--steps`` steps each;
* warmup, on the clean mixture without mixing: ``constant`` (batch 16 for ``--steps`` steps) and ``ramp`` (batch
  8 -> 32 by 8 over the first quarter of the samples, ``lr_scaling_method=sqrt`` from the full batch with the LR
  raised by sqrt(2), so a step of 16 trains at the constant arm's LR), with as many steps as the same samples
  take. Both read the same pass permutation, so they see the same samples in the same order, grouped differently.

Each run writes a small record (``--records_dir``); the tables are re-tabulated from the records alone
(``--only_existing`` trains nothing) and written into ``docs/benchmarks.md`` between the ``mixing`` markers.

Examples::

    python scripts/benchmarks/bench_mixing.py --seeds 1 2 3 --workers 2          # runs what lacks a record, tables
    python scripts/benchmarks/bench_mixing.py --seeds 1 2 3 --only_existing      # tables from the records
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts" / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_data_efficiency  # noqa: E402
from bench_data_efficiency import fmt_spread, reach, replace_marked_block  # noqa: E402

from hf_data_efficiency.fileio import atomic_write_text  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN, DOC_END = "<!-- mixing:begin -->", "<!-- mixing:end -->"
BLOCK, BATCH, LR, MAX_VOCAB, JUNK_BLOCKS, EVAL_BLOCKS = 128, 16, 2e-3, 4096, 4000, 64
MIXING_ARMS = ("stratified", "natural", "online")
WARMUP_ARMS = ("constant", "ramp")
#: the ramp arm: per-device batch start -> full by increment over a fraction of the constant arm's samples
RAMP = {"start": 8, "increment": 8, "full": 32, "fraction": 0.25}


def runs(steps: int, seeds: list[int]) -> list[dict]:
    """Every run, in the order they are trained: the junk mixture, the warmup, then the clean mixture."""
    out = []
    for study, arms in (("junk", MIXING_ARMS), ("warmup", WARMUP_ARMS), ("clean", MIXING_ARMS)):
        out += [{"study": study, "arm": arm, "seed": seed, "steps": steps} for seed in seeds for arm in arms]
    return out


def record_path(records_dir: Path, run: dict) -> Path:
    return records_dir / run["study"] / f"{run['arm']}_s{run['seed']}.json"


# ----- data ---------------------------------------------------------------------------------------------------
def build_data(out_dir: Path) -> Path:
    """Tokenised, packed, vocabulary-compacted splits and the junk group, saved once under ``out_dir/data``."""
    import datasets
    from offline_data import gpt2_tokenizer
    from train_gpt2 import DataArguments, compact_vocabulary, load_raw_text, tokenize

    folder = out_dir / "data"
    if (folder / "meta.json").is_file():
        return folder
    tokenizer = gpt2_tokenizer()
    parts = {}
    for name in ("ptb", "bbc"):
        args = DataArguments(dataset_name=name, block_size=BLOCK)
        parts[name] = tokenize(load_raw_text(args), tokenizer, args)
    union = datasets.DatasetDict(
        train=datasets.concatenate_datasets([parts["ptb"]["train"], parts["bbc"]["train"]]),
        **{f"{split}_{name}": parts[name][split] for name in parts for split in ("train", "validation")},
    )
    compacted, kept = compact_vocabulary(union, tokenizer.eos_token_id, MAX_VOCAB)
    rng = np.random.default_rng(1234)
    junk = rng.integers(0, len(kept), size=(JUNK_BLOCKS, BLOCK))
    splits = {
        "train_ptb": compacted["train_ptb"],
        "train_bbc": compacted["train_bbc"],
        "train_junk": datasets.Dataset.from_dict({"input_ids": junk.tolist()}),
        "valid_ptb": compacted["validation_ptb"].select(range(EVAL_BLOCKS)),
        "valid_bbc": compacted["validation_bbc"].select(range(EVAL_BLOCKS)),
    }
    for name, split in splits.items():
        split.save_to_disk(str(folder / name))
    meta = {
        "vocab_size": len(kept) + 1,
        "eos": int(np.searchsorted(kept, tokenizer.eos_token_id)),
        "sizes": {name: len(split) for name, split in splits.items()},
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))
    return folder


def ramp_steps(total_samples: int) -> int:
    """Optimizer steps of the ramp arm until it has consumed ``total_samples`` samples (Megatron's rule)."""
    from hf_data_efficiency.batching.warmup import BatchSizeWarmup
    from hf_data_efficiency.config import BatchSizeWarmupConfig

    cfg = BatchSizeWarmupConfig(
        start=RAMP["start"], increment=RAMP["increment"], samples=int(RAMP["fraction"] * total_samples)
    )
    warmup, consumed, steps = BatchSizeWarmup(cfg, RAMP["full"]), 0, 0
    while consumed < total_samples:
        consumed += warmup.batch_size_at(consumed)
        steps += 1
    return steps


# ----- one run ----------------------------------------------------------------------------------------------------
def train_one(run: dict, out_dir: Path, records_dir: Path) -> dict:
    import datasets
    import torch
    from train_gpt2 import CausalLMCollator, ModelArguments, build_model
    from transformers import TrainerCallback, set_seed

    from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments

    torch.set_num_threads(1)
    data = out_dir / "data"
    meta = json.loads((data / "meta.json").read_text())
    load = lambda name: datasets.load_from_disk(str(data / name))  # noqa: E731
    groups = ["ptb", "bbc", "junk"] if run["study"] == "junk" else ["ptb", "bbc"]
    train = datasets.concatenate_datasets(
        [load(f"train_{g}").add_column("domain", [g] * meta["sizes"][f"train_{g}"]) for g in groups]
    )
    steps, seed, flags = run["steps"], run["seed"], {}
    batch, lr = BATCH, LR
    if run["study"] in ("clean", "junk"):
        flags = {"mixing_column": "domain", "mixing_strategy": run["arm"]}
    elif run["arm"] == "constant":  # the same data path as the ramp, without a ramp
        flags = {"batch_size_warmup_start": BATCH, "batch_size_warmup_increment": 1, "batch_size_warmup_samples": 1}
    else:
        batch, lr = RAMP["full"], LR * math.sqrt(2)
        samples = int(RAMP["fraction"] * BATCH * steps)
        flags = {
            "batch_size_warmup_start": RAMP["start"],
            "batch_size_warmup_increment": RAMP["increment"],
            "batch_size_warmup_samples": samples,
            "batch_size_warmup_lr_scaling_method": "sqrt",
        }
        steps = ramp_steps(BATCH * run["steps"])
    eval_every = max(1, run["steps"] // 10)
    name = f"{run['study']}_{run['arm']}_s{seed}"
    args = DataEfficiencyTrainingArguments(
        output_dir=str(out_dir / "runs" / name),
        max_steps=steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=64,
        learning_rate=lr,
        weight_decay=0.1,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        eval_strategy="no" if run["arm"] == "ramp" else "steps",  # the ramp arm evaluates at the same samples
        eval_steps=eval_every,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        **flags,
    )
    set_seed(seed)
    model = build_model(ModelArguments(n_layer=4, n_embd=128, n_head=4), meta["vocab_size"], BLOCK, meta["eos"])

    class Timer(TrainerCallback):
        """Train seconds without evaluation, per step, and (ramp arm) evaluations every ``eval_every`` batches of
        16 samples consumed, so both warmup arms are evaluated at the same samples."""

        def __init__(self) -> None:
            self.seconds, self.start, self.evaluating, self.samples = {}, None, 0.0, 0
            self.next_eval = eval_every * BATCH

        def on_step_begin(self, args, state, control, **kwargs):
            if self.start is None:
                self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds[state.global_step] = time.perf_counter() - self.start - self.evaluating
            if run["study"] == "warmup" and run["arm"] == "ramp":
                self.samples = trainer.engine.batch_sampler.consumed_before(state.global_step + 1)
                if self.samples >= self.next_eval or state.global_step == steps:
                    self.next_eval += eval_every * BATCH
                    control.should_evaluate = True

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluating = time.perf_counter() - self.start - self.seconds.get(state.global_step, 0.0)

    timer = Timer()
    trainer = DataEfficiencyTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset={"ptb": load("valid_ptb"), "bbc": load("valid_bbc")},
        data_collator=CausalLMCollator(meta["eos"]),
        callbacks=[timer],
    )
    mixing_seconds = [0.0]
    engine = trainer.engine
    for method in ("observe_losses", "end_step"):  # online mixing's own cost: attribution, reduction, update
        original = getattr(engine, method)

        def timed(*a, _original=original, **k):
            t0 = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                mixing_seconds[0] += time.perf_counter() - t0

        setattr(engine, method, timed)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    logs = trainer.state.log_history
    evals: dict[int, dict] = {}
    for h in logs:
        for g in ("ptb", "bbc"):
            if f"eval_{g}_loss" in h:
                evals.setdefault(h["step"], {})[g] = h[f"eval_{g}_loss"]
    train_logs = {h["step"]: h for h in logs if "loss" in h}
    curve = []
    for step in sorted(evals):
        samples = int(train_logs[step]["data_efficiency/consumed_samples"])
        point = {
            "step": step,
            "samples": samples,
            "tokens": samples * BLOCK,
            "train_seconds": timer.seconds[step],
            "ptb_loss": evals[step]["ptb"],
            "bbc_loss": evals[step]["bbc"],
            "eval_loss": (evals[step]["ptb"] + evals[step]["bbc"]) / 2,
        }
        point.update({k: v for k, v in train_logs[step].items() if k.startswith("mixing/weight_")})
        curve.append(point)
    record = {
        "run": run,
        "steps": steps,
        "learning_rate": lr,
        "batch_size": batch,
        "flags": flags,
        "curve": curve,
        "train_seconds": timer.seconds[steps],
        "process_seconds": time.process_time() - c0,
        "wall_seconds": time.perf_counter() - t0,
        "mixing_seconds": mixing_seconds[0],
        "data_sizes": {g: meta["sizes"][f"train_{g}"] for g in groups},
        "data_efficiency_config": trainer.data_efficiency_config.to_dict(),
    }
    path = record_path(records_dir, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return record


# ----- tables -------------------------------------------------------------------------------------------------
def mean_curve(records: list[dict]) -> list[dict]:
    return bench_data_efficiency.mean_curve(records, ("step", "samples", "tokens", "train_seconds", "eval_loss"))


def crossing(records: list[dict], control: list[dict]) -> tuple[str, str, str]:
    """Steps and tokens to the control's final clean loss (seed-mean curves, as multiples of the control's), and
    each seed's own crossing in steps."""
    target = float(np.mean([r["curve"][-1]["eval_loss"] for r in control]))
    base = mean_curve(control)[-1]
    curve = mean_curve(records)
    steps, tokens = reach(curve, target, "step"), reach(curve, target, "tokens")
    own = [reach(r["curve"], target, "step") for r in records]
    hits = [s / base["step"] for s in own if s is not None]
    seeds = (
        f"{fmt_spread(hits, 2)}x ({len(hits)}/{len(records)} seeds)" if hits else f"0/{len(records)} seeds reach it"
    )
    if steps is None:
        return "not reached", "not reached", seeds
    return f"{steps / base['step']:.2f}x ({steps:.0f})", f"{tokens / base['tokens']:.2f}x", seeds


def tables(records_dir: Path, seeds: list[int], steps: int) -> str:
    found = {}
    for run in runs(steps, seeds):
        path = record_path(records_dir, run)
        if path.is_file():
            found.setdefault((run["study"], run["arm"]), []).append(json.loads(path.read_text()))
    lines = []
    for study, arms, control in (("clean", MIXING_ARMS, "stratified"), ("junk", MIXING_ARMS, "stratified")):
        if (study, control) not in found:
            continue
        what = "PTB + BBC News" if study == "clean" else "PTB + BBC News + junk"
        sizes = found[(study, control)][0]["data_sizes"]
        lines += [
            f"**Mixture `{study}`** ({what}; training blocks {', '.join(f'{g} {n:,}' for g, n in sizes.items())}), "
            f"{steps} steps of {BATCH}; control: `{control}`.",
            "",
            "| arm | seeds | final clean val loss | PTB val | BBC val | steps to the control's final loss | tokens "
            "| per seed (steps) | final weights |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for arm in arms:
            recs = found.get((study, arm))
            if not recs:
                continue
            finals = [r["curve"][-1] for r in recs]
            keys = [k for k in finals[0] if k.startswith("mixing/weight_")]
            shown = ", ".join(
                f"{k.removeprefix('mixing/weight_')} {np.mean([f[k] for f in finals]):.2f}" for k in keys
            )
            step_x, token_x, seed_x = crossing(recs, found[(study, control)])
            seed_x = "-" if arm == control else seed_x
            lines.append(
                f"| `{arm}` | {len(recs)} | {fmt_spread([f['eval_loss'] for f in finals], 3)} "
                f"| {fmt_spread([f['ptb_loss'] for f in finals], 3)} | {fmt_spread([f['bbc_loss'] for f in finals], 3)} "
                f"| {step_x} | {token_x} | {seed_x} | {shown} |"
            )
        lines.append("")
    if ("warmup", "constant") in found:
        lines += [
            f"**Batch-size warmup** (PTB + BBC News, no mixing; equal samples: {BATCH} x {steps}); control: "
            "`constant`.",
            "",
            "| arm | seeds | batch (per device) | optimizer steps | final clean val loss | steps to the control's "
            "final loss | tokens | per seed (steps) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for arm in WARMUP_ARMS:
            recs = found.get(("warmup", arm))
            if not recs:
                continue
            batch = f"{RAMP['start']} -> {RAMP['full']}" if arm == "ramp" else str(BATCH)
            step_x, token_x, seed_x = crossing(recs, found[("warmup", "constant")])
            seed_x = "-" if arm == "constant" else seed_x
            lines.append(
                f"| `{arm}` | {len(recs)} | {batch} | {recs[0]['steps']} "
                f"| {fmt_spread([r['curve'][-1]['eval_loss'] for r in recs], 3)} | {step_x} | {token_x} | {seed_x} |"
            )
        lines.append("")
    online = [r for study in ("clean", "junk") for r in found.get((study, "online"), [])]
    stratified = [r for study in ("clean", "junk") for r in found.get((study, "stratified"), [])]
    if online and stratified:
        share = np.mean([r["mixing_seconds"] / r["train_seconds"] for r in online])
        per_step = np.mean([r["train_seconds"] / r["steps"] for r in online])
        per_step_s = np.mean([r["train_seconds"] / r["steps"] for r in stratified])
        lines += [
            f"Online mixing's own cost (attributing each micro-batch's per-sample losses to the groups, one reduction "
            f"and the weight update per step): {100 * share:.1f}% of the training seconds, measured in the runs; "
            f"training seconds per step {per_step:.3f} (online) against {per_step_s:.3f} (stratified), "
            f"{len(online)} and {len(stratified)} runs on the shared machine.",
            "",
        ]
    total = sum(r["process_seconds"] for recs in found.values() for r in recs)
    lines.append(f"{sum(len(v) for v in found.values())} runs, {total / 3600:.2f} process-hours in all.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--workers", type=int, default=2, help="runs trained at a time")
    p.add_argument("--out_dir", default="outputs/mixing")
    p.add_argument("--records_dir", default="docs/bench_records/mixing_warmup")
    p.add_argument("--only_existing", action="store_true", help="train nothing; tabulate the records")
    p.add_argument("--only", nargs="*", default=None, help="studies to run: clean junk warmup")
    p.add_argument("--no_docs", action="store_true")
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)  # one run, in a worker process
    args = p.parse_args(argv)
    out_dir, records_dir = Path(args.out_dir), Path(args.records_dir)
    if args.run is not None:
        train_one(json.loads(args.run), out_dir, records_dir)
        return
    if not args.only_existing:
        build_data(out_dir)
        todo = [
            r
            for r in runs(args.steps, args.seeds)
            if not record_path(records_dir, r).is_file() and (args.only is None or r["study"] in args.only)
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        running: list[tuple[subprocess.Popen, dict, float]] = []
        while todo or running:
            while todo and len(running) < args.workers:
                run = todo.pop(0)
                cmd = [sys.executable, __file__, "--run", json.dumps(run), "--out_dir", str(out_dir)]
                cmd += ["--records_dir", str(records_dir)]
                log = open(out_dir / f"{run['study']}_{run['arm']}_s{run['seed']}.log", "w")
                running.append(
                    (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run, time.time())
                )
            time.sleep(2)
            for entry in list(running):
                proc, run, started = entry
                if proc.poll() is not None:
                    running.remove(entry)
                    state = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                    print(f"{run['study']} {run['arm']} seed {run['seed']}: {state} in {time.time() - started:.0f} s")
    text = tables(records_dir, args.seeds, args.steps)
    print(text)
    if not args.no_docs:
        seeds = " ".join(map(str, args.seeds))
        command = f"python scripts/benchmarks/bench_mixing.py --seeds {seeds} --only_existing"
        replace_marked_block(DOC, DOC_BEGIN, DOC_END, f"{text}\nCommand (re-tabulates from the records): `{command}`")


if __name__ == "__main__":
    main()
