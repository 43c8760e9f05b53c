"""Chapter 8: each vectorized DNC memory operation against its loop reference, the module's shapes and
gradients, the bAbI preprocessing on the mirror, and short dnc-copy / dnc-babi runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fdl, metric_records, read_summary, run_dirs

from fdlcli.models import dnc
from fdlcli.models import dnc_reference as ref

B, N, W, R = 2, 7, 5, 3


def simplex(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Random weightings that sum to at most 1 over the last dimension, as the DNC's do."""
    x = torch.rand(*shape, generator=generator)
    return x / (x.sum(dim=-1, keepdim=True) * (1 + torch.rand(*shape[:-1], 1, generator=generator)))


@pytest.fixture()
def g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_content_weighting(g: torch.Generator) -> None:
    memory, keys = torch.randn(B, N, W, generator=g), torch.randn(B, R, W, generator=g)
    strengths = 1 + 5 * torch.rand(B, R, generator=g)
    close(dnc.content_weighting(memory, keys, strengths), ref.content_weighting(memory, keys, strengths))


def test_retention_and_usage(g: torch.Generator) -> None:
    free, reads = torch.rand(B, R, generator=g), simplex(B, R, N, generator=g)
    psi = dnc.retention(free, reads)
    close(psi, ref.retention(free, reads))
    usage, writes = torch.rand(B, N, generator=g), simplex(B, N, generator=g)
    close(dnc.update_usage(usage, writes, psi), ref.update_usage(usage, writes, psi))


def test_allocation(g: torch.Generator) -> None:
    usage = torch.rand(B, N, generator=g)
    usage[0, 2] = 0.0  # a free slot takes (nearly) all the allocation
    close(dnc.allocation(usage), ref.allocation(usage))
    assert dnc.allocation(usage)[0].argmax() == 2
    assert bool((dnc.allocation(usage).sum(dim=1) <= 1 + 1e-6).all())


def test_write_path(g: torch.Generator) -> None:
    content, alloc = simplex(B, N, generator=g), simplex(B, N, generator=g)
    gw, ga = torch.rand(B, 1, generator=g), torch.rand(B, 1, generator=g)
    ww = dnc.write_weighting(content, alloc, gw, ga)
    close(ww, ref.write_weighting(content, alloc, gw, ga))
    memory, erase, values = (
        torch.randn(B, N, W, generator=g),
        torch.rand(B, W, generator=g),
        torch.randn(B, W),
    )
    close(dnc.write_memory(memory, ww, erase, values), ref.write_memory(memory, ww, erase, values))


def test_links_precedence_and_reads(g: torch.Generator) -> None:
    link, precedence = torch.rand(B, N, N, generator=g) / N, simplex(B, N, generator=g)
    ww = simplex(B, N, generator=g)
    new_link = dnc.update_links(link, precedence, ww)
    close(new_link, ref.update_links(link, precedence, ww))
    assert float(new_link.diagonal(dim1=1, dim2=2).abs().max()) == 0.0
    close(dnc.update_precedence(precedence, ww), ref.update_precedence(precedence, ww))
    reads = simplex(B, R, N, generator=g)
    for fast, slow in zip(
        dnc.directional_weights(new_link, reads), ref.directional_weights(new_link, reads), strict=True
    ):
        close(fast, slow)
    backward, forward = dnc.directional_weights(new_link, reads)
    content = simplex(B, R, N, generator=g)
    modes = torch.softmax(torch.randn(B, R, 3, generator=g), dim=2)
    close(
        dnc.read_weighting(modes, backward, content, forward),
        ref.read_weighting(modes, backward, content, forward),
    )


def test_links_follow_write_order() -> None:
    """Writing slots 0, 1, 2 in turn: forward from slot 0 reaches slot 1, backward from 2 reaches 1."""
    link, precedence = torch.zeros(1, 4, 4), torch.zeros(1, 4)
    for slot in range(3):
        ww = torch.nn.functional.one_hot(torch.tensor([slot]), 4).float()
        link = dnc.update_links(link, precedence, ww)
        precedence = dnc.update_precedence(precedence, ww)
    backward, forward = dnc.directional_weights(link, torch.tensor([[[1.0, 0, 0, 0]]]))
    assert forward.argmax().item() == 1
    backward, _ = dnc.directional_weights(link, torch.tensor([[[0, 0, 1.0, 0]]]))
    assert backward.argmax().item() == 1


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_module_shapes_and_gradients(controller: str) -> None:
    torch.manual_seed(0)
    cfg = dnc.DNCConfig(controller=controller, hidden=16, memory_slots=6, word_size=4, read_heads=2)
    model = dnc.DNC(input_size=5, output_size=3, cfg=cfg)
    logits, trace = model(torch.randn(4, 9, 5), record=True)
    assert logits.shape == (4, 9, 3)
    assert trace is not None and trace["write_weights"].shape == (4, 9, 6)
    assert trace["read_weights"].shape == (4, 9, 2, 6)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert float(model.interface.weight.grad.abs().sum()) > 0  # the memory path is differentiable


