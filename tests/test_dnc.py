"""Chapter 8: each vectorized DNC memory operation against its loop reference, the module's shapes and
gradients, the bAbI preprocessing on the mirror, and short dnc-copy / dnc-babi runs."""

from __future__ import annotations

import pytest
import torch

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
