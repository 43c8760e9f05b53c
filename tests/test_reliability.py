"""Reliability: repeated SIGKILLs, NaN losses, 100+ malformed inputs, fuzzed input boundaries.

Each test prints its figure (kills survived, inputs tried, ...); run with -s to see them.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_run, fdl, fdl_in_process, metric_records, read_summary, run_dirs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from fdlcli import config
from fdlcli.errors import FdlError, UsageError

# one epoch task (mlp-mnist: its dropout draws must resume too) and one step-based RL task (dqn-cartpole:
# its checkpoints fall inside logging windows, and its replay buffer and episodes in progress must resume).
# Every other task shares the loop's checkpoint and resume path; their own state's exact resume after
# SIGTERM is tested with each (test_dnc, test_ntm, test_a3c, test_rl, test_cifar_fast, ...).
KILLABLE = {
    "mlp-mnist": ["trainer.epochs=4", "data.train_limit=20000", "data.eval_limit=1000", "model.dropout=0.2"],
    # the replay buffer (600 transitions) wraps; checkpoint_every counts agent steps
    "dqn-cartpole": [
        "trainer.total_steps=1000",
        "trainer.learning_starts=200",
        "trainer.eval_every=500",
        "trainer.eval_episodes=2",
        "trainer.buffer_size=600",
        "model.hidden=[32,32]",
    ],
}
COMMON = ["trainer.checkpoint_every=25", "trainer.log_every=10", "trainer.histograms=false", "seed=11"]
# four kills on the epoch task (two during start-up, two mid-run), three on the RL task (one at start-up, two
# mid-run, one of them after its replay buffer wrapped). Each kill costs a process start (~5 s of CPU); the
# random moments differ between runs of the suite, and test_training kills mlp-mnist at three fixed steps
# (mid-epoch, mid-window) and checks the same exact resume, so more kills here mostly cost CI time
KILLS = {"mlp-mnist": 4, "dqn-cartpole": 3}
STARTUP_KILL_EVERY = 3  # kills 0 and 3: during start-up, data loading or the first steps


def _assert_latest_checkpoint_loadable(run: Path) -> None:
    pointer = run / "checkpoints" / "latest.json"
    if not pointer.exists():
        return  # killed before the first checkpoint: resume starts from the step-0 weights
    name = json.loads(pointer.read_text())["name"]
    weights = load_file(str(run / "checkpoints" / name / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())
    state = torch.load(run / "checkpoints" / name / "trainer.pt", weights_only=True)
    assert state["step"] == json.loads(pointer.read_text())["step"]


def _popen(env, *args):
    return subprocess.Popen(
        [sys.executable, "-m", "fdlcli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.mark.parametrize("experiment", sorted(KILLABLE))
def test_repeated_sigkill_then_resume_is_exact(env, experiment):
    overrides = [*KILLABLE[experiment], *COMMON]
    assert fdl("train", experiment, *overrides, env=env).returncode == 0
    (reference,) = run_dirs(env, experiment)

    rng = random.Random(experiment)
    kills, run, furthest = 0, None, 0
    aborted: set[Path] = set()
    process = _popen(env, "train", experiment, *overrides)
    while kills < KILLS[experiment]:
        if kills % STARTUP_KILL_EVERY == 0:  # now and then a kill during start-up or the first steps
            time.sleep(rng.uniform(0.2, 2.0))
        else:  # otherwise at a random moment once the run got further than ever before
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:
                if run is None:
                    candidates = [r for r in run_dirs(env, experiment) if r != reference and r not in aborted]
                    run = candidates[0] if candidates else None
                if run is not None and (run / "metrics.jsonl").exists():
                    with open(run / "metrics.jsonl", "rb") as handle:
                        if sum(1 for _ in handle) > furthest:
                            break
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.15))
        if process.poll() is not None:
            break  # finished before this kill
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        if run is not None and not (run / "config.yaml").exists():
            # killed between claiming the directory and saving the config: nothing to resume yet, so
            # (as a user would) start afresh; the aborted directory is left as it is
            aborted.add(run)
            run = None
        if run is None:
            candidates = [r for r in run_dirs(env, experiment) if r != reference and r not in aborted]
            candidates = [r for r in candidates if (r / "config.yaml").exists()]
            if not candidates:  # killed before its run directory (or its config) existed: start afresh
                for r in run_dirs(env, experiment):
                    if r != reference and not (r / "config.yaml").exists():
                        aborted.add(r)
                process = _popen(env, "train", experiment, *overrides)
                continue
            (run,) = candidates
        if (run / "metrics.jsonl").exists():
            with open(run / "metrics.jsonl", "rb") as handle:
                furthest = max(furthest, sum(1 for _ in handle))
        _assert_latest_checkpoint_loadable(run)
        process = _popen(env, "train", "--resume", str(run))
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    if run is None:
        (run,) = [r for r in run_dirs(env, experiment) if r != reference and r not in aborted]
    print(f"\n{experiment}: {kills} SIGKILLs survived")
    assert kills >= KILLS[experiment] - 2, "the run finished too quickly to be killed often"
    assert read_summary(run)["final"] == read_summary(reference)["final"]
    assert metric_records(run) == metric_records(reference)
    assert not list((run / "checkpoints").glob(".tmp-*")), "a killed save left a temporary directory"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(env):
    result = fdl(
        "train", "mlp-mnist", "optim.lr=50", "data.train_limit=2000", "trainer.epochs=2",
        "trainer.checkpoint_every=1", env=env,
    )  # fmt: skip
    assert result.returncode == 1
    assert "became" in result.stderr and "last good checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (run,) = run_dirs(env, "mlp-mnist")
    assert json.loads((run / "meta.json").read_text())["status"] == "diverged"
    _assert_latest_checkpoint_loadable(run)


# ---------------------------------------------------------------------------------------------------
# 100+ malformed inputs, in process (fast), each a one-line error and exit != 0, no run damaged.


def _bad_overrides() -> list[list[str]]:
    keys = ["trainer.epochs", "trainer.device", "trainer.precision", "trainer.threads", "data.batch_size",
            "optim.lr", "optim.momentum", "seed", "model.hidden", "model.dropout", "trainer.monitor_mode",
            "data.val_size", "optim.name", "trainer.compile"]  # fmt: skip
    values = ["abc", "-5", "[1,2", "{a:1}", "''", "1e999x", "null"]
    cases = [[f"{k}={v}"] for k in keys for v in values]
    cases += [[f"{g}=nope"] for g in ("optim", "model", "data", "trainer", "experiment")]
    cases += [["nosuchkey=1"], ["trainer.nosuch=1"], ["+model.extra=1"], ["~name"], ["=5"], ["a b=c"],
              ["trainer.epochs=1", "trainer.epochs"], ["model.hidden=[1,-2]"], ["data.val_size=60000"]]  # fmt: skip
    return cases


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_one_hundred_malformed_inputs(golden_run, env, tmp_path, capsys, monkeypatch):
    # a finished 2-epoch run: a copy of logreg-mnist's golden run (one training less)
    existing = copy_run(golden_run("logreg-mnist").run, tmp_path / "existing")
    before = _tree_digest(existing)

    # damaged copies of the run: truncated, corrupt and foreign checkpoints, broken pointers and configs
    damaged = []
    latest = json.loads((existing / "checkpoints" / "latest.json").read_text())["name"]
    mutations = {
        "truncated-weights": lambda d: (d / f"checkpoints/{latest}/model.safetensors").write_bytes(
            b"\x00" * 10
        ),
        "garbage-weights": lambda d: (d / f"checkpoints/{latest}/model.safetensors").write_bytes(b"x" * 4096),
        "no-weights": lambda d: (d / f"checkpoints/{latest}/model.safetensors").unlink(),
        "garbage-state": lambda d: (d / f"checkpoints/{latest}/trainer.pt").write_bytes(b"garbage"),
        "no-state": lambda d: (d / f"checkpoints/{latest}/trainer.pt").unlink(),
        "pickle-state": lambda d: torch.save({"x": object}, d / f"checkpoints/{latest}/trainer.pt"),
        "bad-latest": lambda d: (d / "checkpoints/latest.json").write_text("{not json"),
        "escaping-latest": lambda d: (d / "checkpoints/latest.json").write_text(
            '{"name": "../../x", "step": 1}'
        ),
        "bad-best": lambda d: (d / "checkpoints/best.json").write_text("[]"),  # eval --checkpoint best
        "no-config": lambda d: (d / "config.yaml").unlink(),
        "garbage-config": lambda d: (d / "config.yaml").write_text(":\n  - ]["),
        "foreign-config": lambda d: (d / "config.yaml").write_text("name: resnet50\n"),
        "other-experiment": lambda d: (d / "config.yaml").write_text(
            (d / "config.yaml").read_text().replace("logreg-mnist", "mlp-mnist")
        ),
        "interpolating-config": lambda d: (d / "config.yaml").write_text(
            (d / "config.yaml").read_text().replace("seed: 0", "seed: ${oc.env:HOME}")
        ),
    }
    import shutil

    for label, mutate in mutations.items():
        copy = tmp_path / "damaged" / label
        shutil.copytree(existing, copy)
        mutate(copy)
        damaged.append(copy)

    argvs: list[list[str]] = [["train", "mlp-mnist", *o] for o in _bad_overrides()]
    argvs += [["config", "mlp-mnist", *o] for o in _bad_overrides()[:10]]
    # eval needs weights, config and pointers; resume needs all of it, the trainer state included
    state_only = {"garbage-state", "no-state", "pickle-state"}
    for copy in damaged:
        if copy.name not in state_only:
            which = "best" if copy.name == "bad-best" else "last"
            argvs.append(["eval", str(copy), "--checkpoint", which])
        argvs.append(["train", "--resume", str(copy), "trainer.epochs=3"])  # one epoch more than it has
    argvs += [
        ["eval", str(existing), "--checkpoint", "step-999"], ["eval", str(existing), "--checkpoint", "../x"],
        ["eval", str(existing.parent)], ["eval", str(existing / "config.yaml")], ["eval", "/dev/null"],
        ["train", "--resume", str(existing), "+x=1"], ["train", "--resume", str(existing), "hydra.run.dir=/"],
        ["train", "-m", "--resume", str(existing)], ["train", "-m", "mlp-mnist", "optim=sgd,bogus"],
        ["eval", str(existing), "--split", "holdout"], ["list", "extra"], ["nosuchcommand"],
    ]  # fmt: skip
    failures, slow = [], []
    for argv in argvs:
        started = time.monotonic()
        code, err = fdl_in_process(argv, capsys)
        slow.append((time.monotonic() - started, argv))
        lines = err.strip().splitlines()
        if code == 0 or len(lines) != 1 or "Traceback" in err:
            failures.append((argv, code, err))
    # runs root that cannot be used: a file where a directory should be
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FDL_RUNS_DIR", str(blocker / "runs"))
    code, err = fdl_in_process(["train", "logreg-mnist", "trainer.epochs=1"], capsys)
    if code == 0 or len(err.strip().splitlines()) != 1:
        failures.append(("unusable runs dir", code, err))
    print(sorted(slow, key=lambda x: -x[0])[:5])
    tried = len(argvs) + 1
    print(f"\n{tried} malformed inputs tried, {tried - len(failures)} one-line errors without traceback")
    assert tried >= 100
    assert not failures, failures[:3]
    assert _tree_digest(existing) == before, "an existing run was modified"

    # an override valid as config but refused by the checkpoint (another model shape): the run's config,
    # overrides and checkpoints stay as they were, so does its status, and the attempt is on record
    refused = tmp_path / "refused"
    shutil.copytree(existing, refused)
    kept = {name: (refused / name).read_bytes() for name in ("config.yaml", "overrides.yaml")}
    argv = ["train", "--resume", str(refused), "model.hidden=[7]", "trainer.epochs=2"]
    code, err = fdl_in_process(argv, capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert {name: (refused / name).read_bytes() for name in kept} == kept
    assert _tree_digest(refused / "checkpoints") == _tree_digest(existing / "checkpoints")
    meta = json.loads((refused / "meta.json").read_text())
    assert meta["status"] == "completed" and meta["resumes"][-1]["refused"], meta


# ---------------------------------------------------------------------------------------------------
# Fuzzing the boundaries with hypothesis.

override_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=40
)
known_keys = st.sampled_from(
    [
        "trainer.epochs",
        "trainer.device",
        "optim.lr",
        "model.hidden",
        "seed",
        "data.batch_size",
        "optim",
        "model",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(override_text, st.builds(lambda k, v: f"{k}={v}", known_keys, override_text)), max_size=3
    )
)
def test_fuzzed_overrides_either_validate_or_raise_usage_errors(overrides):
    try:
        config.validate(config.compose("mlp-mnist", overrides))
    except UsageError as exc:
        assert "\n" not in str(exc).strip()


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_image_bytes_decode_or_fail_cleanly(data):
    from fdlcli.data.tensors import _decode_image_column

    try:
        _decode_image_column([{"bytes": data, "path": None}])
    except FdlError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=2000))
def test_fuzzed_parquet_files_load_or_fail_cleanly(tmp_path_factory, data):
    from fdlcli.data import load_split

    root = tmp_path_factory.mktemp("fuzz")
    (root / "mnist").mkdir()
    (root / "mnist" / "train.parquet").write_bytes(b"PAR1" + data + b"PAR1")
    try:
        load_split("mnist", "ylecun/mnist", "train", str(root))
    except FdlError as exc:
        assert "\n" not in str(exc)
