"""Shared helpers for the example training scripts (argument parsing, metrics, curve recording).

Not part of the library API: the example scripts in ``scripts/examples/`` import this file from their own folder.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, HfArgumentParser, TrainerCallback
from transformers.utils import logging

from hf_data_efficiency import find_layers

logger = logging.get_logger(__name__)

RESULTS_NAME = "results.json"


def _to_cli(config: dict[str, Any]) -> list[str]:
    """Turn a recipe mapping into command-line tokens, so later flags on the real command line win."""
    argv: list[str] = []
    for key, value in config.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, bool):
            argv.append(str(value).lower())
        elif isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_args(
    dataclass_types: Sequence[type], argv: Sequence[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[Any, ...]:
    """Parse ``dataclass_types`` with ``HfArgumentParser``; ``defaults`` replace field defaults (tiny CPU runs).

    The first argument may be a YAML/JSON recipe file (``recipes/<task>/*.yaml``); its keys act as
    flags placed before the remaining command line, so ``script.py recipe.yaml --max_steps 10``
    overrides the recipe's ``max_steps``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml", ".json")) and not argv[0].startswith("-"):
        from hf_data_efficiency.config import load_config_file

        argv = _to_cli(load_config_file(argv[0])) + argv[1:]
    parser = HfArgumentParser(dataclass_types)
    defaults = dict(defaults or {})
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # torchrun on a CPU machine: without use_cpu, transformers 5.23 starts each rank as a separate
        # single-process run instead of a gloo process group
        defaults.setdefault("use_cpu", True)
    parser.set_defaults(**defaults)
    parsed = parser.parse_args_into_dataclasses(args=argv)
    for obj in parsed:
        # the data-efficiency comparison needs real (non-padding) token counts; the flag only parses as a bool
        if getattr(obj, "include_num_input_tokens_seen", None) in ("all", "no"):
            obj.include_num_input_tokens_seen = "non_padding"
    return parsed


def training_classes() -> tuple[type, type]:
    """``(DataEfficiencyTrainingArguments, DataEfficiencyTrainer)``."""
    import hf_data_efficiency as hfde

    return hfde.DataEfficiencyTrainingArguments, hfde.DataEfficiencyTrainer


def char_gpt2(tokenizer: Any, n_layer: int, n_embd: int, n_positions: int) -> GPT2LMHeadModel:
    """A GPT-2 from scratch for a character tokenizer (its EOS also the BOS): the trl example and benchmarks' model."""
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=4,
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def accuracy(eval_pred) -> dict[str, float]:
    """Classification accuracy computed directly (``evaluate.load("accuracy")`` needs the hub)."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def perplexity(loss: float) -> float:
    """``exp(loss)``, or ``inf`` when it overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks of the model (every layer class random-LTD knows)."""
    layers = [module for _, module, _ in find_layers(model)]
    if not layers:
        raise ValueError(
            f"cannot find the transformer layers of {type(model).__name__} (hf_data_efficiency.find_layers)."
        )
    return layers


def _attention_of(layer: torch.nn.Module) -> torch.nn.Module:
    for name in ("attn", "attention"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise ValueError(f"{type(layer).__name__} has no attention submodule")


class CurveRecorder(TrainerCallback):
    """Records what a data-efficiency comparison needs, measured independently of the library.

    * ``layer_tokens``: tokens that actually went through each transformer layer in training
      forwards, counted by hooks on the layers' attention submodules (so random-LTD's shorter
      inputs are seen as they are), summed over layers;
    * ``effective_tokens``: ``layer_tokens / num_layers`` (equal to the data tokens without random-LTD), plus the
      reference-model forwards of model-based selection in the same units (``reference_effective_tokens``; see
      :meth:`watch_references`);
    * ``tokens``: the Trainer's ``num_input_tokens_seen`` when it is tracked, else the tokens seen by
      the first layer;
    * ``train_seconds``: wall-clock of training with evaluation time taken out;
    * ``train_cpu_seconds``: CPU time of this process (all threads) over the same span, a steadier
      measure of compute than wall-clock on a shared machine.

    At every evaluation a point is appended to ``curve`` and the whole record is written to
    ``<output_dir>/results.json``.
    """

    def __init__(self, model: torch.nn.Module, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        layers = transformer_layers(model)
        self.num_layers = len(layers)
        self.layer_tokens = 0
        self.first_layer_tokens = 0
        self._handles = []
        for i, layer in enumerate(layers):
            self._handles.append(_attention_of(layer).register_forward_hook(self._make_hook(i)))
        self.curve: list[dict[str, float]] = []
        # reference-model forwards (model-based selection), counted by a hook of their own and costed per token
        self.reference_tokens = 0
        self.reference_cost = 0.0
        self._engine = None
        self.summary: dict[str, Any] = {}
        self._start = None
        self._eval_seconds = 0.0
        self._step_end = None
        self._cpu_start = 0.0
        self._eval_cpu_seconds = 0.0
        self._step_end_cpu = 0.0

    def _make_hook(self, index: int):
        def hook(module, args, output):
            if not (module.training and torch.is_grad_enabled()):
                return
            hidden = output[0] if isinstance(output, tuple) else output
            count = int(hidden.shape[0] * hidden.shape[1])
            self.layer_tokens += count
            if index == 0:
                self.first_layer_tokens += count

        return hook

    def watch_references(self, trainer) -> None:
        """Count the reference forwards of the trainer's token selection (online: a hook on the reference model) and
        its reference-loss scoring, at their cost per token (``hf_data_efficiency.curriculum.reference``)."""
        engine = getattr(trainer, "engine", None)
        selection = getattr(engine, "token_selection", None)
        self._engine = engine
        if selection is None or selection.reference is None:
            return
        self.reference_cost = selection.cost

        def hook(module, args, kwargs, output):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.reference_tokens += int(ids.numel())

        self._handles.append(selection.reference.register_forward_hook(hook, with_kwargs=True))

    def reference_effective_tokens(self) -> float:
        """The reference forwards so far in effective tokens: the per-step forwards (hooked) and the dataset scoring."""
        scoring = 0.0
        if self._engine is not None:
            scoring = self._engine.reference_scoring_tokens * self._engine.reference_scoring_cost
        return self.reference_tokens * self.reference_cost + scoring

    def point(self, state) -> dict[str, float]:
        seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        reference = self.reference_effective_tokens()
        return {
            "step": state.global_step,
            "tokens": seen or self.first_layer_tokens,
            "layer_tokens": self.layer_tokens,
            "reference_effective_tokens": reference,
            "effective_tokens": self.layer_tokens / self.num_layers + reference,
            "train_seconds": self.train_seconds(),
            "train_cpu_seconds": time.process_time() - self._cpu_start - self._eval_cpu_seconds,
        }

    def train_seconds(self) -> float:
        if self._start is None:
            return 0.0
        return time.perf_counter() - self._start - self._eval_seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_end = time.perf_counter()
        self._step_end_cpu = time.process_time()

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._step_end is not None:
            self._eval_seconds += time.perf_counter() - self._step_end
            self._eval_cpu_seconds += time.process_time() - self._step_end_cpu
            self._step_end = None
        if metrics and "eval_loss" in metrics and self._start is not None:
            self.curve.append({**self.point(state), "eval_loss": float(metrics["eval_loss"])})
            self.save()

    def on_train_end(self, args, state, control, **kwargs):
        self.summary.update(self.point(state))
        self.save()

    def save(self) -> None:
        if not _is_main_process():
            return
        from hf_data_efficiency.fileio import atomic_write_text

        record = {"num_layers": self.num_layers, "curve": self.curve, **self.summary}
        atomic_write_text(self.output_dir / RESULTS_NAME, json.dumps(record, indent=2) + "\n")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def final_eval_sets(spec: str, splits: Mapping[str, Any]) -> dict[str, Any]:
    """The splits named in ``--final_eval_splits`` (comma-separated), refusing unknown names."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in splits]
    if unknown:
        raise ValueError(f"--final_eval_splits has unknown split(s) {unknown}; available: {sorted(splits)}.")
    return {s: splits[s] for s in names}


def finish(trainer, recorder: CurveRecorder, eval_sets: dict[str, Any], *, task: str) -> dict[str, Any]:
    """Train, then evaluate on each of ``eval_sets`` and add the metrics (and perplexity for LMs) to
    the recorder's ``results.json``; returns that record."""
    resume = trainer.args.resume_from_checkpoint
    train_result = trainer.train(resume_from_checkpoint=resume)
    recorder.summary["train_runtime"] = train_result.metrics.get("train_runtime")
    recorder.summary["train_loss"] = train_result.metrics.get("train_loss")
    recorder.summary["final"] = {}
    recorder.remove()  # evaluation forwards are not counted anyway; keep the model vanilla afterwards
    for split, dataset in eval_sets.items():
        if dataset is None:
            continue
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=split)
        if task == "lm":
            metrics[f"{split}_perplexity"] = perplexity(metrics[f"{split}_loss"])
        trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)
        recorder.summary["final"][split] = {k.removeprefix(f"{split}_"): v for k, v in metrics.items()}
    recorder.summary["log_history"] = trainer.state.log_history
    if hasattr(trainer, "data_efficiency_config"):  # what the run used, a recipe's choices included
        recorder.summary["data_efficiency_config"] = trainer.data_efficiency_config.to_dict()
    recorder.save()
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # destroys the process group, so no gloo thread outlives the script
    return {"num_layers": recorder.num_layers, "curve": recorder.curve, **recorder.summary}
