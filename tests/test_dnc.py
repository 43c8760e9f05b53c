"""Chapter 8: each vectorized DNC memory operation against its loop reference, the module's shapes and
gradients, the bAbI preprocessing on the mirror, and short dnc-copy / dnc-babi runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import benchmark_module, fdl, fdl_call, metric_records, read_summary, run_dirs
from safetensors.torch import load_file

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


def test_allocation_forms_break_ties_by_slot_and_have_the_same_gradient(g: torch.Generator) -> None:
    """The eager form (stable sort + cumprod) and the compiled one (pairwise order + sum of logs) against
    the loop reference, ties included, and against each other's gradient in double precision."""
    usage = torch.rand(B, N, generator=g)
    usage[0] = 0.0  # a fresh memory: every slot tied, the first one is allocated
    usage[1, 4] = usage[1, 5] = usage[1, 1]  # three tied slots, taken in slot order
    expected = ref.allocation(usage)
    clamped = dnc.EPS + (1 - dnc.EPS) * usage
    close(dnc.allocation(usage), expected)
    close(dnc.allocation_sorted(clamped), expected)
    close(dnc.allocation_pairwise(clamped), expected)
    assert dnc.allocation(usage)[0].argmax() == 0
    usage = torch.rand(4, 16, generator=g, dtype=torch.float64).requires_grad_()
    weights = torch.randn(4, 16, generator=g, dtype=torch.float64)
    (pairwise,) = torch.autograd.grad((dnc.allocation_pairwise(usage) * weights).sum(), usage)
    (sort,) = torch.autograd.grad((dnc.allocation_sorted(usage) * weights).sum(), usage)
    torch.testing.assert_close(pairwise, sort, rtol=1e-10, atol=1e-12)


def test_compiled_allocation_and_retention_equal_eager(g: torch.Generator) -> None:
    """The compile-only forms (pairwise allocation, running-product retention) under torch.compile."""
    usage, free, reads = (
        torch.rand(B, N, generator=g),
        torch.rand(B, R, generator=g),
        simplex(B, R, N, generator=g),
    )
    usage[0] = 0.0
    step = torch.compile(
        lambda u, f, r: (dnc.allocation(u), dnc.retention(f, r)), fullgraph=True, dynamic=False
    )
    alloc, psi = step(usage, free, reads)
    close(alloc, ref.allocation(usage))
    close(psi, ref.retention(free, reads))


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


