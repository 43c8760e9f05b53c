"""cnn-cifar10-fast (airbench94 on fdl's engine): whitening init, augmentation, TTA, exact resume after SIGTERM.

Everything runs on small slices of the real CIFAR-10 mirror, with narrow conv groups so that it stays fast.
"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from conftest import metric_records, read_summary, run_dirs

from fdlcli import config
from fdlcli.data import image_classification_arrays
from fdlcli.errors import ConfigError
from fdlcli.experiments import cifar_fast
from fdlcli.experiments.cifar_fast import FastCIFARTask

NAME = "cnn-cifar10-fast"
# 4 minibatches per epoch, 2.5 epochs: 10 steps, lookahead updates at steps 5 and 10, the whitening bias
# frozen from epoch 1 on
SMALL = [
    "data.train_limit=256", "data.batch_size=64", "data.eval_limit=100", "trainer.epochs=2.5", "model.tta=1",
    "trainer.whiten_bias_epochs=1", "model.widths=[16,32,32]", "model.whiten_images=256",
    "trainer.log_every=3", "trainer.device=cpu", "trainer.threads=1", "seed=4",
]  # fmt: skip


def small_task(*overrides: str) -> FastCIFARTask:
    task = FastCIFARTask(config.validate(config.compose(NAME, [*SMALL, *overrides])))
    torch.manual_seed(0)
    task.setup()
    return task


def train_images(n: int) -> torch.Tensor:
    cfg = cifar_fast.FastDataConfig(train_limit=n)
    return image_classification_arrays(cfg, shuffle_seed=cfg.val_shuffle_seed).train[0]


def test_whitening_conv_whitens_the_patches_of_real_images(env):
    images = cifar_fast.normalize(train_images(400))
    conv = torch.nn.Conv2d(3, 24, 2)
    cifar_fast.whiten_init(conv, images, eps=1e-9)
    with torch.no_grad():
        out = conv(images).double()
    assert torch.equal(conv.weight[12:], -conv.weight[:12])  # each filter and its negative
    positive = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    second_moment = positive.T @ positive / len(positive)  # uncentered, as the covariance it whitens
    assert torch.allclose(second_moment, torch.eye(12, dtype=torch.float64), atol=2e-3), second_moment
    raw = cifar_fast.patches(images).double()
    assert (raw.T @ raw / len(raw)).diagonal().max() > 0.5  # the raw patches were far from white


def test_translate_moves_each_image_by_its_own_offset():
    x = torch.rand(3, 3, 8, 8)
    shifts = torch.tensor([[2, 2], [3, 2], [2, 0]])  # pixels=2: none, one row, two columns
    out = cifar_fast.translate(x, shifts, 2)
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1, :, :-1], x[1, :, 1:])  # window one row lower: the image moved up
    assert torch.equal(out[2, :, :, 2:], x[2, :, :, :-2])  # two columns left of centre: moved right
    assert torch.equal(out[2, :, :, :2], x[2, :, :, 1:3].flip(2))  # the border is reflected


def test_flips_alternate_and_augmentation_is_a_function_of_seed_and_epoch(env):
    task = small_task()
    assert torch.equal(task.base_flips, cifar_fast.base_flips(256, 4))
    assert 0.35 < task.base_flips.float().mean() < 0.65  # a random half flips on even epochs
    plans = []
    for epoch in (0, 1, 0):
        steps = task.start_epoch(epoch)
        plans.append((steps, task.order.clone(), task.flips.clone(), task.shifts.clone()))
    assert plans[0][0] == plans[1][0] == 4
    assert all(torch.equal(a, b) for a, b in zip(plans[0][1:], plans[2][1:], strict=True))  # replayable
    assert torch.all(plans[0][2] ^ plans[1][2])  # every image flips on alternate epochs
    assert not torch.equal(plans[0][1], plans[1][1]) and not torch.equal(plans[0][3], plans[1][3])
    assert set(plans[0][3].flatten().tolist()) == {0, 1, 2, 3, 4}  # offsets -2..2
    assert task.start_epoch(2) == 2  # the half epoch of 2.5
    assert not task.model.whiten.bias.requires_grad  # frozen after trainer.whiten_bias_epochs=1
    images = task.data.train[0][:6]
    flips = torch.tensor([True, False, True, False, True, False])
    shifts = torch.full((6, 2), 2)
    out = cifar_fast.augment(images, flips, shifts, 2)
    plain = cifar_fast.normalize(images)
    assert torch.equal(out[flips], plain[flips].flip(3)) and torch.equal(out[~flips], plain[~flips])


def test_tta_is_the_mean_of_its_views(env):
    task = small_task()
    model = task.model.eval()
    x = cifar_fast.normalize(task.data.test[0][:16])
    with torch.no_grad():
        views = [model(x), model(x.flip(3))]
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        for moved in (padded[:, :, :32, :32], padded[:, :, 2:, 2:]):
            views += [model(moved), model(moved.flip(3))]
        expected1 = (views[0] + views[1]) / 2
        expected2 = expected1 / 2 + sum(views[2:]) / 8
        assert torch.equal(cifar_fast.tta_logits(model, x, 0), views[0])
        assert torch.allclose(cifar_fast.tta_logits(model, x, 1), expected1, atol=1e-6)
        assert torch.allclose(cifar_fast.tta_logits(model, x, 2), expected2, atol=1e-6)


def test_training_on_all_images_evaluates_on_test_and_needs_no_monitor(env):
    with pytest.raises(ConfigError, match=r"trainer\.monitor=null"):
        config.validate(config.compose(NAME, [*SMALL, "data.val_size=0"]))
    task = small_task("data.val_size=0", "trainer.monitor=null")
    metrics = task.evaluate("val")
    assert set(metrics) == {"test/cost", "test/accuracy", "test/error"}
    assert metrics == {f"test/{k}": v for k, v in task.evaluate("test").items()}


def _invoke(*argv: str) -> int:
    from fdlcli.cli import main

    try:
        main(list(argv))
    except SystemExit as exited:
        return int(exited.code or 0)
    return 0


def test_sigterm_then_resume_equals_the_uninterrupted_run(env, monkeypatch):
    """Stopped by SIGTERM at step 6 (mid-epoch, after a lookahead update, with the whitening bias frozen),
    resumed: the same metric records and final weights as one uninterrupted run."""
    assert _invoke("train", NAME, *SMALL) == 0
    (reference,) = run_dirs(env, NAME)
    original = FastCIFARTask.train_step

    def train_step(self, step, index):  # type: ignore[no-untyped-def]
        out = original(self, step, index)
        if step + 1 == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` would: the loop stops after this step
        return out

    monkeypatch.setattr(FastCIFARTask, "train_step", train_step)
    assert _invoke("train", NAME, *SMALL) == 130
    (stopped,) = [r for r in run_dirs(env, NAME) if r != reference]
    assert json.loads((stopped / "checkpoints" / "latest.json").read_text())["step"] == 6
    monkeypatch.setattr(FastCIFARTask, "train_step", original)
    assert _invoke("train", "--resume", str(stopped)) == 0
    assert metric_records(stopped) == metric_records(reference)
    assert read_summary(stopped)["final"] == read_summary(reference)["final"]
    assert read_summary(stopped)["steps"] == 10
