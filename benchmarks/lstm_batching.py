"""fdl's sentiment-lstm minibatches against naive fixed-length padded batches, in one process.

Both train the same model (same initial weights, Adam lr 1e-3, batch 32) for the same number of steps on
real IMDB reviews (cut to 500 tokens):
- fdl: the training order of ``SentimentClassification.epoch_order`` (groups of ``data.bucket`` batches
  sorted by length, batches shuffled) and each batch cut to its longest review (``model.sequence=cut``);
- naive: plain random batches, every one run over all 500 positions (``model.sequence=full``), the last
  real output gathered afterwards (what a fixed-shape padded TF 1.x graph computes).
It prints the seconds per step of each, the share of LSTM steps spent on padding, and ends with
``ratio <naive seconds / fdl seconds>``.

    FDL_DATA_DIR=../shared/data python benchmarks/lstm_batching.py [--steps 30] [--book]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from fdlcli import config as fdl_config
from fdlcli.engine.seed import epoch_generator
from fdlcli.experiments.sentiment import SentimentClassification


def timed_steps(task: SentimentClassification, model: torch.nn.Module, order: torch.Tensor, steps: int):  # type: ignore[no-untyped-def]
    """(seconds per step after one warm-up step, share of the LSTM's positions that were padding)."""
    x, y = task.load_data().train
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    real = padded = 0
    started = 0.0
    for step in range(steps + 1):
        if step == 1:
            started = time.perf_counter()
        index = order[step * 32 : (step + 1) * 32]
        batch = x[index]
        lengths = (batch != 0).sum(dim=1)
        width = batch.shape[1] if model.sequence == "full" else int(lengths.max())
        real, padded = real + int(lengths.sum()), padded + width * len(batch)
        loss = task.loss(model, (batch, y[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps, 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--book", action="store_true", help="the book's 512/512 model (slow on a CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = ["model=lstm-book"] if args.book else []
    run_config = fdl_config.validate(fdl_config.compose("sentiment-lstm", overrides))
    task = SentimentClassification(run_config)
    torch.manual_seed(0)
    fdl_model = task.build_model()
    naive_model = copy.deepcopy(fdl_model)
    naive_model.sequence = "full"
    n = len(task.load_data().train[1])
    generator = epoch_generator(0, 0)
    fdl_order = task.epoch_order(torch.randperm(n, generator=generator), 32, generator)
    naive_order = torch.randperm(n, generator=epoch_generator(0, 0))

    m = run_config.model
    print(
        f"IMDB, {n:,} training reviews, embed {m.embed}, LSTM {m.hidden}, batch 32, {args.steps} steps; "
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}"
    )
    fdl_s, fdl_pad = timed_steps(task, fdl_model, fdl_order, args.steps)
    print(f"fdl    (bucketed, cut to the longest)  {fdl_s:.3f} s/step  padding {fdl_pad:.1%} of LSTM steps")
    naive_s, naive_pad = timed_steps(task, naive_model, naive_order, args.steps)
    print(
        f"naive  (random, padded to 500)         {naive_s:.3f} s/step  padding {naive_pad:.1%} of LSTM steps"
    )
    print(f"ratio {naive_s / fdl_s:.2f}")


if __name__ == "__main__":
    main()
