"""Reference models: per-token losses, the ``reference_loss`` metric (:class:`ReferenceLoss`), and the checks that a
reference model fits the model being trained.

A *reference model* is a (usually small) causal LM trained on clean data. Model-based data selection reads its loss:

* the ``reference_loss`` curriculum metric is each sample's mean token loss under the reference, computed once over
  the dataset with ``datasets.map`` (:class:`ReferenceLoss`); a percentile curriculum over it orders or filters
  samples by how typical the reference finds them;
* excess-loss token selection (:mod:`hf_data_efficiency.selection`) compares the training model's token losses with
  the reference's, online (one no-grad forward per micro-batch) or offline (the per-token losses ``ReferenceLoss``
  stores as a column).

Token losses are over *real shifted labels*: position ``j`` of a row holds the loss of predicting token ``j`` from the
tokens before it, for every ``j >= 1`` whose label is not ``-100`` (padding, or masked by the ``labels`` column).

**Cost rule.** A reference forward over a token costs ``1/3`` of a training step over it (forward + backward is 3
forwards), scaled by the ratio of the two models' per-token matrix work (:func:`matmul_parameters`: the parameters
used in matrix products, embedding tables excluded, a tied output layer included): exactly ``1/3`` for a reference of
the training model's architecture. :func:`reference_cost` gives the factor; the engine adds ``tokens x factor`` to its
effective-token counter.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers.utils import logging

from .. import __version__
from ..config import REFERENCE_LOSS_METRIC

logger = logging.get_logger(__name__)

#: The column :meth:`ReferenceLoss.map` writes per-token reference losses to (``token_losses=True``).
REFERENCE_TOKEN_LOSS_COLUMN = "reference_token_loss"
#: What a reference forward costs per token, in training-step units of the same model (forward + backward = 3x).
FORWARD_FRACTION = 1.0 / 3.0
_CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "_commit_hash", "architectures")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def load_reference_model(
    reference: Any, *, device: Any = None, dtype: torch.dtype | str | None = None, where: str = "reference_model"
) -> torch.nn.Module:
    """The reference model ready for no-grad forwards: ``reference`` itself (a ``torch.nn.Module``) or a causal LM
    loaded from a path with ``AutoModelForCausalLM``; in eval mode, without gradients, moved to ``device`` and cast
    to ``dtype`` when given (in place: a reference is not trained)."""
    if isinstance(reference, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        if not os.path.exists(reference):
            raise ValueError(
                f"{where}={str(reference)!r} does not exist; allowed: a local folder holding a causal LM saved with "
                "save_pretrained (nothing is downloaded at training time), or a model object."
            )
        reference = AutoModelForCausalLM.from_pretrained(reference)
    if not isinstance(reference, torch.nn.Module):
        raise ValueError(f"{where} must be a path or a torch.nn.Module (a causal LM), got {type(reference).__name__}.")
    reference.eval()
    reference.requires_grad_(False)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if device is not None or dtype is not None:
        reference.to(device=device, dtype=dtype)
    return reference


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of ``model``'s class, config (paths and versions left out) and every weight: equal for the same model
    saved and loaded again, different after any weight changes. Costs one pass over the weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        d = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
        h.update(json.dumps(d, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(tensor.shape)};".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()[:32]


def vocabulary_size(model: torch.nn.Module) -> int | None:
    """The model's vocabulary: ``config.vocab_size`` (kept up to date by ``resize_token_embeddings``; right under
    ZeRO-3, whose partitioned weights look empty), else the rows of its output layer."""
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if size is not None:
        return int(size)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else None


def check_reference_compatible(
    reference: torch.nn.Module,
    model: torch.nn.Module,
    *,
    tokenizer: Any = None,
    reference_tokenizer: Any = None,
    where: str = "reference_model",
) -> None:
    """Refuse a reference whose vocabulary does not match the training model's: another output size, or (when both
    tokenizers are known) another token-to-id map. Token losses of two models are comparable only token by token."""
    ours, theirs = vocabulary_size(model), vocabulary_size(reference)
    if ours is not None and theirs is not None and ours != theirs:
        raise ValueError(
            f"{where}: the reference model's vocabulary has {theirs} ids but the trained model's has {ours}; allowed: "
            "a reference with the same tokenizer and vocabulary as the model it scores."
        )
    if not (hasattr(tokenizer, "get_vocab") and hasattr(reference_tokenizer, "get_vocab")):  # also when not given
        return
    a, b = tokenizer.get_vocab(), reference_tokenizer.get_vocab()
    if a != b:
        differ = sorted(set(a.items()) ^ set(b.items()), key=str)
        raise ValueError(
            f"{where}: the reference model's tokenizer maps tokens to other ids than the training tokenizer "
            f"({len(differ)} (token, id) pairs differ, e.g. {differ[:3]}); allowed: the same tokenizer."
        )


def reference_tokenizer_of(path: Any) -> Any:
    """The tokenizer saved with a reference model folder, or ``None`` when it holds none."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isdir(path):
        return None
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if not any(os.path.exists(os.path.join(path, n)) for n in names):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters a token's forward multiplies with: every module's own parameters except embedding tables; a tied
    output layer counts (its module owns the shared weight). Proportional to a forward's FLOPs per token, up to the
    attention's sequence-length term."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            continue
        total += sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters(recurse=False))  # ZeRO-3
    return total


