"""Shared pytest set-up: one torch thread per test process (tiny models on a shared 2-core machine run up to 50x
slower with oversubscribed threads). Import paths (``scripts/examples``, ``scripts/benchmarks``, ``tests/distributed``)
come from the ``pythonpath`` setting in pyproject.toml."""

import os

# offline before any Hugging Face library is imported by a test module (scripts/test.sh sets them too)
for _name, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _private_metric_registry(monkeypatch):
    """Metrics a test registers stay in that test: a leaked registration changes what others see as built in."""
    from hf_data_efficiency.curriculum import metrics

    monkeypatch.setattr(metrics, "_REGISTRY", dict(metrics._REGISTRY))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
