"""Chapter 6: autoencoders on MNIST against PCA (``autoencoder-mnist``), and their denoising
(``denoising-autoencoder-mnist``) and sparse (``sparse-autoencoder-mnist``) variants.

Book (TF 1.x): encoder 784-1000-500-250-k and the mirrored decoder 250-500-1000-784, every layer a
fully connected layer followed by batch norm and a sigmoid; the cost of an image is the L2 norm of
(input - reconstruction), averaged over the minibatch; Adam lr 1e-3, batch 100, the first 5,000 training
images for validation. k=2: validation cost 4.78 after ~200 epochs. The book then shows that the 2-D
codes separate the digit classes where PCA's two components do not; we measure that claim with k-NN and
logistic-regression accuracy on the test codes of both (fit on the training codes), next to the
reconstruction cost of PCA with the same k.

Denoising: a random half of the input pixels is zeroed (a fresh mask every minibatch) and the network
reconstructs the clean image. Sparse: the cost adds beta * sum_j KL(rho || rho_hat_j), where rho_hat_j is
the mean activation of code unit j over the minibatch.

Every variant reports the same validation metrics, so they compare directly: ``cost`` (clean input),
``corrupted_cost`` (input with ``eval_corruption`` of its pixels zeroed by a fixed mask, clean target),
``mean_activation`` of the code units and ``near_zero`` (the fraction of code activations below 0.05).
Training runs through the engine's supervised task (:mod:`fdlcli.engine.supervised`); the PCA comparison and
the figures run on the best checkpoint once training is over, and land in ``summary.json["codes"]`` and
the run's ``artifacts/``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fdlcli.data import ArraySplits, image_classification_arrays, minibatches
from fdlcli.data.tensors import Arrays
from fdlcli.engine.loop import load_weights
from fdlcli.engine.supervised import SupervisedTask
from fdlcli.engine.tracking import log
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run

PIXELS = 28 * 28
NEAR_ZERO = 0.05  # a sigmoid code unit below this counts as "off"


@dataclass
class AutoencoderConfig:
    code_size: int = 2  # k
    hidden: list[int] = field(default_factory=lambda: [1000, 500, 250])  # encoder widths; decoder mirrors
    corruption: float = 0.0  # fraction of input pixels zeroed in training (denoising: 0.5)
    sparsity_beta: float = 0.0  # weight of the KL sparsity penalty (0 = off)
    sparsity_rho: float = 0.05  # target mean activation of a code unit
    eval_corruption: float = 0.5  # fraction of pixels zeroed for the val/test corrupted_cost metric
    knn_neighbours: int = 5  # k-NN on the codes after training
    # The book's layer(): weights N(0, 1/fan_in), zero biases, batch norm epsilon 1e-3. Behind batch norm
    # the weight scale sets the effective step of Adam, so PyTorch's smaller default init ("torch") is not
    # a neutral substitute.
    init: str = "book"  # book | torch
    bn_eps: float = 1e-3

    def check(self) -> str | None:
        if self.code_size <= 0 or any(width <= 0 for width in self.hidden):
            return f"model.code_size={self.code_size}, model.hidden={self.hidden}: widths must be positive"
        for key in ("corruption", "eval_corruption"):
            if not 0.0 <= getattr(self, key) < 1.0:
                return f"model.{key}={getattr(self, key)}: it must lie in [0, 1)"
        if not 0.0 < self.sparsity_rho < 1.0:
            return f"model.sparsity_rho={self.sparsity_rho}: it must lie in (0, 1)"
        if self.init not in ("book", "torch"):
            return f"model.init={self.init!r}; choose from: book, torch"
        if self.bn_eps <= 0:
            return f"model.bn_eps={self.bn_eps}: it must be positive"
        if self.sparsity_beta < 0 or self.knn_neighbours <= 0:
            return "model.sparsity_beta must not be negative and model.knn_neighbours must be positive"
        return None


def _stack(widths: list[int], cfg: AutoencoderConfig) -> nn.Sequential:
    """Linear -> batch norm -> sigmoid for each consecutive pair of widths (the book's layer())."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(widths):
        linear = nn.Linear(fan_in, fan_out)
        if cfg.init == "book":  # tf.random_normal_initializer(stddev=sqrt(1 / fan_in)), zero bias
            nn.init.normal_(linear.weight, std=fan_in**-0.5)
            nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(fan_out, eps=cfg.bn_eps), nn.Sigmoid()]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        widths = [PIXELS, *cfg.hidden, cfg.code_size]
        self.encoder = _stack(widths, cfg)
        self.decoder = _stack(widths[::-1], cfg)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