def link_step_inputs(g: torch.Generator, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    link = torch.rand(B, N, N, generator=g) / N
    link.diagonal(dim1=1, dim2=2).zero_()  # as every link matrix the DNC builds
    inputs = [link, simplex(B, N, generator=g), simplex(B, N, generator=g), simplex(B, R, N, generator=g)]
    return [x.to(dtype).requires_grad_() for x in inputs]


def test_link_step_gradcheck(g: torch.Generator) -> None:
    """The hand-written backward of the link update and the directional read weightings, in float64."""
    assert torch.autograd.gradcheck(dnc.LinkStep.apply, link_step_inputs(g, torch.float64))


def test_link_step_matches_loop_reference_and_autograd(g: torch.Generator) -> None:
    """LinkStep's values against the loop reference (which has no gradient: its loops read floats), its
    gradients against autograd through the same operations."""
    inputs = link_step_inputs(g)
    fast = dnc.LinkStep.apply(*inputs)
    link, precedence, ww, reads = inputs
    new = ref.update_links(link.detach(), precedence.detach(), ww.detach())
    for a, b in zip(fast, (new, *ref.directional_weights(new, reads.detach())), strict=True):
        close(a, b)
    new = dnc.update_links(link, precedence, ww)
    slow = (new, *dnc.directional_weights(new, reads))
    seeds = [torch.randn(x.shape, generator=g) for x in fast]
    grads = zip(
        torch.autograd.grad(fast, inputs, seeds), torch.autograd.grad(slow, inputs, seeds), strict=True
    )
    for a, b in grads:
        close(a, b)


def test_link_step_under_bf16_autocast(g: torch.Generator) -> None:
    """Under autocast the read-outs come back bf16 and the links float: the backward takes both (each
    gradient in its input's dtype) and agrees with autograd's within bf16 precision."""
    inputs = link_step_inputs(g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = dnc.LinkStep.apply(*inputs)
        new = dnc.update_links(*inputs[:3])
        slow = (new, *dnc.directional_weights(new, inputs[3]))
    seeds = [torch.randn(x.shape, generator=g) for x in fast]
    grads = zip(
        torch.autograd.grad(fast, inputs, seeds), torch.autograd.grad(slow, inputs, seeds), strict=True
    )
    for x, (a, b) in zip(inputs, grads, strict=True):
        assert a.dtype == x.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_link_step_compiles_under_bf16_autocast(g: torch.Generator) -> None:
    """torch.compile traces LinkStep's backward under the forward's autocast (eager runs it outside): it
    must keep float batched products there (it failed with "Input dtypes must be the same" in dnc-copy and
    dnc-babi with trainer.precision=bf16 trainer.compile=true) and give eager's gradients."""

    def step(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return dnc.LinkStep.apply(*inputs)

    inputs = link_step_inputs(g)
    seeds = [torch.randn(x.shape, generator=g) for x in step(*inputs)]
    eager = torch.autograd.grad(step(*inputs), inputs, seeds)
    compiled = torch.autograd.grad(torch.compile(step, backend="aot_eager")(*inputs), inputs, seeds)
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_step_serves_every_story_length_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """One compiled graph per kind of step (the first, whose state needs no gradient; the rest; no_grad for
    evaluation), not one per story length or per state dtype: dnc-babi with trainer.precision=bf16
    trainer.compile=true hit dynamo's recompile limit (a hard failure under fullgraph) on the GPU check.
    Dynamo's eager backend: the guards are dynamo's, no code is generated."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    model = dnc.DNC(5, 3, dnc.DNCConfig(hidden=8, memory_slots=6, word_size=4, read_heads=2))
    model.compile_step()
    with torch._dynamo.config.patch(recompile_limit=4):
        for length in (3, 5, 8, 13, 21):
            inputs = torch.randn(2, length, 5)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits, _ = model(inputs)
            logits.float().sum().backward()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                model(inputs)
    torch._dynamo.reset()


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


def reference_cell():
    """benchmarks/dnc_reference_cell.py: the DNC module before issue 20 (one LSTMCell call, interface and
    output layer per time step), which the faster module must compute the same function as."""
    return benchmark_module("dnc_reference_cell")


def reference_pair(controller: str, clip: float, kernel: str) -> tuple[dnc.DNC, torch.nn.Module]:
    """fdl's DNC and the reference cell's with the same parameters (the same state dict: old checkpoints
    load)."""
    old = reference_cell()
    torch.manual_seed(0)
    cfg = dnc.DNCConfig(
        controller=controller, hidden=12, memory_slots=6, word_size=4, read_heads=2, clip=clip, kernel=kernel
    )
    fast = dnc.DNC(input_size=5, output_size=3, cfg=cfg)
    slow = old.DNC(5, 3, old.DNCConfig(**{k: v for k, v in vars(cfg).items() if k != "kernel"}))
    slow.load_state_dict(fast.state_dict())
    return fast, slow


@pytest.mark.parametrize(
    ("controller", "clip", "kernel"),
    [("lstm", 20.0, "torch"), ("lstm", 0.05, "torch"), ("feedforward", 0.0, "torch"), ("lstm", 20.0, "native"),
     ("lstm", 0.05, "native")],
)  # fmt: skip
def test_batched_cell_equals_the_reference_cell(controller: str, clip: float, kernel: str) -> None:
    """The same parameters give the same logits, traces and gradients as the per-step reference: the
    input projection and output layer batched over time, the weight gradients summed after the loop
    (TimeSummedWeightGrad), the sort-free allocation, the link update in place; clip=0.05 makes the
    clipping bite. With model.kernel=native the training pass is the C++ time step (the recording pass
    stays tensor operations)."""
    fast, slow = reference_pair(controller, clip, kernel)
    inputs = torch.randn(3, 8, 5)
    (fast_trace_logits, fast_trace), (slow_logits, slow_trace) = (
        fast(inputs, record=True),
        slow(inputs, record=True),
    )
    close(fast_trace_logits, slow_logits)
    assert fast_trace is not None and slow_trace is not None and fast_trace.keys() == slow_trace.keys()
    for name in fast_trace:
        close(fast_trace[name], slow_trace[name])
    fast_logits, _ = fast(inputs)
    close(fast_logits, slow_logits)
    weights = torch.randn(3, 8, 3)  # a different gradient at every time step
    (fast_logits * weights).sum().backward()
    (slow_logits * weights).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None and float(p.grad.abs().max()) > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation: no gradient bookkeeping, the same logits
        close(fast(inputs)[0], slow_logits.detach())


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


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    name = json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def _assert_same_run(run: Path, reference: Path) -> None:
    """Metrics (minus wall-clock times), summary figures and final weights all equal."""
    assert metric_records(run) == metric_records(reference)
    for key in ("steps", "final", "best", "history"):
        assert read_summary(run)[key] == read_summary(reference)[key], key
    weights, expected = _final_weights(run), _final_weights(reference)
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)


# 24 steps, a periodic checkpoint every 2: a stop lands mid-run, between evaluations and logging windows
RESUMABLE_COPY = [*TINY_COPY[2:], "trainer.steps=24", "trainer.eval_every=8", "trainer.checkpoint_every=2"]


def test_dnc_copy_trains_resumes_exactly_and_draws_the_figure(env):
    from fdlcli import launch

    _train("dnc-copy", RESUMABLE_COPY)
    (reference,) = run_dirs(env, "dnc-copy")
    summary = read_summary(reference)
    assert summary["steps"] == 24 and 0 <= summary["final"]["test/error"] <= 1
    assert (reference / "artifacts" / "weightings.png").stat().st_size > 10_000

    # a shorter run (ending where the long one evaluates), extended by `fdl train --resume RUN trainer.steps=24`
    _train("dnc-copy", [*RESUMABLE_COPY, "trainer.steps=8"])
    (shorter,) = [r for r in run_dirs(env, "dnc-copy") if r != reference]
    launch.resume(shorter, ["trainer.steps=24"])
    _assert_same_run(shorter, reference)

    # a run stopped by SIGTERM mid-way (it checkpoints and exits 130), then resumed
    process = subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", "dnc-copy", *RESUMABLE_COPY],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stopped = _wait_for_checkpoint(env, process, exclude={reference, shorter}, min_step=4)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "resume with: fdl train --resume" in stderr and "Traceback" not in stderr
    assert json.loads((stopped / "meta.json").read_text())["status"] == "interrupted"
    assert json.loads((stopped / "checkpoints" / "latest.json").read_text())["step"] < 24
    resumed = fdl("train", "--resume", str(stopped), env=env)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_run(stopped, reference)


def _wait_for_checkpoint(env, process: subprocess.Popen, exclude: set[Path], min_step: int) -> Path:
    """The new run's directory once its latest checkpoint has reached ``min_step``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for run in run_dirs(env, "dnc-copy"):
            pointer = run / "checkpoints" / "latest.json"
            if (
                run not in exclude
                and pointer.exists()
                and json.loads(pointer.read_text())["step"] >= min_step
            ):
                return run
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.01)
    raise AssertionError("the run never reached its checkpoint")


def test_dnc_babi_trains_and_eval_prints_the_task_table(env, capsys, monkeypatch):
    # both commands in this process (as the copy task trains above): no interpreter and torch start each.
    # With 1 MB available, what the longest stories' minibatch keeps for its backward does not fit: the
    # run says so before it trains (and trains: an estimate is no reason to refuse)
    from fdlcli.experiments import dnc as dnc_experiment

    monkeypatch.setattr(dnc_experiment, "available_memory", lambda: 2**20)
    code, out, err = fdl_call(
        ["train", "dnc-babi", "data.tasks=[1,20]", "data.train_limit=8", "data.eval_limit=3", "data.val_size=3",
         "data.batch_size=4", "model.hidden=16", "model.memory_slots=8", "model.word_size=8",
         "model.read_heads=2", "trainer.steps=2", "trainer.eval_every=1", "trainer.threads=1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    (run,) = run_dirs(env, "dnc-babi")
    assert "files en-10k\n" in out  # tasks 1 and 20 have their 10k files in the mirror
    assert out.count("may be killed for memory") == 1
    assert read_summary(run)["steps"] == 2
    code, out, err = fdl_call(["eval", str(run), "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)  # stdout is the JSON alone; the per-task table goes to stderr
    assert "DNC paper" in err and "1: single supporting fact" in err and "9.0" in err
    assert 0 <= metrics["test/error"] <= 1 and metrics["test/failed_tasks"] in (0.0, 1.0, 2.0)
    assert not any("error_task" in name for name in metrics)  # the table shows those
    saved = json.loads((run / "eval-best-test.json").read_text())["metrics"]
    assert saved["test/error"] == metrics["test/error"] and "test/error_task20" in saved


@pytest.mark.parametrize(
    ("experiment", "override", "named"),
    [
        ("dnc-babi", "data.tasks=[0,21]", "data.tasks"),
        ("dnc-babi", "data.variant=fr", "data.variant"),
        ("dnc-copy", "trainer.steps=0", "trainer.steps"),
        ("dnc-copy", "model.controller=gru", "model.controller"),
        ("dnc-copy", "trainer.epochs=3", "trainer.epochs"),  # it trains in steps
        ("dnc-copy", "data.train_limit=5", "data.train_limit"),  # generated data: nothing to limit
        ("dnc-babi", "trainer.devices=2", "trainer.devices"),  # no data parallelism
    ],
)
def test_bad_dnc_values_are_config_errors(env, experiment, override, named):
    from fdlcli import launch
    from fdlcli.errors import ConfigError

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        launch.prevalidate(experiment, [override], multirun=False)  # before any run directory exists
