"""Golden runs: a short seeded run of every experiment still logs the same values and ends with the same
weights as when tests/golden/<experiment>.json was recorded (tests/golden/compare.py says what "the same"
means). Regenerate one on purpose: `python tests/golden/record.py --update NAME` (docs/DEVELOPING.md)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, fdl, run_dirs
from golden import compare

# one per experiment overlay (what `fdl list` shows), read without importing the experiments
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_the_golden_runs_cover_exactly_the_registered_experiments():
    from fdlcli import registry

    assert registry.names() == EXPERIMENTS
    stray = sorted(set(compare.golden_names()) - set(EXPERIMENTS))
    assert not stray, f"golden files for experiments that no longer exist: {stray}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_golden_run(env, tmp_path, name):
    path = compare.golden_path(name)
    assert path.is_file(), f"{name}: no golden file {path.name}; {compare.regenerate_hint(name)}"
    golden = json.loads(path.read_text())
    inputs = tmp_path / "inputs"
    compare.make_inputs(inputs)
    result = fdl("train", name, *compare.command_overrides(golden["overrides"], inputs), env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, name)
    signature = compare.cpu_signature()
    found = compare.differences(golden, compare.capture(run, inputs), signature)
    assert not found, compare.report(name, golden, found, signature)
