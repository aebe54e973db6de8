"""Tiny GPT-2, a character tokenizer, addition prompts and recording trl trainers for the trl integration tests and
the two-process GRPO script they launch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from datasets import Dataset
from offline_data import char_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from hf_data_efficiency.integrations.trl import DataEfficiencyGRPOTrainer, DataEfficiencySFTTrainer

TOKENIZER = char_tokenizer()


def tiny_lm(seed: int = 0, n_layer: int = 3, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=32,
        n_head=2,
        vocab_size=len(TOKENIZER),
        n_positions=64,
        bos_token_id=TOKENIZER.eos_token_id,
        eos_token_id=TOKENIZER.eos_token_id,
        pad_token_id=TOKENIZER.pad_token_id,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config)


def addition_prompts(n: int = 48) -> Dataset:
    """``a+b=`` prompts (distinct), their answer, a ``difficulty`` column (the number of digits in ``a`` and ``b``
    plus ``a + b`` mod 3: an arbitrary integer column for the curriculum) and ``passes`` (how many of a group's
    completions :func:`scripted_reward` passes: 0 to 4, by prompt)."""
    rows = []
    for i in range(n):
        a, b = divmod(i * 7 + 3, 13)
        rows.append(
            {
                "prompt": f"{a}+{b}=",
                "answer": str(a + b),
                "difficulty": len(str(a)) + len(str(b)) + (a + b) % 3,
                "passes": i % 5,
            }
        )
    return Dataset.from_list(rows)


def addition_completions(n: int = 64, seed: int = 0) -> Dataset:
    """Prompt-completion rows ``a+b=`` / ``a + b`` with 1- to 3-digit numbers, so rows are 4 to 12 characters long."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a, b = (int(rng.integers(0, 10 ** int(rng.integers(1, 4)))) for _ in range(2))
        rows.append({"prompt": f"{a}+{b}=", "completion": str(a + b)})
    return Dataset.from_list(rows)


def digit_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """The number of digits among the first three characters: varies across completions, so advantages are non-zero."""
    return [float(sum(ch.isdigit() for ch in c[:3])) for c in completions]


def scripted_reward(prompts: list[str], completions: list[str], passes: list[int], **kwargs: Any) -> list[float]:
    """1 for the first ``passes`` completions of each prompt in this call, else 0: a group of one process passes
    exactly ``passes`` of its completions, whatever was generated."""
    seen: dict[str, int] = {}
    out = []
    for prompt, count in zip(prompts, passes):
        seen[prompt] = seen.get(prompt, 0) + 1
        out.append(1.0 if seen[prompt] <= count else 0.0)
    return out


class RecordingMixin:
    """Records every training generation batch as it reaches ``_generate_and_score_completions`` (the optimizer step
    it is generated in, as the Trainer's state says, and its prompt texts) and every ``_prepare_inputs`` batch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.generations: list[dict[str, Any]] = []
        self.batches: list[list[str]] = []

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        if self.model.training:
            self.batches.append([row["prompt"] for row in generation_batch])
        return super()._prepare_inputs(generation_batch)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
        if self.model.training:
            self.generations.append({"step": self.state.global_step + 1, "prompts": [row["prompt"] for row in inputs]})
        return super()._generate_and_score_completions(inputs)


class RecordingGRPO(RecordingMixin, DataEfficiencyGRPOTrainer):
    pass


class RecordingSFT(DataEfficiencySFTTrainer):
    """Records every training micro-batch (its tensors) and its ``num_items_in_batch``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.records.append(
            {
                "step": self.state.global_step + 1,
                **{
                    k: inputs[k].detach().cpu().clone()
                    for k in ("input_ids", "labels", "attention_mask", "position_ids")
                    if k in inputs
                },
                "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
            }
        )
        return super().training_step(model, inputs, num_items_in_batch)


def _cpu_kwargs(out_dir: Any, **kwargs: Any) -> dict[str, Any]:
    """trl config keywords every tiny CPU run shares (a log every step, no saves, fp32), with ``kwargs`` on top."""
    base = dict(
        output_dir=str(out_dir),
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    return {**base, **kwargs}


def grpo_kwargs(out_dir: Any, **overrides: Any) -> dict[str, Any]:
    """``GRPOConfig`` keywords of a tiny CPU run: 4 completions per prompt, 8 per device, GA 2, 3-token completions."""
    return _cpu_kwargs(
        out_dir,
        **{
            "per_device_train_batch_size": 8,
            "gradient_accumulation_steps": 2,
            "num_generations": 4,
            "max_completion_length": 3,
            "max_steps": 4,
            "learning_rate": 1e-2,
            "seed": 7,
            **overrides,
        },
    )


def sft_kwargs(out_dir: Any, **overrides: Any) -> dict[str, Any]:
    """``SFTConfig`` keywords of a tiny CPU run: 4 rows x GA 2, 6 steps, a log every step, no saves."""
    return _cpu_kwargs(
        out_dir,
        **{
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2,
            "max_steps": 6,
            "learning_rate": 1e-3,
            "seed": 42,
            **overrides,
        },
    )
