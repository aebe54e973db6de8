#!/usr/bin/env python
"""trl's SFT and GRPO with data efficiency, on arithmetic generated in code: a tiny GPT-2 on a character tokenizer.

Nothing is fetched: the task is ``a+b=`` with ``a, b`` in ``0..operands-1`` and the model starts from random weights
(``sft``) or from an ``sft`` run's output (``grpo --model_name_or_path``). Every flag of
``DataEfficiencySFTConfig``/``DataEfficiencyGRPOConfig`` works (trl's, the data-efficiency ones and, for GRPO, the
pass-rate ones); ``--help`` lists them. Examples::

    python scripts/examples/train_trl.py sft --output_dir outputs/trl_sft --max_steps 1000 --data_efficiency_recipe auto
    python scripts/examples/train_trl.py grpo --model_name_or_path outputs/trl_sft --output_dir outputs/trl_grpo \\
        --max_steps 150 --pass_rate_curriculum
    python scripts/examples/train_trl.py grpo --output_dir outputs/trl_grpo_cl --max_steps 40 \\
        --curriculum_metrics digits --curriculum_min_difficulty 2 --curriculum_max_difficulty 4 \\
        --curriculum_total_curriculum_step 30
    python -m torch.distributed.run --nproc_per_node 2 scripts/examples/train_trl.py grpo --output_dir outputs/g2 \\
        --max_steps 20 --pass_rate_curriculum

The GRPO prompts carry a ``digits`` column (the digits of ``a`` and ``b``), a difficulty for ``--curriculum_metrics``;
the reward is 1 for a completion that is exactly ``a + b``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from transformers import GPT2LMHeadModel, set_seed
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _examples  # noqa: E402
from offline_data import char_tokenizer  # noqa: E402

logger = logging.get_logger(__name__)

MODES = ("sft", "grpo")
#: tiny CPU runs unless flags say otherwise (trl's own defaults turn bf16 and gradient checkpointing on)
TINY_DEFAULTS = {
    "bf16": False,
    "gradient_checkpointing": False,
    "report_to": "none",
    "logging_steps": 10,
    "save_strategy": "no",
    "per_device_train_batch_size": 32,
}
GRPO_DEFAULTS = {
    "num_generations": 8,
    "max_completion_length": 4,
    "learning_rate": 3e-4,
    "per_device_train_batch_size": 64,
}


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A local checkpoint (an sft run's output_dir); default: a fresh tiny GPT-2."}
    )
    n_layer: int = field(default=3, metadata={"help": "Layers of a fresh model."})
    n_embd: int = field(default=64, metadata={"help": "Width of a fresh model."})
    operands: int = field(default=20, metadata={"help": "a and b range over 0..operands-1."})


def problems(operands: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(operands) for b in range(operands)]


def exact_reward(completions: list[str], answer: list[str], **kwargs: Any) -> list[float]:
    """1 for a completion that is exactly the sum, else 0."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def build_model(script: ScriptArguments, tokenizer: Any) -> GPT2LMHeadModel:
    if script.model_name_or_path is not None:
        return GPT2LMHeadModel.from_pretrained(script.model_name_or_path)
    return _examples.char_gpt2(tokenizer, script.n_layer, script.n_embd, 32)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from hf_data_efficiency.integrations.trl import (
        DataEfficiencyGRPOConfig,
        DataEfficiencyGRPOTrainer,
        DataEfficiencySFTConfig,
        DataEfficiencySFTTrainer,
    )

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in MODES:
        raise SystemExit(f"usage: train_trl.py {{{','.join(MODES)}}} [flags]; --help after the mode lists the flags")
    mode, argv = argv[0], argv[1:]
    config_cls = DataEfficiencySFTConfig if mode == "sft" else DataEfficiencyGRPOConfig
    defaults = TINY_DEFAULTS if mode == "sft" else {**TINY_DEFAULTS, **GRPO_DEFAULTS}
    script, args = _examples.parse_args((ScriptArguments, config_cls), argv, defaults=defaults)
    set_seed(args.seed)
    tokenizer = char_tokenizer()
    model = build_model(script, tokenizer)
    pairs = problems(script.operands)
    if mode == "sft":
        data = Dataset.from_list([{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a, b in pairs])
        trainer = DataEfficiencySFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    else:
        rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "digits": len(f"{a}{b}")} for a, b in pairs]
        trainer = DataEfficiencyGRPOTrainer(
            model=model,
            reward_funcs=exact_reward,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    logger.warning(f"{mode}: {len(pairs)} problems, data efficiency: {trainer.data_efficiency_config.to_dict()}")
    result = trainer.train()
    trainer.save_model()
    if args.should_save:
        tokenizer.save_pretrained(args.output_dir)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    summary = {"mode": mode, "train_loss": result.training_loss, "last_log": logs[-1] if logs else {}}
    if mode == "grpo":
        rewards = [h["reward"] for h in logs if "reward" in h]
        summary["reward_first_last"] = [float(np.mean(rewards[:1])), float(np.mean(rewards[-1:]))] if rewards else []
    logger.warning(f"{mode} done: {summary}")
    return summary


if __name__ == "__main__":
    main()
