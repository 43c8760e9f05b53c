"""Commands for the reinforcement-learning runs: ``fdl play`` and ``fdl plot-returns``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from fdlcli.errors import FdlError, UsageError


@click.command("play")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("-n", "--episodes", default=5, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--epsilon",
    type=click.FloatRange(0, 1),
    default=None,
    help="Exploration; default: the run's eval_epsilon.",
)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first episode.")
@click.option("--record", is_flag=True, help="Write a video of the episodes into the run's artifacts/.")
@click.option("--format", "video_format", type=click.Choice(["mp4", "gif"]), default="mp4", show_default=True)
@click.option("--render", type=click.Choice(["none", "human"]), default="none", show_default=True)
@click.option("--fps", default=30, show_default=True, type=click.IntRange(min=1))
def play_cmd(
    run_dir: Path,
    episodes: int,
    epsilon: float | None,
    checkpoint: str,
    seed: int,
    record: bool,
    video_format: str,
    render: str,
    fps: int,
) -> None:
    """Play episodes with a trained agent (any chapter-9 experiment) and show the returns."""
    from rich.table import Table

    from fdlcli import config, registry
    from fdlcli.engine.loop import load_task
    from fdlcli.experiments._rl import RLTask, is_atari, is_minatar, play_episodes
    from fdlcli.extras import require
    from fdlcli.terminal import console

    if record and render == "human":
        raise UsageError("--record and --render human do not combine; choose one")
    no_display = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if render == "human" and no_display and sys.platform.startswith("linux"):
        raise UsageError("--render human needs a display (DISPLAY is not set); use --record instead")
    if record:
        require("imageio", "fdl play --record", "rl")
        if video_format == "mp4":
            require("imageio_ffmpeg", "fdl play --record (MP4)", "rl", package="imageio-ffmpeg")
    run = config.open_run(run_dir)
    task_class = registry.get(run.config.name).task
    if task_class is None or not issubclass(task_class, RLTask):
        raise UsageError(f"{run.config.name} is not a reinforcement-learning experiment")
    task, _ = load_task(task_class, run, checkpoint)  # the network with the checkpoint's weights
    trainer = run.config.trainer
    drawn_by_pygame = not (is_atari(trainer.env) or is_minatar(trainer.env))  # gymnasium's classic control
    if (record or render == "human") and drawn_by_pygame:
        require("pygame", f"fdl play --{'record' if record else 'render human'} of {trainer.env}", "rl")
    epsilon = trainer.eval_epsilon if epsilon is None else epsilon

    writer, video = None, None
    if record:
        video = run.artifacts_dir / f"play-{checkpoint}-seed{seed}-{episodes}ep.{video_format}"
        writer = _video_writer(video, fps)
    try:
        results = play_episodes(
            task.model, trainer, episodes, seed=seed, epsilon=epsilon, device=task.device,
            render_mode="rgb_array" if record else ("human" if render == "human" else None),
            on_frame=writer.append_data if writer is not None else None,
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()

    table = Table(title=f"{run.config.name}: {checkpoint} checkpoint, epsilon {epsilon:g}")
    for column in ("episode", "seed", "return", "length"):
        table.add_column(column, justify="right")
    for index, episode in enumerate(results):
        table.add_row(str(index + 1), str(seed + index), f"{episode.ret:g}", str(episode.length))
    mean_return = sum(e.ret for e in results) / len(results)
    mean_length = sum(e.length for e in results) / len(results)
    table.add_row("mean", "", f"{mean_return:.1f}", f"{mean_length:.1f}")
    console.print(table)
    if video is not None:
        console.print(f"video: {video}")


def _video_writer(path: Path, fps: int):
    import imageio.v2 as imageio  # there: play_cmd required it

    if path.suffix == ".gif":
        return imageio.get_writer(path, mode="I", duration=1000 / fps, loop=0)
    try:
        return imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=6)
    except (ImportError, RuntimeError, ValueError) as exc:
        raise FdlError(
            f"cannot write MP4 ({str(exc).splitlines()[0]}); use --format gif, or check the ffmpeg of "
            "imageio-ffmpeg"
        ) from None


@click.command("plot-returns")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="PNG path (default: next to the runs)."
)
@click.option("--window", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--title", default=None)
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["episodes", "steps", "minutes"]),
    default="episodes",
    show_default=True,
    help="The x axis: episodes, agent steps, or wall minutes since each run started.",
)
@click.option("--each", is_flag=True, help="Also draw every episode's return (faint dots) behind its mean.")
def plot_returns_cmd(
    paths: tuple[Path, ...], out: Path | None, window: int, title: str | None, x_axis: str, each: bool
) -> None:
    """Average training return of RL runs or sweeps (one curve per run; book figure 9-6), over the last
    --window episodes, against episodes, agent steps or wall minutes (different agents at equal time:
    `fdl plot-returns A3C_RUN DQN_RUN PG_RUN --x minutes`)."""
    from fdlcli import config, runs
    from fdlcli.analysis.curves import expand_run_dirs, run_labels
    from fdlcli.analysis.returns import Curve, describe, plot_curves, training_returns

    run_dirs = expand_run_dirs(paths)  # a sweep: its job directories, in job order
    run_configs = [config.load_saved(run_dir / runs.CONFIG_FILE) for run_dir in run_dirs]
    curves, threshold = [], None
    mixed = len({run_config.name for run_config in run_configs}) > 1  # then each label names its experiment
    for run_dir, run_config, label in zip(run_dirs, run_configs, run_labels(run_dirs), strict=True):
        x, returns = training_returns(run_dir, x_axis)
        if len(returns) == 0:
            raise UsageError(f"{run_dir} has no training returns (is it a reinforcement-learning run?)")
        explore = getattr(run_config.trainer, "explore", None)  # pg-cartpole's sweeps: the setting's name
        if explore is not None:
            label = f"{label} ({explore.name})" if mixed else explore.name
        curves.append(Curve(label, x, returns))
        threshold = getattr(run_config.trainer, "solve_return", None)
        if threshold is not None and threshold > 1e6:
            threshold = None
    if out is None:
        first = paths[0]
        out = (first if (first / "multirun.yaml").is_file() else first / "artifacts") / "returns.png"
    names = ", ".join(dict.fromkeys(run_config.name for run_config in run_configs))
    plot_curves(curves, out, window, threshold, title or f"{names}: training return", x_axis, each)
    for curve in curves:
        click.echo(describe(curve, window))
    click.echo(str(out))


COMMANDS = [play_cmd, plot_returns_cmd]
