"""A plain stacked LSTM mapping a sequence to a sequence of logits: the memory-less baseline the NTM paper
compares its copy results with, with the memory models' interface (``forward(inputs, record)``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fdlcli.engine.devices import LSTM


@dataclass
class SequenceLSTMConfig:
    # 3 layers as the NTM paper's baseline; 54 units make ~62k parameters on the 8-bit copy task, about
    # the NTM's (LSTM controller of 100, memory 128 x 20) and the DNC's of the same sizes
    hidden: int = 54
    layers: int = 3

    def check(self) -> str | None:
        if self.hidden <= 0 or self.layers <= 0:
            return f"model.hidden={self.hidden} and model.layers={self.layers} must be positive"
        return None


class SequenceLSTM(nn.Module):
    """Input [B,T,in] -> logits [B,T,out], one output per input step."""

    def __init__(self, input_size: int, output_size: int, cfg: SequenceLSTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = LSTM(input_size, cfg.hidden, cfg.layers, batch_first=True)
        self.output = nn.Linear(cfg.hidden, output_size)

    def forward(self, inputs: torch.Tensor, record: bool = False) -> tuple[torch.Tensor, None]:
        states, _ = self.lstm(inputs)
        return self.output(states), None
