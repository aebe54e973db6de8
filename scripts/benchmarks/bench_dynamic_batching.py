#!/usr/bin/env python
"""Token-budget batching against fixed batches: real tokens/s, padding, peak micro-batch size, validation loss.

Data (offline, GPT-2 BPE): BBC News documents truncated at ``--bbc_max_len`` (512) tokens, and Penn Treebank
lines. The vocabulary is compacted to the ``--vocab`` most frequent ids of the training data (the rest map to one
shared id), so a tiny GPT-2 trains on CPU.

Arms, each trained from the same initialisation until it has seen ``--real_tokens`` real (non-pad) tokens:

* ``fixed_pad_longest``: batches of ``--batch_size`` samples, every row padded to the longest sample of the data;
* ``fixed_pad_batch``: the same batches, padded to the longest sample of each batch;
* ``token_budget``: dynamic batching, ``--max_tokens`` padded tokens per micro-batch (default: ``--budget_batches``
  fixed batches of mean length, so a step holds the fixed arms' real tokens on average), the LR scaled by
  ``--lr_scaling_method`` from the reference batch ``--batch_size``, ``sequence_picking_order=--picking_order``
  (default ``seqlen``: each pass sorted by length, so micro-batches hold similar lengths);
* ``token_budget_curriculum``: the same with a ``seqlen`` curriculum (value-based, ``fixed_linear`` from
  ``--curriculum_min``, at least the shortest sample, to the longest over the first half of the fixed arms' step
  count); ``seqlen`` order sorts the samples each step takes from the curriculum's draw.

The arms of a seed run interleaved, ``--interleave`` steps each in turn, so the machine's noise hits them alike and
their tokens/s are comparable side by side. Every step's loss is the mean over its real, shifted label tokens (AdamW,
constant LR). Reported per arm: real tokens/s of the training loop (forward, backward, step; no evaluation), padding
fraction (1 - real / computed tokens), the largest micro-batch in computed tokens, the peak activation memory (bytes
of the tensors autograd saves for backward in the largest step, on any device; a tensor saved twice counts twice),
and the validation loss (mean over the real tokens of the held-out set) at the end.

Run: ``python scripts/benchmarks/bench_dynamic_batching.py`` (small defaults, a few minutes on 2 CPU cores);
``--data bbc`` or ``--data ptb`` for one data set, ``--seeds 0 1 2`` for the seed spread.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from hf_data_efficiency import DataEfficiencyConfig, DataEfficiencyEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # offline_data

ARMS = ("fixed_pad_longest", "fixed_pad_batch", "token_budget", "token_budget_curriculum")
PAD = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("bbc", "ptb", "both"), default="both")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--bbc_max_len", type=int, default=512)
    p.add_argument("--ptb_lines", type=int, default=8000, help="PTB training lines used")
    p.add_argument("--valid", type=int, default=64, help="held-out samples for the validation loss")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--batch_size", type=int, default=8, help="fixed arms' batch, and the LR reference batch")
    p.add_argument(
        "--max_tokens",
        type=int,
        default=0,
        help="token budget (default: --budget_batches x batch_size x mean length, at least the longest sample)",
    )
    p.add_argument(
        "--budget_batches",
        type=float,
        default=1.0,
        help="default budget in fixed batches of mean length (1: a step holds the fixed arms' real tokens on average)",
    )
    p.add_argument("--lr_scaling_method", choices=("linear", "sqrt", "none"), default="sqrt")
    p.add_argument("--real_tokens", type=int, default=60000, help="real tokens each arm trains on")
    p.add_argument("--interleave", type=int, default=2, help="steps each arm runs before the next arm's turn")
    p.add_argument("--picking_order", choices=("dataloader", "random", "seqlen"), default="seqlen")
    p.add_argument("--curriculum_min", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_embd", type=int, default=64)
    return p.parse_args(argv)


def load_rows(name: str, args: argparse.Namespace) -> tuple[list[list[int]], list[list[int]]]:
    """(train rows, validation rows) of GPT-2 ids; BBC documents truncated at ``bbc_max_len``."""
    from offline_data import gpt2_tokenizer, load_bbc_news, load_ptb

    tok = gpt2_tokenizer()
    if name == "bbc":
        text = list(load_bbc_news().shuffle(seed=0)["text"])
        rows = [ids[: args.bbc_max_len] for ids in tok(text)["input_ids"]]
    else:
        text = [t for t in load_ptb("train").select(range(args.ptb_lines + args.valid))["text"] if t.strip()]
        rows = tok(text)["input_ids"]
    rows = [r for r in rows if len(r) >= 2]
    return rows[args.valid :], rows[: args.valid]


def compact(train: list[list[int]], valid: list[list[int]], size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Ids remapped to 1..size-1 by training frequency (0 is padding); rarer ids share the last id."""
    counts = Counter(i for r in train for i in r)
    mapping = {tok: rank + 1 for rank, (tok, _) in enumerate(counts.most_common(size - 2))}
    other = size - 1

    def remap(rows):
        return [[mapping.get(i, other) for i in r] for r in rows]

    return remap(train), remap(valid)


