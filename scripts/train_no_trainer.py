#!/usr/bin/env python
"""Curriculum learning and random-LTD in a plain ``accelerate`` training loop, without ``transformers.Trainer``.

The same parts the Trainer uses, wired by hand::

    compute_metrics -> CurriculumSampler -> (CurriculumDataset + SeqlenTransform) -> DataLoader
    -> accelerator.prepare; apply_random_ltd(model) and handle.update(step) before every optimizer step.

Examples::

    python scripts/train_no_trainer.py --config ds_config.json --output_dir out/no_trainer
    accelerate launch --num_processes 2 scripts/train_no_trainer.py --config ds_config.json --dataset ptb

``--config`` is a data-efficiency config: our JSON/YAML layout, a DeepSpeed ds_config (its ``data_efficiency``
block is read) or a directory holding ``data_efficiency_config.json``. ``--dataset synthetic`` (default) trains
on random token rows of varied length, ``--dataset ptb`` on Penn Treebank lines with the GPT-2 BPE (offline).
Every optimizer step appends one JSON line to ``<output_dir>/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, get_scheduler, set_seed

from hf_data_efficiency import (
    CurriculumSampler,
    DataEfficiencyConfig,
    SeqlenTransform,
    apply_random_ltd,
    compute_metrics,
    get_layer_token_lr_scheduler,
)
from hf_data_efficiency.curriculum.transforms import CurriculumDataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="data-efficiency config (ours, a DeepSpeed ds_config, or a dir)")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--dataset", choices=("synthetic", "ptb"), default="synthetic")
    p.add_argument("--num_samples", type=int, default=512, help="synthetic rows / PTB lines used")
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--n_head", type=int, default=2)
    p.add_argument("--per_device_batch_size", type=int, default=8)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cpu", action="store_true", help="force CPU")
    return p.parse_args(argv)


def build_dataset(args: argparse.Namespace) -> tuple[datasets.Dataset, int, int]:
    """(token dataset with input_ids/attention_mask, vocab size, pad id)."""
    if args.dataset == "synthetic":
        rng = np.random.default_rng(args.seed)
        vocab = 128
        lengths = rng.integers(4, args.max_length + 1, size=args.num_samples)
        rows = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
        data = datasets.Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
        return data, vocab, 0
    from offline_data import gpt2_tokenizer, load_ptb

    tok = gpt2_tokenizer()
    text = load_ptb("train").select(range(min(args.num_samples, 42068)))
    data = text.map(
        lambda b: tok(b["text"], truncation=True, max_length=args.max_length),
        batched=True,
        remove_columns=["text"],
        desc="Tokenizing",
    )
    return data, len(tok), tok.pad_token_id


def make_collator(pad_id: int):
    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            ids[row, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"])
            mask[row, : len(f["input_ids"])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    return collate


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, cpu=args.cpu)
    set_seed(args.seed)
    cfg = DataEfficiencyConfig.from_pretrained(args.config) if args.config else DataEfficiencyConfig()
    data, vocab, pad_id = build_dataset(args)
    collate = make_collator(pad_id)
    world, ga, bs = accelerator.num_processes, args.gradient_accumulation_steps, args.per_device_batch_size
    global_batch = bs * world * ga

    # ----- data: metrics -> sampler -> dataset/collator wrappers -> DataLoader
    sampler = None
    if cfg.curriculum is not None:
        names = [m.name for m in cfg.curriculum.sampling_metrics]
        missing = [n for n in names if n not in data.column_names]
        if missing:
            with accelerator.main_process_first():
                data = compute_metrics(data, missing, pad_token_id=pad_id)
        transform = cfg.curriculum.transform
        sampler = CurriculumSampler(
            data,
            cfg.curriculum,
            batch_size=bs,
            world_size=world,
            gradient_accumulation_steps=ga,
            return_max_tokens=transform is not None,
        )
        train_data: Any = data.remove_columns(missing)
        if transform is not None:
            train_data = CurriculumDataset(train_data)
            collate = SeqlenTransform(transform.name, collate, pad_token_id=pad_id)
        loader = DataLoader(
            train_data, batch_size=bs, sampler=sampler, collate_fn=collate, num_workers=args.num_workers
        )
    else:
        loader = DataLoader(data, batch_size=bs, shuffle=True, collate_fn=collate, num_workers=args.num_workers)

    # ----- model: random-LTD patches the layers in place
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=args.n_layer,
            n_embd=args.n_embd,
            n_head=args.n_head,
            vocab_size=vocab,
            n_positions=args.max_length,
            bos_token_id=pad_id,
            eos_token_id=pad_id,
            pad_token_id=pad_id,
        )
    )
    handle = apply_random_ltd(model, cfg.random_ltd, global_batch_size=global_batch) if cfg.random_ltd else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    lr_cfg = cfg.random_ltd.layer_token_lr_schedule if cfg.random_ltd else None
    if lr_cfg is not None and lr_cfg.enabled:
        scheduler = get_layer_token_lr_scheduler(
            optimizer,
            handle.scheduler,
            total_layer_tokens=lr_cfg.total_layer_tokens,
            warmup_layer_tokens=lr_cfg.warmup_layer_tokens or handle.scheduler.total_layer_tokens(args.warmup_steps),
            warmup_type=lr_cfg.warmup_type,
            num_training_steps=args.max_steps,
        )
    else:
        scheduler = get_scheduler("linear", optimizer, args.warmup_steps, args.max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # ----- loop: set the kept length before each optimizer step's first forward
    os.makedirs(args.output_dir, exist_ok=True)
    history: list[dict[str, Any]] = []
    step, micro, loss_sum, widths, longest = 0, 0, 0.0, [], 0
    for epoch in range(math.ceil(args.max_steps / max(1, len(loader) // ga)) + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for batch in loader:
            if micro % ga == 0 and handle is not None:
                handle.update(step)
            micro += 1
            widths.append(int(batch["input_ids"].shape[1]))
            longest = max(longest, int(batch["attention_mask"].sum(1).max()))
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().float().item() / ga
            if not accelerator.sync_gradients:
                continue
            step += 1
            row: dict[str, Any] = {"step": step, "loss": loss_sum, "lr": scheduler.get_last_lr()[0]}
            row["max_width"], row["max_real_tokens"] = max(widths), longest
            if sampler is not None:
                row.update({f"difficulty_{k}": float(v) for k, v in sampler.difficulty_at(step).items()})
            if handle is not None:
                row["kept_length"] = handle.kept_length
            history.append(row)
            if accelerator.is_main_process:
                print(json.dumps(row), flush=True)
            loss_sum, widths, longest = 0.0, [], 0
            if step >= args.max_steps:
                break
        if step >= args.max_steps:
            break

    if accelerator.is_main_process:
        with open(os.path.join(args.output_dir, "metrics.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
        # the patch lives on layer instances only, so the saved model is plain transformers
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        cfg.save_pretrained(args.output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group, so no gloo thread outlives the script
    return history


if __name__ == "__main__":
    main()
