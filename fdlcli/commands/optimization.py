"""Chapter 4's looks at optimization: ``fdl interpolate`` (the loss surface along a line between two sets
of weights) and ``fdl momentum-walk`` (momentum as an exponentially weighted average of a random walk)."""

from __future__ import annotations

import time
from pathlib import Path

import click

INTERPOLATE_HELP = """Cost and accuracy along theta(a) = a*theta_1 + (1-a)*theta_0.

\b
  fdl interpolate RUN                  theta_0 = RUN's step-0 weights, theta_1 = its trained weights
  fdl interpolate RUN_A RUN_B          theta_0 = RUN_A's trained weights, theta_1 = RUN_B's
  fdl interpolate RUN --start -1 --stop 2 --step 0.05 --split val --examples 0

Writes a CSV, a PNG and a JSON summary into RUN's (RUN_A's) artifacts/ and prints the minimum, flat
stretches and any bump or barrier. Models with batch norm get their statistics re-estimated at every a.
"""


@click.command("interpolate", help=INTERPOLATE_HELP)
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--checkpoint", default="last", show_default=True, help="Trained weights to use: last, best or step-N."
)
@click.option("--start", default=-2.0, show_default=True, help="First a.")
@click.option("--stop", default=2.0, show_default=True, help="End of the range (exclusive).")
@click.option("--step", default=0.01, show_default=True, help="Spacing of a.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]))
@click.option("--examples", default=2000, show_default=True, help="First N examples of the split; 0 = all.")
@click.option(
    "--bn-examples",
    default=2000,
    show_default=True,
    help="Training examples for re-estimating BN statistics.",
)
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads (default: the run's trainer.threads; 0 = all cores).",
)
def interpolate_cmd(
    runs: tuple[Path, ...],
    checkpoint: str,
    start: float,
    stop: float,
    step: float,
    split: str,
    examples: int,
    bn_examples: int,
    threads: int | None,
) -> None:
    import torch

    from fdlcli import config as config_module
    from fdlcli import registry
    from fdlcli.analysis import interpolation
    from fdlcli.engine.checkpoint import CheckpointManager
    from fdlcli.engine.devices import configure_threads, resolve_device
    from fdlcli.engine.supervised import SupervisedTask
    from fdlcli.errors import UsageError
    from fdlcli.runs import atomic_write_json

    if len(runs) > 2:
        raise UsageError("give one run (init -> trained) or two runs (trained -> trained)")
    if checkpoint == "init":
        raise UsageError("--checkpoint names the trained end; the step-0 weights are the start already")
    settings = interpolation.InterpolationConfig(start, stop, step, split, examples, bn_examples)
    settings.check()
    opened = [config_module.open_run(r) for r in runs]
    run_dirs = [run.path for run in opened]
    run_config = opened[0].config
    spec = registry.get(run_config.name)
    if not issubclass(spec.task, SupervisedTask):
        raise UsageError(f"experiment {spec.name!r} has no supervised task to interpolate")
    task = spec.task(run_config)
    device = resolve_device(run_config.trainer.device)
    configure_threads(run_config.trainer.threads if threads is None else threads)
    model = task.build_model().to(device)

    def weights(run_dir: Path, which: str) -> tuple[dict[str, torch.Tensor], str]:
        manager = CheckpointManager(run_dir / "checkpoints", run_config.name)
        ref = manager.resolve(which)
        manager.load_weights(model, ref, device)  # refuses other experiments' and mismatched weights
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, ref.name

    if len(run_dirs) == 1:
        theta_0, name_0 = weights(run_dirs[0], "init")
        theta_1, name_1 = weights(run_dirs[0], checkpoint)
        labels = ("init", f"trained ({name_1})")
        stem = f"interpolation-init-{checkpoint}"
    else:
        theta_0, name_0 = weights(run_dirs[0], checkpoint)
        theta_1, name_1 = weights(run_dirs[1], checkpoint)
        # a sweep job is named by its number only: prefix the sweep's id to keep the name meaningful
        names = [f"{r.parent.name}-{r.name}" if r.name.isdigit() else r.name for r in run_dirs]
        labels = (f"A: {names[0]}", f"B: {names[1]}")
        stem = f"interpolation-{checkpoint}-to-{names[1]}"

    data = task.load_data().to(device)
    arrays = {"train": data.train, "val": data.val, "test": data.test}[split]
    if examples:
        arrays = tuple(a[:examples] for a in arrays)
    bn_arrays = tuple(a[:bn_examples] for a in data.train)

    began = time.perf_counter()
    result = interpolation.interpolate_path(
        task,
        model,
        theta_0,
        theta_1,
        settings.alphas(),
        arrays,
        bn_arrays,
        run_config.trainer.eval_batch_size,
    )
    seconds = time.perf_counter() - began

    stem += f"-{split}{result.examples}"  # e.g. interpolation-init-last-test10000: runs differ by name
    artifacts = run_dirs[0] / "artifacts"
    artifacts.mkdir(exist_ok=True)
    csv_path, png_path, json_path = (artifacts / f"{stem}.{ext}" for ext in ("csv", "png", "json"))
    interpolation.save_csv(csv_path, result)
    title = f"{run_config.name}: {labels[0]} -> {labels[1]} ({split})"
    interpolation.plot_path(png_path, result, title, labels)
    lines = interpolation.describe_path(
        result.alphas, result.column("cost"), two_solutions=len(run_dirs) == 2
    )
    bn_line = (
        f"batch norm: statistics re-estimated at every a from {result.bn_examples} training examples"
        if result.batch_norm
        else "batch norm: none in this model (nothing to re-estimate)"
    )
    atomic_write_json(
        json_path,
        {
            "runs": [str(r) for r in run_dirs],
            "ends": [name_0, name_1] if len(run_dirs) == 1 else [f"{r.name}/{checkpoint}" for r in run_dirs],
            "split": split,
            "examples": result.examples,
            "points": len(result.alphas),
            "range": [start, stop, step],
            "batch_norm_reestimated": result.batch_norm,
            "seconds": round(seconds, 2),
            "summary": lines,
        },
    )
    click.echo(
        f"{len(result.alphas)} points x {result.examples} {split} examples in {seconds:.1f} s ({device})"
    )
    click.echo(bn_line)
    for line in lines:
        click.echo(line)
    click.echo(f"wrote {csv_path}")
    click.echo(f"wrote {png_path}")


@click.command("momentum-walk")
@click.option("--steps", default=300, show_default=True, help="Length of the random walk.")
@click.option(
    "--momentum",
    "momenta",
    default="0,0.5,0.9,0.99",
    show_default=True,
    help="Comma-separated momentum values in [0, 1).",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the CSV and PNG (default: a new run directory under runs/momentum-walk/).",
)
def momentum_walk_cmd(steps: int, momenta: str, seed: int, out: Path | None) -> None:
    """Book figure 4-8: steps drawn uniformly from [-10, 10] and their exponentially weighted average
    v_t = m * v_{t-1} + (1 - m) * step_t for several momentum values m."""
    from fdlcli.analysis import momentum_walk
    from fdlcli.errors import UsageError
    from fdlcli.runs import atomic_write_json, new_run_dir, now_iso

    try:
        values = [float(v) for v in momenta.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--momentum takes comma-separated numbers, got {momenta!r}") from None
    if not values or any(not 0.0 <= v < 1.0 for v in values):
        raise UsageError(f"every momentum must lie in [0, 1), got {momenta!r}")
    if steps <= 0:
        raise UsageError(f"--steps must be positive, got {steps}")
    folder = out if out is not None else new_run_dir("momentum-walk") / "artifacts"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {folder}: {exc.strerror}") from None
    walk = momentum_walk.simulate(steps, values, seed)
    csv_path, png_path = folder / "momentum-walk.csv", folder / "momentum-walk.png"
    momentum_walk.save_csv(csv_path, walk)
    momentum_walk.plot(png_path, walk)
    atomic_write_json(
        folder / "momentum-walk.json",
        {"steps": steps, "momenta": values, "seed": seed, "time": now_iso(), **momentum_walk.stats(walk)},
    )
    for line in momentum_walk.describe(walk):
        click.echo(line)
    click.echo(f"wrote {csv_path}")
    click.echo(f"wrote {png_path}")


COMMANDS = [interpolate_cmd, momentum_walk_cmd]
