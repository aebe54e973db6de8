"""The library boundary: the core's dependencies are exactly what it imports, DeepSpeed, matplotlib and trl are
optional extras, and without them (really absent from the import path) a curriculum + random-LTD Trainer run works
and the trl integration names its extra."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_data_efficiency"
#: import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml"}
OPTIONAL = {"deepspeed": "deepspeed", "matplotlib": "plots", "trl": "trl"}


def _requirement_name(req: str) -> str:
    return req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip().lower()


def third_party_imports() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "hf_data_efficiency":
                    found.add(DISTRIBUTIONS.get(top, top))
    return found


def test_core_dependencies_are_what_the_core_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    imported = third_party_imports()
    optional = {name for name in imported if name in OPTIONAL}
    assert optional <= set(OPTIONAL)
    assert imported - optional == core
    assert not core & {"deepspeed", "matplotlib", "evaluate", "psutil", "trl"}
    for module, extra in OPTIONAL.items():
        assert module in {_requirement_name(r) for r in project["optional-dependencies"][extra]}


def _site_packages_without(tmp_path: Path, blocked: tuple[str, ...]) -> Path:
    """A copy of this interpreter's site-packages as symlinks, minus the blocked distributions."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    filtered = tmp_path / "site-packages"  # (dill pickles modules outside a "site-packages" path by value)
    filtered.mkdir()
    for entry in site.iterdir():
        if entry.name.lower().startswith(blocked) or entry.suffix == ".pth":
            continue
        (filtered / entry.name).symlink_to(entry)
    return filtered


def test_trainer_runs_without_deepspeed_and_matplotlib(tmp_path):
    site = _site_packages_without(tmp_path, ("deepspeed", "matplotlib", "mpl_toolkits"))
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        assert importlib.util.find_spec("deepspeed") is None and importlib.util.find_spec("matplotlib") is None
        from tiny import CURRICULUM_FLAGS, RANDOM_LTD_FLAGS, collate, make_dataset, tiny_model
        from hf_data_efficiency import DataEfficiencyTrainer, DataEfficiencyTrainingArguments
        args = DataEfficiencyTrainingArguments(
            output_dir={str(tmp_path / "out")!r}, per_device_train_batch_size=4, max_steps=3, logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, **CURRICULUM_FLAGS, **RANDOM_LTD_FLAGS,
        )
        trainer = DataEfficiencyTrainer(model=tiny_model(), args=args, train_dataset=make_dataset(), data_collator=collate)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        assert len(logs) == 3 and all("random_ltd/kept_length" in h for h in logs), logs
        assert "deepspeed" not in sys.modules and "matplotlib" not in sys.modules
        print("OK")
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(map(str, (ROOT, ROOT / "tests" / "distributed", site))),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_trl_integration_names_its_extra_when_trl_is_missing(tmp_path):
    site = _site_packages_without(tmp_path, ("trl",))
    script = textwrap.dedent(
        """
        import importlib.util
        assert importlib.util.find_spec("trl") is None
        import hf_data_efficiency as hfde
        hfde.DataEfficiencyTrainer, hfde.DataEfficiencyTrainingArguments
        try:
            import hf_data_efficiency.integrations.trl
        except ImportError as e:
            assert "pip install 'hf-data-efficiency[trl]'" in str(e), e
            print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (ROOT, site))), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-S", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout[-2000:] + proc.stderr[-4000:]