def reference_cost(reference: torch.nn.Module, model: torch.nn.Module) -> float:
    """Effective training tokens one reference-forward token costs: ``1/3 x`` the models' matmul-parameter ratio
    (exactly 1/3 for the same architecture; see the module docstring)."""
    return FORWARD_FRACTION * matmul_parameters(reference) / max(1, matmul_parameters(model))


# ---------------------------------------------------------------------------------------------
# token losses
# ---------------------------------------------------------------------------------------------
def shifted_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token losses ``[B, T-1]`` (float32, 0 where there is no label) and the mask of real shifted labels: entry
    ``j`` is the loss of predicting ``labels[:, j + 1]`` from ``logits[:, j]``. Differentiable in ``logits``.

    The labels are shifted instead of the logits, so the logits are read in place (no copy). Without gradients the
    cross-entropy runs over chunks of a few MB, which keeps each chunk's log-softmax in cache: on CPU that makes the
    loss about a seventh of the output layer's cost instead of about as much as it."""
    b, t, vocab = logits.shape
    targets = torch.cat([labels[:, 1:], labels.new_full((b, 1), -100)], dim=1).reshape(-1)
    flat = logits.reshape(-1, vocab)
    if logits.requires_grad and torch.is_grad_enabled():
        losses = torch.nn.functional.cross_entropy(flat.float(), targets, reduction="none", ignore_index=-100)
    else:
        step = max(1, (2**26 if logits.is_cuda else 2**20) // vocab)
        losses = torch.empty(b * t, dtype=torch.float32, device=logits.device)
        for i in range(0, b * t, step):
            losses[i : i + step] = torch.nn.functional.cross_entropy(
                flat[i : i + step].float(), targets[i : i + step], reduction="none", ignore_index=-100
            )
    valid = labels[:, 1:] != -100
    return losses.view(b, t)[:, :-1], valid


def forward_token_losses(
    model: torch.nn.Module, inputs: Mapping[str, Any], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s shifted token losses on a collated batch (``inputs`` without labels), as
    :func:`shifted_token_losses`."""
    outputs = model(**inputs)
    logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
    return shifted_token_losses(logits, labels)


# ---------------------------------------------------------------------------------------------
# the batched metric
# ---------------------------------------------------------------------------------------------
class ReferenceLoss:
    """Each sample's mean token loss under a reference model: a batched metric for ``datasets.map(batched=True)``.

    ``ReferenceLoss(model)(batch)`` maps a dict batch (``{column: list}``, as ``Dataset.map(batched=True)`` gives it)
    to one float per sample: the mean of its token losses over real shifted labels (NaN for a sample without any).
    :meth:`map` adds the column(s) to a whole dataset, cached by the datasets fingerprint.

    Args:
        model: the reference model (a causal LM) or a local path to one.
        batch_size: rows per forward. Rows are sorted by length inside each map batch, so little is padded.
        device: where the forwards run (default: where the model is). A path is loaded onto it.
        dtype: cast the model to this dtype (e.g. ``torch.bfloat16``; default: as it is).
        input_column, attention_mask_column: the token ids, and the mask of real tokens when rows hold padding.
        labels_column: a column of labels (``-100`` = no target), used when the batch has it; else every real
            token after the first is a target.
        pad_token_id: padding id of rows without a mask column (ignored when ``None``).
        progress: show a progress bar over the forwards of each call (``map`` shows the datasets bar).

    The model is put in eval mode without gradients, in place. In a multi-process ``map`` (``num_proc``) every worker
    gets a copy of the model on CPU; for GPUs use one process per device.

    The datasets cache sees :attr:`fingerprint`: a hash of the model's config and weights (computed once, on first
    use) and of these options, so a changed model never reuses an old column.
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = 32,
        device: Any = None,
        dtype: torch.dtype | str | None = None,
        input_column: str = "input_ids",
        attention_mask_column: str | None = "attention_mask",
        labels_column: str | None = "labels",
        pad_token_id: int | None = None,
        progress: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"ReferenceLoss: batch_size={batch_size!r} is not allowed; allowed: an integer >= 1.")
        self.model = load_reference_model(model, device=device, dtype=dtype, where="ReferenceLoss model")
        self.batch_size = batch_size
        self.input_column = input_column
        self.attention_mask_column = attention_mask_column
        self.labels_column = labels_column
        self.pad_token_id = pad_token_id
        self.progress = progress
        self.scored_tokens = 0

    # ----- identity ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @cached_property
    def model_fingerprint(self) -> str:
        """:func:`model_fingerprint` of the reference, computed once."""
        return model_fingerprint(self.model)

    @property
    def fingerprint(self) -> str:
        """What identifies this metric's output in the datasets cache: the model and the options that change it."""
        param = next(self.model.parameters(), None)
        options = [
            __version__,
            self.model_fingerprint,
            str(param.dtype) if param is not None else None,
            self.input_column,
            self.attention_mask_column,
            self.labels_column,
            self.pad_token_id,
        ]
        return hashlib.sha256(json.dumps(options).encode()).hexdigest()[:32]

    def __getstate__(self) -> dict[str, Any]:  # a worker of a multi-process map gets the model on CPU
        state = dict(self.__dict__)
        if self.device.type != "cpu":
            logger.warning("ReferenceLoss: the copy of the model sent to another process runs on CPU.")
            state["model"] = copy.deepcopy(self.model).to("cpu")
        return state

    # ----- scoring ------------------------------------------------------------------------------------------
    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> list[float]:
        """One mean token loss per sample of ``batch`` (NaN for a sample without a shifted label)."""
        means, _ = self.score(batch)
        return means

    def score(
        self, batch: Mapping[str, Sequence[Any]], *, token_losses: bool = False
    ) -> tuple[list[float], list[list[float]] | None]:
        """Per sample: its mean token loss, and with ``token_losses`` its per-token losses aligned with its tokens
        (entry ``j``: the loss of token ``j`` given the ones before; NaN where there is no target, e.g. ``j = 0``)."""
        if self.input_column not in batch:
            raise ValueError(
                f"ReferenceLoss: the batch has no {self.input_column!r} column (columns: {sorted(batch)}); tokenize "
                "first or pass input_column=<the token id column>."
            )
        rows = batch[self.input_column]
        masks = batch.get(self.attention_mask_column) if self.attention_mask_column else None
        labels = batch.get(self.labels_column) if self.labels_column else None
        n = len(rows)
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")
        means = [math.nan] * n
        per_token: list[list[float]] | None = [[] for _ in range(n)] if token_losses else None
        chunks = [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        if self.progress:
            chunks = logging.tqdm(chunks, desc="Reference loss", unit="batch")
        for chunk in chunks:
            width = int(lengths[chunk].max()) if len(chunk) else 0
            b = len(chunk)
            if width == 0:
                continue
            pad = self.pad_token_id if self.pad_token_id is not None else 0
            ids = torch.full((b, width), pad, dtype=torch.long)
            real = torch.zeros((b, width), dtype=torch.bool)
            target = torch.full((b, width), -100, dtype=torch.long)
            for i, k in enumerate(chunk):
                length = int(lengths[k])
                if length == 0:
                    continue
                row = torch.as_tensor(rows[k], dtype=torch.long)
                ids[i, :length] = row
                if masks is not None:
                    real[i, :length] = torch.as_tensor(masks[k]).bool()
                elif self.pad_token_id is not None:
                    real[i, :length] = row != self.pad_token_id
                else:
                    real[i, :length] = True
                if labels is not None:
                    target[i, :length] = torch.as_tensor(labels[k], dtype=torch.long)
            if labels is None:
                target = ids.masked_fill(~real, -100)
            device = self.device
            with torch.inference_mode():
                inputs = {"input_ids": ids.to(device), "attention_mask": real.long().to(device)}
                losses, valid = forward_token_losses(self.model, inputs, target.to(device))
                counts = valid.sum(1)
                sums = losses.sum(1, dtype=torch.float64)
            self.scored_tokens += int(real.sum())
            sums, counts = sums.cpu().numpy(), counts.cpu().numpy()
            if per_token is not None:
                table = torch.where(valid, losses, torch.full_like(losses, math.nan)).cpu().numpy()
            for i, k in enumerate(chunk):
                means[k] = float(sums[i] / counts[i]) if counts[i] else math.nan
                if per_token is not None:
                    length = int(lengths[k])
                    per_token[k] = [math.nan, *table[i, : max(0, length - 1)].tolist()] if length else []
        return means, per_token

    def map(
        self,
        dataset: Any,
        *,
        column: str = REFERENCE_LOSS_METRIC,
        token_losses: bool = False,
        token_column: str = REFERENCE_TOKEN_LOSS_COLUMN,
        num_proc: int | None = None,
        batch_size: int = 1000,
    ) -> Any:
        """``dataset`` (a ``datasets.Dataset``) with the column ``column`` of mean token losses, and with
        ``token_losses`` the column ``token_column`` of per-token losses (float32 lists aligned with the tokens, for
        offline token selection). Cached by the dataset's and this metric's fingerprints; ``num_proc`` workers."""
        import datasets
        from datasets.fingerprint import Hasher

        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(f"ReferenceLoss.map needs a datasets.Dataset, got {type(dataset).__name__}.")
        for name in (column, token_column) if token_losses else (column,):
            if name in dataset.column_names:
                raise ValueError(
                    f"ReferenceLoss.map: the dataset already has a column {name!r}; remove it first, or pass another "
                    "column name."
                )
        fingerprint = Hasher.hash([dataset._fingerprint, self.fingerprint, column, token_losses and token_column])
        features = {column: datasets.Value("float64")}
        if token_losses:
            features[token_column] = datasets.List(datasets.Value("float32"))
        return dataset.map(
            _ReferenceColumns(self, column, token_column if token_losses else None),
            batched=True,
            batch_size=batch_size,
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            new_fingerprint=fingerprint,
            features=datasets.Features({**dataset.features, **features}),
            desc=f"Scoring with the reference model ({column})",
        )


class _ReferenceColumns:
    """The ``Dataset.map`` function of :meth:`ReferenceLoss.map`: a batch to its new columns."""

    def __init__(self, metric: ReferenceLoss, column: str, token_column: str | None) -> None:
        self.metric, self.column, self.token_column = metric, column, token_column

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        means, tokens = self.metric.score(batch, token_losses=self.token_column is not None)
        out: dict[str, Any] = {self.column: means}
        if self.token_column is not None:
            out[self.token_column] = tokens
        return out


def _hashed_by_fingerprint(fingerprint: str) -> None:  # what datasets' hasher pickles in place of the model
    raise RuntimeError("a ReferenceLoss hash stand-in is not meant to be unpickled")


def _register_datasets_hashing() -> None:
    """Let the datasets hasher see a :class:`ReferenceLoss` (or its map function) by its :attr:`fingerprint` instead
    of pickling every weight on every call; multi-process ``map`` still ships the whole object to its workers."""
    try:
        from datasets.utils._dill import pklregister
    except ImportError:  # an older or newer datasets: it then hashes the whole object, slower but just as right
        return

    @pklregister(ReferenceLoss)
    def _save_reference_loss(pickler: Any, obj: ReferenceLoss) -> None:
        pickler.save_reduce(_hashed_by_fingerprint, (obj.fingerprint,), obj=obj)

    @pklregister(_ReferenceColumns)
    def _save_columns(pickler: Any, obj: _ReferenceColumns) -> None:
        pickler.save_reduce(_hashed_by_fingerprint, (f"{obj.metric.fingerprint}/{obj.column}/{obj.token_column}",))


_register_datasets_hashing()
