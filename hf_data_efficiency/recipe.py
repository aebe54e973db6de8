"""Recipes: data-efficiency settings derived from the run (``--data_efficiency_recipe auto|paper``).

A recipe fills every part of the config the user left off (random-LTD, the curriculum) from the model's layer count,
the sequence length and the planned number of optimizer steps; a part the user configured (flags, a config file or a
DeepSpeed block) is kept whole. Every choice is logged, and the result is what
``DataEfficiencyTrainingArguments.get_data_efficiency_config()`` returns afterwards.

* ``auto``: random-LTD on every layer but the first and the last, kept length from a quarter of the sequence in steps
  of ``min(16, seq // 8)``, reaching the full length after 70% of the steps; no curriculum and no LR change. The
  evidence is in ``docs/benchmarks.md``: on PTB and on BBC News (3 seeds, 200 and 400 steps, GPT-2 6x128 and 6x256)
  random-LTD alone reached the baseline's final loss with under half its compute, and no curriculum variant added to
  it did better at equal compute. LR grids found the baseline's best LR best for random-LTD too in three of four
  cases; on BBC News at 6x128 random-LTD preferred half of it (one seed). So the LR is left as given, and an LR
  search is best run with the recipe on.
* ``paper``: the composed GPT-3 1.3B setting of Li et al. (AAAI 2024, DeepSpeed's data-efficiency examples), scaled
  by sequence length and by the run's length (its 300B-token run has about 286k steps of 512 x 2048 tokens):
  random-LTD kept length from 128/2048 of the sequence, full after 200k/286k = 70% of the steps; ``seqlen_truncate``
  from 80/2048 of the sequence in steps of 8 and ``vocab_rarity`` percentile 1 -> 100 (``fixed_root``, degree 2),
  both over 110k/286k = 38.5% of the steps. The paper's LR scaling applies only when data is cut, so the LR is left
  as given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from transformers.utils import logging

from .config import DataEfficiencyConfig

logger = logging.get_logger(__name__)

RECIPES = ("auto", "paper")
_PAPER_SEQ = 2048
_PAPER_STEPS = 286_000


def _round_down(value: float, step: int) -> int:
    return max(step, int(value) // step * step)


def _random_ltd(num_layers: int, seq_len: int, steps: int, start_fraction: float, step_cap: int) -> dict[str, Any]:
    seq_per_step = max(1, min(16, seq_len // step_cap))
    return {
        "min_value": _round_down(seq_len * start_fraction, seq_per_step),
        "max_value": seq_len,
        "seq_per_step": seq_per_step,
        "require_steps": max(1, round(0.7 * steps)),
        "random_ltd_layer_id": list(range(1, num_layers - 1)),
    }


def recipe_sections(name: str, *, num_layers: int, seq_len: int, steps: int) -> dict[str, Any]:
    """The config sections recipe ``name`` chooses for a model of ``num_layers`` random-LTD-capable layers, rows of
    ``seq_len`` tokens and ``steps`` optimizer steps (a ``DataEfficiencyConfig.from_dict`` layout, parts it leaves
    off absent)."""
    if name not in RECIPES:
        raise ValueError(f"data_efficiency_recipe={name!r} is not supported; allowed values: {', '.join(RECIPES)}.")
    sections: dict[str, Any] = {}
    if num_layers >= 3 and seq_len >= 2:
        start_fraction, step_cap = (0.25, 8) if name == "auto" else (128 / _PAPER_SEQ, 16)
        sections["random_ltd"] = _random_ltd(num_layers, seq_len, steps, start_fraction, step_cap)
    if name == "paper":
        total = max(1, round(110_000 / _PAPER_STEPS * steps))
        sections["curriculum"] = {
            "sampling_metrics": [
                {
                    "name": "vocab_rarity",
                    "difficulty_type": "percentile",
                    "clustering_type": "schedule_based",
                    "min_difficulty": 1,
                    "max_difficulty": 100,
                    "schedule_type": "fixed_root",
                    "schedule_config": {"total_curriculum_step": total, "difficulty_step": 1, "root_degree": 2},
                }
            ],
            "transform": {
                "name": "seqlen_truncate",
                "min_difficulty": min(seq_len, _round_down(seq_len * 80 / _PAPER_SEQ, 8)),
                "max_difficulty": seq_len,
                "schedule_type": "fixed_linear",
                "schedule_config": {"total_curriculum_step": total, "difficulty_step": 8},
            },
        }
    return sections


def planned_steps(args: Any, train_dataset: Any) -> int:
    """The optimizer steps the Trainer will run: ``max_steps``, else the epochs over ``train_dataset``."""
    if args.max_steps > 0:
        return int(args.max_steps)
    if not hasattr(train_dataset, "__len__"):
        raise ValueError(
            "data_efficiency_recipe needs the run's length: set max_steps (the training dataset has no length)."
        )
    per_process = args.per_device_train_batch_size * max(1, args.world_size)
    batches = len(train_dataset) // per_process if args.dataloader_drop_last else -(-len(train_dataset) // per_process)
    return max(1, math.ceil(args.num_train_epochs * max(1, batches // args.gradient_accumulation_steps)))


def sequence_length(train_dataset: Any, model: Any) -> int:
    """The longest ``input_ids`` row of a ``datasets.Dataset``, else the model's ``max_position_embeddings``."""
    import datasets
    import pyarrow.compute as pc

    if isinstance(train_dataset, datasets.Dataset) and "input_ids" in train_dataset.column_names:
        column = train_dataset.with_format("arrow")[:]["input_ids"]
        longest = pc.max(pc.list_value_length(column)).as_py()
        if longest:
            return int(longest)
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions:
        return int(positions)
    raise ValueError(
        "data_efficiency_recipe needs the sequence length: the training dataset has no input_ids column and the "
        "model config no max_position_embeddings."
    )


