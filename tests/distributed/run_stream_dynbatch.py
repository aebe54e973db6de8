"""One process of the two-process streaming dynamic-batching test: reads its shard through the token-budget streaming
curriculum (gloo) and writes its micro-batches (ids), the logs of every step and its counters to
``OUT/rank<r>.json``. Usage: run_stream_dynbatch.py OUT FILE..."""

import json
import os
import sys

import datasets
import torch.distributed as dist
from run_stream import stream_config

from hf_data_efficiency.batching.stream import StreamingTokenBudget
from hf_data_efficiency.config import DynamicBatchingConfig

BUDGET = DynamicBatchingConfig(max_tokens=100, lr_scaling_method="sqrt")


def main() -> None:
    out, files = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    source = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    stream = StreamingTokenBudget(
        source, stream_config(), BUDGET, batch_size=4, world_size=world, gradient_accumulation_steps=2, rank=rank
    )
    batches, stats = [], []
    for mb in stream:
        batches.append([sample["id"] for sample in mb])
        if len(batches) % 2 == 1:  # the first micro-batch of a step: the step is formed, its stats known
            stats.append(stream.selection.step_stats(len(batches) // 2 + 1))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"batches": batches, "steps": len(stats), "stats": stats}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