def l2_cost(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of the error (the book's cost, before its mean over the minibatch)."""
    return (reconstruction.float() - target).square().sum(dim=1).sqrt()


def kl_sparsity(code: torch.Tensor, rho: float) -> torch.Tensor:
    """sum_j KL(rho || rho_hat_j) over code units, rho_hat_j their mean activation in the batch."""
    rho_hat = code.float().mean(dim=0).clamp(1e-6, 1 - 1e-6)
    return (rho * (rho / rho_hat).log() + (1 - rho) * ((1 - rho) / (1 - rho_hat)).log()).sum()


def fixed_corruption(images: torch.Tensor, fraction: float, seed: int = 1234) -> torch.Tensor:
    """The same corrupted copy of a split every time (evaluation must not depend on the RNG state)."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(images.shape, generator=generator) >= fraction
    return images * keep.to(images.device)


class AutoencoderTask(SupervisedTask):
    def build_model(self) -> nn.Module:
        return Autoencoder(self.config.model)

    def load_data(self) -> ArraySplits:
        # (pixels in [0, 1], labels): the labels only serve the k-NN / logistic analysis of the codes
        return image_classification_arrays(self.config.data).map(
            lambda arrays: (arrays[0].flatten(1).float().div_(255.0), arrays[1])
        )

    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor:
        cfg: AutoencoderConfig = self.config.model
        images = batch[0]
        inputs = images
        if cfg.corruption:  # a fresh mask per minibatch from the global RNG (saved in checkpoints)
            inputs = images * (torch.rand_like(images) >= cfg.corruption)
        code, reconstruction = model(inputs)
        cost = l2_cost(reconstruction, images).mean()
        if cfg.sparsity_beta:
            cost = cost + cfg.sparsity_beta * kl_sparsity(code, cfg.sparsity_rho)
        return cost

    @torch.no_grad()
    def metrics(self, model: nn.Module, arrays: Arrays, batch_size: int) -> dict[str, float]:
        cfg: AutoencoderConfig = self.config.model
        was_training = model.training
        model.eval()
        images = arrays[0]
        corrupted = fixed_corruption(images, cfg.eval_corruption)
        totals = torch.zeros(4, dtype=torch.float64, device=images.device)
        for clean, noisy in minibatches((images, corrupted), batch_size):
            code, reconstruction = model(clean)
            totals[0] += l2_cost(reconstruction, clean).sum()
            totals[1] += l2_cost(model(noisy)[1], clean).sum()
            totals[2] += code.float().sum() / code.shape[1]
            totals[3] += (code < NEAR_ZERO).float().sum() / code.shape[1]
        model.train(was_training)
        cost, corrupted_cost, activation, near_zero = (totals / len(images)).tolist()
        return {
            "cost": cost,
            "corrupted_cost": corrupted_cost,
            "mean_activation": activation,
            "near_zero": near_zero,
        }

    def finish(self, artifacts: Path) -> dict[str, Any]:
        """The codes of the best checkpoint against PCA's, and the chapter's figures."""
        assert self.run is not None
        codes = analyze(self, self.run)
        ae, pca = codes["autoencoder"], codes["pca"]
        self.message(
            f"codes (k={self.config.model.code_size}, test): autoencoder cost {ae['test_cost']:.3f}, "
            f"k-NN {ae['knn_accuracy']:.4f}, logistic {ae['logistic_accuracy']:.4f} | PCA cost "
            f"{pca['test_cost']:.3f}, k-NN {pca['knn_accuracy']:.4f}, logistic {pca['logistic_accuracy']:.4f}"
        )
        return {"codes": codes}


# ---- after training: PCA with the same k, class separation of the codes, figures ----------------


@torch.no_grad()
def encode(
    model: nn.Module, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    codes, reconstructions = zip(
        *(model(batch) for (batch,) in minibatches((images,), batch_size)), strict=True
    )
    return torch.cat(codes).float(), torch.cat(reconstructions).float()


class PCA:
    """Principal components of the training images (eigenvectors of their covariance), as in the book."""

    def __init__(self, train: torch.Tensor, k: int) -> None:
        train = train.double()
        self.mean = train.mean(dim=0)
        centered = train - self.mean
        _, vectors = torch.linalg.eigh(centered.T @ centered)
        self.components = vectors[:, -k:].flip(1)  # largest eigenvalues first

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) @ self.components).float()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.double() @ self.components.T + self.mean).float()


def code_accuracies(
    train_codes: torch.Tensor,
    train_labels: torch.Tensor,
    test_codes: torch.Tensor,
    test_labels: torch.Tensor,
    neighbours: int,
) -> dict[str, float]:
    """How well the digit classes separate in code space: k-NN and logistic regression test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_codes.numpy())  # PCA and sigmoid codes live on different scales
    x_train, x_test = scaler.transform(train_codes.numpy()), scaler.transform(test_codes.numpy())
    y_train, y_test = train_labels.numpy(), test_labels.numpy()
    knn = KNeighborsClassifier(n_neighbors=neighbours).fit(x_train, y_train)
    logistic = LogisticRegression(max_iter=500).fit(x_train, y_train)
    return {
        "knn_accuracy": float(knn.score(x_test, y_test)),
        "logistic_accuracy": float(logistic.score(x_test, y_test)),
    }


def analyze(task: AutoencoderTask, run: Run) -> dict[str, Any]:
    """Compare the best checkpoint with PCA on the test set and draw the chapter's figures."""
    from fdlcli.analysis import autoencoder_plots as plots

    cfg: AutoencoderConfig = run.config.model
    started = time.monotonic()
    model = task.build_model()
    load_weights(run, "best", model)
    data = task.load_data()
    (train_x, train_y), (test_x, test_y) = data.train, data.test
    pca = PCA(train_x, cfg.code_size)
    ae_train_codes, _ = encode(model, train_x)
    ae_codes, ae_recon = encode(model, test_x)
    pca_codes = pca.encode(test_x)
    pca_recon = pca.decode(pca_codes)
    corrupted = fixed_corruption(test_x, cfg.eval_corruption)
    _, ae_denoised = encode(model, corrupted)
    result = {
        "code_size": cfg.code_size,
        "autoencoder": {
            "test_cost": l2_cost(ae_recon, test_x).mean().item(),
            **code_accuracies(ae_train_codes, train_y, ae_codes, test_y, cfg.knn_neighbours),
        },
        "pca": {
            "test_cost": l2_cost(pca_recon, test_x).mean().item(),
            **code_accuracies(pca.encode(train_x), train_y, pca_codes, test_y, cfg.knn_neighbours),
        },
    }
    out = run.artifacts_dir
    if cfg.code_size == 2:
        plots.code_scatter(pca_codes, ae_codes, test_y, out / "codes_pca_vs_autoencoder.png")
    plots.reconstruction_grid(
        {"input": test_x, f"PCA k={cfg.code_size}": pca_recon, f"autoencoder k={cfg.code_size}": ae_recon},
        out / "reconstructions.png",
    )
    if cfg.corruption or cfg.eval_corruption:
        plots.reconstruction_grid(
            {"corrupted input": corrupted, "reconstruction": ae_denoised, "original": test_x},
            out / "denoising.png",
        )
    if cfg.sparsity_beta:
        plots.activation_histogram(ae_codes, out / "code_activations.png")
    log.info("code analysis took %.1f s", time.monotonic() - started)
    return result


def _register(name: str, book_result: str, description: str) -> None:
    register(
        ExperimentSpec(
            name=name,
            chapter=6,
            dataset="MNIST",
            book_result=book_result,
            description=description,
            model_config=AutoencoderConfig,
            model_group="autoencoder",
            task=AutoencoderTask,
        )
    )


_register(
    "autoencoder-mnist",
    "validation cost 4.78 for k=2 (~200 epochs); codes separate digits, PCA's don't",
    "784-1000-500-250-k autoencoder, batch norm + sigmoid, L2 cost, Adam; PCA baseline",
)
_register(
    "denoising-autoencoder-mnist",
    "reconstructs digits with half of the pixels zeroed (figure only)",
    "the autoencoder trained on inputs with half of the pixels zeroed",
)
_register(
    "sparse-autoencoder-mnist",
    "described only (KL sparsity penalty)",
    "the autoencoder with a KL sparsity penalty on the code units",
)
