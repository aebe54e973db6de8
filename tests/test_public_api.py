"""The public names of DESIGN.md's API contract resolve through the lazy top-level package."""

import subprocess
import sys

import hf_data_efficiency as hfde

CONTRACT = [
    "DataEfficiencyConfig",
    "CurriculumConfig",
    "RandomLTDConfig",
    "DifficultySchedule",
    "compute_metrics",
    "CurriculumSampler",
    "apply_random_ltd",
    "RandomLTDScheduler",
    "DataEfficiencyTrainingArguments",
    "DataEfficiencyTrainer",
]


def test_every_exported_name_resolves():
    assert set(CONTRACT) <= set(hfde.__all__)
    for name in hfde.__all__:
        assert getattr(hfde, name) is not None, name


def test_config_layer_imports_without_the_trainer():
    code = (
        "import sys, hf_data_efficiency as h; h.DataEfficiencyConfig; h.DifficultySchedule; "
        "assert 'hf_data_efficiency.trainer' not in sys.modules; "
        "assert 'hf_data_efficiency.routing.random_ltd' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