def apply_recipe(
    name: str,
    config: DataEfficiencyConfig,
    *,
    layers: Sequence[Any],
    seq_len: int,
    steps: int,
    reference_model: Any = None,
) -> DataEfficiencyConfig:
    """``config`` with the parts it leaves off filled by recipe ``name``; logs every choice. ``reference_model``: a
    reference the run has (a path or a model); no recipe adds model-based selection for it (it paid only on data
    with junk in it, which a recipe cannot know), and the log says so."""
    chosen = recipe_sections(name, num_layers=len(layers), seq_len=seq_len, steps=steps)
    merged = config.to_dict()
    for part, section in chosen.items():
        if merged.get(part) is not None:
            logger.warning(f"data_efficiency_recipe={name}: {part} is configured by the user; the recipe leaves it.")
            continue
        merged[part] = section
        logger.warning(f"data_efficiency_recipe={name} chose {part}: {section}")
    if "random_ltd" not in chosen:
        logger.warning(
            f"data_efficiency_recipe={name}: no random-LTD ({len(layers)} supported layers and rows of {seq_len} "
            "tokens; it needs at least 3 layers, as the first and the last keep every token)."
        )
    if reference_model is not None and merged.get("token_selection") is None:
        logger.warning(
            f"data_efficiency_recipe={name}: a reference model is given, but no token selection or reference-loss "
            "curriculum is added, so it is not used: at equal compute they paid only on data with junk documents and "
            "lost on clean corpora (docs/selection.md); for noisy data set token_selection='excess_loss' yourself."
        )
    if name == "auto":
        logger.warning(
            f"data_efficiency_recipe=auto: no curriculum and no LR change (for {steps} steps, rows of {seq_len} "
            f"tokens, {len(layers)} layers); see docs/benchmarks.md ('The auto recipe') for the evidence behind it."
        )
    return DataEfficiencyConfig.from_dict(merged)
