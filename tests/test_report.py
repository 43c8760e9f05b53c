"""`fdl report` (a run, a sweep, the book) rendered in a real headless Chromium, `fdl plot`'s seed bands, and
the TensorBoard HParams record of a completed run; on a real tiny MNIST run and a 2-seed sweep."""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from browser import Chromium, binary
from conftest import REPO, fdl, read_summary

TINY = ["data.train_limit=500", "data.eval_limit=500", "trainer.epochs=2"]
INJECTED = "<script>alert('x')</script> & <b>bold</b>"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mirror: Path, cache_dir: Path) -> dict:
    """A tiny run (with an fdl eval record, an fdl plot figure and a text artifact with markup in it)
    and a sweep of two seeds, each with its report, plus the book's report of the runs root."""
    root = tmp_path_factory.mktemp("report-runs")
    env = {
        **os.environ,
        "FDL_DATA_DIR": str(mirror),
        "FDL_RUNS_DIR": str(root),
        "FDL_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("FDL_DEBUG", None)
    result = fdl("train", "mlp-mnist", "-m", "seed=0,1", *TINY, env=env)  # a sweep: Hydra's multirun
    assert result.returncode == 0, result.stderr
    (sweep,) = (root / "mlp-mnist" / "sweeps").iterdir()
    # the rest in this process: no interpreter and torch start-up for each command
    with pytest.MonkeyPatch.context() as patch:
        for key in ("FDL_DATA_DIR", "FDL_RUNS_DIR", "FDL_CACHE_DIR"):
            patch.setenv(key, env[key])
        patch.delenv("FDL_DEBUG", raising=False)
        code, _, stderr = call_main("train", "mlp-mnist", *TINY)
        assert code == 0, stderr
        (run,) = (p for p in (root / "mlp-mnist").iterdir() if p.name != "sweeps")
        write_artifacts(run / "artifacts")
        for args in (
            ["eval", run, "--split", "test"],
            ["plot", run],
            ["report", run],
            ["report", sweep],
            ["report", "--book", root],
        ):
            code, _, stderr = call_main(*args)
            assert code == 0, (args, stderr)
    return {"root": root, "run": run, "sweep": sweep}


def write_artifacts(folder: Path) -> None:
    """What experiments leave besides PNGs: an animation (GIF), a video (MP4, as `fdl play --record`
    writes it) and a text file with markup in its name and content."""
    import imageio.v2 as imageio
    from PIL import Image

    folder.mkdir(exist_ok=True)
    frames = [np.full((64, 96, 3), (40 * i, 120, 255 - 40 * i), dtype=np.uint8) for i in range(6)]
    gif = [Image.fromarray(f) for f in frames]
    gif[0].save(folder / "frames.gif", save_all=True, append_images=gif[1:], duration=100)
    imageio.mimwrite(folder / "clip.mp4", frames, fps=10, macro_block_size=16)
    (folder / "notes <b>.txt").write_text("\n".join([INJECTED] + [f"line {i}" for i in range(200)]))


def call_main(*args: object) -> tuple[int, str, str]:
    """The real `fdl` entry point, in this process."""
    from fdlcli.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def page_of(folder: Path) -> str:
    return (folder / "report" / "index.html").read_text()


def assert_self_contained(text: str, folder: Path) -> None:
    """Nothing from the network, no script, and every file the page names is beside it."""
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text)
    assert "<script" not in text
    for url in re.findall(r'(?:src|href)="([^"#][^"]*)"', text):
        assert (folder / urllib.parse.unquote(html.unescape(url))).is_file(), url


# --------------------------------------------------------------------------------------------------
# What the reports hold