# ---- bAbI preprocessing on the mirror ----------------------------------------------------------------


def test_babi_preprocessing_follows_the_book(mirror):
    from fdlcli.data.babi import BabiDataConfig, load_babi, parse_stories

    lines = ["1 Mary moved to the bathroom.", "2 Where is Mary? \tbathroom\t1", "3 How do you go? \ts,e\t1 2"]
    (story,) = parse_stories(lines)
    expected = "mary moved to the bathroom . where is mary ? - how do you go ? - -"
    assert story.tokens == expected.split(" ")
    assert story.answers == ["bathroom", "s", "e"] and story.question == [0, 1, 1]

    cfg = BabiDataConfig(dir=str(mirror), tasks=[3, 19], train_limit=6, eval_limit=4, val_size=2)
    babi = load_babi(cfg)
    assert len(babi.lexicon) == 159  # the book's lexicon, '-' '.' '?' included
    assert babi.sources[19] == "en-10k"
    assert babi.sources[3].startswith("en (1k")  # task 3's 10k file is missing from the mirror
    assert len(babi.train) == 12 and len(babi.val) == 4 and len(babi.test) == 8
    tokens, targets, questions = babi.test.batch(torch.arange(len(babi.test)))
    dash = babi.lexicon.index("-")
    inside = torch.arange(tokens.shape[1]) < babi.test.lengths[:, None]  # padding comes after the story
    assert bool(((targets >= 0) == ((tokens == dash) & inside)).all())  # the loss sees just the '-' steps
    # path finding: two '-' per question, one question id for both
    path = babi.test.task == 19
    answers = questions[path][targets[path] >= 0]
    assert len(answers) == 2 * len(answers.unique())


def test_bad_task_selection_is_a_config_error():
    from fdlcli.data.babi import task_list
    from fdlcli.errors import ConfigError

    assert task_list([20, 1, 20]) == [1, 20]
    for bad in ([0], [21], []):
        with pytest.raises(ConfigError):
            task_list(bad)


# ---- the experiments, tiny --------------------------------------------------------------------------

TINY_COPY = [
    "trainer.steps=6",
    "trainer.eval_every=3",
    "trainer.log_every=1",
    "data.eval_size=20",
    "data.batch_size=4",
    "model.hidden=16",
    "trainer.threads=1",
]


def _train(experiment: str, overrides: list[str]) -> None:
    from fdlcli import launch

    launch.launch(experiment, overrides, multirun=False)


def test_dnc_copy_trains_resumes_exactly_and_draws_the_figure(env):
    from fdlcli import launch

    _train("dnc-copy", TINY_COPY)
    _train("dnc-copy", [*TINY_COPY[1:], "trainer.steps=3"])  # stands for a run stopped at step 3
    straight, cut = run_dirs(env, "dnc-copy")
    if (cut / "summary.json").exists() and read_summary(cut)["steps"] == 6:
        straight, cut = cut, straight
    launch.resume(cut, ["trainer.steps=6"])
    assert metric_records(straight) == metric_records(cut)  # same minibatches, same updates
    summary = read_summary(straight)
    assert summary["steps"] == 6 and 0 <= summary["final"]["test/error"] <= 1
    assert (straight / "artifacts" / "weightings.png").stat().st_size > 10_000


def test_dnc_babi_trains_and_eval_prints_the_task_table(env, capsys):
    from fdlcli import launch

    result = fdl(
        "train", "dnc-babi", "data.tasks=[1,20]", "data.train_limit=8", "data.eval_limit=3", "data.val_size=3",
        "data.batch_size=4", "model.hidden=16", "model.memory_slots=8", "model.word_size=8",
        "model.read_heads=2", "trainer.steps=2", "trainer.eval_every=1", "trainer.threads=1",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "dnc-babi")
    assert "files en-10k\n" in result.stdout  # tasks 1 and 20 have their 10k files in the mirror
    assert read_summary(run)["steps"] == 2
    metrics = launch.evaluate(run, "best", "test")  # what `fdl eval RUN` prints, in-process
    table = capsys.readouterr().err
    assert "DNC paper" in table and "1: single supporting fact" in table and "9.0" in table
    assert 0 <= metrics["test/error"] <= 1 and metrics["test/failed_tasks"] in (0.0, 1.0, 2.0)
    saved = json.loads((run / "eval-best-test.json").read_text())["metrics"]
    assert saved["test/error"] == metrics["test/error"] and "test/error_task20" in saved


@pytest.mark.parametrize(
    ("experiment", "override", "named"),
    [
        ("dnc-babi", "data.tasks=[0,21]", "data.tasks"),
        ("dnc-babi", "data.variant=fr", "data.variant"),
        ("dnc-copy", "trainer.steps=0", "trainer.steps"),
        ("dnc-copy", "model.controller=gru", "model.controller"),
    ],
)
def test_bad_dnc_values_are_config_errors(env, experiment, override, named):
    from fdlcli import launch
    from fdlcli.errors import ConfigError

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        launch.prevalidate(experiment, [override], multirun=False)  # before any run directory exists
