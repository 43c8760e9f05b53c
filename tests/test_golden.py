"""Golden runs: a short seeded run of every experiment still logs the same values and ends with the same
weights as when tests/golden/<experiment>.json was recorded (tests/golden/compare.py says what "the same"
means). Regenerate one on purpose: `python tests/golden/record.py --update NAME` (docs/DEVELOPING.md)."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from golden import compare

# one per experiment overlay (what `fdl list` shows), read without importing the experiments
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def test_the_golden_runs_cover_exactly_the_registered_experiments():
    from fdlcli import registry

    assert registry.names() == EXPERIMENTS
    per_cpu = {p.stem for p in compare.GOLDEN_DIR.glob("cpu-*/*.json")}  # a kind of CPU's own files
    stray = sorted((set(compare.golden_names()) | per_cpu) - set(EXPERIMENTS))
    assert not stray, f"golden files for experiments that no longer exist: {stray}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_golden_run(golden_run, name):
    """The golden command through the real CLI (conftest's golden_run: trained once per session, also
    for the tests that evaluate, play or resume against the same run)."""
    signature = compare.cpu_signature()
    path = compare.golden_path(name, signature)
    assert path.is_file(), f"{name}: no golden file {path.name}; {compare.regenerate_hint(name)}"
    golden = json.loads(path.read_text())
    trained = golden_run(name)
    found = compare.differences(golden, compare.capture(trained.run, trained.inputs), signature)
    assert not found, compare.report(name, golden, found, signature)
