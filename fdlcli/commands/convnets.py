"""Chapter 5 figure command ``fdl conv-figures RUN``: first-layer filters and a t-SNE of the last hidden
layer. (Curves of several runs against minibatches are ``fdl plot``'s job.)"""

from __future__ import annotations

from pathlib import Path

import click

CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


@click.command("conv-figures")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
@click.option("--points", default=2000, show_default=True, help="Test images in the t-SNE (a seeded sample).")
@click.option("--perplexity", default=30.0, show_default=True, help="t-SNE perplexity.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sample and of t-SNE.")
def conv_figures(run_dir: Path, checkpoint: str, points: int, perplexity: float, seed: int) -> None:
    """First-layer filters (filters.png) and a t-SNE of the last hidden layer on test images, coloured by
    class (tsne.png), of a convolutional run; written into the run's artifacts/."""
    import torch

    from fdlcli import config
    from fdlcli.analysis import convnets
    from fdlcli.engine.checkpoint import CheckpointManager
    from fdlcli.errors import UsageError
    from fdlcli.experiments.cnn import CNNConfig, ImageClassification

    if points < 2:
        raise UsageError(f"--points {points}: a t-SNE needs at least 2 points")
    run = config.open_run(run_dir)
    run_config = run.config
    if not isinstance(run_config.model, CNNConfig):
        raise UsageError(f"{run.path} is a {run_config.name} run, not a convolutional one (cnn-*)")
    task = ImageClassification(run_config)
    model = task.build_model()
    checkpoints = CheckpointManager(run.checkpoint_dir, run_config.name)
    ref = checkpoints.resolve(checkpoint)
    checkpoints.load_weights(model, ref)
    title = f"{run_config.name} ({ref.name})"

    filters = run.artifacts_dir / "filters.png"
    convnets.save_filter_grid(model, filters, title)

    images, labels = task.load_data().test
    # a seeded sample: the CIFAR-10 mirror's test split is sorted by class, so its head is one class
    chosen = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:points]
    features = convnets.hidden_features(model, images[chosen])
    embedded = convnets.tsne(features, seed, perplexity)
    names = CLASS_NAMES.get(run_config.data.name, [str(i) for i in range(10)])
    tsne_path = run.artifacts_dir / "tsne.png"
    convnets.save_tsne(
        embedded,
        labels[chosen].numpy(),
        names,
        tsne_path,
        f"{title}: t-SNE of the last hidden layer, {len(chosen)} test images",
    )
    click.echo(f"wrote {filters}\nwrote {tsne_path}")


COMMANDS = [conv_figures]
