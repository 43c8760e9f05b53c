"""Chapter 8: each vectorized NTM addressing step against its loop reference, the module's shapes and
gradients, and short ntm-copy / lstm-copy runs (exact resume, the early stop, the per-length test)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fdl_call, read_summary, run_dirs
from test_dnc import _assert_same_run, _train

from fdlcli.models import dnc_reference, ntm
from fdlcli.models import ntm_reference as ref

B, H, N, W = 2, 3, 7, 5


@pytest.fixture()
def g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def weighting(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.softmax(3 * torch.randn(*shape, generator=generator), dim=-1)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_interpolation(g: torch.Generator) -> None:
    content, previous = weighting(B, H, N, generator=g), weighting(B, H, N, generator=g)
    gate = torch.rand(B, H, generator=g)
    close(ntm.interpolate(content, previous, gate), ref.interpolate(content, previous, gate))


@pytest.mark.parametrize("k", [0, 1, 2])
def test_shift(g: torch.Generator, k: int) -> None:
    weights, shifts = weighting(B, H, N, generator=g), weighting(B, H, 2 * k + 1, generator=g)
    close(ntm.shift(weights, shifts), ref.shift(weights, shifts))


def test_shift_rotates_the_focus_with_wraparound() -> None:
    last = torch.nn.functional.one_hot(torch.tensor([[N - 1]]), N).float()  # focus on the last slot
    forward = torch.tensor([[[0.0, 0.0, 1.0]]])  # all weight on shift +1
    backward = torch.tensor([[[1.0, 0.0, 0.0]]])
    assert ntm.shift(last, forward).argmax().item() == 0  # past the end: back to slot 0
    assert ntm.shift(last, backward).argmax().item() == N - 2


def test_sharpening(g: torch.Generator) -> None:
    weights, gamma = weighting(B, H, N, generator=g), 1 + 4 * torch.rand(B, H, generator=g)
    sharp = ntm.sharpen(weights, gamma)
    close(sharp, ref.sharpen(weights, gamma))
    close(sharp.sum(dim=2), torch.ones(B, H))
    assert bool((sharp.max(dim=2).values >= weights.max(dim=2).values - 1e-6).all())  # never blurrier


def test_addressing_composes_the_four_steps(g: torch.Generator) -> None:
    memory, key = torch.randn(B, N, W, generator=g), torch.randn(B, H, W, generator=g)
    strength, gate = 5 * torch.rand(B, H, generator=g), torch.rand(B, H, generator=g)
    previous, shifts = weighting(B, H, N, generator=g), weighting(B, H, 3, generator=g)
    gamma = 1 + torch.rand(B, H, generator=g)
    content = dnc_reference.content_weighting(memory, key, strength)
    expected = ref.sharpen(ref.shift(ref.interpolate(content, previous, gate), shifts), gamma)
    close(ntm.address(memory, previous, key, strength, gate, shifts, gamma), expected)


@pytest.mark.parametrize("heads", [1, 2])
def test_write_and_read(g: torch.Generator, heads: int) -> None:
    memory, weights = torch.randn(B, N, W, generator=g), weighting(B, heads, N, generator=g)
    erase, add = torch.rand(B, heads, W, generator=g), torch.randn(B, heads, W, generator=g)
    written = ntm.write(memory, weights, erase, add)
    close(written, ref.write(memory, weights, erase, add))
    close(ntm.read(written, weights), ref.read(written, weights))


@pytest.mark.parametrize("controller", ["lstm", "feedforward"])
def test_module_shapes_and_gradients(controller: str) -> None:
    torch.manual_seed(0)
    cfg = ntm.NTMConfig(
        controller=controller, hidden=16, memory_slots=6, word_size=4, read_heads=2, write_heads=2
    )
    model = ntm.NTM(input_size=5, output_size=3, cfg=cfg)
    logits, trace = model(torch.randn(4, 9, 5), record=True)
    assert logits.shape == (4, 9, 3)
    assert trace is not None and trace["write_weights"].shape == (4, 9, 2, 6)
    assert trace["read_weights"].shape == (4, 9, 2, 6) and trace["reads"].shape == (4, 9, 2, 4)
    close(trace["read_weights"].sum(dim=3), torch.ones(4, 9, 2))
    logits.sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads.values())
    assert float(grads["heads.weight"].abs().sum()) > 0  # the memory path is differentiable
    assert float(grads["initial_weight_logits"].abs().sum()) > 0  # the learned initial weightings too


# ---- the experiments, tiny --------------------------------------------------------------------------

TINY = [
    "trainer.log_every=1", "data.eval_size=8", "data.batch_size=2", "data.length=4", "data.test_lengths=[6]",
    "data.length_eval_size=3", "trainer.threads=1", "trainer.steps=8", "trainer.eval_every=4",
]  # fmt: skip
TINY_NTM = [*TINY, "model.hidden=8", "model.memory_slots=8", "model.word_size=4"]


def test_ntm_copy_trains_resumes_exactly_and_tests_longer_lengths(env, capsys):
    from fdlcli import launch

    _train("ntm-copy", TINY_NTM)
    (reference,) = run_dirs(env, "ntm-copy")
    final = read_summary(reference)["final"]
    assert read_summary(reference)["steps"] == 8
    assert 0 <= final["test/bit_errors"] <= 4 * 8 and 0 <= final["test/bit_errors_len6"] <= 6 * 8
    assert (reference / "artifacts" / "heads.png").stat().st_size > 10_000

    # a shorter run (ending where the long one evaluates), extended by `fdl train --resume` to 8 steps
    _train("ntm-copy", [*TINY_NTM, "trainer.steps=4"])
    (shorter,) = [r for r in run_dirs(env, "ntm-copy") if r != reference]
    launch.resume(shorter, ["trainer.steps=8"])
    _assert_same_run(shorter, reference)

    code, out, err = fdl_call(["eval", str(reference), "--json"], capsys)  # the per-length table on stderr
    assert code == 0, err
    assert "bit errors per series by length" in err and "bit_errors_len6" not in out
    saved = json.loads((reference / "eval-best-test.json").read_text())["metrics"]
    assert saved["test/bit_errors"] == json.loads(out)["test/bit_errors"] and "test/bit_errors_len6" in saved


def test_training_stops_once_the_bit_errors_are_below_the_target(env):
    _train("lstm-copy", [*TINY, "model.hidden=8", "model.layers=1", "trainer.stop_bit_errors=1000"])
    (run,) = run_dirs(env, "lstm-copy")
    summary = read_summary(run)
    assert summary["steps"] == 4 and summary["status"] == "completed"  # the first validation ended it
    assert summary["final"]["test/bit_errors"] >= 0


@pytest.mark.parametrize(
    ("experiment", "override", "named"),
    [
        ("ntm-copy", "data.min_length=30", "data.min_length"),
        ("ntm-copy", "trainer.stop_bit_errors=-1", "trainer.stop_bit_errors"),
        ("ntm-copy", "model.shift_range=-1", "model.shift_range"),
        ("ntm-copy", "data.test_lengths=[0]", "data.test_lengths"),
        ("lstm-copy", "model.layers=0", "model.layers"),
    ],
)
def test_bad_ntm_values_are_config_errors(experiment, override, named):
    from fdlcli import launch
    from fdlcli.errors import ConfigError

    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        launch.prevalidate(experiment, [override], multirun=False)
