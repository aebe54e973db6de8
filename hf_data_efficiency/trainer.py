"""``DataEfficiencyTrainer``: a drop-in ``transformers.Trainer`` with curriculum learning and random-LTD.

With no data-efficiency option it is exactly ``Trainer`` (every override delegates). With options:

* **Data.** Missing metric columns are computed with :func:`~hf_data_efficiency.compute_metrics` under
  ``args.main_process_first`` (cached by the datasets fingerprint); existing columns of the same name are used
  as they are. The :class:`~hf_data_efficiency.CurriculumSampler` is built from ``self.train_dataset`` (which still
  has the metric columns), before ``remove_unused_columns`` prunes them. A ``seqlen_truncate``/``seqlen_reshape``
  difficulty travels with every sample from the sampler through the dataset to the collator, so the transform is
  applied to the exact batch of its step inside the collate function (DataLoader workers and prefetching are
  fine), before the Trainer counts ``num_items_in_batch``.
* **Model.** Random-LTD patches the model's layers in place; the kept length is set at ``on_step_begin``.
* **Group mixing and batch-size warmup.** The engine's data path draws each step group by group and sizes it by the
  ramp. Online mixing takes each micro-batch's per-sample losses from ``compute_loss`` (the group of each row travels
  with it through the collator) and updates the weights at ``on_step_end``, one reduction per step.
* **Logs.** ``curriculum/difficulty_<metric>``, ``random_ltd/kept_length``, ``data_efficiency/consumed_samples``,
  ``data_efficiency/effective_tokens`` (and ``data_efficiency/layer_tokens`` with random-LTD) are added to the
  Trainer's own training logs, so they reach every reporting integration.
* **Checkpoints.** ``data_efficiency_state.json`` in every checkpoint holds the sampler position, the random-LTD
  schedule state, the counters and the config. Resume checks and restores it; a missing or corrupt file is an
  error (``--ignore_data_skip`` resumes anyway), never a silent restart.
* **DeepSpeed.** A ``data_efficiency`` block in the DeepSpeed config is honoured and removed from what DeepSpeed
  receives (see :mod:`hf_data_efficiency.training_args`).

All of it lives in :class:`~hf_data_efficiency.engine.DataEfficiencyEngine`; the overrides below only delegate.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
from accelerate.data_loader import IterableDatasetShard
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, seed_worker
from transformers.utils import logging

from ._validation import read_json
from .callbacks import DataEfficiencyCallback
from .checkpoints import TRAINER_STATE_NAME, checkpoint_problems, incomplete_message, resolve_resume_checkpoint
from .config import DataEfficiencyConfig
from .engine import STATE_NAME, DataEfficiencyEngine, ResumeError, declare_causal_lm_loss, is_causal_lm, is_stream
from .training_args import DataEfficiencyTrainingArguments, deepspeed_config_of

logger = logging.get_logger(__name__)

__all__ = ["STATE_NAME", "DataEfficiencyTrainer"]

_RESUME_HINT = (
    "To resume anyway, pass --ignore_data_skip (TrainingArguments.ignore_data_skip=True): training then continues "
    "from the checkpoint's model and optimizer, the curriculum stream restarts at the start of the current epoch "
    "and the data-efficiency counters restart from zero."
)


def resolve_trainer_config(args: Any) -> DataEfficiencyConfig:
    """The config of a Trainer run: the training arguments' own, or a ``data_efficiency`` block still present in the
    DeepSpeed config (plain ``TrainingArguments``, or ``accelerate launch`` with a DeepSpeed config file), which is
    removed there before DeepSpeed sees it."""
    own = args.get_data_efficiency_config() if isinstance(args, DataEfficiencyTrainingArguments) else None
    cfg = DataEfficiencyConfig.load(
        own if own is not None and own.enabled else None, deepspeed=deepspeed_config_of(args)
    )
    return cfg if cfg.enabled or own is None else own


def _warn_if_launch_ignored(num_processes: int) -> None:
    """``torchrun``/``accelerate launch`` started several processes, but each trains alone (on a machine without a
    GPU, TrainingArguments need ``use_cpu=True`` to join them): every process then trains on the whole data."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        logger.warning(
            f"WORLD_SIZE={launched}: {launched} processes were launched, but this Trainer runs as a single process, "
            f"so each of the {launched} trains alone on the whole data. Without a GPU, pass --use_cpu "
            "(TrainingArguments(use_cpu=True)) so that they train together (DDP over gloo)."
        )


