"""Every trainer key of the README's table, for every experiment: honoured, with an effect, or refused.

No key is silently ignored (issue 18). For each of the 20 experiments (its golden short command, a small
slice of real data) and each optional feature of ``engine.task.FEATURES`` plus ``trainer.epochs``:

* a feature the experiment's task does not declare is refused at validation with one line naming the key
  and the experiment (and, through the real CLI, exit 2 before any run directory exists);
* a declared ``precision`` changes the first training costs (bf16 autocast against fp32, from the same
  weights and random state), and a declared ``compile`` really goes through ``torch.compile`` (dynamo
  traces at least one graph of the task's first step; the ``eager`` backend keeps the test fast) and
  computes the same cost;
* the loop-level features (``devices``, ``schedule``, ``checkpoint_every``, ``data_limits``) have their
  effects tested once where the loop implements them (tests/test_scaling.py, tests/test_training.py,
  tests/test_reliability.py); here their declaration is checked against the README table.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, fdl, run_dirs
from golden import compare

from fdlcli import config, registry
from fdlcli.engine.devices import autocast
from fdlcli.engine.seed import seed_everything
from fdlcli.engine.task import FEATURES, Task
from fdlcli.errors import ConfigError

ASK = {  # the override that asks for each feature
    "precision": "trainer.precision=bf16",
    "compile": "trainer.compile=true",
    "devices": "trainer.devices=2",
    "schedule": "optim.schedule=cosine",
    "checkpoint_every": "trainer.checkpoint_every=3",
    "data_limits": "data.train_limit=64",
}
EXPERIMENTS = registry.names()
# the golden neural-style run's loss is all total variation (random VGG weights see next to nothing of
# its noise images), an elementwise term autocast leaves in fp32: without it the VGG terms show bf16
EFFECT_OVERRIDES = {"neural-style": ["model.tv_weight=0"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden-inputs")
    compare.make_inputs(folder)  # neural-style's two images
    return folder


def golden_overrides(name: str, inputs: Path) -> list[str]:
    golden = json.loads(compare.golden_path(name).read_text())
    return compare.command_overrides(golden["overrides"], inputs)


def test_every_feature_is_one_the_loop_knows():
    assert set(ASK) == set(FEATURES)
    for name in EXPERIMENTS:
        assert registry.get(name).task.supports <= set(FEATURES), name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_undeclared_key_is_refused_in_one_line(name, inputs, mirror, monkeypatch):
    monkeypatch.setenv("FDL_DATA_DIR", str(mirror))
    task = registry.get(name).task
    base = golden_overrides(name, inputs)
    asked = dict(ASK)
    if task.unit == "steps":
        asked["epochs"] = "trainer.epochs=3"
    for feature, override in asked.items():
        if feature in task.supports:
            continue
        with pytest.raises(ConfigError) as refused:
            config.validate(config.compose(name, [*base, override]))
        message = str(refused.value)
        assert override.split("=")[0] in message and name in message and "\n" not in message


def test_a_refused_key_exits_2_before_any_run_directory(env):
    result = fdl("train", "dnc-copy", "trainer.epochs=3", env=env)
    assert result.returncode == 2 and "trains in steps, not epochs" in result.stderr
    assert "Traceback" not in result.stderr and run_dirs(env, "dnc-copy") == []


def first_costs(
    task_class: type[Task], cfg: config.RunConfig, precision: str, compiled: bool = False
) -> list[float]:
    """The first two training costs a task hands the loop from its seeded start, with the loop's update in
    between (RL tasks act until their first updates): the second one also shows how the first update,
    under the same autocast, moved the weights (a model that starts from zeros computes the same first
    cost in any precision)."""
    seed_everything(cfg.seed)
    task = task_class(cfg, torch.device("cpu"), None)
    task.setup()
    if compiled:
        task.compile()
    task.train_model = task.model
    task.model.train()
    if task.unit == "epochs":
        task.start_epoch(0)
    costs: list[float] = []
    for step in range(2000):
        with autocast(task.device, precision):
            out = task.train_step(step, step)
        if out.loss is not None:  # what the loop does with a returned loss
            assert task.optimizer is not None
            task.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            task.optimizer.step()
        cost = out.cost if out.cost is not None else out.loss
        if cost is not None:
            costs.append(float(torch.as_tensor(cost).detach()))
            if len(costs) == 2:
                return costs
    raise AssertionError(f"{cfg.name} gave fewer than two training costs in 2000 steps")


@pytest.mark.parametrize(
    "name", [n for n in EXPERIMENTS if {"precision", "compile"} & registry.get(n).task.supports]
)
def test_declared_precision_and_compile_have_an_effect(name, inputs, mirror, monkeypatch):
    monkeypatch.setenv("FDL_DATA_DIR", str(mirror))
    torch.set_num_threads(1)
    task_class = registry.get(name).task
    overrides = [*golden_overrides(name, inputs), *EFFECT_OVERRIDES.get(name, [])]
    cfg = config.validate(config.compose(name, overrides))
    fp32 = first_costs(task_class, cfg, "32")
    if "precision" in task_class.supports:
        assert first_costs(task_class, cfg, "bf16") != fp32, f"{name}: bf16 autocast changed nothing"
    if "compile" in task_class.supports:
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
        compiled = first_costs(task_class, cfg, "32", compiled=True)
        torch._dynamo.reset()
        assert counters["stats"]["unique_graphs"] >= 1, f"{name}: trainer.compile traced nothing"
        assert compiled == pytest.approx(fp32, rel=1e-4, abs=1e-6)


def test_readme_table_says_which_experiments_take_which_key():
    """The README lists, per feature, the experiments that honour it; it must match the tasks."""
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- trainer-keys -->")
    table = text[start : text.index("<!-- /trainer-keys -->")]
    for line in table.splitlines():
        if not line.startswith("| `") or "experiments" in line:
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        feature = cells[0].strip("`")
        listed = {n.strip(" `") for n in cells[2].split(",") if n.strip(" `")}
        expected = {n for n in EXPERIMENTS if feature in registry.get(n).task.supports}
        assert listed == expected, f"README's row for {feature}: {sorted(listed ^ expected)}"
