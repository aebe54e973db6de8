#!/usr/bin/env python
"""Curriculum learning and random-LTD in a plain ``accelerate`` training loop, without ``transformers.Trainer``.

The same :class:`~hf_data_efficiency.DataEfficiencyEngine` the Trainer uses wires everything::

    engine = DataEfficiencyEngine(cfg, batch_size=..., world_size=..., gradient_accumulation_steps=...)
    plan = engine.train_loader(data, rank=..., device=...)   # map-style/stream x fixed batches/token budget
    loader = plan.dataloader(engine.wrap_collator(collate))  # accelerator.prepare it unless plan.per_process
    engine.attach(model)                      # random-LTD patches the layers in place
    engine.begin_step(step)                   # before each optimizer step: the kept length
    engine.count_batch(batch)                 # per micro-batch: the counters
    engine.step_logs(step, accelerator.reduce)  # per step: difficulty, kept length, counters
    save_checkpoint(..., write=lambda d: (accelerator.save_state(d), engine.save_state(d, step)))
    engine.resume_position(step, len(loader))     # resume: the epoch to set and the micro-batches to skip

With dynamic (token-budget) batching or a batch-size warmup the plan's loader has a batch sampler that sizes every
step, each optimizer step runs inside ``engine.scaled_lr(optimizer, step)`` (the step's LR factor), and the loss of a
step is the sum over its real label tokens divided by their count over every micro-batch and process.

With group mixing (``mixing.column: domain``: the synthetic rows carry a ``domain`` column, ``a`` or ``b``) the plan
draws each step group by group; with online mixing each micro-batch's groups are taken out of the batch before the
forward (``engine.pop_groups``), its per-group losses recorded (``engine.observe_losses``), and the weights updated
after every optimizer step (``engine.end_step``, one reduction).

With ``--streaming`` the data is read as a ``datasets.IterableDataset`` (4 shards) through the streaming curriculum
(each process reads its own shards, one pass; ``plan.per_process``); with dynamic batching too, the stream yields
whole token-budget micro-batches, which the plan's loader collates whole.

Examples::

    python scripts/examples/train_no_trainer.py --config ds_config.json --output_dir out/no_trainer --save_steps 10
    python scripts/examples/train_no_trainer.py --config ds_config.json --output_dir out/no_trainer --resume_from_checkpoint latest
    accelerate launch --num_processes 2 scripts/examples/train_no_trainer.py --config ds_config.json --dataset ptb

``--config`` is a data-efficiency config: our JSON/YAML layout, a DeepSpeed ds_config (its ``data_efficiency``
block is read) or a directory holding ``data_efficiency_config.json``. ``--dataset synthetic`` (default) trains
on random token rows of varied length, ``--dataset ptb`` on Penn Treebank lines with the GPT-2 BPE (offline).
Every optimizer step appends one JSON line to ``<output_dir>/metrics.jsonl``. Checkpoints are written atomically
(``.checkpoint-N.partial`` renamed to ``checkpoint-N`` once complete), so ``--resume_from_checkpoint latest``
always finds a complete one, even after the process was killed mid-save.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, get_scheduler, set_seed

from hf_data_efficiency import DataEfficiencyEngine, resolve_resume_checkpoint, save_checkpoint


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
    p.add_argument("--dropout", type=float, default=0.1, help="GPT-2's residual, embedding and attention dropout")
    p.add_argument("--per_device_batch_size", type=int, default=8)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--warmup_steps", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--save_steps", type=int, default=0, help="save a checkpoint every N optimizer steps (0: never)")
    p.add_argument(
        "--resume_from_checkpoint", default=None, help="a checkpoint directory, or 'latest' (newest complete one)"
    )
    p.add_argument(
        "--streaming", action="store_true", help="read the data as a stream through the streaming curriculum"
    )
    p.add_argument("--cpu", action="store_true", help="force CPU")
    return p.parse_args(argv)


def build_dataset(args: argparse.Namespace) -> tuple[datasets.Dataset, int, int]:
    """(token dataset with input_ids/attention_mask, vocab size, pad id)."""
    if args.dataset == "synthetic":
        rng = np.random.default_rng(args.seed)
        vocab = 128
        lengths = rng.integers(4, args.max_length + 1, size=args.num_samples)
        rows = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
        domains = ["a" if d else "b" for d in rng.integers(0, 2, size=args.num_samples)]
        data = datasets.Dataset.from_dict(
            {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows], "domain": domains}
        )
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
    data, vocab, pad_id = build_dataset(args)
    ga, bs = args.gradient_accumulation_steps, args.per_device_batch_size
    engine = DataEfficiencyEngine(
        args.config,
        batch_size=bs,
        world_size=accelerator.num_processes,
        gradient_accumulation_steps=ga,
        pad_token_id=pad_id,
    )

    # ----- data: the engine decides the path (map-style or stream x fixed batches, token budget or warmup; mixing);
    # or plain shuffling
    collate = engine.wrap_collator(make_collator(pad_id))
    shuffle = torch.Generator()
    # a batch sampler sizes each step (token budget or warmup): the LR factor, and the loss over the step's tokens
    dynamic = engine.config.dynamic_batching is not None or engine.config.batch_size_warmup is not None
    plan = None
    if engine.uses_data_path:
        if args.streaming:  # 4 shards; each process reads its own
            data = data.to_iterable_dataset(num_shards=4)
        plan = engine.train_loader(
            data,
            rank=accelerator.process_index,
            device=accelerator.device,
            main_process_first=accelerator.main_process_first,
        )
        loader = plan.dataloader(collate, num_workers=args.num_workers)
    elif args.streaming:
        raise ValueError(
            "--streaming needs a curriculum or group mixing in --config (the streaming curriculum reads the stream)."
        )
    else:
        loader = DataLoader(
            data, batch_size=bs, shuffle=True, generator=shuffle, collate_fn=collate, num_workers=args.num_workers
        )
    per_process = plan is not None and plan.per_process  # a stream: accelerate neither shards nor dispatches it

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
            resid_pdrop=args.dropout,
            embd_pdrop=args.dropout,
            attn_pdrop=args.dropout,
        )
    )
    engine.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    scheduler = engine.layer_token_lr_scheduler(
        optimizer, args.max_steps, args.warmup_steps, "linear"
    ) or get_scheduler("linear", optimizer, args.warmup_steps, args.max_steps)
    if per_process:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    else:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    # ----- resume: the stream and counters through the engine; model/optimizer/scheduler/RNG through accelerate
    step = 0
    resume = True if args.resume_from_checkpoint == "latest" else args.resume_from_checkpoint
    checkpoint = resolve_resume_checkpoint(resume, args.output_dir, trainer=False)
    if checkpoint is not None:
        state = engine.read_state(checkpoint)
        engine.load_state_dict(state)  # counters, kept length, and a check that the stream is the same
        step = state["global_step"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    else:
        engine.reset()

    # ----- loop: set the kept length before each optimizer step's first forward
    os.makedirs(args.output_dir, exist_ok=True)
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    if accelerator.is_main_process:  # a resumed run keeps the rows up to its checkpoint
        rows = (
            open(metrics_path).read().splitlines() if checkpoint is not None and os.path.exists(metrics_path) else []
        )
        with open(metrics_path, "w") as f:
            f.writelines(r + "\n" for r in rows if json.loads(r)["step"] <= step)
    history: list[dict[str, Any]] = []
    micro, loss_sum, widths, longest, label_tokens = 0, 0.0, [], 0, 0
    # a resumed stream continues from its restored state: nothing to skip
    epoch, skip = (0, 0) if per_process else engine.resume_position(step, len(loader))
    while step < args.max_steps:
        # the epoch positions the curriculum stream (or seeds the shuffling); a resumed epoch skips its consumed
        # micro-batches, as the Trainer does
        shuffle.manual_seed(args.seed + epoch)
        if not per_process:
            loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for batch in batches:
            if per_process:
                batch = send_to_device(batch, accelerator.device)
            if checkpoint is not None:
                # after the loader's iterator exists (creating it draws from the torch RNG), as the Trainer does, so
                # random-LTD's subsets and dropout continue exactly as in an uninterrupted run
                accelerator.load_state(checkpoint)
                checkpoint = None
            if micro % ga == 0:
                engine.begin_step(step)
            micro += 1
            engine.count_batch(batch)
            widths.append(int(batch["input_ids"].shape[1]))
            longest = max(longest, int(batch["attention_mask"].sum(1).max()))
            groups = engine.pop_groups(batch)  # online mixing: each row's group, not a model input
            with accelerator.accumulate(model):
                if dynamic:  # the summed token loss; divided by the step's label-token count before the update
                    out = model(**batch, num_items_in_batch=1)
                    label_tokens += int((batch["labels"][:, 1:] != -100).sum())
                    loss_sum += out.loss.detach().float().item()
                else:
                    out = model(**batch)
                    loss_sum += out.loss.detach().float().item() / ga
                engine.observe_losses(groups, out.logits, batch["labels"], causal=True)
                loss = out.loss
                accelerator.backward(loss)
                if dynamic and accelerator.sync_gradients:
                    # the gradients hold the step's sum / (GA x processes) here (accelerate and DDP average)
                    totals = torch.tensor([label_tokens, loss_sum], dtype=torch.float64, device=accelerator.device)
                    label_tokens, loss_sum = (float(v) for v in accelerator.reduce(totals))
                    for p in model.parameters():
                        if p.grad is not None:
                            p.grad.mul_(ga * accelerator.num_processes / label_tokens)
                    loss_sum, label_tokens = loss_sum / label_tokens, 0
                with engine.scaled_lr(optimizer, step) if dynamic else contextlib.nullcontext():
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            step += 1
            engine.end_step(step, accelerator.reduce, accelerator.device)  # online mixing: the weights after step
            row: dict[str, Any] = {"step": step, "loss": loss_sum, "lr": scheduler.get_last_lr()[0]}
            row["max_width"], row["max_real_tokens"] = max(widths), longest
            row.update(engine.step_logs(step, accelerator.reduce, accelerator.device))
            history.append(row)
            if accelerator.is_main_process:
                print(json.dumps(row), flush=True)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            loss_sum, widths, longest = 0.0, [], 0
            if args.save_steps and step % args.save_steps == 0:

                def write(folder: str, step: int = step) -> None:
                    accelerator.save_state(folder)
                    engine.save_state(folder, step)

                save_checkpoint(
                    args.output_dir,
                    step,
                    write,
                    is_main_process=accelerator.is_main_process,
                    wait_for_everyone=accelerator.wait_for_everyone,
                )
            if step >= args.max_steps:
                break
        if per_process:  # a stream is read once
            break
        epoch += 1

    if accelerator.is_main_process:
        # the patch lives on layer instances only, so the saved model is plain transformers
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        engine.config.save_pretrained(args.output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # destroys the process group, so no gloo thread outlives the script
    return history


if __name__ == "__main__":
    main()