def test_run_report_shows_config_metrics_evals_curves_and_artifacts(runs):
    run = runs["run"]
    text = page_of(run)
    summary = read_summary(run)
    assert_self_contained(text, run / "report")
    # the overridden lines of the resolved config are highlighted, the others are not
    assert '<span class="ov">  train_limit: 500</span>' in text
    assert '<span class="ov">  epochs: 2</span>' in text
    assert '<span class="ov">  batch_size' not in text and "  batch_size: 100" in text
    # metrics: final and best side by side, the monitored one marked, with the book's result
    test_accuracy = f"{summary['final']['test/accuracy']:.4g}"
    assert "<tr class=mark><td>val/accuracy</td>" in text
    assert re.search(rf"<td>test/accuracy</td><td class=\"num\">{re.escape(test_accuracy)}</td>", text)
    assert "98.2% test accuracy" in text
    # the fdl eval record, the curves drawn here, and the artifacts copied beside the page
    assert "eval-best-test.json" in text
    assets = run / "report" / "assets"
    for name in ("curve-train-cost.png", "curve-val-accuracy.png", "plot-train-cost.png"):
        assert (assets / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert '<img src="assets/frames.gif"' in text
    assert '<video controls preload="metadata" src="assets/clip.mp4">' in text
    # text artifacts are shown capped and escaped, never as markup
    assert (
        "<script>alert" not in text
        and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in text
    )
    assert "notes &lt;b&gt;.txt" in text and "line 58" in text and "line 150" not in text


def test_sweep_report_compares_jobs_and_averages_seeds(runs):
    sweep = runs["sweep"]
    text = page_of(sweep)
    assert_self_contained(text, sweep / "report")
    # the compare table: one row per job, only the differing config key (seed) as a column
    header = re.search(r"<thead><tr>(.*?)</tr></thead>", text).group(1)
    assert "<th>seed</th>" in header and "train_limit" not in header
    for job in ("0", "1"):
        accuracy = read_summary(sweep / job)["final"]["test/accuracy"]
        assert re.search(rf"<tr><td>{job}</td>.*?<td class=\"num\">{accuracy:.4g}</td>", text)
    assert "Over seeds" in text and "0 1" in text  # both seeds in one configuration
    assert "mean ± 1 std over seeds" in text
    assert (sweep / "report" / "assets" / "curve-val-accuracy.png").is_file()


def test_book_report_sets_the_best_run_beside_the_book(runs):
    from fdlcli import registry

    text = (runs["root"] / "report" / "index.html").read_text()
    assert_self_contained(text, runs["root"] / "report")
    specs = registry.specs()
    assert text.count('<span class="badge not-run">not run</span>') == 2 * (len(specs) - 1)  # overview + card
    # mlp-mnist's best run by val/accuracy among the plain run and the two sweep jobs
    candidates = [runs["run"], runs["sweep"] / "0", runs["sweep"] / "1"]
    top = max(read_summary(r)["best"]["value"] for r in candidates)
    best = [r for r in candidates if read_summary(r)["best"]["value"] == top]  # seed 0 twice: ties
    assert any(f"{r.relative_to(runs['root'])}</span> (best of 3 completed runs)" in text for r in best)
    assert "98.2% test accuracy (300 epochs)" in text
    for spec in specs:
        assert f'id="{spec.name}"' in text
        assert f"Chapter {spec.chapter}" in text


# --------------------------------------------------------------------------------------------------
# In a real browser


def chromium_or_skip() -> str:
    found = binary()
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + ": CI must render the reports")
        pytest.skip(message)
    try:
        import websocket  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("websocket-client is not installed (a dev dependency)")
        pytest.skip("websocket-client is not installed")
    return found


def test_reports_render_in_headless_chromium(runs, tmp_path):
    executable = chromium_or_skip()
    # a page that must fail the check: a missing image, a console error and an uncaught exception
    broken = tmp_path / "broken.html"
    broken.write_text('<img src="nope.png"><script>console.error("boom"); throw new Error("bad")</script>')
    pages = {
        "run": runs["run"] / "report" / "index.html",
        "sweep": runs["sweep"] / "report" / "index.html",
        "book": runs["root"] / "report" / "index.html",
    }
    with Chromium(executable) as browser:
        control = browser.load(broken.as_uri())
        assert control.images[0]["width"] == 0 and len(control.errors) == 3, control.errors
        for name, page in pages.items():
            result = browser.load(page.as_uri())
            assert result.errors == [], (name, result.errors)
            assert result.images, name
            not_loaded = [i["src"] for i in result.images if not (i["complete"] and i["width"] > 0)]
            assert not_loaded == [], (name, not_loaded)
            not_playable = [v for v in result.videos if v["error"] is not None or v["width"] == 0]
            assert not_playable == [], (name, not_playable)
            assert result.title.startswith(("mlp-mnist", "fdl: the book")), result.title
            if name == "run":
                assert [v["src"] for v in result.videos] == ["assets/clip.mp4"]


# --------------------------------------------------------------------------------------------------
# Bad input, and an existing folder


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "name a run or sweep directory"),
        (["{missing}"], 1, "no such run or sweep directory"),
        (["{tmp}"], 1, "neither an fdl run nor a sweep"),
        (["{run}", "{run}"], 2, "name its folder with -o"),
        (["{run}", "--book", "{tmp}"], 2, "not both"),
        (["--book", "{missing}"], 1, "no such runs directory"),
        (["{run}", "--band", "x"], 2, "Invalid value for '--band'"),
    ],
)
def test_report_bad_input_is_one_line(runs, tmp_path, args, code, message):
    names = {"missing": tmp_path / "nope", "tmp": tmp_path, "run": runs["run"]}
    got, _, stderr = call_main("report", *(a.format(**names) for a in args))
    assert got == code and message in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) <= 3  # one line (Click adds its usage line to usage errors)


