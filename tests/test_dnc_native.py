"""Chapter 8: the DNC's native time step (fdlcli/models/dnc_native.py, dnc_memory.cpp) against the tensor
operations it replaces: values and gradients of the memory step and of the whole time step, token ids
for one-hot inputs, logits at the answer steps only, and how ``model.kernel`` chooses and fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fdlcli.errors import ConfigError
from fdlcli.models import dnc, dnc_native

B, N, W, R, H = 3, 10, 6, 2, 12


def simplex(g: torch.Generator, *shape: int) -> torch.Tensor:
    x = torch.rand(*shape, generator=g, dtype=torch.float64)
    return x / (2 * x.sum(dim=-1, keepdim=True))


def memory_state(seed: int) -> list[torch.Tensor]:
    """memory, usage, link (zero diagonal), precedence, read and write weights; float64. Usage holds a tie
    and a zero (the allocation's stable order and its EPS clamp)."""
    g = torch.Generator().manual_seed(seed)
    link = torch.rand(B, N, N, generator=g, dtype=torch.float64) / N
    link.diagonal(dim1=1, dim2=2).zero_()
    usage = torch.rand(B, N, generator=g, dtype=torch.float64)
    usage[:, 1] = usage[:, 4]
    usage[:, 7] = 0.0
    memory = torch.randn(B, N, W, generator=g, dtype=torch.float64)
    return [memory, usage, link, simplex(g, B, N), simplex(g, B, R, N), simplex(g, B, N)]


def torch_memory_step(face: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
    full = dnc.MemoryState(*state, torch.zeros(B, R, W, dtype=face.dtype))
    new, _ = dnc.memory_step(full, dnc.split_interface(face, W, R))
    return tuple(new)


def weighted_sum(outputs: tuple[torch.Tensor, ...], weights: list[torch.Tensor]) -> torch.Tensor:
    return sum(((o * w.to(o.dtype)).sum() for o, w in zip(outputs, weights, strict=True)), torch.zeros(()))


@pytest.mark.parametrize("seed", [0, 1])
def test_memory_step_matches_the_tensor_operations(seed: int) -> None:
    """MemoryStep (float32, C++) against autograd through split_interface + memory_step in float64: the
    seven outputs and the gradients of the interface and of the six state inputs."""
    g = torch.Generator().manual_seed(100 + seed)
    face = torch.randn(B, dnc.interface_size(W, R), generator=g, dtype=torch.float64)
    exact = [t.requires_grad_() for t in (face, *memory_state(seed))]
    native = [t.detach().float().requires_grad_() for t in exact]
    expected = torch_memory_step(*exact)
    got = dnc_native.MemoryStep.apply(*native)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double(), b.detach(), rtol=1e-4, atol=1e-5)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in expected]
    expected_grads = torch.autograd.grad(weighted_sum(expected, weights), exact)
    got_grads = torch.autograd.grad(weighted_sum(got, weights), native)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("clip", [20.0, 0.3, 0.0])
