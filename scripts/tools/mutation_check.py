"""Mutation check: plant small deliberate bugs one at a time and check that the test suite catches each.

Every entry of ``MUTATIONS`` names a source file, an exact snippet of it, its replacement and the smallest test
selection that should fail because of it. The check copies the working tree (tracked and untracked, not ignored,
files) to a temporary directory once, runs the union of the selected tests there unmutated (the baseline must
pass), then for each mutation: patches the copy, runs ``python -m pytest -x -q <tests>`` with ``PYTHONPATH`` on the
copy, and restores the file. A mutation is

* **caught** when pytest reports failing tests (exit status 1),
* **missed** when the tests pass,
* **timeout** when they run past ``--timeout`` seconds,
* **error** when its original snippet is not found exactly once (the source changed: update the entry, so the list
  cannot rot silently), the mutated file does not compile, or pytest ends otherwise (collection or usage error).

The exit status is 0 only when every selected mutation is caught. Not part of CI: the full list takes about
15-25 minutes on two (shared) cores. Run from the repository root::

    python scripts/tools/mutation_check.py                   # every mutation, summary table
    python scripts/tools/mutation_check.py --list            # names, files and tests (and stale snippets)
    python scripts/tools/mutation_check.py --only sampler-load-position-off-by-one-micro-batch
    python scripts/tools/mutation_check.py --write-doc       # also record the table in docs/testing.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing.md"
DOC_BEGIN, DOC_END = "<!-- mutation-check:begin -->", "<!-- mutation-check:end -->"
PKG = "hf_data_efficiency"


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: ``original`` (exactly once in ``path``) becomes ``replacement``."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    what: str


def _m(name: str, path: str, original: str, replacement: str, tests: Sequence[str], what: str) -> Mutation:
    return Mutation(name, f"{PKG}/{path}", original, replacement, tuple(tests), what)


SAMPLER = "curriculum/sampler.py"
ELIGIBILITY = "curriculum/eligibility.py"
TRANSFORMS = "curriculum/transforms.py"
RLTD = "routing/random_ltd.py"
T_SAMPLER = "tests/test_sampler.py"
T_TRAINER = "tests/test_trainer.py"
T_MIXING = "tests/test_mixing.py"
T_WARMUP = "tests/test_batch_size_warmup.py"
T_TRL = "tests/test_trl.py"

MUTATIONS: tuple[Mutation, ...] = (
    # ------------------------------------------------------------------ sampler
    _m(
        "sampler-cluster-draw-boundary",
        SAMPLER,
        'return np.searchsorted(self._cum, picks, side="right")',
        'return np.searchsorted(self._cum, picks, side="left")',
        [T_SAMPLER],
        "a draw on a cluster boundary picks the previous cluster",
    ),
    _m(
        "sampler-one-step-lag",
        SAMPLER,
        "steps = np.arange(first_step, first_step + self.block_steps)",
        "steps = np.arange(first_step - 1, first_step + self.block_steps - 1)",
        [T_SAMPLER],
        "each batch is drawn at the previous step's difficulty (audit: caught)",
    ),
    _m(
        "sampler-walk-reuses-first-shuffle",
        SAMPLER,
        "np.random.default_rng([self.seed, _RNG_WALK, cluster, wrap]).shuffle(seg)",
        "np.random.default_rng([self.seed, _RNG_WALK, cluster, 0]).shuffle(seg)",
        [T_SAMPLER],
        "every wrap of a cluster's walk repeats the first shuffle",
    ),
    _m(
        "sampler-walk-not-advanced",
        SAMPLER,
        "        self._consumed += counts\n        self._draw_block = block + 1\n",
        "        self._draw_block = block + 1\n",
        [T_SAMPLER],
        "a block's draws do not advance the cluster walks (the next block repeats samples)",
    ),
    _m(
        "sampler-resume-runs-past-epoch-end",
        SAMPLER,
        "end = (self._position // self.epoch_length + 1) * self.epoch_length",
        "end = self._position + self.epoch_length",
        [T_SAMPLER],
        "an iteration resumed mid-epoch runs a whole epoch length instead of to the epoch's end",
    ),
    _m(
        "sampler-set-epoch-uses-dataset-length",
        SAMPLER,
        'self._position = whole_number(epoch, "epoch") * self.epoch_length',
        'self._position = whole_number(epoch, "epoch") * self.num_samples',
        [T_SAMPLER],
        "set_epoch positions the stream at epoch * N instead of epoch * len(sampler)",
    ),
    _m(
        "sampler-load-position-off-by-one-micro-batch",
        SAMPLER,
        '        self._position = whole_number(state["position"], "sampler state position")\n',
        '        self._position = whole_number(state["position"], "sampler state position") + self.batch_size\n',
        [T_SAMPLER],
        "load_state_dict resumes one micro-batch late (audit: missed at Trainer level)",
    ),
    _m(
        "sampler-state-ignores-consumer-position",
        SAMPLER,
        '"position": int(sampler._position if position is None else position),',
        '"position": int(sampler._position),',
        [T_SAMPLER],
        "state_dict ignores the consumer-side position (a prefetching loader's lead is saved)",
    ),
    _m(
        "sampler-fingerprint-not-checked",
        SAMPLER,
        'if "fingerprint" in keys and state["fingerprint"] != sampler._fingerprint:',
        'if "fingerprint" in keys and state["fingerprint"] is None:',
        [T_SAMPLER],
        "a state from other metric values or another curriculum config is accepted",
    ),
    _m(
        "sampler-seek-backwards-not-reset",
        SAMPLER,
        "if block < self._draw_block:",
        "if block < 0:",
        [T_SAMPLER],
        "jumping back to an earlier epoch keeps the walk counters of the later position",
    ),
    # ------------------------------------------------------------------ eligibility
    _m(
        "percentile-rounds-up",
        ELIGIBILITY,
        "return math.floor(Fraction(num_samples) * Fraction(repr(float(percentile))) / 100)",
        "return math.ceil(Fraction(num_samples) * Fraction(repr(float(percentile))) / 100)",
        [T_SAMPLER],
        "a percentile difficulty admits ceil instead of floor(N * p / 100) samples (audit: caught)",
    ),
    _m(
        "value-eligibility-strict",
        ELIGIBILITY,
        'table = np.searchsorted(limits, np.arange(int(vals.max()) + 1), side="left")',
        'table = np.searchsorted(limits, np.arange(int(vals.max()) + 1), side="right")',
        [T_SAMPLER],
        "a value metric admits metric < difficulty instead of <=",
    ),
    _m(
        "eligibility-no-running-maximum",
        ELIGIBILITY,
        "if name not in self._current or value > self._current[name]:",
        "if name not in self._current or value != self._current[name]:",
        [T_SAMPLER],
        "a decreasing schedule lowers the difficulty (admitted samples are no longer kept)",
    ),
    _m(
        "eligibility-percentile-overrides-other-metrics",
        ELIGIBILITY,
        "level[ranked] = np.maximum(level[ranked], by_rank)",
        "level[ranked] = by_rank",
        [T_SAMPLER],
        "with several metrics a percentile metric ignores the others",
    ),
    _m(
        "eligibility-discrete-change-one-step-early",
        ELIGIBILITY,
        'breaks = [math.floor(ms) + 1 for ms in sched.schedule_config["max_step"]]',
        'breaks = [math.floor(ms) for ms in sched.schedule_config["max_step"]]',
        [T_SAMPLER],
        "a fixed_discrete difficulty change is looked for one step early (and missed)",
    ),
    # ------------------------------------------------------------------ schedules
    _m(
        "root-schedule-power-not-root",
        "schedules.py",
        "progress = (float(step) / total_steps) ** (1.0 / root_degree)",
        "progress = (float(step) / total_steps) ** root_degree",
        ["tests/test_schedules.py"],
        "fixed_root raises progress to the degree instead of taking the root",
    ),
    _m(
        "schedule-rounds-up-to-difficulty-step",
        "schedules.py",
        "value -= value % step_size",
        "value += -value % step_size",
        ["tests/test_schedules.py"],
        "the difficulty is rounded up to a multiple of difficulty_step instead of down",
    ),
    _m(
        "curriculum-schedule-not-floored-at-min",
        "schedules.py",
        "            floor_at_min=True,\n",
        "            floor_at_min=False,\n",
        ["tests/test_schedules.py"],
        "a curriculum difficulty may fall below the first multiple of difficulty_step above min_difficulty",
    ),
    _m(
        "discrete-boundary-exclusive",
        "schedules.py",
        "if step <= bound)",
        "if step < bound)",
        ["tests/test_schedules.py"],
        "fixed_discrete switches one step before its max_step",
    ),
    _m(
        "discrete-final-step-one-early",
        "schedules.py",
        'return int(sc["max_step"][-1]) + 1',
        'return int(sc["max_step"][-1])',
        ["tests/test_schedules.py", T_SAMPLER],
        "fixed_discrete reports its final difficulty one step early (the sampler stops looking for changes)",
    ),
    # ------------------------------------------------------------------ transforms and tags
    _m(
        "truncate-left-padded-keeps-last-tokens",
        TRANSFORMS,
        "src = torch.where(j < new_pad, torch.zeros_like(j), (t - lengths)[:, None] + j - new_pad)",
        "src = torch.where(j < new_pad, torch.zeros_like(j), (t - kept)[:, None] + j - new_pad)",
        ["tests/test_transforms.py"],
        "seqlen_truncate keeps the last instead of the first real tokens of left-padded rows",
    ),
    _m(
        "reshape-pads-labels-with-zero",
        TRANSFORMS,
        '_DEFAULT_PAD_VALUES = {"labels": -100,',
        '_DEFAULT_PAD_VALUES = {"labels": 0,',
        ["tests/test_transforms.py"],
        "seqlen_reshape pads the last piece's labels with 0 (trained on) instead of -100",
    ),
    _m(
        "reshape-drops-partly-padded-rows",
        TRANSFORMS,
        "keep = new_mask.ne(0).any(1)",
        "keep = new_mask.ne(0).all(1)",
        ["tests/test_transforms.py"],
        "seqlen_reshape drops every piece with padding instead of only empty pieces",
    ),
    _m(
        "reshape-position-ids-start-at-one",
        TRANSFORMS,
        "positions = (new_mask.ne(0).long().cumsum(1) - 1).clamp(min=0)",
        "positions = new_mask.ne(0).long().cumsum(1).clamp(min=0)",
        ["tests/test_transforms.py"],
        "seqlen_reshape restarts the position_ids of a masked batch at 1",
    ),
    _m(
        "left-padding-needs-every-row-padded",
        TRANSFORMS,
        "bool((mask[:, 0] == 0).any())",
        "bool((mask[:, 0] == 0).all())",
        ["tests/test_transforms.py"],
        "a left-padded batch with one unpadded row is taken for right-padded",
    ),
    _m(
        "reshape-ignores-the-tokenizer-pad-id",
        TRANSFORMS,
        'pad_token_id = getattr(tokenizer, "pad_token_id", None)',
        "pad_token_id = None",
        ["tests/test_transforms.py"],
        "seqlen_reshape pads new rows with 0 instead of the collator's tokenizer's pad id",
    ),
    _m(
        "transform-tag-one-step-late",
        SAMPLER,
        "            first_step = block * self.block_steps + 1\n            max_tokens =",
        "            first_step = block * self.block_steps + 2\n            max_tokens =",
        ["tests/test_transforms.py"],
        "the max tokens tagged on each index are those of the next step",
    ),
    _m(
        "seeded-collation-same-seed-every-batch",
        TRANSFORMS,
        "entropy = [self.seed, 0, min(positions)]",
        "entropy = [self.seed, 0, 0]",
        ["tests/test_transforms.py", f"{T_TRAINER}::test_mlm_resume_masks_exactly_as_the_uninterrupted_run"],
        "every micro-batch is collated with the same seed (identical MLM masks for every batch)",
    ),
    _m(
        "position-tags-not-advanced",
        TRANSFORMS,
        "            position += 1\n",
        "",
        ["tests/test_transforms.py", f"{T_TRAINER}::test_mlm_resume_masks_exactly_as_the_uninterrupted_run"],
        "every index of an iteration is tagged with the iteration's first stream position",
    ),
    # ------------------------------------------------------------------ random-LTD
    _m(
        "keep-positions-never-kept",
        RLTD,
        "scores[:, keep] = 2.0",
        "scores[:, keep] = -1.0",
        ["tests/test_random_ltd_ops.py"],
        "keep_positions (CLS) are always dropped instead of always kept",
    ),
    _m(
        "architecture-keep-positions-ignored",
        RLTD,
        "keep = tuple(cfg.keep_positions) if cfg.keep_positions is not None else spec.keep_positions",
        "keep = tuple(cfg.keep_positions) if cfg.keep_positions is not None else ()",
        ["tests/test_random_ltd_architectures.py::test_dropping_matches_layer_oracle"],
        "BERT/RoBERTa/ViT lose their keep-CLS default (CLS may be dropped)",
    ),
    _m(
        "kept-subset-unsorted",
        RLTD,
        "return idx.sort(dim=1).values",
        "return idx",
        ["tests/test_random_ltd_ops.py"],
        "the kept positions are not in sequence order (causal order broken)",
    ),
    _m(
        "gather-flat-index-wrong-stride",
        RLTD,
        "return (idx + batch * seq_len).reshape(-1)",
        "return (idx + batch * idx.shape[1]).reshape(-1)",
        ["tests/test_random_ltd_ops.py"],
        "gather/scatter address sample b at b * kept instead of b * seq_len",
    ),
    _m(
        "scatter-zeroes-dropped-tokens",
        RLTD,
        "out = flat.index_copy(0, _flat_index(idx, T), sub.reshape(-1, *sub.shape[2:]))",
        "out = torch.zeros_like(flat).index_copy(0, _flat_index(idx, T), sub.reshape(-1, *sub.shape[2:]))",
        ["tests/test_random_ltd_ops.py"],
        "dropped tokens are zeroed instead of passing through",
    ),
    _m(
        "mask-2d-first-columns",
        RLTD,
        "return mask.expand(B, seq_len).gather(1, idx)",
        "return mask.expand(B, seq_len)[:, :k]",
        ["tests/test_random_ltd_ops.py"],
        "a 2-D padding mask keeps its first k columns instead of the kept ones",
    ),
    _m(
        "mask-4d-rows-not-restricted-by-index",
        RLTD,
        "mask = mask.gather(2, idx[:, None, :, None].expand(B, heads, k, cols))",
        "mask = mask[:, :, :k]",
        ["tests/test_random_ltd_ops.py"],
        "a 4-D mask keeps its first k query rows instead of the kept ones (audit: caught)",
    ),
    _m(
        "packed-documents-not-detected",
        RLTD,
        "starts = (position_ids.reshape(-1).diff() != 1).nonzero()",
        "starts = (position_ids.reshape(-1).diff() > 1).nonzero()",
        ["tests/test_random_ltd_packed.py::test_each_document_keeps_min_length_kept_of_its_own_tokens"],
        "the documents of a packed row (restarting position_ids) are not found: kept per row, not per document",
    ),
    _m(
        "rotary-sin-not-gathered",
        RLTD,
        "call.put(name, type(value)(_gather_seq(v, idx, T, name) for v in value))",
        "call.put(name, type(value)((_gather_seq(value[0], idx, T, name), value[1][:, : idx.shape[1]])))",
        ["tests/test_random_ltd_architectures.py::test_dropping_matches_layer_oracle"],
        "rotary sin is taken from the first k positions instead of the kept ones (RoPE wrong)",
    ),
    _m(
        "fallback-undercounts-kept-tokens",
        RLTD,
        "            self.kept_tokens_seen += B * T\n",
        "            self.kept_tokens_seen += kept\n",
        ["tests/test_random_ltd_integration.py::test_flash_fallbacks_run_full_length_with_one_warning"],
        "a layer that falls back to the full sequence is counted at the kept length",
    ),
    _m(
        "random-ltd-drops-in-eval",
        RLTD,
        "if not patch.module.training or self._kept_length is None:",
        "if self._kept_length is None:",
        ["tests/test_random_ltd_models.py::test_remove_and_eval_are_vanilla"],
        "tokens are dropped in eval mode too",
    ),
    _m(
        "remove-forgets-an-earlier-instance-forward",
        RLTD,
        "            if p.had_instance_forward:\n                p.module.forward = p.previous_forward",
        "            if False:\n                p.module.forward = p.previous_forward",
        ["tests/test_random_ltd_integration.py::test_remove_restores_an_earlier_accelerate_hook"],
        "remove() deletes an accelerate hook's instance forward instead of restoring it",
    ),
    _m(
        "random-ltd-state-kept-length-unbounded",
        RLTD,
        'kept = state_int(where, "kept_length", kept, low, high)',
        'kept = state_int(where, "kept_length", kept, low)',
        ["tests/test_random_ltd_state.py"],
        "a checkpoint kept length above the schedule's max_value is accepted",
    ),
    _m(
        "logged-layer-tokens-not-divided-by-layers",
        RLTD,
        "return self.kept_tokens_seen + self.full_tokens_seen * (self.total_layers - self.num_layers) // n",
        "return self.kept_tokens_seen + self.full_tokens_seen * (self.total_layers - self.num_layers)",
        [f"{T_TRAINER}::test_logged_layer_tokens_with_several_patched_layers"],
        "the logged layer-tokens count full-length layers once per patched layer (audit: missed)",
    ),
    # ------------------------------------------------------------------ kept-length scheduler and LR
    _m(
        "kept-length-floored-at-min",
        "routing/scheduler.py",
        "                floor_at_min=False,\n",
        "                floor_at_min=True,\n",
        ["tests/test_random_ltd_scheduler.py"],
        "the random-LTD kept length is floored at min_value (DeepSpeed's random-LTD does not)",
    ),
    _m(
        "layer-tokens-counted-every-micro-batch",
        "routing/scheduler.py",
        "if step != self.last_step:",
        "if True:",
        ["tests/test_random_ltd_scheduler.py"],
        "the consumed layer-token counter grows on every update, not once per optimizer step",
    ),
    _m(
        "layer-tokens-formula-all-layers-kept",
        "routing/scheduler.py",
        "return kept_length * n + self.max_value * (total - n)",
        "return kept_length * total",
        ["tests/test_random_ltd_scheduler.py"],
        "layer-tokens per sequence count every layer at the kept length",
    ),
    _m(
        "lr-counts-current-step",
        "routing/lr_schedule.py",
        "while self._counted_steps < self.last_epoch:",
        "while self._counted_steps <= self.last_epoch:",
        ["tests/test_random_ltd_lr_schedule.py"],
        "the LR at step k counts the layer-tokens of step k too (one step ahead)",
    ),
    _m(
        "lr-cosine-quarter-wave",
        "routing/lr_schedule.py",
        "0.5 * (1.0 + math.cos(math.pi * progress))",
        "math.cos(0.5 * math.pi * progress)",
        ["tests/test_random_ltd_lr_schedule.py"],
        "the cosine decay follows a quarter cosine wave",
    ),
    _m(
        "lr-consumed-not-restored",
        "routing/lr_schedule.py",
        "        self.__dict__.update(progress)\n",
        '        self.__dict__.update({**progress, "consumed_layer_tokens": 0})\n',
        ["tests/test_random_ltd_lr_schedule.py"],
        "a resumed layer-token LR schedule restarts its consumed layer-tokens from zero",
    ),
    _m(
        "lr-warmup-one-step-long",
        "engine.py",
        "warmup = lr_cfg.warmup_layer_tokens or sum(tokens_at(j) for j in range(warmup_steps))",
        "warmup = lr_cfg.warmup_layer_tokens or sum(tokens_at(j) for j in range(warmup_steps + 1))",
        [f"{T_TRAINER}::test_layer_token_lr_schedule"],
        "the Trainer's layer-token warmup covers one step more than --warmup_steps",
    ),
    # ------------------------------------------------------------------ engine: counters, state, steps
    _m(
        "counter-tokens-per-row",
        "engine.py",
        'self._local["tokens"] += int(tokens.numel())',
        'self._local["tokens"] += int(tokens.shape[-1])',
        [T_TRAINER],
        "the token counter adds one row's tokens per micro-batch",
    ),
    _m(
        "consumed-samples-per-micro-batch",
        "engine.py",
        "return global_step * self.sampler.global_batch_size",
        "return global_step * self.sampler.batch_size",
        [T_TRAINER],
        "consumed samples count one micro-batch per step instead of the global batch",
    ),
    _m(
        "counters-not-summed-across-ranks",
        "engine.py",
        "delta = self._sum_over_processes(delta, reduce, device)",
        "delta = delta",
        ["tests/test_trainer_distributed.py::test_two_processes_shard_the_single_process_stream"],
        "with two processes each logs only its own tokens",
    ),
    _m(
        "logged-difficulty-of-next-step",
        "engine.py",
        "for name, value in self.sampler.difficulty_at(global_step).items():",
        "for name, value in self.sampler.difficulty_at(global_step + 1).items():",
        [T_TRAINER],
        "the logged curriculum difficulty is the next step's",
    ),
    _m(
        "counters-not-restored-on-resume",
        "engine.py",
        'self._totals.update({key: int(state["counters"][key]) for key in _COUNTERS})',
        "self._totals.update({key: 0 for key in _COUNTERS})",
        ["tests/test_engine.py"],
        "a resumed run restarts its counters from zero (audit: caught)",
    ),
    _m(
        "state-negative-counter-accepted",
        "engine.py",
        'check_state_int(counters[key], f"state.counters.{key}", 0, _INT64_MAX)',
        'check_state_int(counters[key], f"state.counters.{key}", -_INT64_MAX, _INT64_MAX)',
        ["tests/test_engine.py"],
        "a checkpoint state with a negative counter is accepted",
    ),
    _m(
        "state-position-not-cross-checked",
        "engine.py",
        'if state["position"] != expected:',
        'if state["position"] < 0:',
        ["tests/test_engine.py"],
        "a sampler position that disagrees with global_step x global batch is accepted",
    ),
    _m(
        "resume-skips-steps-not-micro-batches",
        "engine.py",
        "return epoch, steps * self.gradient_accumulation_steps",
        "return epoch, steps",
        ["tests/test_engine.py"],
        "a plain loop resumed with gradient accumulation skips too few micro-batches",
    ),
    _m(
        "kept-length-one-step-ahead",
        "callbacks.py",
        "self.random_ltd_handle.update(state.global_step)",
        "self.random_ltd_handle.update(state.global_step + 1)",
        [T_TRAINER],
        "the kept length of step k is taken from the schedule at k + 1 (the Trainer's step hook)",
    ),
    _m(
        "loop-kept-length-one-step-ahead",
        "engine.py",
        "self.random_ltd_handle.update(global_step)",
        "self.random_ltd_handle.update(global_step + 1)",
        ["tests/test_golden.py::test_accelerate_loop_equals_recorded_main"],
        "in a plain loop (engine.begin_step) the kept length of step k is taken from the schedule at k + 1",
    ),
    _m(
        "trainer-epoch-not-passed-to-sampler",
        "trainer.py",
        'self.engine.set_epoch(int(kwargs["epoch"]))',
        "self.engine.set_epoch(0)",
        [f"{T_TRAINER}::test_collator_randomness_is_fresh_in_every_epoch"],
        "the engine is told epoch 0 in every epoch (collation seeds, and the stream under wrappers the Trainer "
        "does not reach)",
    ),
    _m(
        "loss-type-not-declared",
        "engine.py",
        '    inner.loss_type = "ForCausalLM"\n',
        "",
        [f"{T_TRAINER}::test_step_loss_is_the_mean_over_real_shifted_label_tokens"],
        "num_items_in_batch counts unshifted labels (the step loss is not the mean over its label tokens)",
    ),
    _m(
        "resume-without-state-accepted",
        "trainer.py",
        "if problems and not self.args.ignore_data_skip:",
        "if problems and self.args.ignore_data_skip:",
        [f"{T_TRAINER}::test_resume_refuses_missing_or_corrupt_state"],
        "a checkpoint without its data-efficiency state resumes silently (curriculum restarted)",
    ),
    # ------------------------------------------------------------------ checkpoints
    _m(
        "checkpoint-step-mismatch-accepted",
        "checkpoints.py",
        'elif state is not None and trainer_state.get("global_step") != state.get("global_step"):',
        'elif state is not None and state.get("global_step") is None:',
        ["tests/test_checkpoints.py"],
        "a checkpoint whose state and trainer_state are for different steps counts as complete",
    ),
    _m(
        "resume-picks-oldest-checkpoint",
        "checkpoints.py",
        "return [p for _, p in sorted(found, reverse=True)]",
        "return [p for _, p in sorted(found)]",
        ["tests/test_checkpoints.py"],
        "resume_from_checkpoint=True picks the oldest complete checkpoint",
    ),
    _m(
        "partial-checkpoint-not-renamed",
        "checkpoints.py",
        "        os.replace(partial, final)\n",
        "        shutil.copytree(partial, final)\n",
        ["tests/test_checkpoints.py"],
        "save_checkpoint leaves the .partial folder behind (copied, not renamed)",
    ),
    # ------------------------------------------------------------------ random-LTD on packed rows, under compile
    _m(
        "packed-document-keeps-one-more",
        RLTD,
        "return order[rank < kept_length].sort().values.unsqueeze(0)",
        "return order[rank <= kept_length].sort().values.unsqueeze(0)",
        ["tests/test_random_ltd_packed.py::test_each_document_keeps_min_length_kept_of_its_own_tokens"],
        "each document of a packed row keeps kept + 1 tokens",
    ),
    _m(
        "packed-varlen-kwargs-not-added-under-flash",
        RLTD,
        "call.put(name, value, add=flash)",
        "call.put(name, value, add=False)",
        ["tests/test_random_ltd_packed.py::test_documents_are_independent"],
        "under flash attention a packed row given by position_ids gets no varlen kwargs: documents attend across",
    ),
    _m(
        "sampling-traced-by-compile",
        RLTD,
        "    @torch.compiler.disable\n    def _plan(",
        "    def _plan(",
        ["tests/test_random_ltd_packed.py::test_trainer_under_torch_compile_matches_eager"],
        "the sampling (data-dependent sizes) is traced by torch.compile",
    ),
    _m(
        "packed-lr-schedule-counts-the-formula",
        "engine.py",
        "            if document_lengths is not None and fixed:",
        "            if False:",
        [
            "tests/test_random_ltd_packed.py::test_layer_token_lr_schedule_on_packed_rows_counts_the_documents_real_tokens",
            "tests/test_trl.py::test_sft_padding_free_layer_token_lr_counts_the_documents",
        ],
        "the layer-token LR schedule counts every packed document at max_value (DeepSpeed's formula)",
    ),
    _m(
        "packed-lr-schedule-ignores-short-documents",
        "routing/lr_schedule.py",
        "mean_kept = (prefix[shorter] + kept * (count - shorter)) / count",
        "mean_kept = kept",
        [
            "tests/test_random_ltd_packed.py::test_layer_token_lr_schedule_on_packed_rows_counts_the_documents_real_tokens"
        ],
        "a packed document shorter than the kept length is counted at the kept length",
    ),
    # ------------------------------------------------------------------ token budgets and the stream's selection
    _m(
        "budget-truncation-ignores-row-cap",
        "batching/budget.py",
        "return self.row_cap if max_tokens is None else min(int(max_tokens), self.row_cap)",
        "return None if max_tokens is None else int(max_tokens)",
        [
            "tests/test_dynamic_batching.py::test_truncate_long_samples_cuts_and_counts",
            "tests/test_streaming_dynamic_batching.py::test_over_long_samples_are_refused_or_truncated_and_counted",
        ],
        "with truncate_long_samples, over-long rows are budgeted and collated at their full length",
    ),
    _m(
        "stream-fallback-not-closest-first",
        "curriculum/streaming.py",
        "waiting = waiting[np.lexsort((ids[waiting], levels[waiting]))]",
        "waiting = waiting[::-1]",
        ["tests/test_streaming.py::test_hold_completes_a_step_with_the_samples_closest_to_eligibility"],
        "a step completed from samples not yet eligible takes the newest, not those closest to eligibility",
    ),
    _m(
        "full-buffer-evicts-for-bigger-batches",
        "curriculum/streaming.py",
        'if policy == "hold" or eligible >= self.local_batch_size:',
        'if policy == "hold":',
        ["tests/test_streaming_dynamic_batching.py"],
        "a full buffer evicts samples to make bigger token-budget micro-batches",
    ),
    _m(
        "deepspeed-block-left-for-deepspeed",
        "config.py",
        "block = {key: deepspeed.pop(key) for key in DEEPSPEED_KEYS if key in deepspeed}",
        "block = {key: deepspeed[key] for key in DEEPSPEED_KEYS if key in deepspeed}",
        ["tests/test_training_args.py"],
        "the data_efficiency block stays in the config DeepSpeed receives",
    ),
    _m(
        "state-counter-unbounded",
        "engine.py",
        "_INT64_MAX = 2**63 - 1",
        "_INT64_MAX = 2**200",
        ["tests/test_hardening.py::test_state_counters_out_of_bounds_are_refused"],
        "a checkpoint counter beyond int64 (10**30) is resumed",
    ),
    _m(
        "train-loader-stream-not-per-process",
        "engine.py",
        "                per_process=True,\n",
        "                per_process=False,\n",
        ["tests/test_data_path.py", "tests/test_streaming.py::test_trainer_on_a_stream_with_two_processes_and_resume"],
        "the loader of a stream is sharded again by accelerate (each process already reads its own shard)",
    ),
    # ------------------------------------------------------------------ group mixing and batch-size warmup
    _m(
        "mixing-pass-not-reshuffled",
        "curriculum/mixing.py",
        "np.random.default_rng([self.seed, _RNG_WALK, cluster, wrap]).permutation(members)",
        "np.random.default_rng([self.seed, _RNG_WALK, cluster, 0]).permutation(members)",
        [f"{T_MIXING}::test_no_sample_repeats_within_a_pass_of_its_group"],
        "a group that runs out repeats its first pass's order instead of reshuffling",
    ),
    _m(
        "mixing-online-rewards-the-loss",
        "curriculum/mixing.py",
        "gain = np.maximum(progress, 0.0)",
        "gain = np.nan_to_num(self._fast)",
        [f"{T_MIXING}::test_online_rule_does_not_chase_irreducible_loss"],
        "the online rule rewards each group's loss (ODM's reward), so a noise group wins",
    ),
    _m(
        "mixing-online-draws-ahead-of-its-delay",
        "curriculum/mixing.py",
        "source = step - self.delay",
        "source = step - self.delay + 1",
        [
            f"{T_MIXING}::test_online_rule_does_not_chase_irreducible_loss",
            f"{T_MIXING}::test_online_mixing_resumes_exactly",
        ],
        "the draw of step k uses the weights after step k - delay + 1",
    ),
    _m(
        "mixing-losses-unshifted",
        "curriculum/mixing.py",
        "else shifted_token_losses(logits, labels)",
        "else shifted_token_losses(logits, torch.cat([labels[:, :1], labels[:, :-1]], dim=1))",
        [f"{T_MIXING}::test_online_losses_are_the_steps_per_group_token_losses"],
        "a causal LM's per-group losses compare each logit with its own input token instead of the next one",
    ),
    _m(
        "mixing-stream-ignores-the-draw",
        "curriculum/streaming.py",
        "        return mixed_order(slots, eligible, stream._groups[eligible])\n",
        "        return eligible\n",
        [f"{T_MIXING}::test_a_stream_takes_its_samples_in_the_mixers_order"],
        "a mixed stream takes its oldest eligible samples, whatever the weights",
    ),
    _m(
        "mixing-losses-not-reduced",
        "engine.py",
        "loss_sums, token_counts = self._sum_over_processes(sums, reduce, device).cpu().tolist()",
        "loss_sums, token_counts = sums.cpu().tolist()",
        [f"{T_MIXING}::test_two_processes_draw_the_single_process_stream"],
        "each process updates the online weights from its own losses only, so the ranks' draws diverge",
    ),
    _m(
        "warmup-ramp-rounds-up",
        "batching/warmup.py",
        "return self.config.start + consumed * self.increments // self.config.samples * self.config.increment",
        "return self.config.start + -(-consumed * self.increments // self.config.samples) * self.config.increment",
        [f"{T_WARMUP}::test_batch_sizes_follow_the_megatron_ramp"],
        "the batch grows one increment early (a ceiling instead of Megatron's floor)",
    ),
    _m(
        "warmup-budget-not-ramped",
        "batching/warmup.py",
        "return max(max_tokens * self.batch_size_at(consumed) // self.batch_size, least)",
        "return max(max_tokens, least)",
        [f"{T_WARMUP}::test_token_budget_ramps_with_the_batch"],
        "a token budget keeps max_tokens during the warmup",
    ),
    # ------------------------------------------------------------------ model-based selection
    _m(
        "selection-excess-sign",
        "selection/excess_loss.py",
        "excess = train.detach() - reference",
        "excess = reference - train.detach()",
        [
            "tests/test_token_selection.py::test_one_step_loss_and_gradient_equal_the_recomputation_under_gradient_accumulation"
        ],
        "token selection keeps the tokens of lowest excess loss",
    ),
    _m(
        "selection-per-micro-batch-mean",
        "selection/excess_loss.py",
        "loss = (train * chosen).sum() * scale / num_selected",
        "loss = (train * chosen).sum() * scale / max(k, 1) / 3",
        [
            "tests/test_token_selection.py::test_one_step_loss_and_gradient_equal_the_recomputation_under_gradient_accumulation"
        ],
        "each micro-batch is averaged over its own selected tokens (wrong weights under accumulation)",
    ),
    _m(
        "selection-count-rounds-up",
        "selection/excess_loss.py",
        "return max(1, min(num_tokens, math.floor(ratio * num_tokens + 0.5)))",
        "return max(1, min(num_tokens, math.ceil(ratio * num_tokens)))",
        ["tests/test_token_selection.py::test_selected_count_rounds_to_the_nearest_token"],
        "the kept count rounds up instead of to the nearest token",
    ),
    _m(
        "selection-resume-ignores-reference",
        "selection/excess_loss.py",
        'if state["reference"] != self.identity:',
        "if False:",
        ["tests/test_token_selection.py::test_resume_is_exact_with_selection_curriculum_and_random_ltd"],
        "a checkpoint resumes against another reference model",
    ),
    _m(
        "reference-cost-half",
        "curriculum/reference.py",
        "FORWARD_FRACTION = 1.0 / 3.0",
        "FORWARD_FRACTION = 1.0 / 2.0",
        ["tests/test_token_selection.py::test_effective_tokens_count_the_reference_forwards_as_a_third"],
        "a reference forward is counted as half a training step",
    ),
    _m(
        "reference-loss-unshifted",
        "curriculum/reference.py",
        "targets = torch.cat([labels[:, 1:], labels.new_full((b, 1), -100)], dim=1).reshape(-1)",
        "targets = labels.reshape(-1)",
        ["tests/test_reference_loss.py::test_reference_loss_equals_the_models_own_per_sample_loss"],
        "the reference loss scores each token from its own position instead of the one before",
    ),
    _m(
        "reference-fingerprint-ignores-weights",
        "curriculum/reference.py",
        "h.update(memoryview(t.view(torch.uint8).numpy()))",
        "pass",
        ["tests/test_reference_loss.py::test_fingerprint_is_the_models_identity_and_the_datasets_cache_uses_it"],
        "the datasets cache reuses a column scored by another model",
    ),
    # ------------------------------------------------------------------ trl: generation groups and pass rates
    _m(
        "generation-drawn-at-next-step",
        "curriculum/generation_groups.py",
        "return generation * self.repeat_count // self.gradient_accumulation_steps + 1",
        "return generation * self.repeat_count // self.gradient_accumulation_steps + 2",
        [f"{T_TRL}::test_grpo_prompts_follow_the_schedule_in_whole_groups"],
        "a generation's prompts are drawn at the difficulty of the step after the one it is generated in",
    ),
    _m(
        "pass-rate-not-smoothed",
        "curriculum/generation_groups.py",
        "rates[prompts] = np.where(seen, (1 - a) * rates[prompts] + a * fractions, fractions)",
        "rates[prompts] = fractions",
        [f"{T_TRL}::test_pass_rate_curriculum_draws_by_the_documented_rule"],
        "a prompt's pass rate is its last group's pass fraction (no moving average)",
    ),
    _m(
        "pass-rate-lag-one-short",
        "integrations/trl.py",
        "return max(1, math.ceil((self.args.gradient_accumulation_steps + 1) / self.repeat_count))",
        "return max(1, math.ceil(self.args.gradient_accumulation_steps / self.repeat_count))",
        [f"{T_TRL}::test_pass_rate_curriculum_draws_by_the_documented_rule"],
        "the pass-rate draws wait for one generation fewer than the data loader runs ahead",
    ),
    _m(
        "pass-rates-not-restored",
        "integrations/trl.py",
        'self.pass_rates.load_state_dict(state["pass_rates"])',
        "self.pass_rates.reset()",
        [f"{T_TRL}::test_grpo_resume_with_pass_rates_equals_uninterrupted"],
        "a resumed GRPO run restarts its pass rates from scratch",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    mutation: Mutation
    status: str  # caught, missed, timeout, error
    seconds: float
    detail: str


def stale_reason(mutation: Mutation, root: Path) -> str | None:
    """Why ``mutation`` cannot be applied to the tree at ``root`` (``None`` when its snippet occurs exactly once)."""
    path = root / mutation.path
    if not path.is_file():
        return f"{mutation.path} does not exist"
    count = path.read_text().count(mutation.original)
    if count != 1:
        return (
            f"its original snippet occurs {count} times in {mutation.path} (expected exactly once): update the entry"
        )
    return None


def copy_tree(dest: Path) -> None:
    """Copy the working tree (tracked and untracked files that git does not ignore) to ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_pytest(tree: Path, tests: Sequence[str], timeout: float) -> tuple[int | None, str]:
    """Run the tests in ``tree`` (``None`` as status on timeout); the whole process group is killed on timeout."""
    shutil.rmtree(tree / ".hypothesis", ignore_errors=True)  # no failing example carried from one mutation to the next
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONDONTWRITEBYTECODE": "1",  # no bytecode cache that could outlive a mutation of the same size
    }
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *tests]
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out.decode(errors="replace")
    return proc.returncode, out.decode(errors="replace")


