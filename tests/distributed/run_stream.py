"""One process of the two-process streaming test: reads its shard through the streaming curriculum (gloo) and writes
the ids it served, its step count and counters to ``OUT/rank<r>.json``. Usage: run_stream.py OUT FILE..."""

import json
import os
import sys

import datasets
import torch.distributed as dist

from hf_data_efficiency.config import CurriculumConfig, CurriculumMetricConfig, StreamingConfig
from hf_data_efficiency.curriculum.streaming import StreamingCurriculum
from hf_data_efficiency.curriculum.transforms import POSITION_KEY


def stream_config() -> CurriculumConfig:
    return CurriculumConfig(
        sampling_metrics=[
            CurriculumMetricConfig(
                name="seqlen",
                min_difficulty=12,
                max_difficulty=40,
                schedule_config={"total_curriculum_step": 8, "difficulty_step": 4},
            )
        ],
        streaming=StreamingConfig(buffer_size=32, chunk_size=8),
    )


def main() -> None:
    out, files = sys.argv[1], sys.argv[2:]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    source = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    cfg = stream_config()
    stream = StreamingCurriculum(source, cfg, batch_size=4, world_size=world, gradient_accumulation_steps=2, rank=rank)
    ids, steps = [], set()
    for sample in stream:
        ids.append(sample["id"])
        steps.add(sample[POSITION_KEY] // stream.global_batch_size + 1)
    c = stream.counters
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"ids": ids, "steps": len(steps), "read": c.read, "dropped": c.dropped, "excluded": c.excluded}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