def test_report_replaces_only_an_earlier_report(runs, tmp_path):
    mine = tmp_path / "someone-elses"
    mine.mkdir()
    (mine / "keep.txt").write_text("precious")
    code, _, stderr = call_main("report", runs["run"], "-o", mine)
    assert code == 1 and "is not an fdl report" in stderr
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    out = tmp_path / "rep"
    for _ in range(2):  # the second run replaces the first report whole
        code, stdout, stderr = call_main("report", runs["run"], runs["sweep"], "-o", out)
        assert code == 0, stderr
        assert f"wrote {out / 'index.html'}" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep", "someone-elses"]  # no staging left
    assert "3 runs" in (out / "index.html").read_text()


# --------------------------------------------------------------------------------------------------
# Seed bands


def test_seed_bands_are_the_std_and_a_bootstrap_interval_of_the_mean():
    from fdlcli.analysis.curves import aggregate

    seeds = [[(1, 1.0), (2, 0.5), (3, 0.2)], [(1, 3.0), (2, 1.5), (3, 0.4)], [(1, 2.0), (2, 1.0)]]
    points, band = aggregate(seeds, "std")
    assert [s for s, _ in points] == [1, 2]  # the steps every seed logged
    assert points[0][1] == pytest.approx(2.0) and band[0] == pytest.approx((1.0, 3.0))  # std 1 (n-1)
    points, band = aggregate(seeds, "ci")
    values = np.array([[1.0, 3.0, 2.0], [0.5, 1.5, 1.0]])
    for (_, mean), (low, high), column in zip(points, band, values, strict=True):
        assert column.min() <= low < mean < high <= column.max()
    assert aggregate(seeds, "ci") == (points, band)  # a fixed bootstrap seed: the same figure each time


def test_labels_leave_out_shared_and_bookkeeping_overrides():
    from fdlcli.analysis.curves import distinct_overrides

    runs = [
        ["optim=adam", "trainer.threads=2", "trainer.keep_checkpoints=30", "trainer.checkpoint_every=9"],
        ["optim=sgd", "trainer.threads=2", "trainer.keep_checkpoints=100", "+trainer.log_every=5"],
    ]
    assert distinct_overrides(runs) == [["optim=adam"], ["optim=sgd"]]


def test_a_resumed_run_is_labelled_by_the_overrides_it_ran_with():
    """A run resumed twice saves every resume's overrides; it ran with the last value of each key, and that
    is what labels and comparisons show (a label of all of them once squeezed a figure off its page)."""
    from fdlcli.analysis.rundata import effective_overrides

    saved = ["trainer.threads=1", "trainer.steps=10000", "trainer.steps=30000", "+x=1", "trainer.steps=40000"]
    assert effective_overrides(saved) == ["trainer.threads=1", "trainer.steps=40000", "+x=1"]
    assert effective_overrides(["optim=adam", "~optim.lr", "optim.lr=0.1"]) == ["optim=adam", "optim.lr=0.1"]


def test_plot_groups_the_seeds_of_a_sweep(runs, tmp_path):
    sweep = runs["sweep"]
    code, stdout, stderr = call_main("plot", sweep, "--metric", "val/cost", "--out", tmp_path / "a.png")
    assert code == 0, stderr
    costs = [[r["value"] for r in map(json.loads, (sweep / j / "metrics.jsonl").read_text().splitlines())
              if r["name"] == "val/cost"] for j in ("0", "1")]  # fmt: skip
    mean, std = np.mean([c[-1] for c in costs]), np.std([c[-1] for c in costs], ddof=1)
    (line,) = [row for row in stdout.splitlines() if "(2 seeds)" in row]
    assert f"last {mean:.4g} [{mean - std:.4g}, {mean + std:.4g}]" in line
    code, stdout, _ = call_main(
        "plot", sweep, "--no-group-seeds", "--band", "ci", "--out", tmp_path / "b.png"
    )
    assert code == 0 and "seeds)" not in stdout and stdout.count(" points, last ") == 2


# --------------------------------------------------------------------------------------------------
# TensorBoard HParams


def test_a_completed_run_records_its_hparams_for_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run = runs["run"]
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    assert set(content) == {
        "_hparams_/experiment",
        "_hparams_/session_start_info",
        "_hparams_/session_end_info",
    }
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    params = {k: v.number_value if v.HasField("number_value") else v.string_value
              for k, v in start.session_start_info.hparams.items()}  # fmt: skip
    assert params == {
        "experiment": "mlp-mnist",
        "data.train_limit": 500,
        "data.eval_limit": 500,
        "trainer.epochs": 2,
    }
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    tags = {m.name.tag for m in experiment.metric_infos}
    summary = read_summary(run)
    assert {"final/test/accuracy", "best/test/accuracy", "best/val/accuracy"} <= tags
    (scalar,) = events.Scalars("final/test/accuracy")
    assert (
        scalar.value == pytest.approx(summary["final"]["test/accuracy"]) and scalar.step == summary["steps"]
    )
