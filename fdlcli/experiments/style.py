"""Chapter 5: neural style transfer (Gatys et al.), ``neural-style``.

    fdl train neural-style content=photo.jpg style=painting.jpg weights=vgg19.safetensors

Book (companion script, after anishathalye/neural-style): VGG-19 features; content loss on relu4_2; style
loss on the Gram matrices of relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 with equal weights; total
variation loss; content weight 5, style weight 100, TV weight 100; Adam lr 10 on the pixels (0-255 scale),
1000 iterations, starting from the content image. Each loss term is a mean of squares, as the script's
``2 * l2_loss(x) / size``. The script's VGG-19 was the MatConvNet one, fed 0-255 pixels minus the mean; we
feed torchvision's VGG-19 its own normalization, so the three weights balance a little differently.

Weights: pretrained VGG-19 cannot be downloaded on every machine, so ``weights=`` takes
- a file in the standard torchvision state-dict layout (``features.0.weight`` ...), either ``.safetensors``
  or a ``.pth``/``.pt`` read with ``torch.load(weights_only=True)`` (nothing else is unpickled);
- ``download``: torchvision's published file through torch.hub (connected machines only);
- ``random``: seeded random weights, for tests on tiny images (the "style" is then meaningless).

The stylized image is the only trained tensor: it is checkpointed like a model (safetensors) with the
optimizer state, so an interrupted run resumes exactly; snapshots go to the run's artifacts/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.task import StepOutput, Task
from fdlcli.errors import CheckpointError, ConfigError
from fdlcli.registry import ExperimentSpec, register

# torchvision's VGG-19 ("vgg19-dcbb9e9d.pth"): the file behind weights=download
VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"
_VGG19_PLAN = [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4]
_STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
# what torchvision's VGG weights were trained with (inputs in [0, 1])
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class StyleConfig:
    content: str | None = None  # content image (any format Pillow reads)
    style: str | None = None  # style image
    weights: str | None = None  # VGG-19 weights: a file, "download" or "random" (tests)
    size: int = 512  # longer side of the content image in pixels; the style image is resized to match
    iterations: int = 1000
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 100.0
    content_layer: str = "relu4_2"
    style_layers: list[str] = field(default_factory=lambda: list(_STYLE_LAYERS))
    pooling: str = "max"  # max | avg (Gatys et al. preferred average pooling)
    init: str = "content"  # content | noise: the starting image
    snapshot_every: int = 100  # iterations between evaluations, snapshots and checkpoints; 0 = the end

    def check(self) -> str | None:
        for key in ("content", "style"):
            path = getattr(self, key)
            if not path:
                return f"neural-style needs {key}=IMAGE (fdl train neural-style content=a.jpg style=b.jpg)"
            if not Path(path).is_file():
                return f"{key} image {path!r} does not exist"
        if not self.weights:
            return (
                "neural-style needs pretrained VGG-19 weights: weights=FILE (torchvision layout, "
                ".safetensors or .pth), weights=download (torch.hub, needs internet) or weights=random "
                "(tests only)"
            )
        if self.weights not in ("download", "random") and not Path(self.weights).is_file():
            return f"VGG-19 weights file {self.weights!r} does not exist"
        layers = _layer_indices()
        for name in [self.content_layer, *self.style_layers]:
            if name not in layers:
                return f"unknown VGG-19 layer {name!r}; choose from: {', '.join(layers)}"
        if not self.style_layers:
            return "model.style_layers is empty"
        if self.pooling not in ("max", "avg"):
            return f"model.pooling={self.pooling!r}; choose from: max, avg"
        if self.init not in ("content", "noise"):
            return f"model.init={self.init!r}; choose from: content, noise"
        if self.size < 16 or self.iterations <= 0 or self.snapshot_every < 0:
            return "model.size must be >= 16, model.iterations positive, model.snapshot_every >= 0"
        return None


# --------------------------------------------------------------------------------------------------
# VGG-19 features, in torchvision's layout so its state dicts load as they are


def _layer_indices() -> dict[str, int]:
    """relu{block}_{conv} -> index in torchvision's ``vgg19().features``."""
    indices, index, block, conv = {}, 0, 1, 1
    for item in _VGG19_PLAN:
        if item == "M":
            index, block, conv = index + 1, block + 1, 1
        else:
            indices[f"relu{block}_{conv}"] = index + 1  # conv at index, its ReLU right after
            index, conv = index + 2, conv + 1
    return indices


