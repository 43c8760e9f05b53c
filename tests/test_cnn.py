"""Chapter 5: CNNs, batched augmentation, the seeded validation carve, figures, neural style."""

from __future__ import annotations

import pytest
import torch
from conftest import fdl, fdl_call, fdl_in_process, metric_records, read_summary, run_dirs

from fdlcli.config import DataConfig
from fdlcli.data import tensors
from fdlcli.experiments import cnn, style

# ---- batched augmentation (tiny synthetic tensors: shapes and arithmetic only) ----------------------


def test_random_crop_takes_each_images_own_window():
    torch.manual_seed(0)
    x = torch.arange(5 * 3 * 8 * 8, dtype=torch.float32).view(5, 3, 8, 8)
    torch.manual_seed(1)
    crops = cnn.random_crop(x, 5)
    torch.manual_seed(1)  # the same draws, replayed by hand
    top, left = torch.randint(0, 4, (5,)), torch.randint(0, 4, (5,))
    for i in range(5):
        assert torch.equal(crops[i], x[i, :, top[i] : top[i] + 5, left[i] : left[i] + 5])
    assert len({(int(t), int(lft)) for t, lft in zip(top, left, strict=True)}) > 1  # not one shared window


def test_augment_then_whiten_and_eval_preprocessing():
    images = torch.randint(0, 256, (64, 32, 32, 3), dtype=torch.uint8)
    cfg = cnn.ImageDataConfig(crop=24, flip=True, brightness=63 / 255, contrast=[0.2, 1.8], whiten=True)
    out = cnn.augment(images, cfg)
    assert out.shape == (64, 3, 24, 24)
    flat = out.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(64), atol=1e-4)
    assert torch.allclose(flat.std(1, correction=0), torch.ones(64), atol=1e-3)
    evaluated = cnn.preprocess_eval(images, cfg)
    centre = cnn.whiten(images.permute(0, 3, 1, 2).float()[:, :, 4:28, 4:28] / 255)
    assert torch.allclose(evaluated, centre, atol=1e-5)
    assert torch.equal(cnn.preprocess_eval(images, cfg), evaluated)  # no randomness at test time


def test_shift_translates_each_digit_by_at_most_shift_pixels():
    images = torch.zeros(256, 28, 28, dtype=torch.uint8)
    images[:, 10:18, 12:16] = 200  # a blob well inside the 4-pixel empty border, as MNIST digits are
    cfg = cnn.ImageDataConfig(shift=2)
    torch.manual_seed(0)
    out = cnn.augment(images, cfg)
    assert out.shape == (256, 1, 28, 28)
    ink = cnn.to_float(images).sum(dim=(1, 2, 3))
    assert torch.allclose(out.sum(dim=(1, 2, 3)), ink)  # moved, never cut
    rows = out[:, 0].amax(dim=2).nonzero()  # (image, row) pairs holding ink
    first_row = torch.full((256,), 99).scatter_reduce(0, rows[:, 0], rows[:, 1], "amin")
    assert set(first_row.tolist()) == {8, 9, 10, 11, 12}  # every offset in [-2, 2] occurs, and no other
    assert torch.equal(cnn.preprocess_eval(images, cfg), cnn.to_float(images))  # evaluation never moves


def test_flip_and_contrast_follow_tf_semantics():
    x = torch.rand(2, 3, 4, 4)
    cfg = cnn.ImageDataConfig(contrast=[2.0, 2.0])  # a fixed factor: (x - channel mean) * 2 + mean
    out = cnn.augment((x * 255).round().byte().permute(0, 2, 3, 1), cfg)
    base = (x * 255).round() / 255
    mean = base.mean(dim=(2, 3), keepdim=True)
    assert torch.allclose(out, (base - mean) * 2 + mean, atol=1e-6)
    torch.manual_seed(3)
    flipped = cnn.augment(
        torch.arange(16, dtype=torch.uint8).view(1, 4, 4).repeat(8, 1, 1), cnn.ImageDataConfig(flip=True)
    )
    rows = flipped[:, 0, 0] * 255
    assert {tuple(r.round().int().tolist()) for r in rows} == {(0, 1, 2, 3), (3, 2, 1, 0)}


# ---- the seeded validation carve for class-sorted sources --------------------------------------------


def test_shuffled_carve_is_class_balanced_deterministic_and_disjoint(monkeypatch):
    # a source sorted by class, like the CIFAR-10 mirror: 10 classes x 100 rows, row id in the image
    labels = torch.arange(10).repeat_interleave(100)
    images = torch.arange(1000)

    monkeypatch.setattr(tensors, "_classification_split", lambda cfg, split: (images.clone(), labels.clone()))
    cfg = DataConfig(val_size=200)
    head = tensors.image_classification_arrays(cfg)
    assert set(head.val[1].tolist()) == {0, 1}  # the trap: the head of a sorted source is two classes
    first = tensors.image_classification_arrays(cfg, shuffle_seed=0)
    again = tensors.image_classification_arrays(cfg, shuffle_seed=0)
    assert torch.equal(first.val[0], again.val[0]) and torch.equal(first.train[0], again.train[0])
    counts = torch.bincount(first.val[1], minlength=10)
    assert counts.min() >= 10 and counts.max() <= 30, counts  # every class, roughly 20 each
    assert not set(first.val[0].tolist()) & set(first.train[0].tolist())
    assert len(first.val[0]) + len(first.train[0]) == 1000
    assert set(first.test[1][:100].tolist()) == set(range(10))  # eval_limit slices hold every class


