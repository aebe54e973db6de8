"""trl's SFT and GRPO trainers with the data-efficiency options (``pip install 'hf-data-efficiency[trl]'``).

Each config pairs with its Trainer, as in trl (``sft_config.py`` + ``sft_trainer.py``): the config inherits both
:class:`~hf_data_efficiency.DataEfficiencyTrainingArguments` and trl's config, so every data-efficiency flag exists
next to trl's and shows in ``HfArgumentParser(...).parse_args(["--help"])``; the Trainer inherits both
:class:`~hf_data_efficiency.DataEfficiencyTrainer` and trl's Trainer, and everything data-efficiency goes through the
:class:`~hf_data_efficiency.DataEfficiencyEngine`. With no data-efficiency option each is exactly trl's.

* **SFT** (:class:`DataEfficiencySFTTrainer`, :class:`DataEfficiencySFTConfig`): the curriculum, random-LTD, dynamic
  batching and ``--data_efficiency_recipe`` over the rows trl has tokenized (the recipe reads them after trl's
  preparation). Completion-only loss stays as trl builds it (labels of -100 on the prompt), and the loss of an
  optimizer step is the mean over its real, shifted label tokens. On trl's padding-free batches (``padding_free``, or
  ``packing`` with a ``bfd`` strategy), whose rows are whole micro-batches of documents, random-LTD keeps
  ``min(len, kept)`` tokens of each document (the per-document rule of ``docs/random_ltd.md``), and
  ``seqlen_curriculum`` cuts each document before they are concatenated. Refused, with the reason: a sampling
  curriculum over ``packing=True`` rows, which mix documents of every difficulty.
* **GRPO** (:class:`DataEfficiencyGRPOTrainer`, :class:`DataEfficiencyGRPOConfig`): a curriculum over *prompts* that
  keeps trl's generation groups whole (each group holds the ``num_generations`` completions of one prompt, with
  ``steps_per_generation``, ``num_iterations``, gradient accumulation and several processes), from a dataset column
  or a registered metric (``curriculum_metrics``), and/or online from rewards (``--pass_rate_curriculum``); see
  :mod:`hf_data_efficiency.curriculum.generation_groups` for the layout, the draw and the pass-rate rule. Every
  generation's groups are checked as they are scored. The pass rates are checkpointed in ``pass_rate_state.json``
  (JSON, written atomically before the Trainer's files), so a resumed run draws as the uninterrupted one.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging

from .._validation import UnreadableFileError, check_state_keys, read_json
from ..checkpoints import TRAINER_STATE_NAME, resolve_resume_checkpoint
from ..curriculum.generation_groups import (
    GENERATION_KEY,
    PROMPT_KEY,
    GroupedPromptSampler,
    PassRateConfig,
    PassRateTracker,
)
from ..curriculum.transforms import CurriculumDataset
from ..engine import TrainLoader, load_sampler_state
from ..fileio import atomic_write_text
from ..trainer import DataEfficiencyTrainer
from ..training_args import DataEfficiencyTrainingArguments

try:
    from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
except ImportError as e:  # trl is an optional extra
    raise ImportError(
        "hf_data_efficiency.integrations.trl needs trl, which is not installed: pip install 'hf-data-efficiency[trl]'"
        f" ({e})."
    ) from e

logger = logging.get_logger(__name__)

__all__ = [
    "PASS_RATE_STATE_NAME",
    "DataEfficiencyGRPOConfig",
    "DataEfficiencyGRPOTrainer",
    "DataEfficiencySFTConfig",
    "DataEfficiencySFTTrainer",
]

#: The pass-rate state in a GRPO checkpoint (see :meth:`DataEfficiencyGRPOTrainer._save_checkpoint`).
PASS_RATE_STATE_NAME = "pass_rate_state.json"
_PASS_RATE_FILE_VERSION = 1
_PASS_RATE_DEFAULTS = PassRateConfig()


def _merged_dict_fields(*classes: type) -> list[str]:
    return list(dict.fromkeys(name for cls in classes for name in cls._VALID_DICT_FIELDS))


def _pass_rate_field(name: str, help: str) -> Any:
    """The optional ``--pass_rate_<name>`` flag: ``None`` stands for the :class:`PassRateConfig` default, which its
    help names."""
    default = getattr(_PASS_RATE_DEFAULTS, name)
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    return field(default=None, metadata={"help": f"{help} Default: {shown}."})


# ------------------------------------------------------------------------------------------------------------------
# SFT
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class DataEfficiencySFTConfig(SFTConfig, DataEfficiencyTrainingArguments):
    """trl's ``SFTConfig`` with every data-efficiency flag of
    :class:`~hf_data_efficiency.DataEfficiencyTrainingArguments`. trl's config comes first among the bases, so its
    defaults for the ``TrainingArguments`` fields (``logging_steps``, ``bf16``, ...) win, as in trl."""

    _VALID_DICT_FIELDS = _merged_dict_fields(DataEfficiencyTrainingArguments, SFTConfig)


class DataEfficiencySFTTrainer(DataEfficiencyTrainer, SFTTrainer):
    """trl's ``SFTTrainer`` with curriculum learning, random-LTD, dynamic batching and the recipes; same constructor.

    The data-efficiency options come from a :class:`DataEfficiencySFTConfig` (or a DeepSpeed ``data_efficiency``
    block); the curriculum's metric columns are computed on the rows trl prepared (``input_ids``, every token counts:
    trl's rows hold no padding).
    """

    def __init__(
        self,
        model: Any,
        args: Any = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, args=args, data_collator=data_collator, train_dataset=train_dataset, **kwargs)
        # trl pads in its collator, so a prepared row holds no padding, and its pad token is often the EOS that ends
        # every row: the metrics count every token (the collator wrappers took the real pad id already)
        self.engine.pad_token_id = None

    def _check_options(self) -> None:
        super()._check_options()
        cfg = self.engine.config
        if self.args.packing and cfg.curriculum is not None and cfg.curriculum.sampling_metrics:
            raise ValueError(
                f"curriculum_metrics {[m.name for m in cfg.curriculum.sampling_metrics]} cannot be combined with "
                "packing=True: trl packs the documents into rows before the sampler sees them, so a row's metric "
                "mixes documents of every difficulty. Set packing=False (padding_free=True still removes the padding)."
            )

    def _rows_are_packed(self) -> bool:
        # trl's padding-free collator (padding_free, or bfd packing) concatenates the rows
        return super()._rows_are_packed() or bool(self.padding_free)

    def _document_lengths(self) -> tuple[Any, float] | None:
        # bfd packing leaves several documents per row, with their lengths in a seq_lengths column
        found = super()._document_lengths()
        if found is None or "seq_lengths" not in (self.train_dataset.column_names or ()):
            return found
        per_row = self.train_dataset["seq_lengths"]
        lengths = np.fromiter(itertools.chain.from_iterable(per_row), dtype=np.int64)
        return lengths, len(lengths) / max(1, len(per_row))


# ------------------------------------------------------------------------------------------------------------------
# GRPO
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class DataEfficiencyGRPOConfig(GRPOConfig, DataEfficiencyTrainingArguments):
    """trl's ``GRPOConfig`` with every data-efficiency flag and the pass-rate curriculum's.

    GRPO takes a curriculum over prompts: ``curriculum_metrics`` (a dataset column or a registered metric) decides
    which prompts are eligible at each step, ``--pass_rate_curriculum`` weights them by their running pass rate.
    Options that train on token batches (random-LTD, ``seqlen_curriculum``, dynamic batching, the recipes) are refused:
    GRPO generates from its prompts and scores each completion against its group. trl's config comes first among the
    bases, so its defaults for the ``TrainingArguments`` fields win, as in trl.
    """

    _VALID_DICT_FIELDS = _merged_dict_fields(DataEfficiencyTrainingArguments, GRPOConfig)

    pass_rate_curriculum: bool = field(
        default=False,
        metadata={
            "help": "Draw each generation's prompts by their running pass rate (online from the rewards): prompts "
            "whose pass rate lies inside --pass_rate_band, where a group's rewards differ and GRPO's advantages are "
            "non-zero, are preferred. The rates are checkpointed in pass_rate_state.json."
        },
    )
    pass_rate_band: list[float] | None = _pass_rate_field(
        "band",
        "The target band of pass rates, two numbers lo hi in [0, 1]; prompts inside it (bounds included) are drawn "
        "with weight 1.",
    )
    pass_rate_threshold: float | None = _pass_rate_field(
        "threshold",
        "A completion passes when its reward (the weighted sum of the reward functions, as trl logs it) is above this "
        "value.",
    )
    pass_rate_smoothing: float | None = _pass_rate_field(
        "smoothing",
        "How far each new group moves a prompt's pass rate towards the fraction of its completions that passed (an "
        "exponential moving average, in (0, 1]; a prompt's first group sets it).",
    )
    pass_rate_unseen: float | None = _pass_rate_field(
        "unseen",
        "The pass rate assumed for a prompt not scored yet; inside the band (the default), unseen prompts are drawn "
        "like the most useful ones, so every prompt gets tried.",
    )
    pass_rate_outside_weight: float | None = _pass_rate_field(
        "outside_weight",
        "The draw weight, in [0, 1], of a prompt whose pass rate is outside the band (relative to 1 inside), so that "
        "solved and unsolved prompts are retried now and then.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.data_efficiency_recipe is not None:
            raise ValueError(
                f"data_efficiency_recipe={self.data_efficiency_recipe!r} chooses random-LTD and sequence-length "
                "curricula for token training, which GRPO does not take; give a prompt curriculum "
                "(curriculum_metrics) and/or --pass_rate_curriculum instead."
            )
        self._pass_rate = self._resolve_pass_rate()

    def _resolve_pass_rate(self) -> PassRateConfig | None:
        names = ("band", "threshold", "smoothing", "unseen", "outside_weight")
        given = {name: value for name in names if (value := getattr(self, f"pass_rate_{name}")) is not None}
        if not self.pass_rate_curriculum:
            if given:
                raise ValueError(
                    f"{['--pass_rate_' + name for name in given]} given but the pass-rate curriculum is off; add "
                    "--pass_rate_curriculum."
                )
            return None
        return PassRateConfig(**{k: tuple(v) if k == "band" else v for k, v in given.items()})

    def get_pass_rate_config(self) -> PassRateConfig | None:
        """The resolved pass-rate rule (``None`` when ``--pass_rate_curriculum`` is off)."""
        return self._pass_rate


class _PassRateHooks(TrainerCallback):
    """Restores (or resets) the pass rates when training begins, once the prompt sampler exists."""

    def __init__(self, trainer: DataEfficiencyGRPOTrainer) -> None:
        self._trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self._trainer._restore_pass_rates()


class DataEfficiencyGRPOTrainer(DataEfficiencyTrainer, GRPOTrainer):
    """trl's ``GRPOTrainer`` with a curriculum over prompts that keeps the generation groups whole; same constructor.

    With ``curriculum_metrics`` and/or ``--pass_rate_curriculum`` (a :class:`DataEfficiencyGRPOConfig`), the train
    loader draws prompts with a :class:`~hf_data_efficiency.curriculum.generation_groups.GroupedPromptSampler`
    (trl's ``RepeatSampler`` layout) instead of trl's sampler; without them it is trl's ``GRPOTrainer`` unchanged.
    :attr:`prompt_sampler` is the sampler (built with the train dataloader), :attr:`pass_rates` the
    :class:`~hf_data_efficiency.curriculum.generation_groups.PassRateTracker`. Logs add ``pass_rate/seen_prompts`` and
    ``pass_rate/groups_in_band`` (the fraction of the groups scored since the last log whose pass fraction was inside
    the band) to the curriculum's ``curriculum/difficulty_<metric>``.
    """

    def __init__(
        self,
        model: Any,
        reward_funcs: Any = None,
        args: Any = None,
        train_dataset: Any = None,
        **kwargs: Any,
    ) -> None:
        self.pass_rates: PassRateTracker | None = None
        self.prompt_sampler: GroupedPromptSampler | None = None
        self._de_generation: tuple[int, list[int]] | None = None
        self._de_pass_rate_state: dict[str, Any] | None = None
        self._de_groups_in_band: list[float] = []
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        pass_rate = self.args.get_pass_rate_config() if isinstance(self.args, DataEfficiencyGRPOConfig) else None
        if self.engine.config.curriculum is None and pass_rate is None:
            return
        self._check_prompt_curriculum(pass_rate)
        if pass_rate is not None:
            self.pass_rates = PassRateTracker(len(self.train_dataset), pass_rate, lag=self.pass_rate_lag)
            self.add_callback(_PassRateHooks(self))

    # ----- options ------------------------------------------------------------------------------------------
    def _check_options(self) -> None:
        cfg = self.engine.config
        refused = [
            ("random_ltd", cfg.random_ltd is not None),
            ("dynamic_batching", cfg.dynamic_batching is not None),
            ("seqlen_curriculum", cfg.curriculum is not None and cfg.curriculum.transform is not None),
        ]
        names = [name for name, on in refused if on]
        if names:
            raise ValueError(
                f"{', '.join(names)} cannot be used with GRPO: they shape the token batches of supervised training, "
                "while GRPO generates completions from its prompts and compares each with its group (random-LTD would "
                "also make the policy's log-probabilities differ between the forward passes the importance ratio "
                "compares). Use a prompt curriculum (curriculum_metrics) and/or --pass_rate_curriculum."
            )

    def _check_prompt_curriculum(self, pass_rate: PassRateConfig | None) -> None:
        import datasets

        args = self.args
        if not isinstance(self.train_dataset, datasets.Dataset):
            raise ValueError(
                f"train_dataset: the prompt curriculum needs a map-style datasets.Dataset of prompts, got "
                f"{type(self.train_dataset).__name__}; materialise it (Dataset.from_list / from_generator)."
            )
        workers, acc, rates = args.dataloader_num_workers, args.accelerator_config, pass_rate is not None
        self._refuse_options(
            "the prompt curriculum, which lays out each process's share of the generation groups",
            ("accelerator_config.split_batches", acc.split_batches, acc.split_batches, "False"),
            ("accelerator_config.dispatch_batches", acc.dispatch_batches, bool(acc.dispatch_batches), "None or False"),
            ("dataloader_num_workers", workers, rates and workers > 0, "0 (the pass rates live in this process)"),
        )
        if not args.shuffle_dataset:
            logger.warning("shuffle_dataset=False has no effect: the prompt curriculum draws the prompts.")

    @property
    def repeat_count(self) -> int:
        """How many micro-steps read each generation batch: ``num_iterations * steps_per_generation``."""
        return self.num_iterations * self.args.steps_per_generation

    @property
    def pass_rate_lag(self) -> int:
        """Generation ``c`` is drawn from the pass rates recorded through generation ``c - lag``. The Trainer fetches
        an optimizer step's micro-batches before it trains on them, and accelerate fetches one more ahead, so the
        first batch of generation ``c`` can be read ``GA + 1`` micro-steps before generation ``c`` is generated; the
        generations surely scored by then started ``GA + 1`` or more micro-steps earlier: ``lag = ceil((GA + 1) /
        R)``, with ``R`` micro-steps per generation (:attr:`repeat_count`). trl's defaults (``R = GA``) give 2."""
        return max(1, math.ceil((self.args.gradient_accumulation_steps + 1) / self.repeat_count))

    # ----- data -----------------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        if not self.prompt_sampler_enabled:
            return super().get_train_dataloader()
        cfg = self.engine.config
        args = self.args
        dataset = self.train_dataset
        measured = dataset
        if cfg.curriculum is not None:
            measured = self.engine.metric_dataset(dataset, main_process_first=args.main_process_first)
        self.prompt_sampler = GroupedPromptSampler(
            len(dataset),
            num_generations=self.num_generations,
            generation_batch_size=args.generation_batch_size,
            repeat_count=self.repeat_count,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            seed=cfg.curriculum.seed if cfg.curriculum is not None else cfg.seed,
            curriculum_config=cfg.curriculum,
            metric_values=measured if cfg.curriculum is not None else None,
            pass_rates=self.pass_rates,
        )
        self.engine.sampler = self.prompt_sampler  # its state, difficulty logs and epochs go through the engine
        pruned = self._prune_training_columns(measured)
        data = self.engine.loader_dataset(pruned) if cfg.curriculum is not None else CurriculumDataset(pruned)
        plan = TrainLoader(
            data, batch_size=self._train_batch_size * args.steps_per_generation, sampler=self.prompt_sampler
        )
        loader = plan.dataloader(self.data_collator, **self._dataloader_options())
        return self.accelerator.prepare(loader)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        tags = [(row.get(PROMPT_KEY), row.get(GENERATION_KEY)) for row in inputs]
        if tags and tags[0][0] is not None:  # a training batch of the prompt curriculum
            generations = {generation for _, generation in tags}
            if len(generations) != 1:
                raise RuntimeError(
                    f"a generation batch holds rows of generations {sorted(generations)}; its rows must all come from "
                    "one generation (per_device_train_batch_size * steps_per_generation entries of the prompt sampler)."
                )
            self._de_generation = (generations.pop(), [prompt for prompt, _ in tags])
            inputs = [{k: v for k, v in row.items() if k not in (PROMPT_KEY, GENERATION_KEY)} for row in inputs]
        return super()._generate_and_score_completions(inputs)

    def _calculate_rewards(
        self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any
    ) -> torch.Tensor:
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        generation, self._de_generation = self._de_generation, None
        if generation is not None:
            self._record_generation(*generation, rewards_per_func)
        return rewards_per_func

    def _record_generation(self, generation: int, local_prompts: list[int], rewards_per_func: torch.Tensor) -> None:
        """Check the generation's groups (gathered over the processes, in the order trl gathers the rewards) and
        record their pass fractions."""
        device = self.accelerator.device
        prompts = self.accelerator.gather(torch.tensor(local_prompts, dtype=torch.long, device=device)).cpu().numpy()
        groups = prompts.reshape(-1, self.num_generations)
        if (groups != groups[:, :1]).any() or len(np.unique(groups[:, 0])) != len(groups):
            raise RuntimeError(
                f"generation {generation}: the generation groups hold the prompts {groups.tolist()}; every group must "
                f"hold the num_generations={self.num_generations} completions of one prompt, and no prompt may be in "
                "two groups. Something between the prompt sampler and the generation (a custom sampler, "
                "get_train_dataloader or _prepare_inputs) reordered the rows."
            )
        if self.pass_rates is None:
            return
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: does not pass
        fractions = self.pass_rates.pass_fractions(rewards.cpu().numpy(), self.num_generations)
        if self.pass_rates.record(generation, groups[:, 0], fractions):
            self._de_groups_in_band.append(float(self.pass_rates.config.in_band(fractions).mean()))
        else:
            logger.info(
                f"generation {generation} was scored before the checkpoint; its pass rates are kept as first recorded."
            )
        # the loader draws generation >= generation + 1 from now on, with the records through generation + 1 - lag
        self.pass_rates.commit(generation + 1 - self.pass_rate_lag)

    # ----- logs ---------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.pass_rates is not None and ("loss" in logs or "train_loss" in logs):
            logs["pass_rate/seen_prompts"] = self.pass_rates.summary()["seen_prompts"]
            if self._de_groups_in_band:
                logs["pass_rate/groups_in_band"] = float(np.mean(self._de_groups_in_band))
                self._de_groups_in_band = []
        super().log(logs, start_time)

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # written before the Trainer's files and the data-efficiency state (the completion mark, written last), so
        # a complete checkpoint always holds it
        if self.pass_rates is not None and self.args.should_save:
            step = self.state.global_step
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{step}")
            state = {
                "version": _PASS_RATE_FILE_VERSION,
                "global_step": step,
                "sampler": self.prompt_sampler.state_dict(position=step * self.prompt_sampler.global_batch_size),
                "pass_rates": self.pass_rates.state_dict(),
            }
            atomic_write_text(os.path.join(folder, PASS_RATE_STATE_NAME), json.dumps(state, sort_keys=True) + "\n")
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, **kwargs: Any) -> Any:
        self._de_pass_rate_state = None
        if self.prompt_sampler_enabled and resume_from_checkpoint:
            resume_from_checkpoint = self._resolve_checkpoint(resume_from_checkpoint)
            self._warn_inside_generation(resume_from_checkpoint)
            if self.pass_rates is not None:
                self._de_pass_rate_state = self._read_pass_rates(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)

    @property
    def prompt_sampler_enabled(self) -> bool:
        """Whether the train loader draws prompts with the prompt curriculum."""
        return self.engine.config.curriculum is not None or self.pass_rates is not None

    def _resolve_checkpoint(self, resume: str | bool) -> str:
        if resume is not True:
            return str(resume)
        if self.engine.enabled:  # the newest checkpoint with its data-efficiency state (written last)
            return resolve_resume_checkpoint(True, self.args.output_dir)
        found = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
        if found is None:
            raise ValueError(f"resume_from_checkpoint=True: no checkpoint found in {self.args.output_dir}.")
        return found

    def _warn_inside_generation(self, checkpoint: str) -> None:
        try:
            step = read_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).get("global_step")
        except UnreadableFileError:
            return  # the Trainer reports it
        if isinstance(step, int) and step * self.args.gradient_accumulation_steps % self.repeat_count:
            logger.warning(
                f"{checkpoint} is at step {step}, inside a generation (each generation is trained on for "
                f"{self.repeat_count} micro-steps): trl keeps the generated completions in memory only, so the resumed "
                "run generates that generation's completions again and does not match the uninterrupted run exactly. "
                "Save at multiples of num_iterations * steps_per_generation / gradient_accumulation_steps steps."
            )

    def _read_pass_rates(self, checkpoint: str) -> dict[str, Any] | None:
        path = os.path.join(checkpoint, PASS_RATE_STATE_NAME)
        try:
            state = check_state_keys(
                "pass-rate file", read_json(path), ("version", "global_step", "sampler", "pass_rates")
            )
            if state["version"] != _PASS_RATE_FILE_VERSION:
                raise ValueError(f"version={state['version']!r} is not supported; allowed: {_PASS_RATE_FILE_VERSION}")
            step = read_json(os.path.join(checkpoint, TRAINER_STATE_NAME)).get("global_step")
            if state["global_step"] != step:
                raise ValueError(f"it is for step {state['global_step']!r} but the checkpoint is at step {step!r}")
            return state
        except (UnreadableFileError, ValueError, TypeError) as e:
            problem = "is missing" if not os.path.isfile(path) else f"cannot be used ({e})"
            if self.args.ignore_data_skip:
                logger.warning(f"{path} {problem}; resuming anyway (ignore_data_skip=True): the pass rates restart.")
                return None
            raise ValueError(
                f"Cannot resume the pass-rate curriculum exactly: {path} {problem}. To resume anyway, pass "
                "--ignore_data_skip: the pass rates then restart from scratch."
            ) from e

    def _restore_pass_rates(self) -> None:
        state, self._de_pass_rate_state = self._de_pass_rate_state, None
        if state is None:
            self.pass_rates.reset()
            return
        try:
            load_sampler_state(self.prompt_sampler, state["sampler"], state["global_step"])
            self.pass_rates.load_state_dict(state["pass_rates"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"Cannot resume the pass-rate curriculum exactly: {PASS_RATE_STATE_NAME}: {e}") from e
