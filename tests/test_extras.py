"""Optional dependencies (pyproject's extras): a feature whose extra is missing stops with one line that
gives the install command; [all] holds every extra and [dev] (what the tests install) holds [all]."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, fdl, run_dirs, without_modules

from fdlcli.errors import MissingDependencyError
from fdlcli.extras import require


@pytest.mark.parametrize(
    ("module", "feature", "extra", "package", "message"),
    [
        ("numba", "model.engine=hogwild", "word2vec", None,
         "model.engine=hogwild needs numba: pip install 'fdlcli[word2vec]'"),
        ("imageio", "fdl play --record", "rl", None, "fdl play --record needs imageio: pip install 'fdlcli[rl]'"),
        ("imageio_ffmpeg", "fdl play --record (MP4)", "rl", "imageio-ffmpeg",
         "fdl play --record (MP4) needs imageio-ffmpeg: pip install 'fdlcli[rl]'"),
        ("pygame", "fdl play --record of CartPole-v1", "rl", None,
         "fdl play --record of CartPole-v1 needs pygame: pip install 'fdlcli[rl]'"),
    ],
)  # fmt: skip
def test_a_missing_extra_names_its_install_command(monkeypatch, module, feature, extra, package, message):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if it were not installed
    with pytest.raises(MissingDependencyError) as raised:
        require(module, feature, extra, package=package)
    assert str(raised.value) == message


def test_a_broken_install_is_not_called_missing(monkeypatch):
    """A package that is there but fails to import (a dependency of its own is missing) says so."""

    def broken(name: str) -> None:
        raise ImportError("No module named 'llvmlite'", name="llvmlite")

    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(
        MissingDependencyError, match=r"^model.engine=hogwild: importing numba failed: No module"
    ):
        require("numba", "model.engine=hogwild", "word2vec")


def test_extras_all_and_dev_hold_every_optional_feature():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(extras["rl"]) == {"pygame>=2.5", "imageio>=2.30", "imageio-ffmpeg>=0.4.9"}
    assert extras["word2vec"] == ["numba>=0.60"]
    assert extras["all"] == ["fdlcli[rl,word2vec,atari,minatar,slurm]"] and "fdlcli[all]" in extras["dev"]
    core = " ".join(project["dependencies"])
    assert "torch>=2.13,<3" in core and "scipy" in core and "pyyaml" in core
    for optional in ("numba", "pygame", "imageio", "MinAtar"):
        assert optional not in core
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text()
    install = 'python -m pip install -q -c constraints.txt -e ".[dev]"'
    assert install in (REPO / ".ci" / "run").read_text()
    assert install.replace(" -q", "") in (REPO / "README.md").read_text()


def test_word2vec_without_numba_stops_with_the_install_command(env, tmp_path):
    hidden = without_modules(env, tmp_path / "hidden", "numba")
    result = fdl("train", "skipgram-word2vec", "trainer.epochs=1", "data.train_limit=20000", env=hidden)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: model.engine=hogwild needs numba: pip install 'fdlcli[word2vec]'"
    (run,) = run_dirs(env, "skipgram-word2vec")
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "failed" and "pip install 'fdlcli[word2vec]'" in meta["error"]
