"""Train the tiny GPT-2 with DataEfficiencyGRPOTrainer (prompt curriculum + pass rates) and write what this rank
generated for to ``--record`` (RANK in the path is replaced by the process index).

Launched by tests/test_trl.py under ``python -m torch.distributed.run --nproc_per_node 2`` (DDP on gloo, CPU):
2 completions per device and 3 steps per generation (GA 3), so a group of 4 completions is split over the processes.
"""

from __future__ import annotations

import argparse

from tiny import dump, step_losses
from trl_tiny import TOKENIZER, RecordingGRPO, addition_prompts, digit_reward, grpo_kwargs, tiny_lm

from hf_data_efficiency.integrations.trl import DataEfficiencyGRPOConfig

CURRICULUM = {
    "curriculum_metrics": ["difficulty"],
    "curriculum_min_difficulty": [3],
    "curriculum_max_difficulty": [6],
    "curriculum_total_curriculum_step": [4],
    "curriculum_difficulty_step": [1],
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", required=True)
    p.add_argument("--record", required=True)
    a = p.parse_args()
    args = DataEfficiencyGRPOConfig(
        **grpo_kwargs(a.output_dir, per_device_train_batch_size=2, gradient_accumulation_steps=3, max_steps=5),
        **CURRICULUM,
        pass_rate_curriculum=True,
        pass_rate_threshold=1.5,
    )
    trainer = RecordingGRPO(
        model=tiny_lm(),
        reward_funcs=digit_reward,
        args=args,
        train_dataset=addition_prompts(),
        processing_class=TOKENIZER,
    )
    trainer.train()
    dump(
        a.record.replace("RANK", str(args.process_index)),
        {
            "rank": args.process_index,
            "world_size": args.world_size,
            "lag": trainer.pass_rate_lag,
            "generations": trainer.generations,
            "batches": trainer.batches,
            "pass_rates": trainer.pass_rates.state_dict(),
            "losses": step_losses(trainer.state.log_history),
        },
    )
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # gloo threads left running abort the process at interpreter exit


if __name__ == "__main__":
    main()
