"""Group mixing: each step's samples are drawn group by group, with per-group weights that are fixed or learned.

A sample's group is the value of its ``mixing.column`` (a domain, a source, a language). :class:`GroupMixer` holds
the groups and their weights; :class:`GroupMixingSampler` draws the global batch of every step from map-style data;
a streaming curriculum asks the mixer for the order in which it takes its buffered samples (:func:`mixed_order`).

**The draw (map-style).** Step ``k`` draws the ``G`` slots of its global batch (``G = batch_size * world_size *
gradient_accumulation_steps``). Each slot picks a group independently with the step's weights (``default_rng([seed,
10, k])``), among the groups that have a sample eligible at step ``k``; within its group it picks a curriculum cluster
in proportion to the cluster's size (``default_rng([seed, 11, k])``: uniform over the group's eligible samples, as
DeepSpeed draws clusters), then takes the next sample of that cluster's walk. Without a curriculum a group is one
cluster. Every rank computes the same draw from the seed; accelerate deals micro-batch ``i`` to rank ``i % world``.

**Passes.** Cluster ``c`` (a group, and with a curriculum a difficulty level of it) is walked in the order of its
``w``-th pass, the permutation ``default_rng([seed, 12, c, w])`` of its members; **a cluster that runs out starts a
new, reshuffled pass**. So no sample repeats within a pass of its group (of its cluster, with a curriculum). The walk
counters of every cluster after each step are the checkpointed state: draws are sequential, not random access.

**Strategies.** ``stratified``: every group equally likely. ``natural``: in proportion to its eligible samples (the
distribution of plain shuffling). ``fixed``: ``mixing.weights``, normalised. ``online``: learned, below. A group
without an eligible sample at a step gets no slot; its weight goes to the others in proportion to theirs.

**The online rule** (``strategy: online``). ODM (Albalak et al. 2023, "Efficient Online Data Mixing For Language
Model Pre-Training") treats the groups as arms of a bandit whose reward is each group's training loss, with an
exploration floor that decays as ``min(1/K, sqrt(ln K / (K t)))``. A loss reward chases irreducible loss: a group of
pure noise has the highest loss forever and would win. The reward here is **learning progress** instead (Graves et
al. 2017, "Automated Curriculum Learning for Neural Networks"): how fast the model's loss on the group is falling.
After every optimizer step ``t`` each group's mean token loss over the step's samples (all processes) updates two
moving averages of that group, ``fast`` and ``slow`` (factors ``online_fast_smoothing`` and
``online_slow_smoothing``; a group absent from the step keeps its averages). Its progress is ``p = (slow - fast) /
slow``, the relative drop of its recent loss below its longer-run level; noise, or a group already learned, has
``p ~ 0``; a group not yet seen gets the largest progress of the others. The weights after step ``t`` are
``eps + (1 - K eps) * max(p, 0) / sum(max(p, 0))`` (all ``1/K`` while no group progresses) with ODM's floor ``eps =
max(online_min_weight, min(1/K, sqrt(ln K / (K t))))``; proportional weights need no temperature, which a reward in
loss units would not have. The draw of step ``k`` uses the weights after step ``k - online_delay``, because the
DataLoader draws ahead of training; the losses are synchronised across processes once per step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .._validation import check_state_int, did_you_mean
from ..config import CurriculumConfig, MixingConfig, check_groups
from .eligibility import DifficultyPacing, admission_levels, filtering_metrics
from .reference import shifted_token_losses
from .sampler import (
    INT64_MAX,
    STEP_ALLOWED,
    CurriculumQueries,
    EpochStreamSampler,
    batch_geometry,
    check_sampler_state,
    curriculum_schedules,
    read_metric_values,
    sampler_state,
    state_fingerprint,
    state_position,
    whole_number,
)
from .transforms import GROUP_KEY, MAX_TOKENS_KEY

logger = logging.get_logger(__name__)

STATE_VERSION = 1
#: numpy seed-sequence namespaces (the curriculum sampler uses 0-2, token budgets 3-4)
_RNG_GROUP, _RNG_LEVEL, _RNG_WALK, _RNG_STREAM = 10, 11, 12, 13
_KEPT_STEPS = 64  # steps whose draws and walk counters are kept (the loader runs a few steps ahead of training)
_MIXER_KEYS = ("version", "strategy", "groups", "last_step", "fast", "slow", "history")
_SAMPLER_KEYS = ("version", "kind", "position", "seed", "num_samples", "global_batch_size", "fingerprint", "walked")


def group_names(values: Sequence[Any] | np.ndarray, column: str) -> tuple[list[str], np.ndarray]:
    """The sorted distinct group names of a column (numbers sort as numbers) and each sample's group id."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"mixing.column={column!r} must hold one group value per sample, got shape {arr.shape}.")
    if arr.dtype.kind not in "iuUSO" or (arr.dtype.kind == "O" and not all(isinstance(v, str) for v in arr)):
        raise ValueError(
            f"mixing.column={column!r} must hold strings or integers (a group name per sample), got dtype {arr.dtype}."
        )
    distinct, ids = np.unique(arr, return_inverse=True)
    return [str(v) for v in distinct.tolist()], ids.astype(np.int64)


