"""Loading dataset splits from the Hub or from a local mirror of it.

A mirror is a folder ``<root>/<name>/<split>.parquet`` written with ``datasets`` (same columns and
features as the Hub dataset); ``../shared/data`` on the project's machines is one. The root comes from the
``data.dir`` config key or ``$FDL_DATA_DIR``; without either, the dataset is loaded from the Hub by id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fdlcli.errors import DataUnavailableError


def mirror_root(configured: str | None) -> Path | None:
    root = configured or os.environ.get("FDL_DATA_DIR")
    return Path(root).expanduser() if root else None


def mirror_file(root: Path, name: str, split: str) -> Path:
    return root / name / f"{split}.parquet"


def available_splits(root: Path, name: str) -> list[str]:
    return sorted(p.stem for p in (root / name).glob("*.parquet"))


def load_split(
    name: str, hub_id: str, split: str, configured_dir: str | None = None, config_name: str | None = None
) -> Any:
    """One split as a ``datasets.Dataset``: from the mirror if configured, else from the Hub (with the
    dataset configuration ``config_name``, e.g. ``iwslt2017-en-fr``, where the Hub dataset has several)."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    root = mirror_root(configured_dir)
    if root is not None:
        path = mirror_file(root, name, split)
        if not path.is_file():
            if not (root / name).is_dir():
                raise DataUnavailableError(
                    f"the data mirror {root} has no {name}/ folder "
                    "(set data.dir or FDL_DATA_DIR to a mirror that does)"
                )
            raise DataUnavailableError(
                f"the data mirror has no split {split!r} for {name} ({path} is missing; "
                f"available: {', '.join(available_splits(root, name)) or 'none'})"
            )
        try:
            return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
        except Exception as exc:
            raise DataUnavailableError(f"cannot read {path}: {_short(exc)}") from None
    try:
        return datasets.load_dataset(hub_id, config_name, split=split)
    except Exception as exc:
        raise DataUnavailableError(
            f"cannot load {hub_id!r} ({split}) from the Hugging Face Hub ({_short(exc)}); "
            f"to use a local mirror set FDL_DATA_DIR (or data.dir) to a folder holding {name}/{split}.parquet"
        ) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