# ---- real-data runs through the command line -------------------------------------------------------


def test_cnn_cifar10_resume_is_exact_with_augmentation(golden_run, env):
    """Augmentation draws from the RNG a checkpoint carries: 1 epoch + resume == the 2-epoch golden run
    (256 images in minibatches of 64: 4 steps an epoch)."""
    golden = golden_run("cnn-cifar10")
    first = fdl("train", "cnn-cifar10", *golden.without("trainer.epochs"), "trainer.epochs=1", env=env)
    assert first.returncode == 0, first.stderr
    (split,) = run_dirs(env, "cnn-cifar10")
    resumed = fdl("train", "--resume", str(split), "trainer.epochs=2", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_records(split) == metric_records(golden.run)
    summary = read_summary(split)
    assert summary["steps"] == 8
    # the resume's override is the run's config from now on (written once the checkpoint restored)
    assert "epochs: 2" in (split / "config.yaml").read_text()
    assert "trainer.epochs=2" in (split / "overrides.yaml").read_text()


def test_cnn_mnist_trains_and_draws_its_figures(env, capsys):
    result = fdl(
        "train",
        "cnn-mnist",
        "data.train_limit=2000",
        "data.eval_limit=500",
        "trainer.epochs=1",
        "optim.schedule=constant",  # the default cosine would spend half of these 20 steps near lr 0
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "cnn-mnist")
    assert (
        read_summary(run)["final"]["test/accuracy"] >= 0.80
    )  # 20 Adam steps of the book's CNN, shifted digits
    # the figures read the finished run: in this process, without a new interpreter and torch import each
    code, _, err = fdl_call(["conv-figures", str(run), "--points", "60"], capsys)
    assert code == 0, err
    code, _, err = fdl_call(["plot", str(run), "--metric", "train/cost"], capsys)
    assert code == 0, err
    for name in ("filters.png", "tsne.png", "plot-train-cost.png"):
        assert (run / "artifacts" / name).stat().st_size > 1000
    code, err = fdl_in_process(["plot", str(run), "--metric", "nope"], capsys)
    assert code != 0 and "no run logged metric 'nope'" in err


# ---- neural style -------------------------------------------------------------------------------------


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    paths = {}
    for name, shape in (("content.png", (20, 24, 3)), ("style.jpg", (30, 30, 3))):
        pixels = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / name)
        paths[name.split(".")[0]] = str(tmp_path / name)
    return paths


def _torchvision_layout(seed: int) -> dict[str, torch.Tensor]:
    """A full VGG-19 state dict as torchvision names it (features + classifier), random values."""
    model = style.VGG19Features(["relu5_4"], "max")  # the whole feature stack
    torch.manual_seed(seed)
    state = {f"features.{k}": torch.randn_like(v) * 0.01 for k, v in model.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    return state


def test_vgg_weights_load_from_safetensors_and_pth_and_refuse_the_rest(tmp_path):
    from safetensors.torch import save_file

    from fdlcli.errors import CheckpointError

    state = _torchvision_layout(1)
    save_file(state, str(tmp_path / "vgg.safetensors"))
    torch.save(state, tmp_path / "vgg.pth")
    for file in ("vgg.safetensors", "vgg.pth"):
        model = style.VGG19Features(["relu1_1", "relu4_2"], "max")
        style.load_vgg_weights(model, str(tmp_path / file))
        assert torch.equal(model.features[21].weight, state["features.21.weight"])  # conv4_2
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pth")  # a pickled module, not tensors
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    for bad, message in (("pickled.pth", "weights_only=True"), ("foreign.pth", "not a torchvision VGG-19")):
        with pytest.raises(CheckpointError, match=message):
            style.load_vgg_weights(style.VGG19Features(["relu1_1"], "max"), str(tmp_path / bad))


def test_neural_style_random_weights_on_tiny_images(env, images):
    args = [f"content={images['content']}", f"style={images['style']}", "model.size=24"]
    missing = fdl("train", "neural-style", *args, env=env)
    assert missing.returncode == 2 and "weights=FILE" in missing.stderr
    assert run_dirs(env, "neural-style") == []  # refused before any run directory exists
    result = fdl(
        "train",
        "neural-style",
        *args,
        "weights=random",
        "model.iterations=6",
        "model.snapshot_every=3",
        "trainer.log_every=1",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "neural-style")
    assert {p.name for p in (run / "artifacts").iterdir()} == {"iter-00003.png", "stylized.png"}
    summary = read_summary(run)
    losses = [r["value"] for r in metric_records(run) if r["name"] == "loss/total"]
    assert summary["steps"] == 6 and losses[-1] < losses[0]  # Adam on the pixels lowers the loss


def test_mlp_shift_moves_each_training_digit_and_keeps_its_ink():
    from fdlcli import config
    from fdlcli.experiments.mlp import MNISTClassification

    task = MNISTClassification(config.validate(config.compose("mlp-mnist", ["data.shift=2"])))
    images = torch.zeros(64, 28 * 28)
    images.view(64, 28, 28)[:, 10:18, 12:16] = 0.8  # a blob inside MNIST's empty border
    seen: list[torch.Tensor] = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return torch.zeros(len(x), 10, requires_grad=True)

    torch.manual_seed(0)
    task.loss(model, (images, torch.zeros(64, dtype=torch.long)))
    (shifted,) = seen
    assert shifted.shape == images.shape and torch.allclose(shifted.sum(1), images.sum(1))  # moved, not cut
    assert (shifted != images).any(dim=1).sum() > 32  # most digits moved, each by its own offset