class VGG19Features(nn.Module):
    """``vgg19().features`` up to the deepest layer needed; returns the requested activations."""

    def __init__(self, layers: list[str], pooling: str) -> None:
        super().__init__()
        indices = _layer_indices()
        self.wanted = {indices[name]: name for name in layers}
        modules: list[nn.Module] = []
        channels = 3
        for item in _VGG19_PLAN:
            if len(modules) > max(self.wanted):
                break
            if item == "M":
                modules.append(nn.MaxPool2d(2) if pooling == "max" else nn.AvgPool2d(2))
            else:
                modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*modules[: max(self.wanted) + 1])
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (pixels - self.mean) / self.std  # 0-255 pixels -> torchvision's normalization
        out = {}
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.wanted:
                out[self.wanted[index]] = x
        return out


def load_vgg_weights(model: VGG19Features, source: str) -> None:
    """Load torchvision VGG-19 weights (``features.N.*``; classifier keys are ignored)."""
    if source == "random":
        return  # the seeded default initialization
    if source == "download":
        state = torch.hub.load_state_dict_from_url(VGG19_URL, map_location="cpu", weights_only=True)
    elif source.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(source)
        except Exception as exc:
            raise CheckpointError(f"cannot read VGG-19 weights {source}: {exc}") from None
    else:
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception:  # torch's message runs over many lines; the cause is always one of these
            raise CheckpointError(
                f"cannot read VGG-19 weights {source}: not a state dict that torch.load(weights_only=True) "
                "accepts (only tensors are loaded, nothing is unpickled)"
            ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} does not hold a state dict")
    own = model.features.state_dict()
    missing = [f"features.{key}" for key in own if f"features.{key}" not in state]
    if missing:
        raise CheckpointError(
            f"{source} is not a torchvision VGG-19 state dict: {missing[0]} missing "
            f"(keys look like {', '.join(list(state)[:2])})"
        )
    for key, tensor in own.items():
        given = state[f"features.{key}"]
        if not isinstance(given, torch.Tensor) or given.shape != tensor.shape:
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            expected = tuple(tensor.shape)
            raise CheckpointError(f"{source}: features.{key} has shape {shape}, VGG-19 has {expected}")
    model.features.load_state_dict({key: state[f"features.{key}"] for key in own})


# --------------------------------------------------------------------------------------------------
# Images and losses


