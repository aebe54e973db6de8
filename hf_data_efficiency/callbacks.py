"""Trainer callback that drives random-LTD's kept-length schedule.

``DataEfficiencyTrainer`` installs it itself (over its engine's handle). It also works with a plain
``transformers.Trainer``:

    handle = hfde.apply_random_ltd(model, cfg.random_ltd, global_batch_size=...)
    Trainer(model=model, args=args, ..., callbacks=[hfde.DataEfficiencyCallback(handle)])
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class DataEfficiencyCallback(TrainerCallback):
    """Sets the random-LTD kept length at the beginning of every optimizer step.

    ``on_step_begin`` runs before the forward passes of step ``global_step + 1``; the kept length is
    the schedule's value at the 0-based step ``state.global_step``, as DeepSpeed's engine does. On
    resume, ``state.global_step`` is the checkpoint's step, so the schedule continues exactly.
    """

    def __init__(self, random_ltd_handle: Any | None = None) -> None:
        self.random_ltd_handle = random_ltd_handle

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.random_ltd_handle is not None:
            self.random_ltd_handle.update(state.global_step)
