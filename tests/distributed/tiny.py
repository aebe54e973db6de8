"""Tiny GPT-2, synthetic token data and a recording trainer shared by the trainer tests and the scripts they launch.

Every sample's first two tokens encode its index, so any batch can be mapped back to dataset indices after
collation, truncation and DataLoader workers, without extra columns.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from hf_data_efficiency import DataEfficiencyTrainer

VOCAB = 128
PAD = 0
BASE = 2  # ids 0 (pad) and 1 (bos/eos) never appear in the data
RADIX = VOCAB - BASE
N_SAMPLES = 96
MIN_LEN, MAX_LEN = 6, 40

# curriculum: samples of length <= difficulty(k); rows truncated to max_tokens(k); random-LTD on layer 1 of 3
CURRICULUM_FLAGS = {
    "curriculum_metrics": ["seqlen"],
    "curriculum_min_difficulty": [12],
    "curriculum_max_difficulty": [40],
    "curriculum_total_curriculum_step": [6],
    "curriculum_difficulty_step": [4],
    "seqlen_curriculum": "truncate",
    "seqlen_curriculum_min_difficulty": 8,
    "seqlen_curriculum_max_difficulty": 40,
    "seqlen_curriculum_total_curriculum_step": 6,
    "seqlen_curriculum_difficulty_step": 8,
}
RANDOM_LTD_FLAGS = {
    "random_ltd": True,
    "random_ltd_min_value": 8,
    "random_ltd_max_value": 40,
    "random_ltd_require_steps": 8,
    "random_ltd_seq_per_step": 8,
}
SEQLEN_METRIC = {
    "min_difficulty": 12,
    "max_difficulty": 40,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 6, "difficulty_step": 4},
}
TRUNCATE_METRIC = {
    "min_difficulty": 8,
    "max_difficulty": 40,
    "schedule_type": "fixed_linear",
    "schedule_config": {"total_curriculum_step": 6, "difficulty_step": 8},
}
RANDOM_LTD_SECTION = {
    "enabled": True,
    "random_ltd_schedule": {
        "min_value": 8,
        "max_value": 40,
        "schedule_type": "fixed_linear",
        "schedule_config": {"require_steps": 8, "seq_per_step": 8},
    },
}


def deepspeed_block(seed: int = 42, layer_token_lr: bool = False) -> dict[str, Any]:
    """The DeepSpeed ``data_efficiency`` block equivalent to CURRICULUM_FLAGS + RANDOM_LTD_FLAGS (and
    ``--layer_token_lr_schedule``)."""
    random_ltd = (
        {**RANDOM_LTD_SECTION, "layer_token_lr_schedule": {"enabled": True}} if layer_token_lr else RANDOM_LTD_SECTION
    )
    return {
        "enabled": True,
        "seed": seed,
        "data_sampling": {
            "enabled": True,
            "curriculum_learning": {
                "enabled": True,
                "curriculum_metrics": {"seqlen": SEQLEN_METRIC, "seqlen_truncate": TRUNCATE_METRIC},
            },
        },
        "data_routing": {"enabled": True, "random_ltd": random_ltd},
    }


def sample_lengths(n: int = N_SAMPLES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(MIN_LEN, MAX_LEN + 1, size=n)


def make_dataset(n: int = N_SAMPLES, seed: int = 0) -> Dataset:
    """Token rows of varied lengths; row i starts with the two tokens that encode i."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i, length in enumerate(sample_lengths(n, seed)):
        body = rng.integers(BASE, VOCAB, size=int(length) - 2).tolist()
        rows.append([BASE + i // RADIX, BASE + i % RADIX, *body])
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})


def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; labels are the inputs with -100 on padding."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        ids[row, : len(f["input_ids"])] = torch.as_tensor(f["input_ids"])
        mask[row, : len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def decode_indices(input_ids: torch.Tensor) -> list[int]:
    return ((input_ids[:, 0] - BASE) * RADIX + (input_ids[:, 1] - BASE)).tolist()


def tiny_model(seed: int = 0, dropout: float = 0.1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        n_layer=3,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=PAD,
    )
    return GPT2LMHeadModel(config)


class RecordingTrainer(DataEfficiencyTrainer):
    """Records, for every micro-batch, its optimizer step, sample indices, width, kept length and the
    ``num_items_in_batch`` the Trainer computed for that step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        handle = self.random_ltd_handle
        self.records.append(
            {
                "step": self.state.global_step + 1,
                "indices": decode_indices(inputs["input_ids"]),
                "width": int(inputs["input_ids"].shape[1]),
                "shifted_labels": int((inputs["labels"][:, 1:] != -100).sum()),
                "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
                "kept_length": None if handle is None else handle.kept_length,
            }
        )
        return super().training_step(model, inputs, num_items_in_batch)


def step_losses(log_history: list[dict[str, Any]]) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in log_history if "loss" in h}


def dump(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)
