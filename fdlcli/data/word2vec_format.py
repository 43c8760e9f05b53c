"""Reading word vectors in the word2vec formats, with no pickles and no gensim.

Two formats exist, both written by Mikolov's ``word2vec.c`` (and gensim's ``save_word2vec_format``):
- text: a ``"<count> <dim>"`` header line, then one ``"word v1 v2 ... vdim"`` line per word (fdl's
  skipgram export, ``runs/skipgram/RUN/artifacts/embeddings.txt``, is one);
- binary: the same header line, then per word the word's UTF-8 bytes, one space, ``dim`` little-endian
  float32 values and (usually) a newline. The 300-d Google News vectors
  (``GoogleNews-vectors-negative300.bin[.gz]``) are in this format.
Files may be gzip-compressed (``.gz``). Only the words a caller asks for are kept, so reading the 3M-word
Google News file needs memory for the corpus vocabulary only.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fdlcli.errors import DataUnavailableError

FORMATS = ("auto", "text", "binary")


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # type: ignore[return-value]


def detect_format(path: Path) -> str:
    """``binary`` for ``*.bin`` / ``*.bin.gz``, else ``text``."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return "binary" if name.endswith(".bin") else "text"


def _header(line: bytes, path: Path) -> tuple[int, int]:
    parts = line.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise DataUnavailableError(f"{path}: not a word2vec file (its first line is not '<count> <dim>')")
    count, dim = int(parts[0]), int(parts[1])
    if dim <= 0:
        raise DataUnavailableError(f"{path}: the header gives {dim} dimensions")
    return count, dim


def read_dim(path: str | Path) -> int:
    """The vector size from the header line alone."""
    path = Path(path).expanduser()
    _check_file(path)
    with _open(path) as handle:
        return _header(handle.readline(), path)[1]


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataUnavailableError(f"no word2vec file at {path}")


def read_word2vec(
    path: str | Path, wanted: Iterable[str] | None = None, fmt: str = "auto"
) -> tuple[dict[str, np.ndarray], int]:
    """The vectors of the ``wanted`` words found in the file (all words when ``wanted`` is None), and dim."""
    path = Path(path).expanduser()
    _check_file(path)
    if fmt not in FORMATS:
        raise DataUnavailableError(f"word2vec format {fmt!r}; choose from: {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    keep = None if wanted is None else set(wanted)
    try:
        with _open(path) as handle:
            count, dim = _header(handle.readline(), path)
            reader = _read_binary if fmt == "binary" else _read_text
            return reader(handle, count, dim, keep, path), dim
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise DataUnavailableError(f"{path}: cannot read it as a {fmt} word2vec file ({exc})") from None


def _read_text(
    handle: BinaryIO, count: int, dim: int, keep: set[str] | None, path: Path
) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    for number, raw in enumerate(handle, start=2):
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        word, _, rest = line.decode("utf-8").partition(" ")
        if keep is not None and word not in keep:
            continue
        values = np.array(rest.split(), dtype=np.float32)
        if values.shape != (dim,):
            raise DataUnavailableError(f"{path}:{number}: {values.size} values, the header says {dim}")
        vectors.setdefault(word, values)  # the first occurrence wins, as in gensim
    return vectors


def _read_binary(
    handle: BinaryIO, count: int, dim: int, keep: set[str] | None, path: Path
) -> dict[str, np.ndarray]:
    vectors: dict[str, np.ndarray] = {}
    width = 4 * dim
    buffer, pos = b"", 0
    for index in range(count):
        # make sure the next word (at most a few hundred bytes) and its vector are in the buffer
        if len(buffer) - pos < width + 1024:
            buffer = buffer[pos:] + handle.read(1 << 20)
            pos = 0
        while pos < len(buffer) and buffer[pos : pos + 1] in (b"\n", b"\r"):
            pos += 1
        space = buffer.find(b" ", pos)
        if space < 0 or len(buffer) < space + 1 + width:
            raise DataUnavailableError(f"{path}: truncated after {index} of {count} words")
        word = buffer[pos:space].decode("utf-8", errors="replace")
        if keep is None or word in keep:
            vectors.setdefault(word, np.frombuffer(buffer, "<f4", dim, space + 1).copy())
        pos = space + 1 + width
    return vectors


def write_word2vec_binary(path: Path, words: list[str], vectors: np.ndarray) -> None:
    """The binary format (used by tests and by anyone converting fdl's text export)."""
    with open(path, "wb") as handle:
        handle.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for word, row in zip(words, vectors.astype("<f4"), strict=True):
            handle.write(word.encode("utf-8") + b" " + row.tobytes() + b"\n")
