"""The command line end to end (subprocess), and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fdl, fdl_call, fdl_in_process, read_summary, run_dirs, without_modules


def test_help_lists_commands(env):
    result = fdl("--help", env=env)
    assert result.returncode == 0
    for command in ("train", "eval", "list", "config"):
        assert command in result.stdout


def test_list_shows_experiments_with_book_results(env, capsys):
    code, out, err = fdl_call(["list"], capsys)
    assert code == 0, err
    assert "mlp-mnist" in out and "logreg-mnist" in out
    assert "98.2%" in out and "91.9%" in out


def test_list_never_cuts_a_name_at_80_columns_and_lists_as_json(env, capsys):
    from fdlcli import registry

    code, out, err = fdl_call(["list", "--json"], capsys)
    assert code == 0, err
    listed = json.loads(out)
    assert sorted(e["name"] for e in listed) == registry.names()
    mlp = next(e for e in listed if e["name"] == "mlp-mnist")
    assert mlp["chapter"] == 3 and mlp["book_result"].startswith("98.2%") and mlp["dataset"] == "MNIST"

    narrow = fdl("list", env={**env, "COLUMNS": "80"})  # a process: the console's width is set at import
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    first_cells = {line.split("│")[1].strip() for line in lines if line.startswith("│")}
    assert set(registry.names()) <= first_cells, set(registry.names()) - first_cells


def test_config_prints_resolved_config_with_overrides(env, capsys):
    code, out, err = fdl_call(["config", "mlp-mnist", "optim=momentum", "trainer.epochs=7", "seed=3"], capsys)
    assert code == 0, err
    assert "epochs: 7" in out
    assert "momentum: 0.9" in out
    assert "seed: 3" in out
    assert "${" not in out  # resolved


BAD_INPUTS = [
    (["train", "mlp-mnst"], "did you mean mlp-mnist"),
    (["train", "no-such-thing"], "choose from"),
    (["train", "mlp-mnist", "trainer.epohcs=3"], "valid keys in 'trainer'"),
    (["train", "mlp-mnist", "+trainer.foo=1"], "unknown config key 'trainer.foo'"),
    (["train", "mlp-mnist", "optim=sgdd"], "choose from: adagrad"),
    (["train", "mlp-mnist", "model=nope"], "choose from"),
    (["train", "mlp-mnist", "trainer.device=gpu"], "choose from: auto, cpu, cuda, mps"),
    (["train", "mlp-mnist", "trainer.precision=fp8"], "choose from: 32, bf16"),
    (["train", "mlp-mnist", "trainer.epochs=abc"], "trainer.epochs"),
    (["train", "mlp-mnist", "trainer.epochs=-1"], "must be positive"),
    (["train", "mlp-mnist", "data.batch_size=0"], "must be positive"),
    (["train", "mlp-mnist", "optim.lr=fast"], "optim.lr"),
    (["train", "mlp-mnist", "seed=x"], "seed"),
    (["train", "mlp-mnist", "model.hidden=[0]"], "positive"),
    (["train", "mlp-mnist", "model.activation=swish"], "choose from"),
    (["train", "mlp-mnist", "x=["], "cannot parse override"),
    (["train", "mlp-mnist", "optim=sgd,adam"], "add -m"),
    (["train", "mlp-mnist", "--bogus"], "no such option"),
    (["train"], "name an experiment"),
    (["config", "mlp-mnist", "trainer.nope=1"], "unknown config key"),
    (["eval", "/no/such/run"], "no such run directory"),
    (["train", "--resume", "/no/such/run"], "no such run directory"),
    (["train", "-m", "mlp-mnist", "optim=sgd,nope"], "unknown optim 'nope'"),
]


def test_bad_input_gives_one_line_error(env, capsys):
    """Each bad command line through the CLI's entry point, in this process (a subprocess apiece cost a
    minute of interpreter starts); three of them as a user types them, in real processes."""
    failures = []
    for args, expected in BAD_INPUTS:
        code, err = fdl_in_process(args, capsys)
        lines = err.strip().splitlines()
        if code == 0 or "Traceback" in err or len(lines) != 1 or expected not in lines[0]:
            failures.append((" ".join(args), code, err[-300:]))
    for args, expected in (BAD_INPUTS[0], BAD_INPUTS[9], BAD_INPUTS[-1]):
        result = fdl(*args, env=env)
        lines = result.stderr.strip().splitlines()
        one_line = len(lines) == 1 and expected in lines[0]
        if result.returncode == 0 or "Traceback" in result.stderr + result.stdout or not one_line:
            failures.append((" ".join(args), result.returncode, result.stderr[-300:]))
    assert not failures, failures
    assert not run_dirs(env, "mlp-mnist"), "a failed start must not leave a run directory"


def test_usage_errors_exit_2(env, capsys):
    # in this process; test_bad_input_gives_one_line_error and test_trainer_keys run bad commands as processes
    assert fdl_in_process(["train", "mlp-mnist", "trainer.foo=1"], capsys)[0] == 2
    assert fdl_in_process(["train", "nope"], capsys)[0] == 2


def test_debug_flag_shows_traceback(env):
    result = fdl("--debug", "eval", "/no/such/run", env=env)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_train_then_eval_end_to_end(env, capsys):
    # the defaults (momentum, cosine decay, shifts) on 100 minibatches: 20 minibatches learn too little
    result = fdl(
        "train", "mlp-mnist", "trainer.epochs=2", "data.train_limit=5000", "data.eval_limit=1000", env=env
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "mlp-mnist")
    for name in ("config.yaml", "overrides.yaml", "meta.json", "metrics.jsonl", "summary.json", "train.log"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "init" / "model.safetensors").is_file()
    meta = json.loads((run / "meta.json").read_text())
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"  # trainer.device=auto (the GPU check)
    assert meta["status"] == "completed" and meta["seed"] == 0 and meta["device"] == expected_device
    assert {"torch", "python", "hydra-core"} <= set(meta["versions"])
    assert "commit" in meta["git"] and meta["end_time"]
    summary = read_summary(run)
    assert summary["status"] == "completed"
    assert 0.5 < summary["final"]["test/accuracy"] <= 1.0

    code, out, err = fdl_call(["eval", str(run), "--json"], capsys)  # in this process: no new start-up
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["test/accuracy"] == pytest.approx(summary["best"]["test/accuracy"], abs=1e-9)
    assert (run / "eval-best-test.json").is_file()


# --------------------------------------------------------------------------------------------------
# Text from outside (paths, install hints) prints as it is: rich markup would eat or choke on [...].


@pytest.mark.parametrize("path", ["runs/[/x]", "runs/[bold]x"])
def test_bracketed_path_in_an_error_prints_verbatim(env, path, capsys):
    code, err = fdl_in_process(["eval", path], capsys)
    assert code == 1
    assert err.strip() == f"error: no such run directory: {path}"  # no MarkupError traceback


def test_install_hint_keeps_the_extra_in_brackets(env, tmp_path):
    result = fdl("train", "dqn-breakout", env=without_modules(env, tmp_path / "hidden", "ale_py"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("(ale_py is missing): pip install 'fdlcli[atari]'"), line


def test_fdl_consoles_print_markup_characters_verbatim(capsys):
    from rich.table import Table

    from fdlcli.engine.tracking import ConsoleProgress
    from fdlcli.terminal import console, make_console, print_error

    table = Table(title="runs/[bold]x")
    table.add_column("[/x]")
    table.add_row("pip install 'fdlcli[atari]'")
    make_console(width=200).print(table)
    console.print("[red]runs/[/x]")
    ConsoleProgress(10, 0, 1.0).console.print("[bold]done[/bold]")  # the progress bar's console
    print_error("pip install 'fdlcli[atari]' [/x]")
    out, err = capsys.readouterr()
    for text in (
        "runs/[bold]x",
        "[/x]",
        "pip install 'fdlcli[atari]'",
        "[red]runs/[/x]",
        "[bold]done[/bold]",
    ):
        assert text in out, text
    assert err == "error: pip install 'fdlcli[atari]' [/x]\n"


def test_run_dir_prints_at_start_and_eval_takes_unpadded_step_numbers(env, tmp_path, capsys):
    env = {**env, "FDL_RUNS_DIR": str(tmp_path / "[bold]runs[/x]")}  # and markup characters print as they are
    result = fdl(
        "train", "mlp-mnist", "trainer.epochs=1", "data.train_limit=500", "data.eval_limit=200", env=env
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "mlp-mnist")
    assert result.stdout.splitlines()[0] == f"run dir {run}  (tensorboard --logdir {run.parent})"
    assert (run / "checkpoints" / "step-000000005").is_dir()  # 500 examples in minibatches of 100

    code, unpadded, err = fdl_call(["eval", str(run), "--checkpoint", "step-5", "--json"], capsys)
    assert code == 0, err
    code, padded, err = fdl_call(["eval", str(run), "--checkpoint", "step-000000005", "--json"], capsys)
    assert code == 0, err
    assert json.loads(unpadded) == json.loads(padded)
    code, err = fdl_in_process(["eval", str(run), "--checkpoint", "step-4"], capsys)
    assert code == 1
    assert err.strip() == (f"error: no step-4 checkpoint in {run} (step checkpoints there: step-000000005)")


def test_a_shift_as_large_as_the_image_is_refused_before_any_run_dir(env, capsys):
    code, err = fdl_in_process(["train", "cnn-mnist", "data.shift=1000"], capsys)
    assert code == 2
    assert err.strip() == (
        "error: invalid data config: data.shift=1000: it must be smaller than the 28x28 mnist images (at most 27)"
    )
    assert fdl_in_process(["train", "mlp-mnist", "data.shift=28"], capsys)[0] == 2  # the image's own size too
    assert not run_dirs(env, "cnn-mnist") and not run_dirs(env, "mlp-mnist")
    code, out, err = fdl_call(["config", "cnn-cifar10", "+data.shift=31"], capsys)  # CIFAR-10 images: 32x32
    assert code == 0 and "shift: 31" in out, err