def first_failure(output: str) -> str:
    found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", output, flags=re.MULTILINE)
    return found.group(1) if found else ""


def check_mutation(mutation: Mutation, tree: Path, timeout: float) -> Result:
    start = time.monotonic()
    reason = stale_reason(mutation, tree)
    if reason:
        return Result(mutation, "error", 0.0, reason)
    path = tree / mutation.path
    original = path.read_text()
    mutated = original.replace(mutation.original, mutation.replacement)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        return Result(mutation, "error", 0.0, f"the mutated file does not compile: {e}")
    path.write_text(mutated)
    try:
        code, output = run_pytest(tree, mutation.tests, timeout)
    finally:
        path.write_text(original)
    seconds = time.monotonic() - start
    if code is None:
        return Result(mutation, "timeout", seconds, f"no verdict within {timeout:g}s")
    if code == 0:
        return Result(mutation, "missed", seconds, "all selected tests passed")
    if code == 1:
        return Result(mutation, "caught", seconds, first_failure(output))
    tail = " | ".join(output.strip().splitlines()[-3:])
    return Result(mutation, "error", seconds, f"pytest exit status {code}: {tail}")


def markdown_table(results: Sequence[Result]) -> str:
    rows = ["| mutation | file | bug | result | caught by |", "|---|---|---|---|---|"]
    for r in results:
        m = r.mutation
        detail = r.detail.replace("|", "\\|")
        by = f"`{detail}`" if r.status == "caught" and detail else ("" if r.status == "caught" else detail)
        rows.append(f"| `{m.name}` | `{m.path.removeprefix(PKG + '/')}` | {m.what} | {r.status} | {by} |")
    return "\n".join(rows)


