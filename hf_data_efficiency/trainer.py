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
* **Logs.** ``curriculum/difficulty_<metric>``, ``random_ltd/kept_length``, ``data_efficiency/consumed_samples``,
  ``data_efficiency/effective_tokens`` (and ``data_efficiency/layer_tokens`` with random-LTD) are added to the
  Trainer's own training logs, so they reach every reporting integration.
* **Checkpoints.** ``data_efficiency_state.json`` in every checkpoint holds the sampler position, the random-LTD
  schedule state, the counters and the config. Resume checks and restores it; a missing or corrupt file is an
  error (``--ignore_data_skip`` resumes anyway), never a silent restart.
* **DeepSpeed.** A ``data_efficiency`` block in the DeepSpeed config is honoured and removed from what DeepSpeed
  receives (see :mod:`hf_data_efficiency.training_args`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, seed_worker
from transformers.utils import logging

from .callbacks import DataEfficiencyCallback
from .config import DataEfficiencyConfig
from .fileio import atomic_write_text
from .training_args import DataEfficiencyTrainingArguments, config_from_deepspeed_keys, split_deepspeed_config

logger = logging.get_logger(__name__)

STATE_NAME = "data_efficiency_state.json"
STATE_VERSION = 1
_DECAY_FOR_LR_SCHEDULER = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant",
}
_RESUME_HINT = (
    "To resume anyway, pass --ignore_data_skip (TrainingArguments.ignore_data_skip=True): training then continues "
    "from the checkpoint's model and optimizer, the curriculum stream restarts at the start of the current epoch "
    "and the data-efficiency counters restart from zero."
)


class _TrainerHooks(DataEfficiencyCallback):
    """The trainer's own callback: kept-length updates plus restoring resumed state at ``on_train_begin``."""

    def __init__(self, trainer: DataEfficiencyTrainer) -> None:
        super().__init__(trainer._de_handle)
        self._trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.random_ltd_handle = self._trainer._de_handle
        self._trainer._de_on_train_begin()