def collate(features: list[dict[str, Any]], width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad to ``width`` (default: the longest row); labels are -100 on padding."""
    width = width or max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        ids[row, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"])
        mask[row, : len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class SavedActivations:
    """Bytes of the tensors autograd saves for backward during a forward (the activation memory of a step, on any
    device); :attr:`peak` is the largest step's."""

    def __init__(self) -> None:
        self.current = self.peak = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        self.current += tensor.numel() * tensor.element_size()
        return tensor

    def step(self) -> Any:
        self.current = 0
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def close_step(self) -> None:
        self.peak = max(self.peak, self.current)


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of the shifted token losses, their count)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((labels != -100).sum())


@torch.no_grad()
def validation_loss(model: torch.nn.Module, rows: list[list[int]]) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), 16):
        loss, n = token_loss_sum(model, collate([{"input_ids": r} for r in rows[start : start + 16]]))
        total, count = total + float(loss), count + n
    model.train()
    return total / count


def loader_for(arm: str, data: datasets.Dataset, args: argparse.Namespace, max_tokens: int, steps: int, seed: int):
    """(DataLoader, engine or None) of an arm."""
    if arm.startswith("fixed"):
        longest = max(data["seqlen"])
        width = longest if arm == "fixed_pad_longest" else None
        generator = torch.Generator().manual_seed(seed)
        features = data.remove_columns("seqlen")
        return DataLoader(
            features,
            batch_size=args.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=True,
            collate_fn=lambda f: collate(f, width),
        ), None
    block: dict[str, Any] = {"enabled": True, "seed": seed}
    sampling: dict[str, Any] = {
        "enabled": True,
        "dynamic_batching": {"enabled": True, "max_tokens": max_tokens, "lr_scaling_method": args.lr_scaling_method},
    }
    sampling["dynamic_batching"]["sequence_picking_order"] = args.picking_order
    if arm == "token_budget_curriculum":
        longest = int(max(data["seqlen"]))
        sampling["curriculum_learning"] = {
            "enabled": True,
            "curriculum_metrics": {
                "seqlen": {
                    "min_difficulty": min(max(args.curriculum_min, int(min(data["seqlen"]))), longest),
                    "max_difficulty": longest,
                    "schedule_type": "fixed_linear",
                    "schedule_config": {"total_curriculum_step": max(1, steps // 2), "difficulty_step": 8},
                }
            },
        }
    block["data_sampling"] = sampling
    engine = DataEfficiencyEngine(DataEfficiencyConfig.from_deepspeed(block), batch_size=args.batch_size)
    batch_sampler = engine.build_batch_sampler(data)
    loader = DataLoader(
        engine.loader_dataset(data.remove_columns("seqlen")),
        batch_sampler=batch_sampler,
        collate_fn=engine.wrap_collator(collate),
    )
    return loader, engine


class ArmRun:
    """One arm's training run from the seed's initialisation, advanced a few steps at a time so that the arms of a
    seed run interleaved (machine noise then hits every arm alike)."""

    def __init__(self, arm: str, train: datasets.Dataset, args: argparse.Namespace, max_tokens: int, seed: int):
        torch.manual_seed(seed)
        longest = int(max(train["seqlen"]))
        self.arm, self.seed, self.target = arm, seed, args.real_tokens
        self.model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=args.vocab,
                n_positions=longest,
                n_layer=args.n_layer,
                n_embd=args.n_embd,
                n_head=2,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attn_pdrop=0.0,
                pad_token_id=PAD,
            )
        )
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.lr)
        fixed_steps = math.ceil(args.real_tokens / (args.batch_size * float(np.mean(train["seqlen"]))))
        self.loader, self.engine = loader_for(arm, train, args, max_tokens, fixed_steps, seed)
        self.batches = self._batches()
        self.real = self.computed = self.steps = self.largest = 0
        self.elapsed = 0.0
        self.saved = SavedActivations()

    def _batches(self) -> Any:
        epoch = 0
        while True:
            if self.engine is not None:
                self.engine.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    @property
    def done(self) -> bool:
        return self.real >= self.target

    def advance(self, steps: int) -> None:
        """Train up to ``steps`` optimizer steps (fewer when the real-token target is reached)."""
        for _ in range(steps):
            if self.done:
                return
            batch = next(self.batches)
            start = time.perf_counter()
            with self.saved.step():
                loss, n = token_loss_sum(self.model, batch)
            self.saved.close_step()
            (loss / n).backward()
            if self.engine is not None:
                with self.engine.scaled_lr(self.optimizer, self.steps):
                    self.optimizer.step()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.elapsed += time.perf_counter() - start
            self.real += int(batch["attention_mask"].sum())
            self.computed += int(batch["attention_mask"].numel())
            self.largest = max(self.largest, int(batch["attention_mask"].numel()))
            self.steps += 1

    def result(self, valid: list[list[int]]) -> dict:
        return {
            "arm": self.arm,
            "seed": self.seed,
            "steps": self.steps,
            "real_tokens": self.real,
            "real_tokens_per_s": self.real / self.elapsed,
            "padding_fraction": 1 - self.real / self.computed,
            "largest_micro_batch_tokens": self.largest,
            "peak_activation_mb": self.saved.peak / 2**20,
            "valid_loss": validation_loss(self.model, valid),
        }


