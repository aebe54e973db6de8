"""Helpers shared by the test modules: a free port and a ``torch.distributed.run`` command for two-process tests,
and the training arguments of the tiny Trainer runs."""

from __future__ import annotations

import socket
import sys
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int = 2) -> list[str]:
    """The command prefix that starts ``nproc`` local processes (gloo on CPU). ``--standalone`` has the rendezvous
    bind a free port itself: a port picked here and bound later could be taken in between."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def training_kwargs(out_dir: Any, **overrides: Any) -> dict[str, Any]:
    """``TrainingArguments`` keywords of a tiny CPU run: 4 samples x GA 2, 8 steps, a log every step, no saves."""
    kwargs = dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=8,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=42,
        disable_tqdm=True,
        use_cpu=True,
    )
    kwargs.update(overrides)
    return kwargs
