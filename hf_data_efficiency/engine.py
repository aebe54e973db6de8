"""``DataEfficiencyEngine``: the one object that wires curriculum learning and random-LTD to a training loop.

Every integration (``DataEfficiencyTrainer``, a plain accelerate loop, the CLI) goes through it, so each piece of
logic exists once:

* **config** -- :meth:`DataEfficiencyConfig.load <hf_data_efficiency.DataEfficiencyConfig.load>` reads our config,
  a DeepSpeed one or a ``data_efficiency`` block;
* **data** -- :meth:`~DataEfficiencyEngine.train_loader` decides the training data path once (map-style data or a
  stream; fixed batches, a token budget or a batch-size warmup; with or without group mixing) and returns one
  :class:`TrainLoader` description that the Trainer and a plain loop both build their DataLoader from. Its parts:
  :meth:`~DataEfficiencyEngine.metric_dataset` finds every sampling metric (a dataset column of its name, DeepSpeed
  index files, or computed); :meth:`~DataEfficiencyEngine.build_sampler` builds the per-step draw (the
  :class:`~hf_data_efficiency.CurriculumSampler`, or group mixing's
  :class:`~hf_data_efficiency.curriculum.mixing.GroupMixingSampler`),
  :meth:`~DataEfficiencyEngine.build_batch_sampler` the token-budget
  :class:`~hf_data_efficiency.batching.sampler.TokenBudgetBatchSampler`,
  :meth:`~DataEfficiencyEngine.build_warmup_sampler` the batch-size warmup's
  :class:`~hf_data_efficiency.batching.warmup.WarmupBatchSampler`, :meth:`~DataEfficiencyEngine.build_stream` the
  streaming curriculum; :meth:`~DataEfficiencyEngine.loader_dataset` and :meth:`~DataEfficiencyEngine.wrap_collator`
  carry each batch's ``seqlen_truncate``/``seqlen_reshape`` difficulty (and, with online mixing, each sample's group)
  from the sampler to the collator;
* **model** -- :meth:`~DataEfficiencyEngine.attach` patches random-LTD in place,
  :meth:`~DataEfficiencyEngine.begin_step` sets the kept length before each optimizer step;
* **counters and logs** -- :meth:`~DataEfficiencyEngine.count_batch` per micro-batch,
  :meth:`~DataEfficiencyEngine.step_logs` (a collective call) per logged step;
* **online mixing** -- :meth:`~DataEfficiencyEngine.pop_groups` and :meth:`~DataEfficiencyEngine.observe_losses` per
  micro-batch, :meth:`~DataEfficiencyEngine.end_step` (a collective call) after every optimizer step;
* **LR** -- :meth:`~DataEfficiencyEngine.layer_token_lr_scheduler`, and with dynamic batching or a batch-size warmup
  the per-step factor :meth:`~DataEfficiencyEngine.scaled_lr` applies on top of any scheduler;
* **state** -- one versioned JSON :meth:`~DataEfficiencyEngine.state_dict`, written atomically into checkpoints.

A plain loop::

    engine = DataEfficiencyEngine(cfg, batch_size=8, world_size=accelerator.num_processes)
    plan = engine.train_loader(data, rank=accelerator.process_index, device=accelerator.device)
    loader = plan.dataloader(engine.wrap_collator(collate))
    loader = loader if plan.per_process else accelerator.prepare(loader)
    engine.attach(model)
    for step, batch in ...:  # engine.begin_step(step) before each optimizer step, engine.count_batch(batch)
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers.utils import logging

from ._validation import UnreadableFileError, check_keys, check_state_int, expect_mapping, read_json
from .config import DataEfficiencyConfig
from .fileio import atomic_write_text

logger = logging.get_logger(__name__)

STATE_NAME = "data_efficiency_state.json"
STATE_VERSION = 4
#: version 2 has no "dynamic_batching" section (it was refused then), version 3 no "mixing" or "batch_size_warmup"
_READABLE_VERSIONS = (2, 3, STATE_VERSION)
_STATE_KEYS = (
    "version",
    "global_step",
    "config",
    "counters",
    "sampler",
    "random_ltd",
    "dynamic_batching",
    "mixing",
    "batch_size_warmup",
)
_KEYS_OF_VERSION = {2: _STATE_KEYS[:6], 3: _STATE_KEYS[:7], STATE_VERSION: _STATE_KEYS}
_COUNTERS = ("consumed_samples", "tokens", "layer_tokens")
_INT64_MAX = 2**63 - 1
#: ``--lr_scheduler_type`` values that have a layer-token version, and the decay they map to.
LAYER_TOKEN_DECAYS = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant",
}


def declare_causal_lm_loss(model: Any) -> bool:
    """Set ``model.loss_type = "ForCausalLM"`` on a causal LM whose ``loss_type`` is unset; returns whether it did.

    transformers 5.23 leaves ``loss_type`` unset on a causal LM built from a config; its loss still shifts the labels,
    but the Trainer then counts ``num_items_in_batch`` over unshifted labels (one extra token per row), which
    under-weights short rows: 6% at 16 tokens, so a sequence-length curriculum is biased. Declaring the loss the
    model already uses makes the count match: the loss of every optimizer step is the mean over its real, shifted
    label tokens, across truncation, reshape and gradient accumulation."""
    from transformers.loss.loss_utils import LOSS_MAPPING

    if not is_causal_lm(model):
        return False
    inner = _unwrapped(model)
    if getattr(inner, "loss_type", None) in LOSS_MAPPING or getattr(inner.config, "is_encoder_decoder", False):
        return False
    inner.loss_type = "ForCausalLM"
    logger.info(
        f"{type(inner).__name__}.loss_type was unset; set to 'ForCausalLM' (the loss it computes), so the loss is "
        "normalised over the real, shifted label tokens of each optimizer step."
    )
    return True


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` (or the module it wraps) is a transformers causal LM, whose loss shifts the labels."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(_unwrapped(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()


def _unwrapped(model: Any) -> Any:
    """The transformers model inside a DDP-style wrapper (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def add_metric_columns(
    dataset: Any,
    metrics: Sequence[Any],
    *,
    num_proc: int | None = None,
    pad_token_id: int | None = None,
    input_column: str = "input_ids",
) -> tuple[Any, list[str]]:
    """``dataset`` with a column for every metric, and the names of the columns added.

    ``metrics`` are names or ``CurriculumMetricConfig`` entries. A metric comes from the dataset column of its name;
    else from DeepSpeed index files when its config names them (``index_to_sample_path``/``index_to_metric_path``);
    else it is computed, when it is registered (``register_curriculum_metric``; the built-in ones are)."""
    from .curriculum.metrics import compute_metrics, get_curriculum_metric, is_registered_metric, registered_metrics

    added = []
    for m in metrics:
        index_path = getattr(m, "index_to_sample_path", None)
        if index_path is None:
            continue
        if m.name in dataset.column_names:
            logger.warning(
                f"curriculum metric {m.name!r}: the dataset column of that name is used; its DeepSpeed index "
                f"files ({index_path}) are not read."
            )
            continue
        from .curriculum.index import metric_array_from_deepspeed_index

        values = metric_array_from_deepspeed_index(index_path, m.index_to_metric_path, len(dataset))
        dataset = dataset.add_column(m.name, values)
        added.append(m.name)
    names = [m if isinstance(m, str) else m.name for m in metrics]
    missing = [n for n in dict.fromkeys(names) if n not in dataset.column_names]
    if not missing:
        return dataset, added
    unknown = [n for n in missing if not is_registered_metric(n)]
    if unknown:
        raise ValueError(
            f"curriculum metric(s) {unknown} are neither columns of the training dataset ({dataset.column_names}) "
            f"nor registered metrics ({', '.join(registered_metrics())}); add the column(s), or register a metric "
            "with hf_data_efficiency.register_curriculum_metric(name, fn)."
        )
    by_tokens = [n for n in missing if get_curriculum_metric(n).inputs == "tokens"]
    if by_tokens and input_column not in dataset.column_names:  # a metric of the batch reads its own columns
        raise ValueError(
            f"curriculum metric(s) {by_tokens} are not columns of the dataset and cannot be computed: it has no "
            f"{input_column!r} column (columns: {dataset.column_names}). Tokenize the dataset first, or add the metric "
            "columns yourself (one number per sample, named after the metric)."
        )
    dataset = compute_metrics(
        dataset, missing, num_proc=num_proc, pad_token_id=pad_token_id, input_column=input_column
    )
    return dataset, added + missing


def is_stream(dataset: Any) -> bool:
    """Whether ``dataset`` is an ``IterableDataset`` (``datasets`` or torch): read in order, without an index."""
    import datasets

    return isinstance(dataset, (torch.utils.data.IterableDataset, datasets.IterableDataset))


@dataclass
class TrainLoader:
    """The training DataLoader as :meth:`DataEfficiencyEngine.train_loader` decided it: what it reads (the tagged
    map-style dataset, or this process's stream), how it batches (a fixed ``batch_size`` with the curriculum
    ``sampler``, a token-budget ``batch_sampler``, or a stream of whole ``micro_batches``), whether a stream is this
    process's share already (``per_process``: not to be sharded or dispatched again), and the LR factor of a 1-based
    step (token budgets). :meth:`dataloader` builds it; a loop prepares it with accelerate unless ``per_process``."""

    dataset: Any
    batch_size: int | None = None
    sampler: Any = None
    batch_sampler: Any = None
    per_process: bool = False
    micro_batches: bool = False
    lr_factor: Callable[[int], float] | None = None
    #: online mixing: ``(mixing.online_delay, gradient_accumulation_steps)``, checked against the loader's lookahead
    online_delay: tuple[int, int] | None = None

    def collate_fn(self, collator: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
        """``collator`` (already wrapped by :meth:`DataEfficiencyEngine.wrap_collator`) as this loader calls it."""
        if not self.micro_batches:
            return collator
        from .batching.stream import MicroBatchCollator

        return MicroBatchCollator(collator)

    def dataloader(
        self,
        collator: Callable[[list[Any]], Any],
        *,
        num_workers: int = 0,
        drop_last: bool = False,
        worker_init_fn: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> DataLoader:
        """The DataLoader; ``kwargs`` are further DataLoader options (``pin_memory``, ``prefetch_factor``, ...).
        ``drop_last`` applies to fixed batches over map-style data, ``worker_init_fn`` to map-style data."""
        if self.per_process and num_workers:
            raise ValueError(
                f"dataloader_num_workers={num_workers}: a streaming curriculum reads its stream in the training "
                "process, which checkpoints its state and agrees with the other processes on the end; allowed: 0."
            )
        if self.online_delay is not None:
            delay, accumulation = self.online_delay
            ahead = num_workers * (kwargs.get("prefetch_factor") or 2) if num_workers else 0
            needed = 2 + ahead // accumulation
            if delay < needed:
                raise ValueError(
                    f"mixing.online_delay={delay} is too short for this DataLoader: with dataloader_num_workers="
                    f"{num_workers} (prefetch {ahead} micro-batches) and gradient_accumulation_steps={accumulation}, a "
                    f"step is drawn before the losses of step k - {needed - 1} are known; allowed: online_delay >= "
                    f"{needed}, or fewer workers."
                )
        params: dict[str, Any] = {"collate_fn": self.collate_fn(collator), "num_workers": num_workers, **kwargs}
        if self.batch_sampler is not None:
            params["batch_sampler"] = self.batch_sampler
        else:
            params["batch_size"] = self.batch_size
        if self.sampler is not None:
            params.update(sampler=self.sampler, drop_last=drop_last)
        if not self.per_process and worker_init_fn is not None:
            params["worker_init_fn"] = worker_init_fn
        return DataLoader(self.dataset, **params)


class ResumeError(ValueError):
    """A checkpoint's data-efficiency state cannot be resumed from exactly."""


def load_sampler_state(sampler: Any, state: Mapping[str, Any], global_step: int) -> None:
    """Load a curriculum sampler's ``state`` saved after ``global_step`` optimizer steps (``load_state_dict`` checks
    the seed, data, batch geometry and metric fingerprint); its position must be ``global_step`` global batches."""
    sampler.load_state_dict(state)
    expected = global_step * sampler.global_batch_size
    if state["position"] != expected:
        raise ValueError(
            f"sampler.position={state['position']!r} disagrees with global_step={global_step} x global batch "
            f"{sampler.global_batch_size} = {expected}."
        )


class DataEfficiencyEngine:
    """Curriculum learning and random-LTD for one training run (see the module docstring).

    Args:
        config: the data-efficiency config (anything :meth:`DataEfficiencyConfig.load` takes).
        batch_size: per-device micro-batch size.
        world_size, gradient_accumulation_steps: the batch geometry; one optimizer step consumes
            ``batch_size * world_size * gradient_accumulation_steps`` samples.
        pad_token_id: padding id used when metrics are computed and by ``seqlen_reshape``.
        metrics_num_proc: worker processes for computing missing metric columns.
        seeded_collation: run the collator under a torch RNG seeded per micro-batch from its place in training
            (see :class:`~hf_data_efficiency.curriculum.transforms.SeededCollation`), so collator randomness such as
            MLM masking is the same after a resume as in an uninterrupted run. On by default.
    """

    def __init__(
        self,
        config: Any,
        *,
        batch_size: int,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        pad_token_id: int | None = None,
        metrics_num_proc: int | None = None,
        seeded_collation: bool = True,
    ) -> None:
        self.config = DataEfficiencyConfig.load(config)
        self.batch_size = int(batch_size)
        self.world_size = max(1, int(world_size))
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)
        self.pad_token_id = pad_token_id
        self.metrics_num_proc = metrics_num_proc
        self.seeded_collation = seeded_collation
        self._collation: Any = None
        self.sampler: Any = None
        self.batch_sampler: Any = None
        #: dynamic batching budgets the sum of lengths (a collator that packs rows) instead of the padded count
        self.packed = False
        self.random_ltd_handle: Any = None
        #: group mixing's :class:`~hf_data_efficiency.curriculum.mixing.GroupMixer` (built with the data path)
        self.mixer: Any = None
        self._metric_cache: tuple[Any, Any, list[str]] | None = None
        #: the model being trained (sizes the reference models' cost) and the device reference models run on
        self.model: torch.nn.Module | None = None
        self.device: Any = None
        #: excess-loss token selection (:meth:`attach_reference`), or ``None``
        self.token_selection: Any = None
        #: tokens the ``reference_loss`` metric scored for this run, and their cost in effective tokens per token
        self.reference_scoring_tokens = 0
        self.reference_scoring_cost = 1.0 / 3.0
        self.reset()
        self._check_combinations()

    # ----- geometry ---------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size * self.gradient_accumulation_steps

    @property
    def uses_data_path(self) -> bool:
        """Whether the engine builds the training loader (curriculum, token budget, mixing or batch-size warmup)."""
        cfg = self.config
        return any(
            part is not None for part in (cfg.curriculum, cfg.dynamic_batching, cfg.mixing, cfg.batch_size_warmup)
        )

    @property
    def online_mixing(self) -> bool:
        return self.config.mixing is not None and self.config.mixing.strategy == "online"

    def warmup(self) -> Any:
        """The :class:`~hf_data_efficiency.batching.warmup.BatchSizeWarmup` for the current batch size (``None``
        without one); its checks name the bad setting."""
        if self.config.batch_size_warmup is None:
            return None
        from .batching.warmup import BatchSizeWarmup

        return BatchSizeWarmup(self.config.batch_size_warmup, self.batch_size)

    def _check_combinations(self) -> None:
        """Refuse settings that cannot be combined, naming them (checked once the batch size is known)."""
        cfg = self.config
        self.warmup()
        warmup, budget = cfg.batch_size_warmup, cfg.dynamic_batching
        if warmup is not None and budget is not None and warmup.lr_scaling_method != "none":
            raise ValueError(
                f"batch_size_warmup.lr_scaling_method={warmup.lr_scaling_method!r} cannot be combined with dynamic "
                "batching, whose LR already follows each step's samples (dynamic_batching.lr_scaling_method); "
                "allowed with dynamic batching: 'none'."
            )

    # ----- data ---------------------------------------------------------------------------------------------
    def check_dataset(self, dataset: Any) -> None:
        """Refuse a training dataset the curriculum cannot sample from (``None`` passes: checked at training).
        A stream (``IterableDataset``) gets the streaming curriculum (:meth:`build_stream`)."""
        import datasets

        cfg = self.config
        if dataset is None or not self.uses_data_path:
            return
        if is_stream(dataset):
            if cfg.batch_size_warmup is not None:
                raise ValueError(
                    f"train_dataset: batch-size warmup needs map-style data (a datasets.Dataset), got a stream "
                    f"({type(dataset).__name__}); materialise it, or drop batch_size_warmup."
                )
            if cfg.mixing is not None and cfg.mixing.strategy == "natural":
                raise ValueError(
                    "mixing.strategy='natural' needs the group sizes, which a stream does not know; allowed with a "
                    "stream: stratified, fixed, online."
                )
            if cfg.dynamic_batching is None or cfg.curriculum is not None or cfg.mixing is not None:
                return
            raise ValueError(
                f"train_dataset: dynamic batching over a stream ({type(dataset).__name__}) runs inside the streaming "
                "curriculum, and this config has no curriculum; add a curriculum (data_sampling.curriculum_learning, "
                "e.g. a seqlen metric at its max difficulty), or materialise the dataset (load without "
                "streaming=True, or datasets.Dataset.from_generator)."
            )
        needs = (
            (cfg.curriculum, "curriculum learning", "the metric columns"),
            (cfg.mixing, "group mixing", "the group column"),
        )
        for part, what, columns in needs:
            if part is not None and not isinstance(dataset, datasets.Dataset):
                raise ValueError(
                    f"train_dataset: {what} needs a datasets.Dataset with {columns}, or an IterableDataset "
                    f"(streaming), got {type(dataset).__name__}; convert it with datasets.Dataset.from_list / from_dict."
                )
        if cfg.mixing is not None and cfg.mixing.column not in dataset.column_names:
            raise ValueError(
                f"mixing.column={cfg.mixing.column!r} is not a column of the training dataset; allowed: one of "
                f"{dataset.column_names}."
            )

    def metric_dataset(self, dataset: Any, *, main_process_first: Callable[..., Any] | None = None) -> Any:
        """``dataset`` with a column for every sampling metric (see :func:`add_metric_columns`). ``main_process_first``
        is a context-manager factory (``TrainingArguments.main_process_first``, ``Accelerator.main_process_first``),
        so that one process computes and the others read the ``datasets`` cache. Cached per input dataset."""
        if self._metric_cache is not None and self._metric_cache[0] is dataset:
            return self._metric_cache[1]
        self.check_dataset(dataset)
        if is_stream(dataset):  # a streaming curriculum measures each chunk as it reads it
            return dataset
        with main_process_first() if main_process_first else contextlib.nullcontext():
            scored, by_reference = self._score_reference_metrics(dataset)
            result, added = add_metric_columns(
                scored,
                self.config.curriculum.sampling_metrics,
                num_proc=self.metrics_num_proc,
                pad_token_id=self.pad_token_id,
            )
        self._metric_cache = (dataset, result, by_reference + added)
        return result

    def _score_reference_metrics(self, dataset: Any) -> tuple[Any, list[str]]:
        """``dataset`` with the column of every ``reference_loss`` metric that names a reference model and is not a
        column yet (:class:`~hf_data_efficiency.curriculum.reference.ReferenceLoss`, on :attr:`device`), and the
        names added; the tokens scored are counted in :attr:`reference_scoring_tokens`."""
        added = []
        for m in self.config.curriculum.sampling_metrics:
            if getattr(m, "reference_model", None) is None or m.name in dataset.column_names:
                continue
            from .curriculum.metrics import metric_arrays
            from .curriculum.reference import ReferenceLoss, check_reference_compatible, reference_cost

            where = f"curriculum_metrics.{m.name}.reference_model"
            scorer = ReferenceLoss(m.reference_model, device=self.device, pad_token_id=self.pad_token_id)
            if self.model is not None:
                check_reference_compatible(scorer.model, self.model, where=where)
                self.reference_scoring_cost = reference_cost(scorer.model, self.model)
            dataset = scorer.map(dataset, column=m.name, num_proc=self.metrics_num_proc)
            # its real tokens: the attention_mask ones, else the non-padding ids
            lengths = add_metric_columns(dataset, ["seqlen"], pad_token_id=self.pad_token_id)[0]
            self.reference_scoring_tokens += int(metric_arrays(lengths, ["seqlen"])["seqlen"].sum())
            added.append(m.name)
        return dataset, added

    def build_sampler(self, dataset: Any) -> Any:
        """Build the per-step draw of fixed batches as :attr:`sampler` (the :class:`CurriculumSampler` over
        ``dataset``'s metric columns, see :meth:`metric_dataset`; with group mixing the
        :class:`~hf_data_efficiency.curriculum.mixing.GroupMixingSampler`), and return what the DataLoader draws from:
        that stream, each index tagged with its step's max tokens under a sequence-length transform (with online
        mixing, its group; with seeded collation, its stream position) for :meth:`loader_dataset` and
        :meth:`wrap_collator`."""
        from .curriculum.transforms import PositionTaggedSampler

        transform = self.config.curriculum.transform if self.config.curriculum is not None else None
        self.sampler = self._draw(
            dataset, self.batch_size, self.world_size, self.gradient_accumulation_steps, transform is not None
        )
        return PositionTaggedSampler(self.sampler) if self.seeded_collation else self.sampler

    def _draw(self, dataset: Any, batch_size: int, world_size: int, accumulation: int, max_tokens: bool) -> Any:
        """The per-step draw of ``batch_size * world_size * accumulation`` samples: group mixing (with the
        curriculum's eligibility within the groups) or the curriculum; ``None`` with neither."""
        cfg = self.config
        if cfg.mixing is None:
            if cfg.curriculum is None:
                return None
            from .curriculum.sampler import CurriculumSampler

            return CurriculumSampler(
                self.metric_dataset(dataset),
                cfg.curriculum,
                batch_size=batch_size,
                world_size=world_size,
                gradient_accumulation_steps=accumulation,
                return_max_tokens=max_tokens,
            )
        from .curriculum.mixing import GroupMixer, GroupMixingSampler, group_names
        from .curriculum.sampler import dataset_column

        self.check_dataset(dataset)
        groups, ids = group_names(dataset_column(dataset, cfg.mixing.column), cfg.mixing.column)
        self.mixer = GroupMixer(cfg.mixing, groups, seed=cfg.seed)
        measured = self.metric_dataset(dataset) if cfg.curriculum is not None else None
        return GroupMixingSampler(
            ids,
            self.mixer,
            batch_size,
            world_size,
            accumulation,
            curriculum=cfg.curriculum,
            metric_values=measured,
            return_max_tokens=max_tokens,
            tag_groups=self.online_mixing,
        )

    def build_batch_sampler(self, dataset: Any, lengths: Sequence[int] | None = None) -> Any:
        """Build the token-budget batch sampler over ``dataset`` as :attr:`batch_sampler` (and, with a curriculum, its
        per-step draw as :attr:`sampler`) and return it: a DataLoader ``batch_sampler`` for :meth:`loader_dataset`.

        ``lengths`` default to a ``seqlen`` column, else DeepSpeed's seqlen files under ``metrics_path``, else the
        ``input_ids`` lengths. The LR reference batch is :attr:`global_batch_size`. The per-step draw is group
        mixing's or the curriculum's; a batch-size warmup ramps the budget."""
        from .batching.lengths import lengths_from_metrics_path, sample_lengths
        from .batching.sampler import TokenBudgetBatchSampler

        cfg = self.config.dynamic_batching
        if cfg is None:
            raise ValueError("build_batch_sampler needs dynamic batching on (data_sampling.dynamic_batching).")
        self.check_dataset(dataset)
        if self.config.curriculum is not None:
            dataset = self.metric_dataset(dataset)
        if lengths is None and cfg.metrics_path and "seqlen" not in getattr(dataset, "column_names", ()):
            lengths = lengths_from_metrics_path(cfg.metrics_path, len(dataset))
            if lengths is None:
                logger.info(
                    f"dynamic_batching.metrics_path={cfg.metrics_path!r} has no seqlen files; lengths computed."
                )
        lengths = sample_lengths(dataset) if lengths is None else lengths
        curriculum = None
        if self.config.curriculum is not None or self.config.mixing is not None:
            transform = self.config.curriculum.transform if self.config.curriculum is not None else None
            draw = TokenBudgetBatchSampler.required_draw_size(
                lengths,
                cfg,
                self.world_size * self.gradient_accumulation_steps,
                transform_min=transform.min_difficulty if transform is not None else None,
            )
            curriculum = self._draw(dataset, draw, 1, 1, False)
        self.batch_sampler = TokenBudgetBatchSampler(
            lengths,
            cfg,
            world_size=self.world_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            reference_batch_size=self.global_batch_size,
            seed=self.config.seed,
            curriculum_sampler=curriculum,
            packed=self.packed,
            tag_positions=self.seeded_collation,
            warmup=self.warmup(),
        )
        self.sampler = curriculum
        return self.batch_sampler

    def build_warmup_sampler(self, dataset: Any) -> Any:
        """Build the batch-size warmup's fixed-size batch sampler over ``dataset`` as :attr:`batch_sampler` (its
        per-step draw, group mixing's or the curriculum's at the full batch, as :attr:`sampler`) and return it: a
        DataLoader ``batch_sampler`` for :meth:`loader_dataset`."""
        from .batching.warmup import WarmupBatchSampler

        if self.config.batch_size_warmup is None:
            raise ValueError("build_warmup_sampler needs batch-size warmup on (batch_size_warmup).")
        self.check_dataset(dataset)
        draw = self._draw(dataset, self.batch_size, self.world_size, self.gradient_accumulation_steps, False)
        self.batch_sampler = WarmupBatchSampler(
            len(dataset),
            self.warmup(),
            world_size=self.world_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            seed=self.config.seed,
            draw=draw,
            tag_positions=self.seeded_collation,
        )
        self.sampler = draw
        return self.batch_sampler

    def build_stream(self, dataset: Any, *, rank: int = 0, device: Any = None) -> Any:
        """Build the :class:`~hf_data_efficiency.curriculum.streaming.StreamingCurriculum` over the stream
        ``dataset`` as :attr:`sampler` and return it: what this process's DataLoader iterates (the per-micro-batch
        tags for :meth:`wrap_collator` included). Each process reads its own shard (``rank``); ``device`` is where
        the processes agree on the end of the stream (the process group's device).

        With dynamic batching its steps are formed by a
        :class:`~hf_data_efficiency.batching.stream.StreamTokenBudget` (also :attr:`batch_sampler`: the per-step LR
        factor and logs), and it yields whole micro-batches; the LR reference batch is :attr:`global_batch_size`. With
        group mixing the stream takes each step's buffered samples in the order of the mixer's draw (the groups come
        from ``mixing.groups`` or the weights)."""
        from .curriculum.streaming import StreamingCurriculum

        cfg = self.config
        self.check_dataset(dataset)
        metrics = cfg.curriculum.sampling_metrics if cfg.curriculum is not None else []
        scored = [m.name for m in metrics if getattr(m, "reference_model", None)]
        if scored:
            raise ValueError(
                f"curriculum metric(s) {scored} with a reference_model cannot be scored over a stream here; add the "
                "column to the stream first (IterableDataset.map with ReferenceLoss(model), batched=True) and drop "
                "reference_model, or materialise the dataset."
            )
        selection = None
        if cfg.dynamic_batching is not None:
            from .batching.stream import StreamTokenBudget

            transform = cfg.curriculum.transform if cfg.curriculum is not None else None
            selection = StreamTokenBudget(cfg.dynamic_batching, transform=transform, packed=self.packed)
        if cfg.mixing is not None:
            from .curriculum.mixing import GroupMixer

            groups = cfg.mixing.groups or (list(cfg.mixing.weights) if cfg.mixing.weights is not None else None)
            if groups is None:
                raise ValueError(
                    f"mixing.strategy={cfg.mixing.strategy!r} over a stream needs the group names up front (a stream "
                    "has no index to read them from); set mixing.groups (--mixing_groups a b ...)."
                )
            self.mixer = GroupMixer(cfg.mixing, groups, seed=cfg.seed)
        self.sampler = StreamingCurriculum(
            dataset,
            cfg.curriculum,
            batch_size=self.batch_size,
            world_size=self.world_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            rank=rank,
            pad_token_id=self.pad_token_id,
            device=device,
            tag_positions=self.seeded_collation,
            selection=selection,
            mixer=self.mixer,
            mixing_column=cfg.mixing.column if cfg.mixing is not None else None,
            tag_groups=self.online_mixing,
        )
        self.batch_sampler = selection
        return self.sampler

    def train_loader(
        self,
        dataset: Any,
        *,
        rank: int = 0,
        device: Any = None,
        main_process_first: Callable[..., Any] | None = None,
        prune: Callable[[Any], Any] | None = None,
    ) -> TrainLoader:
        """The training data path, decided here once: map-style data or a stream (``IterableDataset``); fixed batches,
        a token budget (``dynamic_batching``) or a batch-size warmup; group mixing or the curriculum as the per-step
        draw. Needs one of curriculum learning, dynamic batching, group mixing or batch-size warmup on.

        ``rank``/``device``: this process and its process-group device (a stream's shard and end agreement);
        ``main_process_first``: see :meth:`metric_dataset`; ``prune``: applied to map-style data before it is wrapped
        for the DataLoader (the Trainer's ``remove_unused_columns``; the metric columns are read before)."""
        if not self.uses_data_path:
            raise ValueError(
                "train_loader needs curriculum learning, dynamic batching, group mixing or batch-size warmup on; "
                "without them, build a plain DataLoader."
            )
        self.check_dataset(dataset)
        self._check_combinations()
        budget = self.config.dynamic_batching is not None
        online = (self.config.mixing.online_delay, self.gradient_accumulation_steps) if self.online_mixing else None
        if is_stream(dataset):
            stream = self.build_stream(dataset, rank=rank, device=device)
            if budget:
                self._log_lr_reference(None)
            return TrainLoader(
                stream,
                batch_size=1 if budget else self.batch_size,
                per_process=True,
                micro_batches=budget,
                lr_factor=self.batch_sampler.lr_factor if budget else None,
                online_delay=online,
            )
        measured = dataset
        if self.config.curriculum is not None:  # the builders below read the metric columns from this cache
            measured = self.metric_dataset(dataset, main_process_first=main_process_first)
        data = self.loader_dataset(prune(measured) if prune is not None else measured)
        if budget or self.config.batch_size_warmup is not None:
            batch_sampler = self.build_batch_sampler(dataset) if budget else self.build_warmup_sampler(dataset)
            if budget:
                self._log_lr_reference(batch_sampler)
            return TrainLoader(
                data, batch_sampler=batch_sampler, lr_factor=batch_sampler.lr_factor, online_delay=online
            )
        return TrainLoader(data, batch_size=self.batch_size, sampler=self.build_sampler(dataset), online_delay=online)

    def _log_lr_reference(self, batch_sampler: Any) -> None:
        """Log what the dynamic-batching LR factors are relative to, and their range over the first steps (a map-style
        ``batch_sampler``; a stream forms its steps as it reads); warn when they are far from 1 on average."""
        cfg = self.config.dynamic_batching
        packed = " (packed rows: the budget counts real tokens)" if self.packed else ""
        reference = (
            f"{self.global_batch_size} samples per step (per-device batch {self.batch_size} x {self.world_size} "
            f"process(es) x {self.gradient_accumulation_steps} accumulation step(s))"
        )
        if cfg.lr_scaling_method == "none":
            logger.info(
                f"dynamic batching{packed}: lr_scaling_method='none', every step trains at the scheduler's LR."
            )
            return
        text = (
            f"dynamic batching{packed}: lr_scaling_method={cfg.lr_scaling_method!r} scales each step's LR by its "
            f"samples relative to the reference batch, {reference}"
        )
        if batch_sampler is None or self.online_mixing:  # steps formed as the stream is read, or online draws
            logger.info(f"{text}; each step's factor is logged as dynamic_batching/lr_factor.")
            return
        steps = min(batch_sampler.steps_per_epoch, 32)
        factors = [batch_sampler.lr_factor(k) for k in range(1, steps + 1)]
        logger.info(f"{text}; LR factors over steps 1-{steps}: {min(factors):.3g} to {max(factors):.3g}.")
        mean = sum(factors) / len(factors)
        if not 0.75 <= mean <= 4 / 3:
            logger.warning(
                f"dynamic batching: the LR of steps 1-{steps} is scaled by {mean:.3g} on average "
                f"(lr_scaling_method={cfg.lr_scaling_method!r}, reference {reference}). The reference is the batch "
                "of per_device_train_batch_size: set it to the batch size your LR was tuned with, or use "
                "lr_scaling_method='none'."
            )

    def loader_dataset(self, dataset: Any) -> Any:
        """What the DataLoader indexes: ``dataset`` without the metric columns added here, wrapped so that each
        sample carries its tags (stream position, max tokens; without the curriculum, its index) to the collator."""
        from .curriculum.transforms import CurriculumDataset

        added = self._metric_cache[2] if self._metric_cache is not None else []
        leftover = [c for c in added if c in getattr(dataset, "column_names", ())]
        if leftover:  # columns we added ourselves never reach the collator
            dataset = dataset.remove_columns(leftover)
        if self.uses_data_path:
            return CurriculumDataset(dataset)
        return CurriculumDataset(dataset, tag_index=True) if self.seeded_collation else dataset

    def wrap_collator(self, collator: Callable | None) -> Callable | None:
        """``collator`` wrapped in the sequence-length transform and the per-micro-batch seeded RNG (each only when
        on); untagged features (evaluation) are collated unchanged."""
        from transformers import default_data_collator

        from .curriculum.transforms import GroupTags, SeededCollation, SeqlenTransform

        selection = self.config.token_selection
        if selection is not None and selection.offline:  # innermost: the column is padded like the rows it scores
            from .selection.excess_loss import ReferenceColumnCollator

            collator = ReferenceColumnCollator(collator or default_data_collator, selection.reference_column)
        if self.online_mixing:  # inside the transform: seqlen_reshape then repeats each row's group with its pieces
            collator = GroupTags(collator or default_data_collator)
        transform = self.config.curriculum.transform if self.config.curriculum is not None else None
        mode = transform.name if transform is not None else None
        db = self.config.dynamic_batching
        if mode is None and db is not None and db.truncate_long_samples:
            mode = "seqlen_truncate"  # with over-long samples the batch sampler tags every key with its row cap
        if mode is not None:
            collator = SeqlenTransform(mode, collator, pad_token_id=self.pad_token_id)
        if self.seeded_collation and self.enabled:
            self._collation = SeededCollation(collator or default_data_collator, self.config.seed)
            return self._collation
        return collator

    def set_epoch(self, epoch: int) -> None:
        """Position the curriculum stream (and the collation seeds) at the start of ``epoch`` (a streaming
        curriculum reads its stream once: the epoch does not move it)."""
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        elif self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        if self._collation is not None:
            self._collation.epoch = int(epoch)

    # ----- model ----------------------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> Any:
        """Patch ``model`` for random-LTD in place (``None`` without random-LTD); returns the handle."""
        self.model = model
        if self.config.random_ltd is None:
            return None
        from .routing.random_ltd import apply_random_ltd

        self.random_ltd_handle = apply_random_ltd(
            model, self.config.random_ltd, global_batch_size=self.global_batch_size
        )
        self._layer_token_mark = self.random_ltd_handle.actual_layer_tokens
        return self.random_ltd_handle

    def attach_reference(
        self,
        reference: Any = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> Any:
        """Set up excess-loss token selection (``config.token_selection``) as :attr:`token_selection`: the reference
        model (``reference``: a module or a path, default the config's) loaded onto ``device`` in ``dtype`` (the
        training device and dtype; under DDP and ZeRO every process holds a whole copy, never sharded), checked
        against ``model`` (and ``tokenizer``). ``None`` when token selection is off."""
        cfg = self.config.token_selection
        if cfg is None:
            if reference is not None:
                raise ValueError(
                    "a reference model was given but token selection is off; set token_selection='excess_loss' "
                    "(flag --token_selection excess_loss) to train on the tokens of highest excess loss."
                )
            return None
        from .selection import ExcessLossSelection

        if model is not None:
            self.model = model
        self.token_selection = ExcessLossSelection(
            cfg, reference, model=self.model, tokenizer=tokenizer, device=device, dtype=dtype
        )
        return self.token_selection

    def selected_tokens(self, micro_batches: Sequence[Mapping[str, Any]]) -> int:
        """Tokens this process's token selection keeps over one optimizer step's ``micro_batches`` (sum it over the
        processes for the ``num_selected`` of :meth:`selection_loss`)."""
        if self.token_selection is None:
            raise ValueError("selected_tokens needs token selection on (config.token_selection, attach_reference).")
        return self.token_selection.step_selected(micro_batches)

    def selection_loss(self, model: Any, inputs: Mapping[str, Any], num_selected: Any, scale: float = 1.0) -> Any:
        """A micro-batch's loss under token selection: its selected tokens' loss summed, times ``scale``, over the
        step's ``num_selected`` (see :mod:`hf_data_efficiency.selection.excess_loss`); returns ``(loss, outputs)``."""
        if self.token_selection is None:
            raise ValueError("selection_loss needs token selection on (config.token_selection, attach_reference).")
        return self.token_selection.loss(model, inputs, num_selected, scale=scale)

    def begin_step(self, global_step: int) -> None:
        """Before the forward passes of optimizer step ``global_step + 1``: set the kept length from the 0-based
        step ``global_step``, as DeepSpeed's engine does."""
        if self.random_ltd_handle is not None:
            self.random_ltd_handle.update(global_step)

    # ----- counters and logs ----------------------------------------------------------------------------------
    def count_batch(self, inputs: Mapping[str, Any]) -> None:
        """Count one micro-batch of this process (samples, and tokens including padding); the samples of a packed row
        (``DataCollatorWithFlattening``, trl's padding-free batches) are its documents."""
        if not isinstance(inputs, Mapping):
            return
        tokens = inputs.get("input_ids", inputs.get("attention_mask"))
        if isinstance(tokens, torch.Tensor):
            from .routing.random_ltd import document_lengths

            self._local["tokens"] += int(tokens.numel())
            docs = document_lengths(inputs.get("cu_seq_lens_q"), inputs.get("position_ids"), *tokens.shape[:2])
            self._local["samples"] += len(docs) if docs is not None else int(tokens.shape[0])
        else:
            first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
            self._local["samples"] += int(first.shape[0]) if first is not None else 0

    def sync_counters(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: Any = None) -> None:
        """Add every process's counts since the last sync to the totals. With several processes this is a
        collective call: ``reduce`` sums a tensor over them (``accelerator.reduce``)."""
        handle = self.random_ltd_handle
        layer_tokens = 0
        if handle is not None and handle.num_layers:
            layer_tokens = handle.actual_layer_tokens - self._layer_token_mark
            self._layer_token_mark = handle.actual_layer_tokens
        delta = torch.tensor([self._local["samples"], self._local["tokens"], layer_tokens], dtype=torch.int64)
        delta = self._sum_over_processes(delta, reduce, device)
        for key, value in zip(_COUNTERS, delta.tolist()):
            self._totals[key] += int(value)
        self._local = {"samples": 0, "tokens": 0}
        if self.token_selection is not None:
            self.token_selection.sync(reduce if self.world_size > 1 else None, device)

    @property
    def reference_effective_tokens(self) -> float:
        """The reference models' forwards in effective training tokens: the ``reference_loss`` metric's scoring of
        the dataset and token selection's per-step forwards (see :mod:`hf_data_efficiency.curriculum.reference`)."""
        total = self.reference_scoring_tokens * self.reference_scoring_cost
        if self.token_selection is not None:
            total += self.token_selection.reference_effective_tokens
        return total

    def consumed_samples(self, global_step: int) -> int:
        """Samples consumed after ``global_step`` optimizer steps (all processes)."""
        # with the curriculum (and fixed batches) every optimizer step consumes exactly one global batch of the stream
        if self.sampler is not None and self.batch_sampler is None:
            return global_step * self.sampler.global_batch_size
        return self._totals["consumed_samples"]

    def step_logs(
        self, global_step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: Any = None
    ) -> dict[str, float]:
        """The values logged after optimizer step ``global_step`` (syncs the counters: a collective call)."""
        self.sync_counters(reduce, device)
        out: dict[str, float] = {}
        if self.sampler is not None and global_step >= 1:
            for name, value in self.sampler.difficulty_at(global_step).items():
                out[f"curriculum/difficulty_{name}"] = float(value)
        handle = self.random_ltd_handle
        if handle is not None and handle.kept_length is not None:
            out["random_ltd/kept_length"] = int(handle.kept_length)
        if hasattr(self.sampler, "stream_logs"):  # the streaming curriculum's buffer and counts, over the processes
            logs = self.sampler.stream_logs(global_step)
            values = torch.tensor(list(logs.values()), dtype=torch.int64)
            values = self._sum_over_processes(values, reduce, device).cpu()
            out.update(zip(logs, (int(v) for v in values.tolist())))
        if self.batch_sampler is not None and global_step >= 1:
            out.update(self.batch_sampler.step_logs(global_step))
        if self.mixer is not None and global_step >= 1:
            from .curriculum.mixing import GroupMixingSampler

            source = self.sampler if isinstance(self.sampler, GroupMixingSampler) else self.mixer
            out.update(source.logs(global_step))
        out["data_efficiency/consumed_samples"] = self.consumed_samples(global_step)
        if handle is not None and handle.num_layers:
            out["data_efficiency/layer_tokens"] = self._totals["layer_tokens"]
            out["data_efficiency/effective_tokens"] = self._totals["layer_tokens"] / handle.total_layers
        elif self._totals["tokens"]:  # a float on both paths: layer-tokens per layer, or tokens
            out["data_efficiency/effective_tokens"] = float(self._totals["tokens"])
        if self.token_selection is not None:
            out.update(self.token_selection.step_logs(reduce if self.world_size > 1 else None, device))
        if self.reference_scoring_tokens:
            out["curriculum/reference_scoring_tokens"] = self.reference_scoring_tokens
        reference = self.reference_effective_tokens
        if reference:  # honest accounting: the reference forwards count as compute
            out["data_efficiency/reference_effective_tokens"] = reference
            out["data_efficiency/effective_tokens"] = out.get("data_efficiency/effective_tokens", 0.0) + reference
        return out

    def _sum_over_processes(
        self, values: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None, device: Any
    ) -> torch.Tensor:
        """``values`` summed over the processes by ``reduce`` (on ``device``) when there are several."""
        if reduce is None or self.world_size <= 1:
            return values
        return reduce(values.to(device) if device is not None else values)

    # ----- online mixing --------------------------------------------------------------------------------------
    def pop_groups(self, inputs: Any) -> torch.Tensor | None:
        """Remove the group tags the collator put into a training micro-batch (online mixing) and return them
        (``None`` when there are none, e.g. evaluation). Call it before the forward: the model takes no such input."""
        from .curriculum.transforms import GROUP_KEY

        if not isinstance(inputs, Mapping) or GROUP_KEY not in inputs:
            return None
        return inputs.pop(GROUP_KEY)

    def observe_losses(
        self,
        groups: torch.Tensor | None,
        logits: torch.Tensor,
        labels: torch.Tensor,
        *,
        causal: bool,
        token_losses: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Add one micro-batch's per-group token losses (``logits``/``labels`` of its forward; ``causal``: a causal
        LM, whose labels are shifted; ``token_losses``: its shifted token losses when already computed) to this
        process's sums for the current step. A no-op without group tags."""
        if groups is None or not self.online_mixing:
            return
        from .curriculum.mixing import group_loss_sums

        sums = group_loss_sums(groups, logits, labels, self.mixer.num_groups, causal=causal, token_losses=token_losses)
        self._group_losses = (
            sums if self._group_losses is None else self._group_losses + sums.to(self._group_losses.device)
        )

    def end_step(
        self, global_step: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, device: Any = None
    ) -> None:
        """After optimizer step ``global_step``: sum the step's per-group losses over the processes (one reduction,
        ``reduce`` = ``accelerator.reduce``; a collective call with several processes) and update the online
        mixing weights. A no-op for other strategies."""
        if not self.online_mixing or self.mixer is None:
            return
        sums = self._group_losses
        if sums is None:
            sums = torch.zeros(2, self.mixer.num_groups, dtype=torch.float64, device=device)
        self._group_losses = None
        loss_sums, token_counts = self._sum_over_processes(sums, reduce, device).cpu().tolist()
        self.mixer.observe(global_step, loss_sums, token_counts)

    # ----- LR schedule ----------------------------------------------------------------------------------------
    def lr_factor(self, global_step: int) -> float:
        """The LR factor of optimizer step ``global_step + 1`` from dynamic batching or a batch-size warmup (1.0
        without them)."""
        if self.batch_sampler is None:
            return 1.0
        return self.batch_sampler.lr_factor(int(global_step) + 1)

    @contextlib.contextmanager
    def scaled_lr(self, optimizer: torch.optim.Optimizer, global_step: int) -> Any:
        """Within the block, every param group's ``lr`` is multiplied by :meth:`lr_factor`; the scheduler's values are
        restored on exit. Wrap ``optimizer.step()`` of step ``global_step + 1`` in it: exact for any scheduler (it
        never sees the scaled value) and resumable (the factor is a function of the step)."""
        factor = self.lr_factor(global_step)
        saved = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor
        try:
            yield factor
        finally:
            for group, lr in zip(optimizer.param_groups, saved):
                group["lr"] = lr

    @property
    def uses_layer_token_lr(self) -> bool:
        rl = self.config.random_ltd
        return rl is not None and rl.layer_token_lr_schedule.enabled

    def layer_token_lr_scheduler(
        self,
        optimizer: torch.optim.Optimizer,
        num_training_steps: int,
        warmup_steps: int,
        lr_scheduler_type: Any,
        document_lengths: Any = None,
    ) -> Any:
        """The layer-token LR scheduler (warmup and decay in consumed layer-tokens), or ``None`` when off.

        ``lr_scheduler_type`` (a ``--lr_scheduler_type`` value) picks the decay; warmup defaults to the layer-tokens
        of ``warmup_steps``. With packed rows (:attr:`packed`), ``document_lengths`` (the training documents'
        lengths, and the documents per dataset row) makes each step count its expected real layer-tokens
        (:func:`~hf_data_efficiency.routing.lr_schedule.packed_layer_tokens`) instead of DeepSpeed's formula. Call
        :meth:`attach` first."""
        if not self.uses_layer_token_lr:
            return None
        from .routing.lr_schedule import get_layer_token_lr_scheduler, packed_layer_tokens

        name = str(getattr(lr_scheduler_type, "value", lr_scheduler_type))
        decay = LAYER_TOKEN_DECAYS.get(name)
        if decay is None:
            raise ValueError(
                f"lr_scheduler_type={name!r} has no layer-token version; with the layer-token LR schedule use one "
                f"of {', '.join(LAYER_TOKEN_DECAYS)}."
            )
        if self.random_ltd_handle is None:
            raise ValueError(
                "the layer-token LR schedule needs the random-LTD model: call engine.attach(model) first."
            )
        lr_cfg = self.config.random_ltd.layer_token_lr_schedule
        scheduler = self.random_ltd_handle.scheduler
        source: Any = scheduler
        if self.packed:
            fixed = self.config.dynamic_batching is None and self.config.batch_size_warmup is None
            if document_lengths is not None and fixed:
                source = packed_layer_tokens(scheduler, *document_lengths)
                logger.info(
                    "layer-token LR schedule on packed rows: each step counts the expected real layer-tokens of its "
                    f"documents ({len(document_lengths[0])} training documents' lengths, {document_lengths[1]:.2f} "
                    "per row)."
                )
            else:
                why = "a stream has no document lengths up front" if fixed else "the documents per step vary"
                logger.warning(
                    f"layer-token LR schedule on packed rows: {why}, so each step counts DeepSpeed's formula, "
                    "every document at max_value tokens (an over-count of shorter documents)."
                )
        tokens_at = scheduler.layer_tokens_at if source is scheduler else source
        warmup = lr_cfg.warmup_layer_tokens or sum(tokens_at(j) for j in range(warmup_steps))
        return get_layer_token_lr_scheduler(
            optimizer,
            source,
            total_layer_tokens=lr_cfg.total_layer_tokens,
            warmup_layer_tokens=warmup,
            warmup_type=lr_cfg.warmup_type,
            decay_type=decay,
            num_training_steps=num_training_steps,
        )

    # ----- state ----------------------------------------------------------------------------------------------
    def state_dict(self, global_step: int) -> dict[str, Any]:
        """The JSON-able state after ``global_step`` optimizer steps (call :meth:`sync_counters` first)."""
        sampler, handle, section = self.sampler, self.random_ltd_handle, self._batch_section
        batch_state = self.batch_sampler.state_dict(position=global_step) if section is not None else None
        return {
            "version": STATE_VERSION,
            "global_step": int(global_step),
            "config": self.config.to_dict(),
            "counters": {**self._totals, "consumed_samples": self.consumed_samples(global_step)},
            "sampler": (
                sampler.state_dict(position=global_step * sampler.global_batch_size) if sampler is not None else None
            ),
            "random_ltd": handle.state_dict() if handle is not None else None,
            "dynamic_batching": batch_state if section == "dynamic_batching" else None,
            "mixing": self.mixer.state_dict() if self.mixer is not None else None,
            "batch_size_warmup": batch_state if section == "batch_size_warmup" else None,
            **({"token_selection": self.token_selection.state_dict()} if self.token_selection is not None else {}),
        }

    @property
    def _batch_section(self) -> str | None:
        """The state section of the batch sampler: ``dynamic_batching`` with a token budget (a warmup ramp is part of
        it), ``batch_size_warmup`` with a warmup alone, else ``None``."""
        if self.config.dynamic_batching is not None:
            return "dynamic_batching"
        return "batch_size_warmup" if self.config.batch_size_warmup is not None else None

    def save_state(self, folder: str | os.PathLike, global_step: int, state: dict[str, Any] | None = None) -> str:
        """Write ``state`` (default: :meth:`state_dict`) atomically as ``folder/data_efficiency_state.json``; returns
        the path. With a streaming curriculum over several processes, :meth:`state_dict` is a collective call: take
        it on every process and write it from one."""
        path = os.path.join(folder, STATE_NAME)
        state = self.state_dict(global_step) if state is None else state
        atomic_write_text(path, json.dumps(state, indent=2, sort_keys=True) + "\n")
        return path

    def read_state(self, checkpoint: str | os.PathLike, global_step: int | None = None) -> dict[str, Any]:
        """Read and check ``checkpoint``'s state against this run; a problem raises :class:`ResumeError`.

        ``global_step`` is the checkpoint's step as the training loop knows it (cross-checked when given)."""
        path = os.path.join(checkpoint, STATE_NAME)
        if not os.path.isfile(path):
            raise ResumeError(
                f"{path} is missing: the checkpoint was not written with data efficiency on, or its save was "
                "interrupted."
            )
        try:
            state = read_json(path)
            self._check_state(state)
        except ResumeError as e:
            raise ResumeError(f"{path} {e}") from e
        except UnreadableFileError as e:
            raise ResumeError(f"{path} is corrupt ({e.reason}).") from e
        except (ValueError, TypeError) as e:
            raise ResumeError(f"{path} is corrupt ({e}).") from e
        if global_step is not None and state["global_step"] != global_step:
            raise ResumeError(
                f"{path} is for step {state['global_step']} but the checkpoint is at step {global_step}."
            )
        return state

    def resume_position(self, global_step: int, micro_batches_per_epoch: int) -> tuple[int, int]:
        """``(epoch, micro-batches to skip in it)`` to replay this process's loader to ``global_step``."""
        steps_per_epoch = max(1, micro_batches_per_epoch // self.gradient_accumulation_steps)
        epoch, steps = divmod(global_step, steps_per_epoch)
        return epoch, steps * self.gradient_accumulation_steps

    def _check_state(self, state: Any) -> None:
        """Validate a state read from a checkpoint like a config: its own keys only, typed and in range, a section
        present exactly where this run has the technique, and this run's config."""
        state = expect_mapping(state, "state")
        if isinstance(state.get("version"), bool) or state.get("version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"state.version={state.get('version')!r} is not supported; allowed: {list(_READABLE_VERSIONS)}."
            )
        keys = _KEYS_OF_VERSION[state["version"]]
        selecting = self.config.token_selection is not None
        if ("token_selection" in state) != selecting:  # the section exists exactly when token selection is on
            wanted = "present (this run has token selection on)" if selecting else "absent (this run has it off)"
            raise ValueError(f"state.token_selection must be {wanted}.")
        if selecting:
            keys = (*keys, "token_selection")
        check_keys(state, keys, "state", required=keys)
        check_state_int(state["global_step"], "state.global_step", 0, _INT64_MAX)
        counters = expect_mapping(state["counters"], "state.counters")
        check_keys(counters, _COUNTERS, "state.counters", required=_COUNTERS)
        for key in _COUNTERS:  # written as ints; summed as int64 over the processes
            check_state_int(counters[key], f"state.counters.{key}", 0, _INT64_MAX)
        cfg = self.config
        parts = [("sampler", cfg.curriculum or cfg.mixing), ("random_ltd", cfg.random_ltd)]
        if state["version"] >= 3:
            parts.append(("dynamic_batching", cfg.dynamic_batching))
        if state["version"] >= 4:
            parts += [
                ("mixing", cfg.mixing),
                ("batch_size_warmup", cfg.batch_size_warmup if self._batch_section == "batch_size_warmup" else None),
            ]
        for key, part in parts:
            if (state[key] is None) != (part is None):
                wanted = "an object (this run has it on)" if part is not None else "null (this run has it off)"
                raise ValueError(f"state.{key}={state[key]!r} must be {wanted}.")
            if state[key] is not None:
                expect_mapping(state[key], f"state.{key}")
        if DataEfficiencyConfig.from_dict(expect_mapping(state["config"], "state.config")) != self.config:
            raise ResumeError(
                "was saved with a different data-efficiency config than the current one; saved: "
                f"{json.dumps(state['config'], sort_keys=True)}."
            )

    def reset(self) -> None:
        """Start the counters of a fresh run."""
        self._totals = dict.fromkeys(_COUNTERS, 0)
        self._local = {"samples": 0, "tokens": 0}
        self._group_losses: torch.Tensor | None = None
        handle = self.random_ltd_handle
        self._layer_token_mark = handle.actual_layer_tokens if handle is not None else 0
        if self.token_selection is not None:
            self.token_selection.reset()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`read_state` (after :meth:`attach` and :meth:`build_sampler`).

        The sampler state is checked (seed, data, batch geometry, metric fingerprint, and a position equal to
        ``global_step`` global batches). Loops replay the stream to that position the way the Trainer does: set the
        epoch (``loader.set_epoch``) and skip the micro-batches already consumed in it (``skip_first_batches``);
        :meth:`resume_position` gives both. accelerate's loaders set the sampler's epoch on every pass, so that is the
        one resume path."""
        # every part checks before it changes anything, and the counters come last: a refused state leaves the
        # engine as it was
        try:
            self._check_state(state)
            section = self._batch_section
            if self.batch_sampler is not None:
                position = self.batch_sampler.check_state(state[section], section)
                if position != state["global_step"]:
                    raise ValueError(
                        f"{section}.position={position} disagrees with global_step={state['global_step']} "
                        "(the position counts optimizer steps)."
                    )
            if self.mixer is not None and self.online_mixing and state["mixing"]["last_step"] != state["global_step"]:
                raise ValueError(
                    f"mixing.last_step={state['mixing']['last_step']!r} disagrees with global_step="
                    f"{state['global_step']} (online weights are saved after every step's losses)."
                )
            if self.sampler is not None:
                load_sampler_state(self.sampler, state["sampler"], state["global_step"])
            if self.token_selection is not None:
                self.token_selection.check_state(state["token_selection"], "token_selection")
            if self.mixer is not None:
                self.mixer.load_state_dict(state["mixing"])
            handle = self.random_ltd_handle
            if handle is not None:
                handle.load_state_dict(state["random_ltd"])
            if self.batch_sampler is not None:
                self.batch_sampler.load_state_dict(state[section])
            self.reset()
            self._totals.update({key: int(state["counters"][key]) for key in _COUNTERS})
            if self.token_selection is not None:
                self.token_selection.load_state_dict(state["token_selection"])
        except (KeyError, TypeError, ValueError) as e:
            raise ResumeError(str(e)) from e