def write_doc(results: Sequence[Result], command: str, started: datetime.datetime, seconds: float) -> None:
    """Replace the result block of docs/testing.md (between its markers) with this run's table."""
    counts = {s: sum(r.status == s for r in results) for s in ("caught", "missed", "timeout", "error")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    block = (
        f"{DOC_BEGIN}\nLast run: `{command}` on {started:%Y-%m-%d %H:%M} UTC, {seconds / 60:.1f} minutes, "
        f"{len(results)} mutations: **{summary}**.\n\n{markdown_table(results)}\n{DOC_END}"
    )
    text = DOC.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise SystemExit(f"{DOC} has no {DOC_BEGIN} ... {DOC_END} block to write the result into.")
    head, rest = text.split(DOC_BEGIN, 1)
    DOC.write_text(head + block + rest.split(DOC_END, 1)[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations (and stale snippets) and exit")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutation (repeatable)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation's tests (default 300)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the selected tests")
    parser.add_argument("--write-doc", action="store_true", help=f"record the result table in {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTATIONS]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"duplicate mutation names: {duplicates}")
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        raise SystemExit(f"--only: no mutation named {unknown}; see --list.")
    selected = [m for m in MUTATIONS if not args.only or m.name in args.only]

    if args.list:
        for m in selected:
            stale = stale_reason(m, ROOT)
            print(f"{m.name}\n    {m.path}: {m.what}\n    tests: {' '.join(m.tests)}")
            if stale:
                print(f"    ERROR: {stale}")
        return 0

    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hfde-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = list(dict.fromkeys(t for m in selected for t in m.tests))
            print(f"baseline: {len(tests)} test selections on the unmutated copy ...", flush=True)
            code, output = run_pytest(tree, tests, args.timeout * 4)
            if code != 0:
                print(output[-4000:])
                print("baseline FAILED: the unmutated tests must pass before mutations mean anything.")
                return 2
        results = []
        for i, m in enumerate(selected, 1):
            r = check_mutation(m, tree, args.timeout)
            results.append(r)
            print(f"[{i:2d}/{len(selected)}] {r.status:7s} {r.seconds:6.1f}s  {m.name}  {r.detail}", flush=True)
    seconds = time.monotonic() - t0
    counts = {s: sum(r.status == s for r in results) for s in ("caught", "missed", "timeout", "error")}
    print(f"\n{len(results)} mutations in {seconds / 60:.1f} min: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for r in results:
        if r.status != "caught":
            print(f"  {r.status.upper()}: {r.mutation.name} ({r.mutation.path}): {r.detail}")
    if args.write_doc:
        command = "python scripts/tools/mutation_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_doc(results, command.strip(), started, seconds)
    return 0 if counts["caught"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