class GroupMixer:
    """The groups and their weights at every step (see the module docstring).

    Args:
        config: the :class:`~hf_data_efficiency.MixingConfig`.
        groups: the group names, in id order.
        seed: seed of the draws.
    """

    def __init__(self, config: MixingConfig, groups: Sequence[str], seed: int) -> None:
        if not isinstance(config, MixingConfig):
            raise ValueError(f"mixing must be a MixingConfig, got {type(config).__name__}.")
        self.config = config
        self.groups = [str(g) for g in groups]
        self.seed = int(seed)
        if not self.groups:
            raise ValueError(f"mixing.column={config.column!r}: no group found; the data needs at least one group.")
        if config.groups is not None and config.groups != self.groups:
            check_groups(dict.fromkeys(self.groups), list(config.groups), f"the values of column {config.column!r}")
        k = len(self.groups)
        if config.strategy == "fixed":
            check_groups(config.weights, self.groups, "mixing.weights")
            self._static = np.asarray([config.weights[g] for g in self.groups], dtype=np.float64)
        else:
            self._static = np.ones(k, dtype=np.float64)
        if config.strategy == "online" and config.online_min_weight * k > 1:
            raise ValueError(
                f"mixing.online_min_weight={config.online_min_weight} x {k} groups exceeds 1; allowed: at most "
                f"1 / {k} = {1 / k:.4g}."
            )
        self.online = config.strategy == "online"
        self.delay = config.online_delay
        self.last_step = 0
        self._fast = np.full(k, np.nan)
        self._slow = np.full(k, np.nan)
        self._history: OrderedDict[int, np.ndarray] = OrderedDict()

    @property
    def num_groups(self) -> int:
        return len(self.groups)

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share: the groups and the mixing config."""
        return {"groups": self.groups, "mixing": self.config.to_dict()}

    # ----- weights ----------------------------------------------------------------------------------------------
    def weights(self, step: int, eligible: np.ndarray | None = None, *, strict: bool = True) -> np.ndarray:
        """The group weights of 1-based ``step``'s draw, normalised over the groups with ``eligible`` samples
        (per-group counts; ``None``: every group). ``strict=False`` falls back to the oldest weights kept when the
        step's are no longer known (the draws of steps a resumed run skips)."""
        if self.config.strategy == "natural":
            if eligible is None:
                raise ValueError(
                    "mixing.strategy='natural' needs the group sizes, which a stream does not know; allowed on a "
                    "stream: stratified, fixed, online."
                )
            base = np.asarray(eligible, dtype=np.float64)
        elif self.online:
            base = self._learned(step, strict)
        else:
            base = self._static
        if eligible is not None:
            base = np.where(np.asarray(eligible) > 0, base, 0.0)
        total = base.sum()
        if total <= 0:
            raise ValueError(
                f"group mixing, step {step}: no group with a weight above 0 has an eligible sample (groups "
                f"{self.groups}, eligible {np.asarray(eligible).tolist()}, weights {self._static.tolist()}); give "
                "those groups a weight, or lower the curriculum's min_difficulty."
            )
        return base / total

    def _learned(self, step: int, strict: bool) -> np.ndarray:
        source = step - self.delay
        if source < 1:
            return np.ones(self.num_groups, dtype=np.float64)
        if source > self.last_step:
            raise RuntimeError(
                f"online group mixing: the draw of step {step} needs the weights learned up to step {source}, but "
                f"the losses are known up to step {self.last_step}: the DataLoader draws further ahead of training "
                f"than mixing.online_delay={self.delay} allows (or engine.end_step is not called after every "
                "optimizer step); raise mixing.online_delay, or use fewer DataLoader workers or a smaller prefetch."
            )
        found = self._history.get(source)
        if found is None:
            if strict or not self._history:
                raise RuntimeError(
                    f"online group mixing: the weights after step {source} are no longer kept (kept: "
                    f"{list(self._history)})."
                )
            found = next(iter(self._history.values()))
        return found

    def slot_groups(self, step: int, count: int, eligible: np.ndarray | None = None, *, strict: bool = True) -> Any:
        """The group of each of ``count`` slots of ``step``'s global draw (every rank draws the same)."""
        weights = self.weights(step, eligible, strict=strict)
        u = np.random.default_rng([self.seed, _RNG_GROUP, int(step)]).random(count)
        return np.minimum(np.searchsorted(np.cumsum(weights), u, side="right"), self.num_groups - 1)

    def stream_slot_groups(self, step: int, count: int, rank: int) -> np.ndarray:
        """The group of each of ``count`` slots of process ``rank``'s part of a streamed step (its own shard)."""
        weights = self.weights(step)
        u = np.random.default_rng([self.seed, _RNG_STREAM, int(step), int(rank)]).random(count)
        return np.minimum(np.searchsorted(np.cumsum(weights), u, side="right"), self.num_groups - 1)

    # ----- the online rule --------------------------------------------------------------------------------------
    def progress(self) -> np.ndarray:
        """Each group's learning progress ``(slow - fast) / slow`` (NaN for a group not seen yet)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = (self._slow - self._fast) / self._slow
        return np.where(np.isnan(self._slow), np.nan, np.where(self._slow > 0, relative, 0.0))

    def observe(self, step: int, loss_sums: Sequence[float], token_counts: Sequence[float]) -> None:
        """Step ``step``'s summed token losses and token counts per group (all processes), once per optimizer step,
        in order: updates the moving averages and the weights after ``step`` (online only)."""
        if not self.online:
            return
        if step != self.last_step + 1:
            raise ValueError(
                f"online group mixing: the losses of step {step} arrive after those of step {self.last_step}; "
                "engine.end_step must be called once after every optimizer step, in order."
            )
        sums, counts = np.asarray(loss_sums, dtype=np.float64), np.asarray(token_counts, dtype=np.float64)
        seen = counts > 0
        loss = np.where(seen, sums / np.where(seen, counts, 1.0), np.nan)
        first = seen & np.isnan(self._slow)
        self._fast = np.where(first, loss, self._fast)
        self._slow = np.where(first, loss, self._slow)
        update = seen & ~first
        fast, slow = self.config.online_fast_smoothing, self.config.online_slow_smoothing
        self._fast = np.where(update, fast * self._fast + (1 - fast) * loss, self._fast)
        self._slow = np.where(update, slow * self._slow + (1 - slow) * loss, self._slow)
        self.last_step = step
        self._history[step] = self._rule(step)
        while len(self._history) > self.delay + 1:
            self._history.popitem(last=False)

    def _rule(self, step: int) -> np.ndarray:
        k = self.num_groups
        progress = self.progress()
        known = ~np.isnan(progress)
        if not known.any():
            return np.full(k, 1.0 / k)
        progress = np.where(known, progress, progress[known].max())  # optimism for a group not seen yet
        gain = np.maximum(progress, 0.0)
        if k == 1 or gain.sum() <= 0:
            return np.full(k, 1.0 / k)
        floor = max(self.config.online_min_weight, min(1.0 / k, math.sqrt(math.log(k) / (k * step))))
        return floor + (1.0 - k * floor) * gain / gain.sum()

    def logs(self, step: int, eligible: np.ndarray | None = None) -> dict[str, float]:
        """``mixing/weight_<group>`` of ``step``'s draw (over the groups with ``eligible`` samples, when given);
        online also ``mixing/loss_<group>`` (the fast average) and ``mixing/progress_<group>``."""
        weights = self.weights(max(step, 1), eligible, strict=False)
        out = {f"mixing/weight_{g}": float(w) for g, w in zip(self.groups, weights)}
        if self.online:
            progress = self.progress()
            for i, g in enumerate(self.groups):
                if not np.isnan(self._fast[i]):
                    out[f"mixing/loss_{g}"] = float(self._fast[i])
                    out[f"mixing/progress_{g}"] = float(progress[i])
        return out

    # ----- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able state after the last observed step (the moving averages and the weights still to be drawn with).
        Call it after ``observe`` of the checkpoint's step."""

        def floats(arr: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in arr]

        return {
            "version": STATE_VERSION,
            "strategy": self.config.strategy,
            "groups": list(self.groups),
            "last_step": int(self.last_step),
            "fast": floats(self._fast),
            "slow": floats(self._slow),
            "history": [[int(s), [float(v) for v in w]] for s, w in self._history.items()],
        }

    def load_state_dict(self, state: Any, path: str = "mixing") -> None:
        """Restore a :meth:`state_dict` (checked first: the same groups and strategy, values in range)."""
        same = {"strategy": self.config.strategy, "groups": self.groups}
        check_sampler_state(self, state, path, _MIXER_KEYS, STATE_VERSION, same)
        k = self.num_groups
        last = check_state_int(state["last_step"], f"{path}.last_step", 0, INT64_MAX)
        averages = {}
        for key in ("fast", "slow"):
            values = state[key]
            if not isinstance(values, list) or len(values) != k:
                raise ValueError(f"{path}.{key} must be a list of {k} numbers or nulls.")
            averages[key] = np.asarray([np.nan if v is None else _state_float(v, f"{path}.{key}") for v in values])
        history: OrderedDict[int, np.ndarray] = OrderedDict()
        if not isinstance(state["history"], list) or len(state["history"]) > self.delay + 1:
            raise ValueError(f"{path}.history must be a list of at most {self.delay + 1} [step, weights] pairs.")
        for entry in state["history"]:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list) and len(entry[1]) == k):
                raise ValueError(f"{path}.history entries must be [step, [{k} weights]].")
            step = check_state_int(entry[0], f"{path}.history step", 1, last)
            weights = np.asarray([_state_float(v, f"{path}.history weight") for v in entry[1]])
            if (weights < 0).any() or not math.isclose(weights.sum(), 1.0, rel_tol=1e-9):
                raise ValueError(f"{path}.history weights of step {step} must be >= 0 and sum to 1.")
            history[step] = weights
        if self.online and last and last not in history:
            raise ValueError(f"{path}.history has no weights of its last step {last}.")
        self.last_step, self._fast, self._slow, self._history = last, averages["fast"], averages["slow"], history