class DataEfficiencyTrainer(Trainer):
    """``transformers.Trainer`` with curriculum learning and random-LTD; same constructor.

    The options come from :class:`~hf_data_efficiency.DataEfficiencyTrainingArguments` (flags or a config file)
    or from a ``data_efficiency`` block in the DeepSpeed config (``args.deepspeed`` or ``accelerate launch``'s
    DeepSpeed config file). The resolved config is :attr:`data_efficiency_config`; the patch handle is
    :attr:`random_ltd_handle`, the sampler :attr:`curriculum_sampler` (built with the train dataloader).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        self._de_handle = None
        self._de_sampler = None
        self._de_metric_cache: tuple[Any, list[str]] | None = None
        self._de_pending_state: dict[str, Any] | None = None
        self._de_totals = {"consumed_samples": 0, "tokens": 0, "layer_tokens": 0}
        self._de_local = {"samples": 0, "tokens": 0}
        self._de_handle_mark = (0, 0)
        self._de_cfg = self._resolve_data_efficiency(training_args)
        super().__init__(*args, **kwargs)
        cfg = self._de_cfg
        if not cfg.enabled:
            return
        if cfg.curriculum is not None:
            self._check_train_dataset(self.train_dataset)
            if self.args.train_sampling_strategy != "random":
                raise ValueError(
                    f"train_sampling_strategy={self.args.train_sampling_strategy!r} cannot be combined with curriculum "
                    "learning, whose sampler decides the training order; use the default 'random'."
                )
            if cfg.curriculum.num_workers or cfg.curriculum.pin_memory:
                logger.warning(
                    f"data_sampling.num_workers={cfg.curriculum.num_workers} and pin_memory="
                    f"{cfg.curriculum.pin_memory} configure DeepSpeed's own DataLoader; the Trainer's DataLoader uses "
                    f"--dataloader_num_workers={self.args.dataloader_num_workers} and --dataloader_pin_memory="
                    f"{self.args.dataloader_pin_memory} instead."
                )
        if cfg.random_ltd is not None and self._de_handle is None:
            self._patch_model(self.model)
        self.add_callback(_TrainerHooks(self))

    # ----- public ---------------------------------------------------------------------------------------
    @property
    def data_efficiency_config(self) -> DataEfficiencyConfig:
        """The resolved data-efficiency configuration (``.enabled`` is False when nothing is on)."""
        return self._de_cfg

    @property
    def random_ltd_handle(self) -> Any:
        """The :class:`~hf_data_efficiency.RandomLTDHandle` of the patched model (``None`` without random-LTD)."""
        return self._de_handle

    @property
    def curriculum_sampler(self) -> Any:
        """The :class:`~hf_data_efficiency.CurriculumSampler` of the last train dataloader (``None`` before)."""
        return self._de_sampler

    # ----- configuration ---------------------------------------------------------------------------------
    @staticmethod
    def _resolve_data_efficiency(args: Any) -> DataEfficiencyConfig:
        cfg = (
            args.get_data_efficiency_config()
            if isinstance(args, DataEfficiencyTrainingArguments)
            else DataEfficiencyConfig()
        )
        # A block still present in the DeepSpeed config (plain TrainingArguments, or `accelerate launch` with a
        # DeepSpeed config file) is honoured here and removed before DeepSpeed sees it.
        plugin = getattr(args, "deepspeed_plugin", None)
        hf_ds_config = getattr(plugin, "hf_ds_config", None)
        ds_dict = getattr(hf_ds_config, "config", None)
        if isinstance(ds_dict, dict):
            removed = split_deepspeed_config(ds_dict)
            if removed is not None:
                ds_cfg = config_from_deepspeed_keys(removed)
                if cfg.enabled and ds_cfg.enabled:
                    raise ValueError(
                        "data-efficiency settings are given twice: in the training arguments and in the DeepSpeed "
                        "config's 'data_efficiency' block; keep only one of them."
                    )
                if ds_cfg.enabled:
                    cfg = ds_cfg
        return cfg

    def _check_train_dataset(self, dataset: Any) -> None:
        if dataset is None:
            return
        if isinstance(dataset, (torch.utils.data.IterableDataset, datasets.IterableDataset)):
            raise ValueError(
                "train_dataset: curriculum learning needs a map-style datasets.Dataset (random access to every "
                f"sample and its metric), got a {type(dataset).__name__} (streaming). Materialise it (load without "
                "streaming=True, or datasets.Dataset.from_generator) or train without the curriculum (random-LTD "
                "alone works with iterable datasets)."
            )
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(
                f"train_dataset: curriculum learning needs a datasets.Dataset with the metric columns, got "
                f"{type(dataset).__name__}; convert it with datasets.Dataset.from_list / from_dict."
            )

    def _patch_model(self, model: Any) -> None:
        from .routing.random_ltd import apply_random_ltd

        args = self.args
        global_batch = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        self._de_handle = apply_random_ltd(model, self._de_cfg.random_ltd, global_batch_size=global_batch)
        self._de_handle_mark = (0, 0)
        for cb in self.callback_handler.callbacks if hasattr(self, "callback_handler") else []:
            if isinstance(cb, _TrainerHooks):
                cb.random_ltd_handle = self._de_handle

    def call_model_init(self, trial: Any = None) -> Any:
        model = super().call_model_init(trial)
        if self._de_cfg.random_ltd is not None:
            self._patch_model(model)
        return model

    # ----- data --------------------------------------------------------------------------------------------
    def _metric_dataset(self) -> tuple[datasets.Dataset, list[str]]:
        """``self.train_dataset`` with every sampling-metric column and the names of the columns added here.

        A metric comes from the dataset column of its name; else from DeepSpeed index files when the config names
        them (``index_to_sample_path``/``index_to_metric_path``); else it is computed (built-in metrics)."""
        dataset = self.train_dataset
        if self._de_metric_cache is not None and self._de_metric_cache[0] is dataset:
            return self._de_metric_cache[1]
        self._check_train_dataset(dataset)
        from .curriculum.index import metric_array_from_deepspeed_index
        from .curriculum.metrics import BUILTIN_METRICS, compute_metrics

        sampling = self._de_cfg.curriculum.sampling_metrics
        added = []
        for m in sampling:
            if m.index_to_sample_path is None:
                continue
            if m.name in dataset.column_names:
                logger.warning(
                    f"curriculum metric {m.name!r}: the dataset column of that name is used; its DeepSpeed index "
                    f"files ({m.index_to_sample_path}) are not read."
                )
                continue
            values = metric_array_from_deepspeed_index(m.index_to_sample_path, m.index_to_metric_path, len(dataset))
            dataset = dataset.add_column(m.name, values)
            added.append(m.name)
        missing = [m.name for m in sampling if m.name not in dataset.column_names]
        if missing:
            unknown = [n for n in missing if n not in BUILTIN_METRICS]
            if unknown:
                raise ValueError(
                    f"curriculum metric(s) {unknown} are neither columns of the training dataset "
                    f"({dataset.column_names}) nor built-in metrics ({', '.join(BUILTIN_METRICS)}); add the "
                    "column(s), e.g. hf_data_efficiency.compute_metrics(dataset, {name: batched_fn})."
                )
            if "input_ids" not in dataset.column_names:
                raise ValueError(
                    f"curriculum metric(s) {missing} are not columns of the training dataset and cannot be computed: "
                    f"it has no 'input_ids' column (columns: {dataset.column_names}). Tokenize the dataset first, or "
                    "add the metric columns yourself (one number per sample, named after the metric)."
                )
            pad_token_id = getattr(self.processing_class, "pad_token_id", None)
            num_proc = getattr(self.args, "curriculum_metrics_num_proc", None)
            with self.args.main_process_first(desc="computing curriculum metrics"):
                dataset = compute_metrics(dataset, missing, num_proc=num_proc, pad_token_id=pad_token_id)
        result = (dataset, added + missing)
        self._de_metric_cache = (self.train_dataset, result)
        return result

    def get_train_dataloader(self) -> DataLoader:
        cur = self._de_cfg.curriculum
        if cur is None:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        from .curriculum.sampler import CurriculumSampler
        from .curriculum.transforms import CurriculumDataset, SeqlenTransform

        dataset, added = self._metric_dataset()
        transform = cur.transform
        sampler = CurriculumSampler(
            dataset,
            cur,
            batch_size=self._train_batch_size,
            world_size=max(1, self.args.world_size),
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            return_max_tokens=transform is not None,
        )
        self._de_sampler = sampler

        data = self._remove_unused_columns(dataset, description="Training")
        leftover = [c for c in added if c in data.column_names]
        if leftover:  # columns we added ourselves never reach the collator
            data = data.remove_columns(leftover)
        collator = self.data_collator
        if transform is not None:
            data = CurriculumDataset(data)
            pad_token_id = getattr(self.processing_class, "pad_token_id", None)
            collator = SeqlenTransform(transform.name, collator, pad_token_id=pad_token_id)
        params: dict[str, Any] = {
            "batch_size": self._train_batch_size,
            "sampler": sampler,
            "collate_fn": collator,
            "drop_last": self.args.dataloader_drop_last,
            "num_workers": self.args.dataloader_num_workers,
            "pin_memory": self.args.dataloader_pin_memory,
            "persistent_workers": self.args.dataloader_persistent_workers,
            "multiprocessing_context": self.args.dataloader_multiprocessing_context,
            "prefetch_factor": self.args.dataloader_prefetch_factor,
            "in_order": self.args.dataloader_in_order,
            "worker_init_fn": partial(
                seed_worker, num_workers=self.args.dataloader_num_workers, rank=self.args.process_index
            ),
        }
        return self.accelerator.prepare(DataLoader(data, **params))

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # the stream position depends on the epoch: set it on the sampler itself, whatever wrappers accelerate
        # (BatchSamplerShard, SkipBatchSampler on resume) put around it
        if self._de_sampler is not None and "epoch" in kwargs:
            self._de_sampler.set_epoch(int(kwargs["epoch"]))
        return super()._run_epoch(*args, **kwargs)

    # ----- counters and logs -----------------------------------------------------------------------------
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        if self._de_cfg.enabled and isinstance(inputs, Mapping):
            tokens = inputs.get("input_ids", inputs.get("attention_mask"))
            if isinstance(tokens, torch.Tensor):
                self._de_local["tokens"] += int(tokens.numel())
                self._de_local["samples"] += int(tokens.shape[0])
            else:
                first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
                self._de_local["samples"] += int(first.shape[0]) if first is not None else 0
        return super().training_step(model, inputs, num_items_in_batch)

    def _de_sync(self) -> None:
        """Add every process's counts since the last sync to the global totals (a collective call)."""
        handle = self._de_handle
        kept, full = (handle.kept_tokens_seen, handle.full_tokens_seen) if handle is not None else (0, 0)
        layer_tokens = 0
        if handle is not None and handle.num_layers:
            d_kept, d_full = kept - self._de_handle_mark[0], full - self._de_handle_mark[1]
            n, total = handle.num_layers, handle.total_layers
            layer_tokens = d_kept + d_full * (total - n) // n
        delta = torch.tensor(
            [self._de_local["samples"], self._de_local["tokens"], layer_tokens],
            dtype=torch.int64,
            device=self.args.device,
        )
        if self.args.world_size > 1:
            delta = self.accelerator.reduce(delta, reduction="sum")
        samples, tokens, layer_tokens = (int(v) for v in delta.tolist())
        self._de_totals["consumed_samples"] += samples
        self._de_totals["tokens"] += tokens
        self._de_totals["layer_tokens"] += layer_tokens
        self._de_local = {"samples": 0, "tokens": 0}
        self._de_handle_mark = (kept, full)

    def _de_log_values(self) -> dict[str, float]:
        self._de_sync()
        step = self.state.global_step
        out: dict[str, float] = {}
        if self._de_sampler is not None and step >= 1:
            for name, value in self._de_sampler.difficulty_at(step).items():
                out[f"curriculum/difficulty_{name}"] = float(value)
        handle = self._de_handle
        if handle is not None and handle.kept_length is not None:
            out["random_ltd/kept_length"] = int(handle.kept_length)
        out["data_efficiency/consumed_samples"] = self._consumed_samples()
        if handle is not None and handle.num_layers:
            out["data_efficiency/layer_tokens"] = self._de_totals["layer_tokens"]
            out["data_efficiency/effective_tokens"] = self._de_totals["layer_tokens"] / handle.total_layers
        elif self._de_totals["tokens"]:
            out["data_efficiency/effective_tokens"] = self._de_totals["tokens"]
        return out

    def _consumed_samples(self) -> int:
        # with the curriculum every optimizer step consumes exactly one global batch of the stream
        if self._de_sampler is not None:
            return self.state.global_step * self._de_sampler.global_batch_size
        return self._de_totals["consumed_samples"]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # only the Trainer's own training logs, which every process emits together (the sync is collective)
        if self._de_cfg.enabled and ("loss" in logs or "train_loss" in logs):
            logs.update(self._de_log_values())
        super().log(logs, start_time)

    # ----- LR schedule ----------------------------------------------------------------------------------------
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        lr_cfg = self._de_cfg.random_ltd.layer_token_lr_schedule if self._de_cfg.random_ltd is not None else None
        if self.lr_scheduler is not None or lr_cfg is None or not lr_cfg.enabled:
            return super().create_scheduler(num_training_steps, optimizer)
        from .routing.lr_schedule import get_layer_token_lr_scheduler

        decay = _DECAY_FOR_LR_SCHEDULER.get(
            str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        )
        if decay is None:
            raise ValueError(
                f"lr_scheduler_type={self.args.lr_scheduler_type!r} has no layer-token version; with "
                f"--layer_token_lr_schedule use one of {', '.join(_DECAY_FOR_LR_SCHEDULER)}."
            )
        scheduler = self._de_handle.scheduler
        warmup = lr_cfg.warmup_layer_tokens
        if not warmup:
            warmup = scheduler.total_layer_tokens(self.args.get_warmup_steps(num_training_steps))
        self.lr_scheduler = get_layer_token_lr_scheduler(
            optimizer if optimizer is not None else self.optimizer,
            scheduler,
            total_layer_tokens=lr_cfg.total_layer_tokens,
            warmup_layer_tokens=warmup,
            warmup_type=lr_cfg.warmup_type,
            decay_type=decay,
            num_training_steps=num_training_steps,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # ----- checkpoints ---------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self._de_cfg.enabled:
            self._de_sync()
            if self.args.should_save:
                folder = os.path.join(
                    self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                )
                self._write_state(folder)
        super()._save_checkpoint(model, trial)

    def _state(self) -> dict[str, Any]:
        step = self.state.global_step
        handle = self._de_handle
        sampler = self._de_sampler
        return {
            "version": STATE_VERSION,
            "global_step": step,
            "config": self._de_cfg.to_dict(),
            "counters": {**self._de_totals, "consumed_samples": self._consumed_samples()},
            "sampler": sampler.state_dict(position=step * sampler.global_batch_size) if sampler is not None else None,
            "random_ltd": (
                {"kept_length": handle.kept_length, "scheduler": handle.scheduler.state_dict()}
                if handle is not None
                else None
            ),
        }

    def _write_state(self, folder: str) -> None:
        atomic_write_text(os.path.join(folder, STATE_NAME), json.dumps(self._state(), indent=2, sort_keys=True) + "\n")

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        if isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
        self._de_pending_state = None
        if resume_from_checkpoint and self._de_cfg.enabled:
            self._de_pending_state = self._read_state(str(resume_from_checkpoint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)

    def _read_state(self, checkpoint: str) -> dict[str, Any] | None:
        """Read and check the checkpoint's state; problems raise (or warn with ``ignore_data_skip``)."""
        path = os.path.join(checkpoint, STATE_NAME)
        problem = None
        state: dict[str, Any] | None = None
        if not os.path.isfile(path):
            problem = (
                f"{path} is missing: the checkpoint was not written by DataEfficiencyTrainer with data efficiency on, "
                "or its save was interrupted."
            )
        else:
            try:
                with open(path) as f:
                    state = json.load(f)
                if not isinstance(state, dict):
                    raise ValueError("not a JSON object")
                missing = sorted(
                    {"version", "global_step", "config", "counters", "sampler", "random_ltd"} - set(state)
                )
                if missing:
                    raise ValueError(f"missing key(s) {missing}")
                if state["version"] != STATE_VERSION:
                    raise ValueError(f"version={state['version']!r}, supported: {STATE_VERSION}")
            except (OSError, ValueError) as e:
                problem = f"{path} is corrupt ({e})."
                state = None
        if state is not None:
            trainer_state = os.path.join(checkpoint, "trainer_state.json")
            if os.path.isfile(trainer_state):
                with open(trainer_state) as f:
                    step = json.load(f).get("global_step")
                if step != state["global_step"]:
                    problem = f"{path} is for step {state['global_step']} but the checkpoint is at step {step}."
            if problem is None and state["config"] != json.loads(json.dumps(self._de_cfg.to_dict())):
                problem = (
                    f"{path} was saved with a different data-efficiency config than the current one; "
                    f"saved: {json.dumps(state['config'], sort_keys=True)}."
                )
        if problem is None:
            return state
        if self.args.ignore_data_skip:
            logger.warning(f"{problem} Resuming anyway because ignore_data_skip=True; data-efficiency state restarts.")
            return None
        raise ValueError(f"Cannot resume data-efficiency training exactly: {problem} {_RESUME_HINT}")

    def _de_on_train_begin(self) -> None:
        """Restore the resumed state (or reset the counters for a fresh run); runs after the model and sampler exist."""
        state, self._de_pending_state = self._de_pending_state, None
        self._de_totals = {"consumed_samples": 0, "tokens": 0, "layer_tokens": 0}
        self._de_local = {"samples": 0, "tokens": 0}
        handle = self._de_handle
        self._de_handle_mark = (handle.kept_tokens_seen, handle.full_tokens_seen) if handle is not None else (0, 0)
        if state is None:
            return
        counters = state["counters"]
        for key in self._de_totals:
            self._de_totals[key] = int(counters.get(key, 0))
        try:
            if handle is not None and state["random_ltd"] is not None:
                handle.scheduler.load_state_dict(state["random_ltd"]["scheduler"])
                handle.kept_length = state["random_ltd"]["kept_length"]
            if self._de_sampler is not None and state["sampler"] is not None:
                # checks seed, dataset, batch geometry and metric fingerprint; the Trainer's set_epoch + batch
                # skipping then replays the stream to the exact position
                self._de_sampler.load_state_dict(state["sampler"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Cannot resume data-efficiency training exactly: {e} {_RESUME_HINT}") from e
