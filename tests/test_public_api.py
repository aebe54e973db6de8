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


def test_layering_curriculum_and_routing_stay_independent():
    """curriculum/ and routing/ never import each other or the integration layer (DESIGN.md)."""
    import ast
    from pathlib import Path

    pkg = Path(hfde.__file__).parent
    forbidden = {
        "curriculum": ("routing", "trainer", "training_args", "callbacks"),
        "routing": ("curriculum", "trainer", "training_args", "callbacks"),
    }
    for part, banned in forbidden.items():
        for path in (pkg / part).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    target = ("." * node.level + (node.module or "")).lstrip(".")
                    top = target.split(".")[0] if node.level > 1 else part
                    assert top not in banned, f"{path.name} imports {target}"
                elif isinstance(node, ast.ImportFrom | ast.Import):
                    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    for name in filter(None, names):
                        assert not any(name.startswith(f"hf_data_efficiency.{b}") for b in banned), path.name