class _EngineHooks(DataEfficiencyCallback):
    """Drives the engine from the Trainer's events: resumed state at train begin, the kept length at step begin (the
    :class:`~hf_data_efficiency.DataEfficiencyCallback` hook, over the engine's handle), and the dynamic-batching LR
    factor around each optimizer step."""

    def __init__(self, trainer: DataEfficiencyTrainer) -> None:
        self._trainer = trainer
        self._scaled_lr: Any = None

    @property
    def random_ltd_handle(self) -> Any:
        return self._trainer.engine.random_ltd_handle

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self._trainer._restore_data_efficiency_state()

    def on_pre_optimizer_step(self, args, state, control, **kwargs) -> None:
        # the dynamic-batching LR factor of this step, on top of the scheduler's LR, for optimizer.step() only
        engine = self._trainer.engine
        if engine.batch_sampler is not None:
            self._scaled_lr = engine.scaled_lr(self._trainer.optimizer, state.global_step)
            self._scaled_lr.__enter__()

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        context, self._scaled_lr = self._scaled_lr, None
        if context is not None:
            context.__exit__(None, None, None)

    def on_step_end(self, args, state, control, **kwargs) -> None:
        # online mixing: the step's per-group losses, summed over the processes, update the weights
        self._trainer.engine.end_step(state.global_step, self._trainer.accelerator.reduce, args.device)


