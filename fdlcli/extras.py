"""Optional dependencies: the extras of pyproject.toml, and the one-line error that names the install
command when a feature needs one that is missing.

    [rl]        pygame (rendering the classic-control environments), imageio and imageio-ffmpeg
                (`fdl play --record`)
    [word2vec]  numba (the compiled Hogwild engine of skipgram-word2vec, model.engine=hogwild)
    [atari]     ale-py and OpenCV (dqn-breakout)
    [minatar]   MinAtar (a3c-minatar, unreal-minatar)
    [all]       all of them; [dev] = [all] plus the test tools
"""

from __future__ import annotations

import importlib
from types import ModuleType

from fdlcli.errors import MissingDependencyError


def install_command(extra: str) -> str:
    return f"pip install 'fdlcli[{extra}]'"


def require(module: str, feature: str, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``, or stop with e.g. "fdl play --record needs imageio: pip install
    'fdlcli[rl]'" when its package is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            # the package is there but something it needs is not, or does not fit: say that instead
            raise MissingDependencyError(f"{feature}: importing {module} failed: {exc}") from exc
        raise MissingDependencyError(
            f"{feature} needs {package or module}: {install_command(extra)}"
        ) from None
