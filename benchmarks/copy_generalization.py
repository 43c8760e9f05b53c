"""The copy-task comparison of chapter 8: NTM, DNC and a plain LSTM on the NTM paper's copy task, tested on
lengths beyond training.

    python benchmarks/copy_generalization.py RUN_NTM RUN_DNC RUN_LSTM [--checkpoint best]
        [--lengths 10 20 ... 100] [--figures docs/figures]

RUN_NTM is an ``ntm-copy`` run, RUN_LSTM an ``lstm-copy`` run and RUN_DNC a ``dnc-copy data=copy-ntm`` run
(docs/chapter8.md gives the three commands). Each checkpoint is evaluated on the same fixed test sequences
(``data.length_eval_size`` per length, seeded by the run's seed and the length) and the script writes:

- ``copy_generalization.png``: bit errors per sequence against the sequence length for the three models;
- ``ntm_copy_heads.png``: the NTM's write and read weightings on a length-40 sequence (the NTM paper's
  figure 6);
- on stdout, a markdown table of the bit errors per length, then what the DNC's allocation and freeing do
  on a length-40 sequence: the mean allocation gate while the sequence is written and the mean free gate
  while it is read back, and the bit errors with the allocation gate forced to 0 (content-based writes
  only) and with the free gates forced to 0 (nothing freed), against the trained DNC.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fdlcli import config, registry
from fdlcli.analysis.ntm_plots import plot_bit_errors
from fdlcli.engine.loop import load_task
from fdlcli.experiments.dnc import CopyTask
from fdlcli.experiments.ntm import FIGURE_LENGTH, NTMCopyTask
from fdlcli.models.dnc import DNC

EXPECTED = {"NTM": "ntm-copy", "DNC": "dnc-copy", "LSTM": "lstm-copy"}


def copy_task(path: str, experiment: str, checkpoint: str) -> CopyTask:
    run = config.open_run(path, experiment)
    if not run.config.data.min_length:
        raise SystemExit(f"{run.path} trained on fixed-length series, not the NTM copy task (data=copy-ntm)")
    task, _ = load_task(registry.get(experiment).task, run, checkpoint)
    assert isinstance(task, CopyTask)
    return task


def bit_errors(task: CopyTask, length: int) -> float:
    with torch.no_grad():
        return float(task.wrong_bits(task.length_set(length))[0].mean())


@contextmanager
def forced_gates(model: DNC, gate: str) -> Iterator[None]:
    """Force the DNC's allocation gate or free gates to 0, through the pre-sigmoid interface outputs
    (their order: fdlcli/models/dnc.py, split_interface)."""
    w, r = model.cfg.word_size, model.cfg.read_heads
    free = r * w + r + w + 1 + 2 * w  # after read keys and strengths, write key and strength, erase, write
    columns = {"free": slice(free, free + r), "alloc": slice(free + r, free + r + 1)}[gate]

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[:, columns] = -1e4  # sigmoid -> 0
        return output

    handle = model.interface.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def dnc_memory_use(task: CopyTask, length: int) -> None:
    model = task.model
    inputs, _, _ = task.length_set(length)
    with torch.no_grad():
        _, trace = model(inputs.to(task.device), record=True)
    assert trace is not None
    writing, reading = slice(0, length), slice(length + 1, 2 * length + 1)
    alloc = float(trace["alloc_gate"][:, writing].mean())
    free = float(trace["free_gates"][:, reading].mean())
    usage = float(trace["usage"][:, -1].sum(dim=1).mean())
    print(f"\nDNC memory use on length-{length} test sequences ({model.cfg.memory_slots} slots):")
    print(f"- allocation gate while writing (mean): {alloc:.3f}; free gate while reading (mean): {free:.3f}")
    print(f"- total usage after the recall (mean, slots): {usage:.2f}")
    trained = bit_errors(task, length)
    print("\n| DNC variant | bit errors per sequence |\n|---|---|")
    print(f"| trained | {trained:.3f} |")
    for gate, label in (("alloc", "allocation gate forced to 0"), ("free", "free gates forced to 0")):
        with forced_gates(model, gate):
            print(f"| {label} | {bit_errors(task, length):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for label in EXPECTED:
        parser.add_argument(f"run_{label.lower()}", metavar=f"RUN_{label}")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(range(10, 101, 10)))
    parser.add_argument("--figures", type=Path, default=Path("docs/figures"))
    args = parser.parse_args()
    tasks = {
        label: copy_task(getattr(args, f"run_{label.lower()}"), experiment, args.checkpoint)
        for label, experiment in EXPECTED.items()
    }
    curves = {}
    for label, task in tasks.items():
        params = sum(p.numel() for p in task.model.parameters())
        curves[f"{label} ({params:,} parameters)"] = [(n, bit_errors(task, n)) for n in args.lengths]
    trained = max(task.data.length for task in tasks.values())
    args.figures.mkdir(parents=True, exist_ok=True)
    plot_bit_errors(curves, args.figures / "copy_generalization.png", trained_up_to=trained)
    ntm = tasks["NTM"]
    assert isinstance(ntm, NTMCopyTask)
    ntm.draw_heads(args.figures / "ntm_copy_heads.png", FIGURE_LENGTH)

    print("| length | " + " | ".join(curves) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for i, n in enumerate(args.lengths):
        print(f"| {n} | " + " | ".join(f"{points[i][1]:.2f}" for points in curves.values()) + " |")
    dnc_memory_use(tasks["DNC"], FIGURE_LENGTH)
    print(f"\nfigures: {args.figures / 'copy_generalization.png'}, {args.figures / 'ntm_copy_heads.png'}")


if __name__ == "__main__":
    main()
