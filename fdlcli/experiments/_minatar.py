"""MinAtar (Young & Tian 2019): Atari-like games on a 10x10 grid, imported by ``_rl.make_env`` only when
it builds one (``MinAtar/Breakout-v1`` and the others; the [minatar] extra).

An observation is a 10 x 10 x channels boolean array, one channel per kind of object (Breakout: paddle,
ball, the ball's trail, bricks), so a pixel is already an object and no preprocessing is needed. The
games draw sticky actions (10%) and their starts from a generator that ``reset(seed=...)`` seeds; with
the last action forgotten at a reset (:class:`MinAtarWrapper`) an episode is a function of its seed and
its actions, as ``SeededEnvs`` needs for exact resume.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from fdlcli.extras import require

# a recorded frame: each grid cell drawn as a square of this many pixels (10 x 10 frames are too small
# to watch)
SCALE = 16


def register() -> None:
    """MinAtar's gymnasium ids (gymnasium 1.x no longer loads its entry point by itself)."""
    minatar_gym = require("minatar.gym", "the MinAtar environments", "minatar", package="MinAtar")
    if "MinAtar/Breakout-v1" not in gym.registry:
        minatar_gym.register_envs()


# a colour per channel (matplotlib's tab10, enough for MinAtar's 4 to 10 channels); empty cells are black
PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    ],
    dtype=np.uint8,
)  # fmt: skip


class MinAtarWrapper(gym.Wrapper):
    """Seeded episodes that depend on nothing else, and ``render()`` in ``rgb_array`` mode drawn from the
    latest observation: uint8 frames of ``SCALE`` x ``SCALE`` pixels a cell, coloured by the highest
    channel present there (as MinAtar colours them; its own frames have one float pixel a cell and need
    seaborn)."""

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.latest: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> Any:
        # MinAtar's sticky actions repeat the last action taken, kept across resets: forget it, so that an
        # episode is a function of its seed and its own actions (SeededEnvs replays them on resume)
        self.env.unwrapped.game.last_action = 0
        obs, info = self.env.reset(**kwargs)
        self.latest = obs
        return obs, info

    def step(self, action: Any) -> Any:
        result = self.env.step(action)
        self.latest = result[0]
        return result

    def render(self) -> Any:
        if self.render_mode != "rgb_array" or self.latest is None:
            return self.env.render()
        grid = np.asarray(self.latest, dtype=bool)
        channels = grid.shape[-1]
        top = channels - 1 - np.argmax(grid[..., ::-1], axis=-1)  # the highest channel set in each cell
        image = np.where(grid.any(axis=-1)[..., None], PALETTE[top % len(PALETTE)], 0).astype(np.uint8)
        return np.repeat(np.repeat(image, SCALE, axis=0), SCALE, axis=1)


def make(env_id: str, **kwargs: Any) -> Any:
    register()
    return MinAtarWrapper(gym.make(env_id, **kwargs))
