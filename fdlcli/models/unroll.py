"""The time loop of a memory network that steps one time step at a time (the NTM; the DNC runs a loop of
its own, with the controller's input projections batched over time before it): ``initial_state(batch,
device)`` and ``time_step(x, state, hidden) -> (logits, state, hidden, trace)`` are the model's, the
unrolling and the stacking of outputs and traces are here."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Stepwise(Protocol):
    def initial_state(self, batch: int, device: torch.device) -> Any: ...

    def time_step(
        self, x: torch.Tensor, state: Any, hidden: Any
    ) -> tuple[torch.Tensor, Any, Any, dict[str, torch.Tensor]]: ...


def unroll(
    model: Stepwise, inputs: torch.Tensor, record: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Input [B,T,in] -> (logits [B,T,out], with ``record`` the trace of every step stacked on dim 1)."""
    state = model.initial_state(inputs.shape[0], inputs.device)
    hidden = None
    outputs, traces = [], []
    # unbind, not inputs[:, t]: the backward of indexing zeroes a whole [B,T,in] gradient at every step
    for x_t in inputs.unbind(dim=1):
        logits, state, hidden, trace = model.time_step(x_t, state, hidden)
        outputs.append(logits)
        if record:
            traces.append({k: v.detach() for k, v in trace.items()})
    logits = torch.stack(outputs, dim=1)
    if not record:
        return logits, None
    return logits, {k: torch.stack([tr[k] for tr in traces], dim=1) for k in traces[0]}