def load_image(path: str, size: tuple[int, int] | int) -> torch.Tensor:
    """[1, 3, H, W] float pixels in 0-255; ``size`` is (H, W) or the longer side."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image {path}: {exc}") from None
    if isinstance(size, int):
        scale = size / max(image.size)
        size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    image = image.resize((size[1], size[0]), Image.Resampling.LANCZOS)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size[0], size[1], 3)
    return pixels.permute(2, 0, 1).unsqueeze(0).float()


def save_image(pixels: torch.Tensor, path: Path) -> None:
    from PIL import Image

    array = pixels.detach()[0].clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(array).save(tmp)
    tmp.replace(path)


def gram(features: torch.Tensor) -> torch.Tensor:
    _, c, h, w = features.shape
    flat = features.reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


class StyleLoss(nn.Module):
    """Content, style and total-variation losses against fixed targets."""

    def __init__(self, vgg: VGG19Features, content: torch.Tensor, style: torch.Tensor, cfg: StyleConfig):
        super().__init__()
        self.vgg, self.cfg = vgg, cfg
        with torch.no_grad():
            self.content_target = vgg(content)[cfg.content_layer]
            self.style_targets = {name: gram(f) for name, f in vgg(style).items() if name in cfg.style_layers}

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        features = self.vgg(pixels)
        content = cfg.content_weight * F.mse_loss(features[cfg.content_layer], self.content_target)
        style = sum(F.mse_loss(gram(features[name]), target) for name, target in self.style_targets.items())
        style = cfg.style_weight * style / len(self.style_targets)  # equal layer weights
        dy = pixels[:, :, 1:, :] - pixels[:, :, :-1, :]
        dx = pixels[:, :, :, 1:] - pixels[:, :, :, :-1]
        tv = cfg.tv_weight * (dy.pow(2).mean() + dx.pow(2).mean())
        return {"content": content, "style": style, "tv": tv, "total": content + style + tv}


class Canvas(nn.Module):
    """The image being optimized, as a module so that checkpoints store it like weights."""

    def __init__(self, pixels: torch.Tensor) -> None:
        super().__init__()
        self.pixels = nn.Parameter(pixels.clone())


# --------------------------------------------------------------------------------------------------
# The task: one Adam step on the pixels per iteration; the engine does the rest


class StyleTransfer(Task):
    """Optimizes the pixels of one image; evaluations (every ``snapshot_every`` iterations and at the end)
    record the loss terms as ``val/*`` and save a snapshot image."""

    unit = "steps"
    supports = frozenset({"precision", "checkpoint_every"})
    step_name = "iteration"
    progress_value = "loss"

    def setup(self) -> None:
        cfg: StyleConfig = self.config.model
        vgg = VGG19Features(sorted({cfg.content_layer, *cfg.style_layers}), cfg.pooling)
        load_vgg_weights(vgg, cfg.weights or "")
        vgg = vgg.to(self.device).eval().requires_grad_(False)
        content = load_image(cfg.content or "", cfg.size).to(self.device)
        style = load_image(cfg.style or "", tuple(content.shape[2:])).to(self.device)
        self.losses = StyleLoss(vgg, content, style, cfg)
        start = content if cfg.init == "content" else torch.rand_like(content) * 255.0
        self.model = Canvas(start).to(self.device)
        self.optimizer = build_optimizer(self.config.optim, self.model.parameters())
        self.terms: dict[str, torch.Tensor] = {}

    def total_steps(self) -> int:
        return self.config.model.iterations

    def train_step(self, step: int, index: int) -> StepOutput:
        self.terms = self.losses(self.model.pixels)
        return StepOutput(loss=self.terms["total"])

    def window_metrics(self, cost: float) -> dict[str, float]:
        return {f"loss/{k}": v.item() for k, v in self.terms.items()}  # the last iteration's terms

    def evaluation_due(self, before: int, after: int) -> bool:
        every = self.config.model.snapshot_every
        return bool(every) and after // every > before // every

    def evaluate(self, split: str) -> dict[str, float]:
        return {k: v.item() for k, v in self.losses(self.model.pixels).items()}

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if self.run is not None and step < self.config.model.iterations:
            save_image(self.model.pixels, self.run.artifacts_dir / f"iter-{step:05d}.png")

    def finish(self, artifacts: Path) -> dict[str, Any]:
        save_image(self.model.pixels, artifacts / "stylized.png")
        return {"image": str(artifacts / "stylized.png"), "config": asdict(self.config.model)}

    def done_message(self, summary: dict[str, Any]) -> str:
        total = summary["final"].get("val/total", float("nan"))
        return f"done: total loss {total:.4g}; image {summary['image']}"


register(
    ExperimentSpec(
        name="neural-style",
        chapter=5,
        dataset="your two images",
        book_result="a stylized image (qualitative)",
        description="Gatys et al. style transfer on VGG-19 features (weights from a file)",
        model_config=StyleConfig,
        model_group="style",
        task=StyleTransfer,
        model_shortcuts=("content", "style", "weights"),
    )
)
