"""Two-process DDP check of random-LTD on packed rows (the GPU check's multi-GPU part; gloo on CPU for its dry run).

Each rank trains a GPT-2 on its own packed rows of BBC News lengths (``document_lengths.json``) with random-LTD on
the middle layers, under ``DistributedDataParallel``. Printed: per-rank real tokens/s and whether the ranks hold the
same parameters after the steps (DDP synced every gradient although each rank dropped different tokens).

Run: ``torchrun --nproc_per_node 2 scripts/benchmarks/ddp_check.py`` (add ``--cpu`` for gloo on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_packed import build_model, document_lengths, make_batches  # noqa: E402

import hf_data_efficiency as hfde  # noqa: E402
from hf_data_efficiency.config import RandomLTDConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="gloo on CPU, fp32 (the dry run)")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--docs-per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    dist.init_process_group("gloo" if args.cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cpu" if args.cpu else f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    if not args.cpu:
        torch.cuda.set_device(device)
    dtype = torch.float32 if args.cpu else torch.bfloat16
    model = build_model(args.layers, args.d_model, args.vocab, args.max_len, "sdpa", device, dtype)
    layers = list(range(1, args.layers - 1))
    handle = hfde.apply_random_ltd(model, RandomLTDConfig(min_value=16, max_value=args.max_len, require_steps=1))
    handle.kept_length = args.max_len // 4
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    lengths = document_lengths("bbc", args.docs_per_step * args.steps * world, args.max_len, 0, saved=True)
    mine = lengths[rank::world]
    batches = make_batches(mine, args.docs_per_step, args.vocab, device)["packed"]
    torch.manual_seed(rank)  # the ranks drop different tokens
    tokens, start = 0, None
    for step, batch in enumerate(batches):
        if step == 1:  # the first step warms up
            if not args.cpu:
                torch.cuda.synchronize()
            start, tokens = time.perf_counter(), 0
        ddp(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += batch["input_ids"].numel()
    if not args.cpu:
        torch.cuda.synchronize()
    rate = tokens / (time.perf_counter() - start)
    checksum = torch.stack([p.float().sum() for p in model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(sums, checksum)
    if rank == 0:
        print(f"random-LTD on layers {layers[0]}..{layers[-1]}, kept {handle.kept_length}, {world} processes")
    print(f"rank {rank}: {rate:.0f} real tokens/s; parameters equal across ranks: {bool(torch.allclose(*sums[:2]))}")
    handle.remove()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