class DataEfficiencyTrainer(Trainer):
    """``transformers.Trainer`` with curriculum learning and random-LTD; same constructor.

    The options come from :class:`~hf_data_efficiency.DataEfficiencyTrainingArguments` (flags or a config file)
    or from a ``data_efficiency`` block in the DeepSpeed config (``args.deepspeed`` or ``accelerate launch``'s
    DeepSpeed config file). The resolved config is :attr:`data_efficiency_config`, the engine that does the work
    :attr:`engine`, the patch handle :attr:`random_ltd_handle`, the sampler :attr:`curriculum_sampler` (built with
    the train dataloader).
    """

    def __init__(self, *args: Any, reference_model: Any = None, **kwargs: Any) -> None:
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        self._de_counting_step = False  # inside the training loop's get_batch_samples (token selection counts then)
        self._de_pending_state: dict[str, Any] | None = None
        self._de_rng_checkpoint: str | None = None  # a resumed stream's RNG state, restored after its first fetch
        model = kwargs.get("model", args[0] if args else None)
        cfg = resolve_trainer_config(training_args)
        recipe = getattr(training_args, "data_efficiency_recipe", None)
        if recipe is not None and model is None:
            raise ValueError(
                "data_efficiency_recipe needs the model when the Trainer is built (its layers decide random-LTD); "
                "pass model=... instead of model_init, or configure the settings explicitly."
            )
        self.engine = DataEfficiencyEngine(
            cfg,
            batch_size=training_args.train_batch_size if training_args is not None else 8,
            world_size=getattr(training_args, "world_size", 1),
            gradient_accumulation_steps=getattr(training_args, "gradient_accumulation_steps", 1),
            metrics_num_proc=getattr(training_args, "curriculum_metrics_num_proc", None),
            seeded_collation=getattr(training_args, "data_efficiency_seeded_collation", True),
        )
        if cfg.enabled and model is not None:
            declare_causal_lm_loss(model)
        super().__init__(*args, **kwargs)
        _warn_if_launch_ignored(self.accelerator.num_processes)
        if recipe is not None:
            cfg = self._apply_recipe(training_args, reference_model)
        self._attach_reference(cfg, reference_model)
        if not cfg.enabled:
            return
        self._check_options()
        self.engine.pad_token_id = getattr(self.processing_class, "pad_token_id", None)
        self.engine.check_dataset(self.train_dataset)
        sampled = cfg.curriculum is not None or cfg.mixing is not None
        if sampled and self.args.train_sampling_strategy != "random":
            what = "curriculum learning" if cfg.curriculum is not None else "group mixing"
            raise ValueError(
                f"train_sampling_strategy={self.args.train_sampling_strategy!r} cannot be combined with {what}, "
                "whose sampler decides the training order; use the default 'random'."
            )
        if cfg.curriculum is not None and (cfg.curriculum.num_workers or cfg.curriculum.pin_memory):
            logger.warning(
                f"data_sampling.num_workers={cfg.curriculum.num_workers} and pin_memory={cfg.curriculum.pin_memory} "
                "configure DeepSpeed's own DataLoader; the Trainer's DataLoader uses --dataloader_num_workers="
                f"{self.args.dataloader_num_workers} and --dataloader_pin_memory={self.args.dataloader_pin_memory} "
                "instead."
            )
        self.engine.packed = self._rows_are_packed()
        if cfg.dynamic_batching is not None or cfg.batch_size_warmup is not None:
            self._check_dynamic_batching()
        # the outermost collator, so the tags reach it; batches without tags (evaluation) pass unchanged
        self.data_collator = self.engine.wrap_collator(self.data_collator)
        if cfg.random_ltd is not None and self.engine.random_ltd_handle is None:
            self.engine.attach(self.model)
        self.add_callback(_EngineHooks(self))

    # ----- public ---------------------------------------------------------------------------------------
    @property
    def data_efficiency_config(self) -> DataEfficiencyConfig:
        """The resolved data-efficiency configuration (``.enabled`` is False when nothing is on)."""
        return self.engine.config

    @property
    def random_ltd_handle(self) -> Any:
        """The :class:`~hf_data_efficiency.RandomLTDHandle` of the patched model (``None`` without random-LTD)."""
        return self.engine.random_ltd_handle

    @property
    def curriculum_sampler(self) -> Any:
        """The :class:`~hf_data_efficiency.CurriculumSampler` of the last train dataloader (``None`` before)."""
        return self.engine.sampler

    def _apply_recipe(
        self, training_args: DataEfficiencyTrainingArguments, reference_model: Any
    ) -> DataEfficiencyConfig:
        """``--data_efficiency_recipe``'s choices for the model and the training rows as this Trainer holds them: a
        subclass that prepares its data in its constructor (trl's ``SFTTrainer`` tokenizes, truncates and packs) has
        done so by now, so the recipe reads the rows that are trained on. ``reference_model``: the one passed to the
        constructor, which ``auto`` may use."""
        cfg = training_args.apply_data_efficiency_recipe(
            self.model, self.train_dataset, reference_model=reference_model
        )
        self.engine.config = cfg
        if cfg.enabled and declare_causal_lm_loss(self.model):
            self._loss_shifts_labels = True  # Trainer.__init__ read the loss type before it was declared
        return cfg

    def _check_options(self) -> None:
        """Refuse the data-efficiency options this Trainer cannot honour (the config is resolved, the model not yet
        patched). A generation-group trainer (trl's ``GRPOTrainer``/``RLOOTrainer``: ``args.num_generations``) draws
        each prompt ``num_generations`` times in a row so that each group holds one prompt's completions; the
        curriculum sampler and dynamic batching replace that sampler and would mix prompts within a group, silently.
        """
        cfg = self.engine.config
        num_generations = getattr(self.args, "num_generations", None)
        if num_generations is not None and (cfg.curriculum is not None or cfg.dynamic_batching is not None):
            raise ValueError(
                f"args.num_generations={num_generations}: {type(self).__name__} is a generation-group trainer, whose "
                "sampler repeats each prompt num_generations times in a row so that every group holds the completions "
                "of one prompt. Curriculum learning (curriculum_metrics / seqlen_curriculum) and dynamic batching "
                "replace that sampler and would put different prompts in one group. Use "
                "hf_data_efficiency.integrations.trl.DataEfficiencyGRPOTrainer, whose curriculum orders prompts and "
                "keeps the groups whole."
            )

    def call_model_init(self, trial: Any = None) -> Any:
        model = super().call_model_init(trial)
        if self.engine.enabled:
            declare_causal_lm_loss(model)
        self.engine.attach(model)
        return model

    # ----- token selection ------------------------------------------------------------------------------------
    def _attach_reference(self, cfg: DataEfficiencyConfig, reference_model: Any) -> None:
        """The engine's reference models run where training does: the training device, and the training dtype
        (bf16/fp16 with mixed precision, else the model's own). Every process holds a whole copy (never sharded)."""
        self.engine.device = self.args.device
        if cfg.enabled:
            self.engine.model = self.model
        if cfg.token_selection is None and (
            reference_model is None or getattr(self.args, "data_efficiency_recipe", None)
        ):
            return  # nothing to attach (with a recipe that added no selection, it said why the reference is unused)
        if cfg.token_selection is not None and (self.args.label_smoothing_factor or self.compute_loss_func):
            raise ValueError(
                "token selection computes the training loss itself (the mean over the selected tokens); it cannot be "
                f"combined with label_smoothing_factor={self.args.label_smoothing_factor} or a compute_loss_func; "
                "allowed: label_smoothing_factor=0 and no compute_loss_func."
            )
        if self.args.bf16:
            dtype = torch.bfloat16
        elif self.args.fp16:
            dtype = torch.float16
        else:
            dtype = next(self.model.parameters()).dtype
        self.engine.attach_reference(
            reference_model, model=self.model, tokenizer=self.processing_class, device=self.args.device, dtype=dtype
        )
        self.loss_is_scaled_for_ga = True  # the selected-token loss is normalised over the whole step

    def get_batch_samples(self, *args: Any, **kwargs: Any) -> Any:
        self._de_counting_step = True
        try:
            out = super().get_batch_samples(*args, **kwargs)
        finally:
            self._de_counting_step = False
        checkpoint, self._de_rng_checkpoint = self._de_rng_checkpoint, None
        if checkpoint is not None:
            super()._load_rng_state(checkpoint)
        return out

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> Any:
        # with token selection, a training step's loss is normalised by its selected tokens, over the accumulated
        # micro-batches and (average_tokens_across_devices) the processes; evaluation counts as the Trainer does
        if self.engine.token_selection is None or not self._de_counting_step:
            return super()._get_num_items_in_batch(batch_samples, device)
        count = torch.tensor(self.engine.selected_tokens(batch_samples), dtype=torch.int64, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        # online mixing: the batch's group tags come out before the forward; token selection: a training step's
        # loss is over its selected tokens (evaluation: the plain loss over every token)
        groups = self.engine.pop_groups(inputs) if self.engine.online_mixing else None
        selection = self.engine.token_selection
        if selection is not None and not model.training:
            inputs = {k: v for k, v in inputs.items() if k != selection.column}
            selection = None
        if groups is None and selection is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.get("labels")
        if groups is not None and labels is None:
            raise ValueError(
                "online group mixing needs labels in every training batch to attribute the loss to the groups; "
                f"the batch has {sorted(inputs)}."
            )
        if selection is not None:
            # DDP averages gradients over the processes; the count already sums them (as the Trainer does)
            scale = 1
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                scale = self.accelerator.num_processes
            loss, outputs = self.engine.selection_loss(model, inputs, num_items_in_batch, scale)
        else:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if groups is not None:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
            token_losses = selection.last_token_losses if selection is not None else None  # computed once
            self.engine.observe_losses(
                groups, logits, labels, causal=is_causal_lm(self.model), token_losses=token_losses
            )
        return (loss, outputs) if return_outputs else loss

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        column = getattr(self.engine.config.token_selection, "reference_column", None)
        if column is not None and column not in self._signature_columns:  # offline selection reads it
            self._signature_columns.append(column)

    # ----- dynamic batching -----------------------------------------------------------------------------------
    def _check_dynamic_batching(self) -> None:
        """Refuse the Trainer options dynamic batching and batch-size warmup cannot honour; their batch sampler decides
        every micro-batch's size."""
        args = self.args
        cfg = self.engine.config
        what = "dynamic batching" if cfg.dynamic_batching is not None else "batch-size warmup"
        strategy, acc = args.train_sampling_strategy, args.accelerator_config
        self._refuse_options(
            f"{what}, whose batch sampler decides every micro-batch",
            ("train_sampling_strategy", strategy, strategy != "random", "'random'"),
            ("auto_find_batch_size", args.auto_find_batch_size, args.auto_find_batch_size, "False"),
            ("accelerator_config.split_batches", acc.split_batches, acc.split_batches, "False"),
            ("accelerator_config.dispatch_batches", acc.dispatch_batches, bool(acc.dispatch_batches), "None or False"),
        )
        section = cfg.dynamic_batching if cfg.dynamic_batching is not None else cfg.batch_size_warmup
        if self.is_deepspeed_enabled and section.lr_scaling_method != "none":
            key = "dynamic_batching" if cfg.dynamic_batching is not None else "batch_size_warmup"
            raise ValueError(
                f"{key}.lr_scaling_method={section.lr_scaling_method!r} cannot be applied under DeepSpeed, whose "
                "engine steps the optimizer inside backward; allowed with DeepSpeed: 'none'."
            )

    @staticmethod
    def _refuse_options(what: str, *options: tuple[str, Any, bool, str]) -> None:
        """Raise for the first ``(name, value, refused, allowed)`` of ``options`` that is refused: it cannot be
        combined with ``what``."""
        for name, value, refused, allowed in options:
            if refused:
                raise ValueError(f"{name}={value!r} cannot be combined with {what}; allowed: {allowed}.")

    # ----- data --------------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        if not self.engine.uses_data_path:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        args = self.args
        self.engine.batch_size = self._train_batch_size
        plan = self.engine.train_loader(
            self.train_dataset,
            rank=args.process_index,
            device=args.device,
            main_process_first=args.main_process_first,
            prune=self._prune_training_columns,
        )
        collator = self.data_collator
        if plan.per_process:  # a stream's samples keep their fields: the collator prunes them
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        loader = plan.dataloader(collator, **self._dataloader_options())
        if not plan.per_process:
            return self.accelerator.prepare(loader)
        # every process reads its own shard and forms its share of each global batch, so accelerate neither
        # dispatches the batches from one process nor re-shards them
        config = self.accelerator.dataloader_config
        dispatch, config.dispatch_batches = config.dispatch_batches, False
        try:
            loader = self.accelerator.prepare(loader)
        finally:
            config.dispatch_batches = dispatch
        shard = getattr(loader, "dataset", None)
        if isinstance(shard, IterableDatasetShard):  # a passthrough: the stream is this process's already
            shard.num_processes, shard.process_index = 1, 0
        return loader

    def _dataloader_options(self) -> dict[str, Any]:
        """The ``--dataloader_*`` settings as ``DataLoader`` keywords, with the Trainer's worker seeding."""
        args = self.args
        return {
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory,
            "persistent_workers": args.dataloader_persistent_workers,
            "multiprocessing_context": args.dataloader_multiprocessing_context,
            "prefetch_factor": args.dataloader_prefetch_factor,
            "in_order": args.dataloader_in_order,
            "drop_last": args.dataloader_drop_last,
            "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        }

    def _prune_training_columns(self, dataset: Any) -> Any:
        """``remove_unused_columns`` of a ``datasets.Dataset`` (the Trainer's own; the engine wraps the result)."""
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            return dataset
        return super()._remove_unused_columns(dataset, description="Training")

    def _get_collator_with_removed_columns(self, data_collator: Any, description: str | None = None) -> Any:
        collator = super()._get_collator_with_removed_columns(data_collator, description=description)
        if description == "Training" and is_stream(self.train_dataset) and self.engine.uses_data_path:
            # the stream's per-sample tags must reach the engine's collator wrappers inside
            from .curriculum.transforms import GROUP_KEY, MAX_TOKENS_KEY, POSITION_KEY

            if hasattr(collator, "signature_columns"):
                collator.signature_columns = [*collator.signature_columns, MAX_TOKENS_KEY, POSITION_KEY, GROUP_KEY]
        return collator

    def _remove_unused_columns(self, dataset: Any, description: str | None = None) -> Any:
        dataset = super()._remove_unused_columns(dataset, description=description)
        if description == "Training" and self.engine.enabled:
            dataset = self.engine.loader_dataset(dataset)
        return dataset

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # the stream position depends on the epoch: set it on the sampler itself, whatever wrappers accelerate
        # (BatchSamplerShard, SkipBatchSampler on resume) put around it
        if "epoch" in kwargs:
            self.engine.set_epoch(int(kwargs["epoch"]))
        if hasattr(self.engine.sampler, "stream_logs") and self.engine.sampler.position > 0:
            # a resumed stream continues from its restored state (see _init_training_state); the RNG state is restored
            # after the first batches are fetched, as the Trainer does after skipping (the DataLoader's iterator draws
            # a seed)
            self._de_rng_checkpoint = kwargs.get("resume_from_checkpoint")
        return super()._run_epoch(*args, **kwargs)

    def _init_training_state(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        epochs_trained, skipped = super()._init_training_state(*args, **kwargs)
        sampler_state = (self._de_pending_state or {}).get("sampler")
        if skipped and isinstance(sampler_state, dict) and sampler_state.get("kind") == "stream":
            logger.info(
                f"The streaming curriculum resumes at the stream position saved after step "
                f"{self._de_pending_state['global_step']}: no batch is skipped or read again."
            )
            skipped = 0
        return epochs_trained, skipped

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if self._de_rng_checkpoint is None:
            super()._load_rng_state(checkpoint)

    # ----- counters and logs -----------------------------------------------------------------------------
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if self.engine.enabled:
            self.engine.count_batch(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # only the Trainer's own training logs, which every process emits together (the sync is collective)
        if self.engine.enabled and ("loss" in logs or "train_loss" in logs):
            logs.update(self.engine.step_logs(self.state.global_step, self.accelerator.reduce, self.args.device))
        super().log(logs, start_time)

    # ----- LR schedule ----------------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is not None or not self.engine.uses_layer_token_lr:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = optimizer if optimizer is not None else self.optimizer
        scheduler = self.engine.layer_token_lr_scheduler(
            optimizer,
            num_training_steps,
            self.args.get_warmup_steps(num_training_steps),
            self.args.lr_scheduler_type,
            document_lengths=self._document_lengths(),
        )
        # the Trainer builds (and marks as its own, to rebuild it on the next train()) its step-based scheduler;
        # ours replaces it, and sets the LR it starts from
        super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = scheduler
        return scheduler

    def _rows_are_packed(self) -> bool:
        """Whether the collator concatenates each micro-batch's documents into one row."""
        from transformers import DataCollatorWithFlattening

        return isinstance(self.data_collator, DataCollatorWithFlattening)

    def _document_lengths(self) -> tuple[Any, float] | None:
        """With packed rows on map-style data: the training documents' lengths and the documents per dataset row
        (each row is one document here), for the layer-token LR schedule; else ``None``."""
        if not self.engine.packed or isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            return None
        from .batching.lengths import sample_lengths

        return sample_lengths(self.train_dataset), 1.0

    # ----- checkpoints ---------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if not self.engine.enabled:
            return super()._save_checkpoint(model, trial)
        # The state file is the checkpoint's completion mark: written last, once every process has saved its part.
        # Older checkpoints are rotated out only after it, so a kill at any instant keeps a complete one.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.engine.sync_counters(self.accelerator.reduce, self.args.device)
        self.accelerator.wait_for_everyone()
        step = self.state.global_step
        state = self.engine.state_dict(step)  # collective with a streaming curriculum (it gathers every shard's)
        if self.args.should_save:
            run_dir = self._get_output_dir(trial=trial)
            self.engine.save_state(os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}"), step, state=state)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        self._de_pending_state = None
        if self.engine.enabled and resume_from_checkpoint:
            resume_from_checkpoint, self._de_pending_state = self._resume_point(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)

    def _resume_point(self, resume: str | bool) -> tuple[str, dict[str, Any] | None]:
        """The checkpoint to resume from (``True``: the newest complete one) and its checked state.

        An incomplete checkpoint is never used. A checkpoint whose Trainer files are complete but whose data-efficiency
        state is missing, corrupt or from another config resumes only with ``ignore_data_skip`` (and a warning)."""
        if resume is True:
            checkpoint = resolve_resume_checkpoint(True, self.args.output_dir)
        else:
            checkpoint = str(resume)
            problems = checkpoint_problems(checkpoint)
            if set(problems) - {STATE_NAME}:
                raise ValueError(incomplete_message(checkpoint, problems))
            if problems and not self.args.ignore_data_skip:  # the Trainer's own files are complete
                raise ValueError(f"{incomplete_message(checkpoint, problems)} {_RESUME_HINT}")
        step = read_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).get("global_step")  # checked complete above
        try:
            return checkpoint, self.engine.read_state(checkpoint, global_step=step)
        except ResumeError as e:
            if self.args.ignore_data_skip:
                logger.warning(f"{e} Resuming anyway because ignore_data_skip=True; data-efficiency state restarts.")
                return checkpoint, None
            raise ValueError(f"Cannot resume data-efficiency training exactly: {e} {_RESUME_HINT}") from e

    def _restore_data_efficiency_state(self) -> None:
        """Restore the resumed state (or reset the counters for a fresh run); runs after the model and sampler exist."""
        state, self._de_pending_state = self._de_pending_state, None
        if state is None:
            self.engine.reset()
            return
        try:
            self.engine.load_state_dict(state)
        except ResumeError as e:
            raise ValueError(f"Cannot resume data-efficiency training exactly: {e} {_RESUME_HINT}") from e
