"""t-SNE map of word embeddings (chapter 6's skip-gram figure)."""

from __future__ import annotations

from pathlib import Path

import torch


def tsne_plot(vectors: torch.Tensor, words: list[str], path: Path, seed: int = 0) -> None:
    """2-D t-SNE of the (cosine-normalized) vectors, each point labelled with its word. The perplexity is
    30 (sklearn's default), lowered for a vocabulary too small for it (t-SNE needs it below the count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    unit = vectors.float() / vectors.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    perplexity = min(30.0, max(1.0, (len(words) - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    points = tsne.fit_transform(unit.numpy())
    fig, ax = plt.subplots(figsize=(16, 16))
    ax.scatter(points[:, 0], points[:, 1], s=4, color="tab:blue")
    for (x, y), word in zip(points, words, strict=True):
        ax.annotate(word, (x, y), fontsize=7, alpha=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of the {len(words)} most frequent words")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