def _state_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{path}={value!r} must be a finite number.")
    return float(value)


def mixed_order(slots: np.ndarray, candidates: np.ndarray, candidate_groups: np.ndarray) -> np.ndarray:
    """``candidates`` (buffer positions, oldest first) reordered for slots of groups ``slots``: slot ``i`` takes the
    oldest candidate of its group not taken yet; a slot whose group has none left is skipped."""
    if candidates.size == 0 or slots.size == 0:
        return candidates[:0]
    k = int(max(slots.max(), candidate_groups.max())) + 1
    by_group = np.argsort(candidate_groups, kind="stable")  # candidates grouped, oldest first within a group
    starts = np.concatenate([[0], np.cumsum(np.bincount(candidate_groups, minlength=k))])
    available = np.diff(starts)
    rank = np.zeros(slots.size, dtype=np.int64)  # how many earlier slots share the slot's group
    order = np.argsort(slots, kind="stable")
    first = np.concatenate([[0], np.cumsum(np.bincount(slots, minlength=k))])
    rank[order] = np.arange(slots.size) - first[slots[order]]
    keep = rank < available[slots]
    return candidates[by_group[starts[slots[keep]] + rank[keep]]]


def group_loss_sums(
    groups: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    num_groups: int,
    *,
    causal: bool,
    token_losses: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``[2, num_groups]``: per group, the summed token losses and the number of label tokens of one micro-batch
    (row ``i`` belongs to group ``groups[i]``; labels of -100 are ignored; ``causal`` shifts them as a causal LM's
    loss does). ``logits``: ``[rows, classes]`` with ``[rows]`` labels, or ``[rows, tokens, vocab]``.
    ``token_losses``: a causal LM's ``(losses, mask)`` from :func:`shifted_token_losses` for these logits, when the
    caller has them already (token selection computes them for its loss), so they are not computed twice."""
    rows = logits.shape[0]
    if groups.dim() != 1 or groups.shape[0] != rows:
        raise ValueError(
            f"online group mixing: the batch carries {tuple(groups.shape)} group tags for {rows} rows of logits; "
            "every row must be one sample (a packing collator such as DataCollatorWithFlattening puts several "
            "samples in one row); use a padding collator, or a mixing strategy other than 'online'."
        )
    with torch.no_grad():
        logits = logits.detach()
        if logits.dim() == 3 and causal:
            losses, valid = token_losses if token_losses is not None else shifted_token_losses(logits, labels)
            row_loss = losses.detach().sum(1, dtype=torch.float64)
            row_tokens = valid.sum(1).to(torch.float64)
        elif logits.dim() == 3:
            token_loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="none"
            ).view(rows, -1)
            row_loss = token_loss.sum(1, dtype=torch.float64)
            row_tokens = (labels != -100).sum(1).to(torch.float64)
        elif logits.dim() == 2 and labels.dim() == 1:
            row_loss = torch.nn.functional.cross_entropy(
                logits.float(), labels, ignore_index=-100, reduction="none"
            ).to(torch.float64)
            row_tokens = (labels != -100).to(torch.float64)
        else:
            raise ValueError(
                f"online group mixing: cannot attribute the loss of logits {tuple(logits.shape)} with labels "
                f"{tuple(labels.shape)} to samples; supported: [rows, classes] with [rows] labels, or [rows, tokens, "
                "vocab] with [rows, tokens] labels."
            )
        out = torch.zeros(2, num_groups, dtype=torch.float64, device=logits.device)
        index = groups.to(logits.device)
        out[0].index_add_(0, index, row_loss)
        out[1].index_add_(0, index, row_tokens)
    return out


class GroupMixingSampler(CurriculumQueries, EpochStreamSampler):
    """Group mixing over map-style data: the global batch of every step, drawn group by group (module docstring).

    As a DataLoader sampler it yields one infinite stream of indices, global batch after global batch (position ``p``
    belongs to step ``p // G + 1``), like :class:`~hf_data_efficiency.CurriculumSampler`; the token-budget and
    warmup batch samplers call :meth:`step_indices` instead.

    Args:
        group_ids: each sample's group id (an index into ``mixer.groups``).
        mixer: the :class:`GroupMixer`.
        batch_size, world_size, gradient_accumulation_steps: one step draws ``batch_size * world_size *
            gradient_accumulation_steps`` samples.
        curriculum: a ``CurriculumConfig`` whose eligibility applies within the groups (``None``: every sample is
            eligible); ``metric_values`` holds its sampling metrics (``{name: array}`` or a dataset with the columns).
        return_max_tokens: tag each index with the ``seqlen_truncate``/``seqlen_reshape`` max tokens of its step.
        tag_groups: tag each index with its group id, which the collator puts into the batch (online mixing).
    """

    state_kind = "mixing"
    _fingerprint_changes = "the groups, the metric values or the mixing config"

    def __init__(
        self,
        group_ids: np.ndarray,
        mixer: GroupMixer,
        batch_size: int,
        world_size: int = 1,
        gradient_accumulation_steps: int = 1,
        *,
        curriculum: CurriculumConfig | None = None,
        metric_values: Any = None,
        return_max_tokens: bool = False,
        tag_groups: bool = False,
    ) -> None:
        self.mixer = mixer
        self._groups = np.asarray(group_ids, dtype=np.int64)
        self.num_samples = int(self._groups.size)
        self.seed = mixer.seed
        self.batch_size, self.world_size, self.gradient_accumulation_steps, self.global_batch_size = batch_geometry(
            batch_size, world_size, gradient_accumulation_steps
        )
        if self.global_batch_size > self.num_samples:
            raise ValueError(
                f"global batch size {self.global_batch_size} is larger than the data ({self.num_samples} samples); "
                f"it must be <= {self.num_samples}."
            )
        self.epoch_length = self.num_samples // self.global_batch_size * self.global_batch_size
        self.config = curriculum
        schedules, self._transform_schedule = curriculum_schedules(curriculum)
        if return_max_tokens and self._transform_schedule is None:
            raise ValueError("return_max_tokens=True needs a seqlen_truncate or seqlen_reshape curriculum transform.")
        self.return_max_tokens, self.tag_groups = bool(return_max_tokens), bool(tag_groups)
        self._metrics = filtering_metrics(curriculum.sampling_metrics) if curriculum is not None else []
        self._values = read_metric_values(metric_values, self._metrics, self.num_samples)[0] if self._metrics else {}
        self._pacing = DifficultyPacing(schedules)
        self._pacing.extend(1)
        self._build_clusters()
        meta = {
            "version": STATE_VERSION,
            "global_batch_size": self.global_batch_size,
            "mixer": self.mixer.identity(),
            "metrics": [m.to_dict() for m in self._metrics],
        }
        self._fingerprint = state_fingerprint(meta, [self._groups, *(self._values[n] for n in sorted(self._values))])
        self.mixer.weights(1, self._eligible(1))  # refuses a first step where no weighted group has a sample
        sizes = np.bincount(self._groups, minlength=mixer.num_groups).tolist()
        logger.info(
            f"group mixing ({mixer.config.strategy}): {self.num_samples} samples in groups "
            f"{dict(zip(mixer.groups, sizes))}, global batch {self.global_batch_size}."
        )
        self._walked = np.zeros(self._sizes.size, dtype=np.int64)  # samples each cluster handed out so far
        self._drawn = 0  # steps drawn with the real walk counters
        self._draws: OrderedDict[int, list] = OrderedDict()
        self._walked_after: OrderedDict[int, np.ndarray] = OrderedDict([(0, self._walked.copy())])
        self._replay: tuple[int, np.ndarray] | None = None
        self._shuffles: dict[int, tuple[int, np.ndarray]] = {}
        self._position = 0

    # ----- construction -------------------------------------------------------------------------------------
    def _build_clusters(self) -> None:
        """Order the samples by cluster ``level * K + group`` (level-major, so new levels append clusters)."""
        k, levels = self.mixer.num_groups, len(self._pacing.steps)
        level = admission_levels(self._values, self._metrics, self._pacing, self.num_samples).astype(np.int64)
        cid = np.where(level < levels, level * k + self._groups, levels * k)
        self._order = np.argsort(cid, kind="stable")
        counts = np.bincount(cid, minlength=levels * k + 1)
        self._sizes = counts[: levels * k]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)])[:-1]
        self._shuffles = {}

    _new_levels = _build_clusters  # new levels (custom schedules): new clusters after the known ones

    # ----- queries ------------------------------------------------------------------------------------------
    def _eligible(self, step: int) -> np.ndarray:
        """Eligible samples per group at ``step``."""
        k = self.mixer.num_groups
        return self._sizes[: (self._level(step) + 1) * k].reshape(-1, k).sum(0)

    def num_eligible(self, step: int) -> int:
        return int(self._eligible(step).sum())

    def logs(self, step: int) -> dict[str, float]:
        """The mixer's logs of ``step`` (weights over the groups eligible then)."""
        return self.mixer.logs(step, self._eligible(max(step, 1)))

    def group_of(self, indices: Sequence[int]) -> list[int]:
        """The group id of each sample index."""
        return self._groups[np.asarray(indices, dtype=np.int64)].tolist()

    # ----- the draw -------------------------------------------------------------------------------------------
    def _take(self, cluster: int, start: int, count: int) -> np.ndarray:
        """Walk positions ``start ... start + count - 1`` of ``cluster``, pass after reshuffled pass."""
        size, offset = int(self._sizes[cluster]), int(self._offsets[cluster])
        members = self._order[offset : offset + size]
        pieces = []
        for wrap in range(start // size, (start + count - 1) // size + 1):
            cached = self._shuffles.get(cluster)
            if cached is None or cached[0] != wrap:
                cached = (wrap, np.random.default_rng([self.seed, _RNG_WALK, cluster, wrap]).permutation(members))
                self._shuffles[cluster] = cached
            lo, hi = max(start - wrap * size, 0), min(start + count - wrap * size, size)
            pieces.append(cached[1][lo:hi])
        return np.concatenate(pieces)

    def _draw(self, step: int, walked: np.ndarray, strict: bool) -> tuple[list[int], np.ndarray]:
        """The global batch of ``step`` and the walk counters after it, from the counters ``walked`` before it."""
        k, g = self.mixer.num_groups, self.global_batch_size
        level = self._level(step)
        walked = np.concatenate([walked, np.zeros(self._sizes.size - walked.size, dtype=np.int64)])
        sizes = self._sizes[: (level + 1) * k].reshape(-1, k)
        eligible = sizes.sum(0)
        groups = self.mixer.slot_groups(step, g, eligible, strict=strict)
        within = np.floor(np.random.default_rng([self.seed, _RNG_LEVEL, step]).random(g) * eligible[groups])
        levels = (np.cumsum(sizes, axis=0)[:, groups] <= within).sum(0)
        clusters = levels * k + groups
        out = np.empty(g, dtype=np.int64)
        for cluster in np.unique(clusters):
            slots = np.flatnonzero(clusters == cluster)
            out[slots] = self._take(int(cluster), int(walked[cluster]), slots.size)
            walked[cluster] += slots.size
        return out.tolist(), walked

    def step_indices(self, step: int) -> list[int]:
        """The global batch of 1-based ``step`` (``G`` sample indices). Steps are drawn in order; the last few are
        kept. A step before those drawn (the skipped part of a resumed epoch) is replayed from step 1 on separate
        counters: exactly for the static strategies, with the oldest weights kept for ``online``."""
        step = whole_number(step, "step", 1, STEP_ALLOWED)
        if step in self._draws:
            return self._draws[step]
        if step <= self._drawn:
            return self._replayed(step)
        while self._drawn < step:
            self._drawn += 1
            self._draws[self._drawn], self._walked = self._draw(self._drawn, self._walked, strict=True)
            self._walked_after[self._drawn] = self._walked.copy()
            for kept in (self._draws, self._walked_after):
                while len(kept) > _KEPT_STEPS:
                    kept.popitem(last=False)
        return self._draws[step]

    def _replayed(self, step: int) -> list[int]:
        if self._replay is None or self._replay[0] >= step:
            self._replay = (0, np.zeros(self._sizes.size, dtype=np.int64))
        done, walked = self._replay
        while done < step:
            done += 1
            out, walked = self._draw(done, walked, strict=False)
        self._replay = (step, walked)
        return out

    # ----- the sampler protocol ----------------------------------------------------------------------------------
    def tags(self, step: int, indices: Sequence[int]) -> list[dict[str, int]]:
        """Per index of ``step``: its max tokens (with a sequence-length transform) and group (``tag_groups``)."""
        base: dict[str, int] = {}
        if self.return_max_tokens:
            base[MAX_TOKENS_KEY] = self.max_tokens_at(step)
        if not self.tag_groups:
            return [base] * len(indices)
        return [{**base, GROUP_KEY: g} for g in self.group_of(indices)]

    def __iter__(self) -> Iterator[Any]:
        g = self.global_batch_size
        end = (self._position // self.epoch_length + 1) * self.epoch_length
        while self._position < end:
            step, offset = self._position // g + 1, self._position % g
            indices = self.step_indices(step)
            tags = self.tags(step, indices) if self.return_max_tokens or self.tag_groups else None
            for i in range(offset, min(g, offset + end - self._position)):
                self._position += 1
                yield indices[i] if tags is None else (indices[i], tags[i])

    # ----- state --------------------------------------------------------------------------------------------------
    def state_dict(self, position: int | None = None) -> dict[str, Any]:
        """JSON-able state after the step that ends at ``position`` (default: the last step drawn): the position
        and every cluster's walk counter then."""
        step = self._drawn if position is None else int(position) // self.global_batch_size
        if step > self._drawn:
            self.step_indices(step)
        walked = self._walked_after.get(step)
        if walked is None:
            raise ValueError(
                f"group mixing: no walk counters are kept for step {step} (kept: {list(self._walked_after)})."
            )
        state = sampler_state(self, STATE_VERSION, _SAMPLER_KEYS[3:-2], step * self.global_batch_size, self.state_kind)
        return {**state, "walked": walked.tolist()}

    def load_state_dict(self, state: Any, path: str = "sampler") -> None:
        """Continue after the step of ``state`` (checked first: seed, data, groups and geometry)."""
        check_sampler_state(self, state, path, _SAMPLER_KEYS, STATE_VERSION, _SAMPLER_KEYS[3:-2])
        position = state_position(state["position"], f"{path}.position", self.global_batch_size)
        step = position // self.global_batch_size
        self._level(max(step, 1))
        walked = state["walked"]
        if not isinstance(walked, list) or len(walked) > self._sizes.size:
            raise ValueError(f"{path}.walked must be a list of at most {self._sizes.size} counters.")
        counters = np.zeros(self._sizes.size, dtype=np.int64)
        counters[: len(walked)] = [check_state_int(v, f"{path}.walked", 0, INT64_MAX) for v in walked]
        self._walked, self._drawn, self._position = counters, step, position
        self._draws.clear()
        self._walked_after = OrderedDict([(step, counters.copy())])
        self._replay = None


def unknown_group_error(value: Any, groups: Sequence[str], column: str) -> ValueError:
    """The error for a sample whose group is not among ``groups``."""
    return ValueError(
        f"a sample's mixing.column={column!r} value {value!r}{did_you_mean(str(value), groups)} is not among the "
        f"groups; allowed: {list(groups)} (set mixing.groups, or the weights, to name every group)."
    )
