"""hf-data-efficiency: DeepSpeed Data Efficiency (curriculum learning and random-LTD) for the Hugging Face stack.

Public names are imported lazily, so ``import hf_data_efficiency`` stays cheap and the config layer
never pulls in the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    # configs and schedules
    "DataEfficiencyConfig": ".config",
    "CurriculumConfig": ".config",
    "CurriculumMetricConfig": ".config",
    "SeqlenTransformConfig": ".config",
    "DynamicBatchingConfig": ".config",
    "RandomLTDConfig": ".config",
    "LayerTokenLRConfig": ".config",
    "StreamingConfig": ".config",
    "MixingConfig": ".config",
    "BatchSizeWarmupConfig": ".config",
    "TokenSelectionConfig": ".config",
    "DifficultySchedule": ".schedules",
    # curriculum (data sampling)
    "compute_metrics": ".curriculum.metrics",
    "ReferenceLoss": ".curriculum.reference",
    "register_curriculum_metric": ".curriculum.metrics",
    "CurriculumSampler": ".curriculum.sampler",
    "GroupedPromptSampler": ".curriculum.generation_groups",
    "PassRateConfig": ".curriculum.generation_groups",
    "PassRateTracker": ".curriculum.generation_groups",
    "StreamingCurriculum": ".curriculum.streaming",
    "SeqlenTransform": ".curriculum.transforms",
    "CurriculumDataset": ".curriculum.transforms",
    # group mixing
    "GroupMixer": ".curriculum.mixing",
    "GroupMixingSampler": ".curriculum.mixing",
    "seqlen_truncate": ".curriculum.transforms",
    "seqlen_reshape": ".curriculum.transforms",
    # token budgets (dynamic batching)
    "TokenBudget": ".batching.budget",
    "TokenBudgetBatchSampler": ".batching.sampler",
    "StreamTokenBudget": ".batching.stream",
    "StreamingTokenBudget": ".batching.stream",
    "MicroBatchCollator": ".batching.stream",
    # batch-size warmup
    "BatchSizeWarmup": ".batching.warmup",
    "WarmupBatchSampler": ".batching.warmup",
    # random-LTD (data routing)
    "apply_random_ltd": ".routing.random_ltd",
    "RandomLTDHandle": ".routing.random_ltd",
    "register_random_ltd_layer": ".routing.architectures",
    "find_layers": ".routing.architectures",
    "RandomLTDScheduler": ".routing.scheduler",
    "get_layer_token_lr_scheduler": ".routing.lr_schedule",
    "LayerTokenLRScheduler": ".routing.lr_schedule",
    # model-based selection
    "ExcessLossSelection": ".selection",
    # integration
    "DataEfficiencyEngine": ".engine",
    "save_checkpoint": ".checkpoints",
    "resolve_resume_checkpoint": ".checkpoints",
    "DataEfficiencyTrainingArguments": ".training_args",
    "DataEfficiencyTrainer": ".trainer",
    "DataEfficiencyCallback": ".callbacks",
}

__all__ = [*sorted(_LAZY), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
