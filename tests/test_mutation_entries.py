"""Every entry of ``scripts/tools/mutation_check.py`` still applies: its snippet occurs exactly once in its file, the
mutated file compiles, and its tests exist. A later change to the code then cannot silently disable an entry (the
full check, which runs the tests against each mutation, takes 20+ minutes and is not part of CI)."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mutation_check():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


CHECK = _mutation_check()


def test_entry_names_are_unique():
    names = [m.name for m in CHECK.MUTATIONS]
    assert len(names) == len(set(names)) > 60


@pytest.mark.parametrize("mutation", CHECK.MUTATIONS, ids=lambda m: m.name)
def test_entry_applies_exactly_once_and_compiles(mutation):
    assert CHECK.stale_reason(mutation, ROOT) is None
    assert mutation.replacement != mutation.original
    source = (ROOT / mutation.path).read_text()
    compile(source.replace(mutation.original, mutation.replacement), mutation.path, "exec")
    for test in mutation.tests:
        assert (ROOT / test.split("::")[0]).is_file(), test
