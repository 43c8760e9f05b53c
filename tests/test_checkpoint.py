"""Checkpoints: step names, and a save that fails (disk full) leaving every earlier checkpoint as it was."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from fdlcli import config, runs
from fdlcli.engine import checkpoint as checkpoint_module
from fdlcli.engine.checkpoint import CheckpointManager, describe_write_failure
from fdlcli.errors import CheckpointError


def _saved(tmp_path: Path) -> tuple[CheckpointManager, torch.nn.Module]:
    """A manager with the step-0 weights and the step-5 checkpoint on disk."""
    manager = CheckpointManager(tmp_path / "checkpoints", "mlp-mnist")
    model = torch.nn.Linear(4, 2)
    manager.save_initial(model)
    manager.save(model, {"epoch": 0}, 5)
    return manager, model


def _files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def _write_some_then_fail(exc: BaseException):
    def failing(model, path, metadata=None):
        Path(path).write_bytes(b"half a file")  # the disk filled up part-way through the weights
        raise exc

    return failing


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "failure",
    [
        _enospc(),  # an OSError with its errno
        # what safetensors raises on a full disk: its text is the only place the errno is
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_a_failed_save_cleans_up_and_names_the_cause_and_the_last_good_checkpoint(
    tmp_path, monkeypatch, failure
):
    manager, model = _saved(tmp_path)
    before = _files(manager.directory)
    monkeypatch.setattr(checkpoint_module, "save_weights", _write_some_then_fail(failure))
    with pytest.raises(CheckpointError) as raised:
        manager.save(model, {"epoch": 1}, 10)
    message = str(raised.value)
    assert "\n" not in message
    assert message == (
        f"could not write checkpoint step-000000010 in {manager.directory}: no space left on device; "
        "the last good checkpoint is step-000000005"
    )
    assert not list(manager.directory.glob(".tmp-*")), "the temporary directory must be removed"
    assert _files(manager.directory) == before, "earlier checkpoints and pointers stay as they were"
    assert manager.resolve("last").name == "step-000000005"


def test_a_failed_trainer_state_write_is_reported_through_its_oserror(tmp_path, monkeypatch):
    # torch.save reports a full disk as "unexpected pos ..." on a path; through a file, its OSError shows
    manager, model = _saved(tmp_path)
    before = _files(manager.directory)

    def failing_save(obj, handle):
        handle.write(b"partial")
        try:
            raise _enospc()
        except OSError as exc:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
            ) from exc

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(CheckpointError, match=r"step-000000010 .*: no space left on device; the last good"):
        manager.save(model, {"epoch": 1}, 10)
    assert _files(manager.directory) == before and not list(manager.directory.glob(".tmp-*"))


def test_a_failed_first_save_says_only_the_step_0_weights_exist(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path / "checkpoints", "mlp-mnist")
    model = torch.nn.Linear(4, 2)
    manager.save_initial(model)
    monkeypatch.setattr(checkpoint_module, "save_weights", _write_some_then_fail(_enospc()))
    with pytest.raises(CheckpointError, match=r"the last good checkpoint is init \(the step-0 weights\)$"):
        manager.save(model, {}, 5)


def test_a_failed_pointer_write_keeps_the_old_latest(tmp_path, monkeypatch):
    manager, model = _saved(tmp_path)

    def full_disk(path, obj):
        raise _enospc()

    monkeypatch.setattr(checkpoint_module, "atomic_write_json", full_disk)
    with pytest.raises(
        CheckpointError, match=r"as the latest .*no space left on device; .* is step-000000005"
    ):
        manager.save(model, {"epoch": 1}, 10)
    assert json.loads((manager.directory / "latest.json").read_text())["name"] == "step-000000005"


def test_other_failures_are_described_by_their_first_line():
    assert describe_write_failure(OSError(errno.EACCES, "Permission denied")) == "permission denied"
    assert describe_write_failure(RuntimeError("boom\nmore")) == "RuntimeError: boom"


def test_a_failed_save_marks_the_run_failed_with_its_message(tmp_path, monkeypatch):
    from fdlcli.engine.session import run_session

    run_config = config.validate(config.compose("mlp-mnist", ["trainer.device=cpu"]))
    run = runs.Run(path=tmp_path / "run", config=run_config)
    run.path.mkdir()
    model = torch.nn.Linear(4, 2)
    with pytest.raises(CheckpointError) as raised, run_session(run) as session:
        session.checkpoints.save_initial(model)
        session.checkpoints.save(model, {}, 5)
        monkeypatch.setattr(checkpoint_module, "save_weights", _write_some_then_fail(_enospc()))
        session.checkpoints.save(model, {}, 10)
    meta = json.loads((run.path / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert str(raised.value) in meta["error"] and "no space left on device" in meta["error"]
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == ["init", "latest.json", "step-000000005"]


def _flat_lstm() -> torch.nn.LSTM:
    """An LSTM whose weights are views into one buffer, as cuDNN keeps them on CUDA."""
    lstm = torch.nn.LSTM(6, 8, batch_first=True)
    params = list(lstm.parameters())
    flat = torch.zeros(sum(p.numel() for p in params))
    offset = 0
    for param in params:
        flat[offset : offset + param.numel()] = param.data.reshape(-1)
        param.data = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
    return lstm


def test_weights_in_one_buffer_save_and_load(tmp_path):
    # safetensors' save_model refuses these views ("None is covering the entire storage"): on a GPU every
    # LSTM experiment failed to write its first checkpoint
    manager = CheckpointManager(tmp_path / "checkpoints", "lstm-copy")
    model = _flat_lstm()
    ref = manager.save(model, {"epoch": 0}, 1)
    into = _flat_lstm()
    manager.load_weights(into, ref)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), into.parameters(), strict=True))


def test_tied_weights_are_written_once_and_load_back(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.out = torch.nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    manager = CheckpointManager(tmp_path / "checkpoints", "translate-en-fr")
    model = Tied()
    ref = manager.save(model, {"epoch": 0}, 1)
    from safetensors.torch import load_file

    assert list(load_file(str(ref.path / "model.safetensors"))) == ["embed.weight"]
    into = Tied()
    manager.load_weights(into, ref)
    assert torch.equal(into.out.weight, model.embed.weight) and into.out.weight is into.embed.weight
