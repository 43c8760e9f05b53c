"""Chapter 8: the Neural Turing Machine on the NTM paper's copy task (``ntm-copy``), and the plain LSTM
baseline on the same task (``lstm-copy``).

The task (Graves, Wayne and Danihelka 2014, section 4.1; ``conf/data/copy-ntm.yaml``): a sequence of 1-20
random 8-bit vectors (each minibatch draws its length), a delimiter, then the recall with no input. The
validation and test series spread evenly over lengths 1-20; the test also counts the bit errors per series
at lengths 10, 20, ..., 100 (``data.test_lengths``), the paper's generalization test. Training stops once
the validation bit errors per series fall below ``trainer.stop_bit_errors`` (0.1).

Both reuse ``dnc-copy``'s task (fdlcli/experiments/dnc.py, ``CopyTask``: minibatches from (seed, step), the
loss on the recall steps, the evaluation); only the model differs. The third model of the comparison, the
DNC, is ``dnc-copy`` itself on this data: ``fdl train dnc-copy data=copy-ntm ...`` (docs/chapter8.md).
The NTM paper's optimizer: RMSProp, lr 1e-4, momentum 0.9; gradients clipped (here by norm, at 10).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fdlcli.experiments.dnc import CopyDataConfig, CopyTask, CopyTrainerConfig
from fdlcli.models.ntm import NTM, NTMConfig
from fdlcli.models.sequence_lstm import SequenceLSTM, SequenceLSTMConfig
from fdlcli.registry import ExperimentSpec, register

FIGURE_LENGTH = 40  # the NTM paper's figure 6 shows the heads on a sequence of this length


class NTMCopyTask(CopyTask):
    model_class = NTM

    def plot_memory(self, artifacts: Path) -> None:
        self.draw_heads(artifacts / "heads.png")

    def draw_heads(self, path: Path, length: int = FIGURE_LENGTH) -> None:
        """The write and read weightings, add and read vectors on one test sequence of ``length`` vectors
        (the NTM paper's figure 6 shows length 40)."""
        from fdlcli.analysis.ntm_plots import plot_heads

        inputs, targets, _ = self.length_set(length)
        with torch.no_grad():
            logits, trace = self.model(inputs[:1].to(self.device), record=True)
        assert trace is not None
        plot_heads(
            inputs[0],
            targets[0],
            torch.sigmoid(logits[0]).cpu(),
            {k: v[0].cpu() for k, v in trace.items()},
            path,
        )


class LSTMCopyTask(CopyTask):
    model_class = SequenceLSTM
    # no trainer.compile: dynamo leaves nn.LSTM to its fused kernel (torch._dynamo.config.allow_rnn)
    supports = CopyTask.supports - {"compile"}

    def plot_memory(self, artifacts: Path) -> None:
        """No memory to show."""


def _spec(
    name: str, task: type[CopyTask], model_config: type, model_group: str, **fields: str
) -> ExperimentSpec:
    return register(
        ExperimentSpec(
            name=name,
            chapter=8,
            dataset="generated 8-bit sequences, lengths 1-20 (tested to 100)",
            model_config=model_config,
            model_group=model_group,
            data_config=CopyDataConfig,
            trainer_config=CopyTrainerConfig,
            task=task,
            **fields,
        )
    )


_spec(
    "ntm-copy",
    NTMCopyTask,
    NTMConfig,
    "ntm",
    book_result="the NTM paper: trained on lengths 1-20, few errors up to ~50, more at 120 (figures 4, 6)",
    description="NTM copy task, LSTM controller of 100, memory 128 x 20, one read and one write head",
)
_spec(
    "lstm-copy",
    LSTMCopyTask,
    SequenceLSTMConfig,
    "sequence-lstm",  # not "lstm": that is sentiment-lstm's model group
    book_result="the NTM paper: an LSTM learns lengths 1-20 slower and fails beyond them (figures 3, 5)",
    description="plain 3-layer LSTM on the NTM copy task, about the NTM's parameter count",
)