def test_sequence_matches_the_tensor_operation_step(clip: float) -> None:
    """The whole unrolled sequence by hand (dnc_native.Sequence: LSTM, clip, interface, memory, the weight
    gradients after the loop) against dnc.cell_step's loop: logits and every parameter's gradient;
    clip=0.3 makes the clip bite, 0 turns it off."""
    models = [small_dnc(kernel) for kernel in ("native", "torch")]
    for model in models:
        model.cfg.clip = clip
    inputs = torch.randn(B, 6, 9, generator=torch.Generator().manual_seed(4))
    weights = torch.randn(B, 6, 9, generator=torch.Generator().manual_seed(5))
    for model in models:
        logits, _ = model(inputs)
        (logits * weights).sum().backward()
    native, by_torch = models
    torch.testing.assert_close(native(inputs)[0], by_torch(inputs)[0], rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(native.named_parameters(), by_torch.parameters(), strict=True):
        assert a.grad is not None and float(a.grad.abs().max()) > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_evaluation_under_no_grad_keeps_two_rows_of_state() -> None:
    """Under torch.no_grad (fdl's evaluation) the weights still require grad, yet no backward will come:
    the sequence keeps two rows of state in turn, not one per time step (at the paper's memory, 100 test
    stories had kept 20 GB), and gives the logits training gives."""
    model = small_dnc("native")
    inputs = torch.randn(B, 6, 9, generator=torch.Generator().manual_seed(6))
    dnc_native._spare.clear()
    with torch.no_grad():
        evaluated, _ = model(inputs)
    assert [capacity for capacity, _ in dnc_native._spare.values()] == [2]
    trained, _ = model(inputs)
    trained.sum().backward()
    assert [capacity for capacity, _ in dnc_native._spare.values()] == [6 + 1]  # a row per step, and one
    torch.testing.assert_close(evaluated, trained.detach())


def test_training_memory_estimate_counts_what_a_sequence_keeps() -> None:
    """dnc_native.training_bytes (dnc-babi's memory warning) is the working tensors a training sequence
    keeps for its backward, plus the read vectors and controller outputs it returns."""
    model = small_dnc("native")
    dnc_native._spare.clear()
    model(torch.randn(B, 6, 9))[0].sum().backward()
    ((_, work),) = dnc_native._spare.values()
    kept = sum(t.numel() * t.element_size() for t in work)
    returned = 4 * ((6 + 1) * B * R * W + 6 * B * H)
    assert kept + returned == model.training_memory_bytes(6, B)


def small_dnc(kernel: str, controller: str = "lstm") -> dnc.DNC:
    torch.manual_seed(0)
    cfg = dnc.DNCConfig(
        controller=controller, hidden=H, memory_slots=N, word_size=W, read_heads=R, kernel=kernel
    )
    return dnc.DNC(input_size=9, output_size=9, cfg=cfg)


def test_token_ids_and_answer_logits_are_the_one_hot_model() -> None:
    """Token ids give the logits and gradients of their one-hot vectors (the input projection looked up),
    and ``at`` gives the logits of the masked steps, as the full logits indexed by the mask."""
    model = small_dnc("native")
    tokens = torch.randint(0, 9, (B, 7), generator=torch.Generator().manual_seed(1))
    at = torch.rand(B, 7, generator=torch.Generator().manual_seed(2)) < 0.3
    targets = tokens.roll(1, dims=1)
    grads = []
    for inputs, mask in ((torch.nn.functional.one_hot(tokens, 9).float(), None), (tokens, at)):
        model.zero_grad()
        logits, _ = model(inputs, at=mask)
        if mask is None:
            logits = logits[at]
        torch.nn.functional.cross_entropy(logits, targets[at]).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (one_hot_logits, one_hot_grads), (id_logits, id_grads) = grads
    torch.testing.assert_close(id_logits, one_hot_logits)
    for a, b in zip(id_grads, one_hot_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_auto_takes_the_native_step_where_it_applies() -> None:
    model = small_dnc("auto")
    inputs = torch.randn(2, 3, 9)
    assert model.native_applies(inputs, record=False)
    assert not model.native_applies(inputs, record=True)  # the plots' recording pass
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not model.native_applies(inputs, record=False)
        logits, _ = model(inputs)  # bf16 autocast: tensor operations
    assert torch.isfinite(logits.float()).all()
    assert not small_dnc("auto", controller="feedforward").native_applies(inputs, record=False)
    assert not small_dnc("torch").native_applies(inputs, record=False)


def test_native_where_it_cannot_apply_is_a_config_error() -> None:
    inputs = torch.randn(2, 3, 9)
    with pytest.raises(ConfigError, match=r"model\.kernel=native: it has an LSTM controller only"):
        small_dnc("native", controller="feedforward")(inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ConfigError, match="bf16 autocast"):
        small_dnc("native")(inputs)
    assert dnc.DNCConfig(kernel="fast").check() == "model.kernel='fast'; choose from: auto, native, torch"


@pytest.fixture
def fresh_build(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """library() forgotten and built again into an empty cache folder, then forgotten after the test."""
    monkeypatch.setenv("FDL_CACHE_DIR", str(tmp_path))
    dnc_native.library.cache_clear()
    yield
    dnc_native.library.cache_clear()


def test_without_a_compiler_auto_falls_back_and_native_says_why(fresh_build, monkeypatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    inputs = torch.randn(2, 3, 9)
    model = small_dnc("auto")
    assert not model.native_applies(inputs, record=False)
    logits, _ = model(inputs)  # tensor operations
    logits.sum().backward()
    with pytest.raises(ConfigError, match=r"model.kernel=native: /nonexistent/g\+\+ does not run"):
        small_dnc("native")(inputs)


def test_the_build_lands_whole_in_the_cache_folder(fresh_build, tmp_path) -> None:
    """One library file named by the source, compiler and CPU's hash, no temporary left over; a second
    process (here: a cleared cache) loads it without building again."""
    dnc_native.library(N, W, R)
    built = list((tmp_path / "native").iterdir())
    assert (
        len(built) == 1 and built[0].name.startswith(f"dnc_memory_{N}x{W}x{R}_") and built[0].suffix == ".so"
    )
    stamp = built[0].stat().st_mtime_ns
    dnc_native.library.cache_clear()
    dnc_native.library(N, W, R)
    assert [p.stat().st_mtime_ns for p in (tmp_path / "native").iterdir()] == [stamp]


def test_a_second_backward_says_why_it_cannot() -> None:
    """The kernel reuses its working tensors once the backward has run: retain_graph gets a clear error."""
    model = small_dnc("native")
    logits, _ = model(torch.randn(2, 4, 9))
    logits.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="no retain_graph"):
        logits.sum().backward()


def test_trainer_compile_takes_the_compiled_tensor_step() -> None:
    """trainer.compile=true (compile_step) asks for torch.compile: auto then runs the compiled tensor
    operations; native refuses with one line."""
    model = small_dnc("auto")
    model.compile_step()
    assert not model.native_applies(torch.randn(2, 3, 9), record=False)
    with pytest.raises(ConfigError, match=r"trainer\.compile=true compiles the tensor-operation step"):
        small_dnc("native").compile_step()