def run_seed(train: datasets.Dataset, valid: list[list[int]], args, max_tokens: int, seed: int) -> list[dict]:
    """Every arm of ``args.arms`` for ``seed``, interleaved ``--interleave`` steps at a time."""
    runs = [ArmRun(arm, train, args, max_tokens, seed) for arm in args.arms]
    while not all(r.done for r in runs):
        for r in runs:
            r.advance(args.interleave)
    return [r.result(valid) for r in runs]


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in ("bbc", "ptb") if args.data == "both" else (args.data,):
        train_rows, valid_rows = compact(*load_rows(name, args), args.vocab)
        train = datasets.Dataset.from_dict({"input_ids": train_rows, "seqlen": [len(r) for r in train_rows]})
        mean_len = float(np.mean(train["seqlen"]))
        max_tokens = args.max_tokens or max(
            int(max(train["seqlen"])), int(args.budget_batches * args.batch_size * mean_len)
        )
        print(
            f"# {name}: {len(train)} samples, lengths {min(train['seqlen'])}..{max(train['seqlen'])} "
            f"(mean {mean_len:.0f}), max_tokens {max_tokens}",
            flush=True,
        )
        for seed in args.seeds:
            for result in run_seed(train, valid_rows, args, max_tokens, seed):
                row = {"data": name, **result}
                print(json.dumps(row), flush=True)
                results.append(row)
    print(
        "\n| data | arm | seeds | real tokens/s | padding | largest micro-batch (tokens) | peak activations (MB) "
        "| valid loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["data"] for r in results):
        for arm in args.arms:
            rows = [r for r in results if r["data"] == name and r["arm"] == arm]
            loss = [r["valid_loss"] for r in rows]
            spread = f" ± {np.std(loss):.3f}" if len(loss) > 1 else ""
            print(
                f"| {name} | {arm} | {len(rows)} | {np.mean([r['real_tokens_per_s'] for r in rows]):,.0f} | "
                f"{np.mean([r['padding_fraction'] for r in rows]):.1%} | "
                f"{max(r['largest_micro_batch_tokens'] for r in rows):,} | "
                f"{max(r['peak_activation_mb'] for r in rows):,.1f} | {np.mean(loss):.3f}{spread} |"
            )
    return results


if __name__ == "__main__":
    main()
