#!/usr/bin/env python
"""Causal-LM pretraining of a GPT-2 from scratch with curriculum learning and random-LTD.

Defaults: a tiny GPT-2 on Penn Treebank with the GPT-2 BPE, CPU-sized. Examples::

    python scripts/examples/train_gpt2.py --output_dir outputs/gpt2              # plain baseline
    python scripts/examples/train_gpt2.py recipes/gpt2/ptb_cl_ltd.yaml --output_dir outputs/cl_ltd
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/examples/train_gpt2.py \\
        recipes/gpt2/ptb_cl_ltd.yaml --output_dir outputs/cl_ltd

Samples (``--sample_mode``):

* ``packed`` (default, as in the paper's GPT pretraining): the token stream is cut into full
  ``block_size`` blocks. Every block has the same length, so a *length* curriculum must shorten
  the blocks themselves: use the ``seqlen_truncate`` transform (``--seqlen_curriculum truncate``),
  which keeps the first N tokens of every row of the batch drawn at that step. ``vocab_rarity`` varies
  between blocks and works as a sampling metric.
* ``line``: one sample per text line (PTB sentences, 8-50 tokens), padded per batch. Lengths vary, so
  the per-sample ``seqlen`` metric (a sampling curriculum: short sentences first) is meaningful; the
  number of real tokens per step then grows with the difficulty.

With ``--compact_vocab`` (default) the model's vocabulary is the set of GPT-2 BPE ids that occur in
the training split (9,608 ids on PTB instead of 50,257), plus one id for unseen tokens; ``--max_vocab N``
keeps only the N most frequent of them. For a tiny model the 50k-way output layer would otherwise be ~75% of the
compute and hide what random-LTD saves.
On PTB every validation/test token occurs in training, so perplexities are those of the full
vocabulary. The id map is saved as ``vocab_map.json`` next to the model.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel, set_seed
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _examples  # noqa: E402
from offline_data import gpt2_tokenizer, load_bbc_news, load_ptb, noisy_mixture  # noqa: E402

from hf_data_efficiency.fileio import atomic_write_text  # noqa: E402

logger = logging.get_logger(__name__)

SAMPLE_MODES = ("packed", "line")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local GPT-2 checkpoint to start from; default: random init from the sizes."}
    )
    n_layer: int = field(default=6, metadata={"help": "Number of transformer blocks (random init)."})
    n_embd: int = field(default=256, metadata={"help": "Hidden size (random init)."})
    n_head: int = field(default=4, metadata={"help": "Attention heads (random init)."})
    dropout: float = field(default=0.0, metadata={"help": "Residual/embedding/attention dropout (random init)."})


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="ptb",
        metadata={
            "help": "'ptb' (Penn Treebank, offline), 'bbc' (BBC News articles as an LM corpus, offline, split 90/5/5 "
            "with seed 0), 'noisy_bbc' (bbc with --junk_share junk documents in its training split; validation and "
            "test stay clean), a datasets name/path, or 'none' with --train_file."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "datasets config name."})
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.csv training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (final numbers only)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per sample (max tokens per line in line mode)."})
    sample_mode: str = field(default="packed", metadata={"help": f"One of {SAMPLE_MODES}; see the module doc."})
    compact_vocab: bool = field(
        default=True, metadata={"help": "Restrict the vocabulary to the ids seen in training (see the module doc)."}
    )
    max_vocab: int | None = field(
        default=None,
        metadata={
            "help": "With --compact_vocab: keep only the N most frequent training ids (EOS always kept, ties by id); "
            "the rest map to the unknown id. Perplexities are then over that reduced vocabulary."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training samples."})
    train_subset_seed: int | None = field(
        default=None,
        metadata={"help": "With --max_train_samples: keep N samples drawn at random with this seed, not the first N."},
    )
    held_out_fraction: float | None = field(
        default=None,
        metadata={
            "help": "Hold out this fraction of the training documents (the last ones, before packing) as a "
            "'held_out' split: a clean slice to train a reference model on (--train_split held_out). The vocabulary "
            "is compacted over both, so the models share their ids."
        },
    )
    train_split: str = field(
        default="train", metadata={"help": "The split to train on: 'train', or 'held_out' (see --held_out_fraction)."}
    )
    junk_share: float = field(
        default=0.4,
        metadata={"help": "--dataset_name noisy_bbc: the share of junk documents mixed into the training split."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training split as a stream, as a corpus too large for an index is read: an "
            "IterableDataset of 16 shards, shuffled by shard and through a 1,024-sample buffer (seeded by --seed). A "
            "curriculum then runs as the streaming curriculum (docs/streaming.md)."
        },
    )
    max_eval_samples: int | None = field(
        default=256, metadata={"help": "Validation samples used for the evaluations during training."}
    )
    final_eval_splits: str = field(
        default="validation,test",
        metadata={"help": "Comma-separated splits evaluated in full after training ('' for none)."},
    )
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "num_proc for datasets.map."})

    def __post_init__(self):
        if self.sample_mode not in SAMPLE_MODES:
            raise ValueError(
                f"--sample_mode={self.sample_mode!r} is not supported; allowed: {', '.join(SAMPLE_MODES)}."
            )
        if self.block_size < 2:
            raise ValueError(f"--block_size={self.block_size} must be >= 2.")
        if self.held_out_fraction is not None and not 0 < self.held_out_fraction < 1:
            raise ValueError(f"--held_out_fraction={self.held_out_fraction} must lie in (0, 1).")
        if self.train_split not in ("train", "held_out"):
            raise ValueError(f"--train_split={self.train_split!r} is not supported; allowed: train, held_out.")
        if self.train_split == "held_out" and self.held_out_fraction is None:
            raise ValueError("--train_split held_out needs --held_out_fraction.")


TINY_DEFAULTS = {
    "output_dir": "outputs/gpt2",
    "max_steps": 200,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 2e-3,
    "weight_decay": 0.1,
    "warmup_steps": 0.05,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "steps",
    "eval_steps": 50,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


def load_raw_text(args: DataArguments) -> datasets.DatasetDict:
    """``train``/``validation``/``test`` text splits (``test`` may be absent)."""
    if args.train_file:
        files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
        files = {k: v for k, v in files.items() if v}
        ext = Path(args.train_file).suffix.lstrip(".")
        raw = datasets.load_dataset("text" if ext == "txt" else ext, data_files=files)
    elif args.dataset_name == "ptb":
        raw = datasets.DatasetDict(
            {s: load_ptb(p) for s, p in (("train", "train"), ("validation", "valid"), ("test", "test"))}
        )
    elif args.dataset_name in ("bbc", "noisy_bbc"):
        split = load_bbc_news().remove_columns("label").train_test_split(test_size=0.1, seed=0)
        held_out = split["test"].train_test_split(test_size=0.5, seed=0)
        raw = datasets.DatasetDict(train=split["train"], validation=held_out["train"], test=held_out["test"])
    else:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        if "validation" not in raw:
            if "valid" in raw:
                raw["validation"] = raw.pop("valid")
            else:
                split = raw["train"].train_test_split(test_size=0.05, seed=0)
                raw["train"], raw["validation"] = split["train"], split["test"]
    if "validation" not in raw:
        raise ValueError("a validation split is needed: give --validation_file or a dataset with one.")
    if args.held_out_fraction is not None:  # the last documents, before any noise is mixed in
        n = len(raw["train"])
        k = max(1, round(n * args.held_out_fraction))
        raw["held_out"] = raw["train"].select(range(n - k, n))
        raw["train"] = raw["train"].select(range(n - k))
    if args.dataset_name == "noisy_bbc":
        texts, kinds = noisy_mixture(raw["train"][args.text_column], args.junk_share, seed=0)
        raw["train"] = datasets.Dataset.from_dict({args.text_column: texts})
        logger.warning(f"noisy_bbc: {sum(k != 'clean' for k in kinds)} junk of {len(kinds)} training documents.")
    for name, split in raw.items():
        if args.text_column not in split.column_names:
            raise ValueError(
                f"--text_column={args.text_column!r} is not a column of the {name} split: {split.column_names}."
            )
    return raw


def tokenize(raw: datasets.DatasetDict, tokenizer, args: DataArguments) -> datasets.DatasetDict:
    """Tokenize (one EOS after every line) and either pack into blocks or keep one sample per line."""
    eos = tokenizer.eos_token_id
    column = args.text_column

    def encode(batch):
        texts = [" " + t.strip() for t in batch[column]]
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] for x, t in zip(ids, batch[column]) if t.strip()]}

    def pack(batch):
        flat = np.fromiter((t for ids in batch["input_ids"] for t in ids), dtype=np.int64)
        usable = len(flat) // args.block_size * args.block_size
        return {"input_ids": flat[:usable].reshape(-1, args.block_size).tolist()}

    def clip(batch):
        return {"input_ids": [ids[: args.block_size] for ids in batch["input_ids"] if len(ids) >= 2]}

    out = datasets.DatasetDict()
    for name, split in raw.items():
        ds = split.map(
            encode,
            batched=True,
            remove_columns=split.column_names,
            num_proc=args.preprocessing_num_workers,
            desc=f"Tokenizing {name}",
        )
        ds = ds.map(
            pack if args.sample_mode == "packed" else clip,
            batched=True,
            batch_size=10_000,
            num_proc=args.preprocessing_num_workers,
            desc=f"{'Packing' if args.sample_mode == 'packed' else 'Clipping'} {name}",
        )
        out[name] = ds
    return out


def compact_vocabulary(
    ds: datasets.DatasetDict, eos: int, max_vocab: int | None = None
) -> tuple[datasets.DatasetDict, np.ndarray]:
    """Renumber token ids to ``0..K-1`` (ids seen in training, EOS included; with ``max_vocab``, only the
    ``max_vocab`` most frequent of them) and ``K`` for every other id."""
    counted = [ds[s]["input_ids"] for s in ("train", "held_out") if s in ds]  # both: a reference shares the ids
    ids, counts = np.unique(np.concatenate([row for rows in counted for row in rows]), return_counts=True)
    if max_vocab is not None:
        if max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2 (EOS and one more id), got {max_vocab}.")
        order = np.lexsort((ids, -counts, ids != eos))  # EOS first, then by falling count, ties by id
        ids = ids[order[: max_vocab - (eos not in ids)]]
    kept = np.unique(np.concatenate([ids, [eos]]))
    lookup = np.full(int(max(kept.max(), eos)) + 1, len(kept), dtype=np.int64)
    lookup[kept] = np.arange(len(kept))

    def remap(batch):
        out = []
        for ids in batch["input_ids"]:
            ids = np.asarray(ids)
            safe = np.where(ids < len(lookup), ids, 0)
            out.append(np.where(ids < len(lookup), lookup[safe], len(kept)).tolist())
        return {"input_ids": out}

    return ds.map(remap, batched=True, desc="Compacting vocabulary"), kept


class CausalLMCollator:
    """Pads to the longest row (``pad_id``), adds ``attention_mask`` and ``labels`` (-100 on padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        rows = [list(f["input_ids"]) for f in features]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[i, : len(r)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def build_model(model_args: ModelArguments, vocab_size: int, n_positions: int, eos: int) -> GPT2LMHeadModel:
    """A GPT-2 with ``loss_type`` set, so the Trainer counts the shifted labels (a random-init model has
    ``loss_type=None`` in transformers 5.23, and the Trainer then counts position 0 of every row too, which
    biases the loss low by rows/tokens: 1/16 for 16-token rows)."""
    if model_args.model_name_or_path:
        model = GPT2LMHeadModel.from_pretrained(model_args.model_name_or_path)
        model.loss_type = "ForCausalLM"
        return model
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=model_args.n_embd,
        n_layer=model_args.n_layer,
        n_head=model_args.n_head,
        resid_pdrop=model_args.dropout,
        embd_pdrop=model_args.dropout,
        attn_pdrop=model_args.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"
    return model


def check_reference_vocab(training_args, kept: np.ndarray) -> None:
    """A reference model saved by this script (its ``vocab_map.json``) must use this run's compact ids: the same
    vocabulary size with other ids would compare losses of different tokens."""
    cfg = training_args.get_data_efficiency_config() if hasattr(training_args, "get_data_efficiency_config") else None
    paths = []
    if cfg is not None and cfg.token_selection is not None and cfg.token_selection.reference_model:
        paths.append(("--token_selection_reference_model", cfg.token_selection.reference_model))
    if cfg is not None and cfg.curriculum is not None:
        paths += [("--curriculum_reference_model", m.reference_model) for m in cfg.curriculum.sampling_metrics]
    for flag, path in paths:
        vocab_file = Path(path or "") / "vocab_map.json"
        if path and vocab_file.is_file():
            theirs = json.loads(vocab_file.read_text())["gpt2_token_ids"]
            if theirs != kept.tolist():
                raise ValueError(
                    f"{flag}={path}: the reference model was trained on another compact vocabulary ({len(theirs)} ids, "
                    f"this run {len(kept)}); train it with the same --dataset_name, --max_vocab and --held_out_fraction."
                )


def main(argv: list[str] | None = None) -> dict:
    args_cls, trainer_cls = _examples.training_classes()
    model_args, data_args, training_args = _examples.parse_args(
        (ModelArguments, DataArguments, args_cls), argv, defaults=TINY_DEFAULTS
    )
    if data_args.max_vocab is not None and (not data_args.compact_vocab or model_args.model_name_or_path):
        raise ValueError("max_vocab works with --compact_vocab on a model trained from scratch: drop --max_vocab.")
    set_seed(training_args.seed)
    tokenizer = gpt2_tokenizer()
    with training_args.main_process_first(desc="dataset preprocessing"):
        lm = tokenize(load_raw_text(data_args), tokenizer, data_args)
        eos = tokenizer.eos_token_id
        kept = None
        if data_args.compact_vocab and not model_args.model_name_or_path:
            lm, kept = compact_vocabulary(lm, eos, data_args.max_vocab)
            eos = int(np.searchsorted(kept, tokenizer.eos_token_id))
    vocab_size = len(kept) + 1 if kept is not None else len(tokenizer)
    train = lm[data_args.train_split]
    if data_args.max_train_samples is not None:
        n = min(data_args.max_train_samples, len(train))
        if data_args.train_subset_seed is None:
            train = train.select(range(n))
        else:
            train = train.select(np.random.default_rng(data_args.train_subset_seed).permutation(len(train))[:n])
    n_train = len(train)
    if data_args.streaming:
        train = train.to_iterable_dataset(num_shards=16).shuffle(seed=training_args.seed, buffer_size=1024)
    valid = lm["validation"]
    eval_subset = (
        valid.select(range(min(data_args.max_eval_samples, len(valid)))) if data_args.max_eval_samples else valid
    )
    model = build_model(model_args, vocab_size, data_args.block_size, eos)
    logger.warning(
        f"GPT-2 {model.config.n_layer}x{model.config.n_embd}, vocab {vocab_size}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params; {n_train} train samples "
        f"({data_args.sample_mode}{', streamed' if data_args.streaming else ''}), {len(eval_subset)} eval samples during training."
    )
    if kept is not None:
        check_reference_vocab(training_args, kept)
    recorder = _examples.CurveRecorder(model, training_args.output_dir)
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=eval_subset,
        data_collator=CausalLMCollator(eos),
        callbacks=[recorder],
    )
    recorder.watch_references(trainer)
    eval_sets = _examples.final_eval_sets(data_args.final_eval_splits, lm)
    result = _examples.finish(trainer, recorder, eval_sets, task="lm")
    if training_args.should_save:
        trainer.save_model()
        if kept is not None:
            vocab_map = {"gpt2_token_ids": kept.tolist(), "unknown_id": len(kept)}
            atomic_write_text(Path(training_args.output_dir) / "vocab_map.json", json.dumps(vocab_map))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
