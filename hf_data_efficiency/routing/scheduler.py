"""Kept-length schedule and consumed layer-token counter for random-LTD.

``RandomLTDScheduler`` reproduces DeepSpeed's ``RandomLTDScheduler`` (``fixed_linear``, step 0 =
``min_value``) step for step and adds ``fixed_root``. It also keeps DeepSpeed's consumed
layer-token counter, which the layer-token LR schedule and the Trainer logs read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers.utils import logging

from .._validation import check_state_keys, state_int
from ..config import RandomLTDConfig
from ..schedules import root_pacing

logger = logging.get_logger(__name__)

_STATE_KEYS = ("current_kept_length", "last_step", "consumed_layer_tokens")
_SCHEDULE_KEYS = ("min_value", "max_value", "require_steps", "seq_per_step", "schedule_type", "root_degree")


class RandomLTDScheduler:
    """Kept sequence length of the random-LTD layers at a given optimizer step.

    ``kept_length(step) = root_pacing(step)``: ``floor((step / require_steps) ** (1 / root_degree)
    * (max_value - min_value) + min_value)`` rounded down to a multiple of ``seq_per_step`` and
    capped at ``max_value`` (``root_degree = 1`` for ``fixed_linear``), exactly as DeepSpeed.

    The stateful :meth:`update` mirrors DeepSpeed's ``update_seq``: it moves the current kept length
    (which never changes again once it reached ``max_value``) and, once per new step, adds
    ``global_batch_size * (kept * random_ltd_layer_num + max_value * (total_layer_num - random_ltd_layer_num))``
    to :attr:`consumed_layer_tokens`.
    """

    def __init__(
        self,
        min_value: int,
        max_value: int,
        require_steps: int,
        seq_per_step: int = 16,
        schedule_type: str = "fixed_linear",
        root_degree: float | None = None,
        *,
        total_layer_num: int | None = None,
        random_ltd_layer_num: int | None = None,
        global_batch_size: int | None = None,
    ) -> None:
        # the config holds every rule (types, ranges, min_value >= seq_per_step), with its error messages
        config = RandomLTDConfig(
            min_value=min_value,
            max_value=max_value,
            require_steps=require_steps,
            seq_per_step=seq_per_step,
            schedule_type=schedule_type,
            root_degree=root_degree,
        )
        self.min_value = int(config.min_value)
        self.max_value = int(config.max_value)
        self.require_steps = config.require_steps
        self.seq_per_step = int(config.seq_per_step)
        self.schedule_type = config.schedule_type
        self.root_degree = config.root_degree
        self.total_layer_num = total_layer_num
        self.random_ltd_layer_num = random_ltd_layer_num
        self.global_batch_size = global_batch_size
        self.current_kept_length = self.min_value
        self.last_step = -1
        self.consumed_layer_tokens = 0
        self._warned_no_batch_size = False

    # ----- construction ------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: RandomLTDConfig, **overrides: Any) -> RandomLTDScheduler:
        """Build from a :class:`~hf_data_efficiency.RandomLTDConfig`; ``overrides`` replace counter
        fields (``total_layer_num``, ``random_ltd_layer_num``, ``global_batch_size``)."""
        counters: dict[str, Any] = {
            "total_layer_num": cfg.total_layer_num,
            "random_ltd_layer_num": cfg.random_ltd_layer_num
            if cfg.random_ltd_layer_num is not None
            else (len(cfg.random_ltd_layer_id) if cfg.random_ltd_layer_id is not None else None),
            "global_batch_size": cfg.global_batch_size,
        }
        counters.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{key: getattr(cfg, key) for key in _SCHEDULE_KEYS}, **counters)

    @classmethod
    def from_dict(cls, section: Mapping[str, Any] | RandomLTDConfig) -> RandomLTDScheduler:
        """Build from DeepSpeed's ``random_ltd`` section (or our flat ``RandomLTDConfig`` dict/object)."""
        return cls.from_config(RandomLTDConfig.load(section))

    # ----- pure schedule -----------------------------------------------------------------
    def kept_length(self, step: int) -> int:
        """Kept length at optimizer step ``step`` (0-based, as DeepSpeed's ``global_steps``)."""
        if self.min_value == self.max_value:  # DeepSpeed never moves a schedule that starts at its maximum
            return self.max_value
        return int(
            root_pacing(
                max(step, 0),
                total_steps=self.require_steps,
                root_degree=1 if self.schedule_type == "fixed_linear" else self.root_degree,
                min_value=self.min_value,
                max_value=self.max_value,
                step_size=self.seq_per_step,
                floor_at_min=False,
            )
        )

    def layer_tokens_per_sequence(self, kept_length: int) -> int:
        """Layer-tokens one sequence of ``max_value`` tokens consumes at ``kept_length`` (DeepSpeed's formula)."""
        if self.total_layer_num is None or self.random_ltd_layer_num is None:
            raise ValueError(
                "random_ltd.total_layer_num and random_ltd.random_ltd_layer_num are needed to count layer-tokens; "
                "apply_random_ltd() fills them from the model, or set them in the config."
            )
        n, total = self.random_ltd_layer_num, self.total_layer_num
        return kept_length * n + self.max_value * (total - n)

    def layer_tokens_at(self, step: int) -> int:
        """Layer-tokens the optimizer step ``step`` consumes: ``global_batch_size * layer_tokens_per_sequence``."""
        return self._batch_size() * self.layer_tokens_per_sequence(self.kept_length(step))

    def total_layer_tokens(self, num_steps: int) -> int:
        """Layer-tokens consumed by steps ``0 .. num_steps - 1`` (DeepSpeed's ``get_total_layer_tokens``)."""
        return sum(self.layer_tokens_at(s) for s in range(num_steps))

    def _batch_size(self) -> int:
        if self.global_batch_size is None:
            if not self._warned_no_batch_size:
                logger.warning(
                    "random_ltd.global_batch_size is not set: consumed layer-tokens are counted per sequence. "
                    "Set RandomLTDConfig.global_batch_size (the Trainer integration does this)."
                )
                self._warned_no_batch_size = True
            return 1
        return int(self.global_batch_size)

    # ----- stateful (DeepSpeed ``update_seq``) ----------------------------------------------
    def update(self, step: int) -> int:
        """Advance to optimizer step ``step``: update the kept length and the layer-token counter."""
        if self.current_kept_length < self.max_value:
            self.current_kept_length = self.kept_length(step)
        if step != self.last_step:
            self.consumed_layer_tokens += self._batch_size() * self.layer_tokens_per_sequence(self.current_kept_length)
            self.last_step = step
        return self.current_kept_length

    def state_dict(self) -> dict[str, int]:
        """JSON-able state for checkpoints."""
        return {key: int(getattr(self, key)) for key in _STATE_KEYS}

    def kept_length_bounds(self) -> tuple[int, int]:
        """Smallest and largest kept length this schedule produces (``min_value`` is rounded down to a
        multiple of ``seq_per_step`` at step 0, as in DeepSpeed)."""
        return min(self.min_value, self.kept_length(0)), self.max_value

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; refuses other keys, non-integers and out-of-range values."""
        where = "random_ltd.scheduler"
        check_state_keys(where, state, _STATE_KEYS)
        low, high = self.kept_length_bounds()
        self.current_kept_length, self.last_step, self.consumed_layer_tokens = (  # all checked before any is set
            state_int(where, "current_kept_length", state["current_kept_length"], low, high),
            state_int(where, "last_step", state["last_step"], -1),
            state_int(where, "consumed_layer_tokens", state["consumed_layer_tokens"], 0),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_value={self.min_value}, max_value={self.max_value}, "
            f"require_steps={self.require_steps}, seq_per_step={self.seq_per_step}, "
            f"schedule_type={self.schedule_type!r}, root_degree={self.root_degree}, "
            f"current_kept_length={self.current_kept_length}, consumed_layer_tokens={self.consumed_layer_tokens})"
        )
