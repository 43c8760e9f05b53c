"""Chapter 7 commands: ``fdl tag RUN TEXT`` (part-of-speech tags), ``fdl sentiment RUN TEXT``, ``fdl
pos-corpus OUT`` (a text corpus for offline word vectors) and ``fdl train-val RUN`` (overfitting curves).

``tag`` and ``sentiment`` read the text from the arguments, or one text per line from stdin when none is
given, and need only the run directory (weights and artifacts/vocab.json), not the dataset or the
embeddings file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fdlcli.errors import UsageError


def _texts(text: tuple[str, ...]) -> list[str]:
    """The arguments joined as one text, or the non-empty lines of stdin."""
    if text:
        joined = " ".join(text).strip()
        if not joined:
            raise UsageError("the text is empty")
        return [joined]
    if sys.stdin.isatty():
        raise UsageError("give the text as arguments, or pipe lines into stdin")
    lines = [line.strip() for line in sys.stdin if line.strip()]
    if not lines:
        raise UsageError("stdin held no text")
    return lines


def _load_run(run_dir: Path, experiment: str):  # type: ignore[no-untyped-def]
    from fdlcli import config

    return config.open_run(run_dir, experiment)


@click.command("tag")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("text", nargs=-1)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
def tag_cmd(run_dir: Path, text: tuple[str, ...], checkpoint: str) -> None:
    """Tag TEXT (or each line of stdin) with a trained pos-tagger run: prints word/TAG pairs."""
    from fdlcli.data.conll import tokenize
    from fdlcli.experiments.pos import format_tagged, load_tagger, tag_sentences

    texts = _texts(text)
    run = _load_run(run_dir, "pos-tagger")
    model, vocab, tag_names = load_tagger(run, checkpoint)
    sentences = [tokenize(t) for t in texts]
    if not all(sentences):
        raise UsageError("a line holds no words to tag")
    for tagged in tag_sentences(model, vocab, tag_names, sentences, run.config.model):
        click.echo(format_tagged(tagged))


@click.command("sentiment")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("text", nargs=-1)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
def sentiment_cmd(run_dir: Path, text: tuple[str, ...], checkpoint: str) -> None:
    """The sentiment of TEXT (or of each line of stdin) by a trained sentiment-lstm run."""
    from fdlcli.experiments.sentiment import LABELS, classify, load_classifier

    texts = _texts(text)
    run = _load_run(run_dir, "sentiment-lstm")
    model, index = load_classifier(run, checkpoint)
    positive = classify(model, index, texts, run.config.data.max_len).tolist()
    for line, p in zip(texts, positive, strict=True):
        label = LABELS[int(p >= 0.5)]
        shown = line if len(line) <= 60 else line[:57] + "..."
        click.echo(f"{label}\t{p:.3f}\t{shown}")


@click.command("pos-corpus")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--imdb/--no-imdb", default=True, show_default=True, help="Add the IMDB training reviews.")
@click.option("--imdb-test", is_flag=True, help="Also the 25,000 IMDB test reviews (unlabelled text).")
@click.option(
    "--lowercase", is_flag=True, help="Lower-case everything (default: keep the case, like Google News)."
)
def pos_corpus_cmd(out: Path, imdb: bool, imdb_test: bool, lowercase: bool) -> None:
    """Write a text corpus for word vectors offline (`fdl train skipgram data.file=OUT data.lowercase=false`):
    the CoNLL-2000 training sentences (digits as '#'), PTB's training text (lower-case already) less WSJ
    section 20 (= CoNLL-2000's test set) and, with --imdb, the 25,000 IMDB training reviews, tokenized like
    CoNLL. No test sentence of CoNLL-2000 goes in."""
    from fdlcli.config import DataConfig
    from fdlcli.data.conll import ConllDataConfig, load_tagged, normalize, ptb_without_conll_test, tokenize
    from fdlcli.data.hub import load_split
    from fdlcli.runs import atomic_write_text

    train, _ = load_tagged(ConllDataConfig(), "train")
    test, _ = load_tagged(ConllDataConfig(), "test")
    lines = [" ".join(s) for s in train.sentences]
    ptb = load_split("ptb", "ptb_text_only", "train", DataConfig().dir)
    lines += ptb_without_conll_test(ptb.data.table.column("sentence").to_pylist(), test)
    splits = (["train"] if imdb else []) + (["test"] if imdb_test else [])
    for split in splits:
        reviews = load_split("imdb", "stanfordnlp/imdb", split).data.table.column("text").to_pylist()
        for review in reviews:
            text = review.replace("<br />", " ")
            lines.append(" ".join(normalize(w) for w in tokenize(text)))
    if lowercase:
        lines = [line.lower() for line in lines]
    atomic_write_text(out, "\n".join(lines) + "\n")
    click.echo(f"wrote {out}: {len(lines):,} lines, {sum(len(x.split()) for x in lines):,} words")


@click.command("train-val")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Default: artifacts/train-val.png."
)
def train_val_cmd(run_dir: Path, out: Path | None) -> None:
    """Training and validation cost per epoch and validation accuracy of a run, in one PNG."""
    from fdlcli import runs
    from fdlcli.analysis.train_val import train_val_figure

    run_dir = runs.resolve_run_dir(run_dir)
    out = out or run_dir / "artifacts" / "train-val.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    best, accuracy = train_val_figure(run_dir, out, f"{run_dir.parent.name}: {run_dir.name}")
    click.echo(f"best epoch {best}: validation accuracy {accuracy:.4f}; wrote {out}")


COMMANDS = [tag_cmd, sentiment_cmd, pos_corpus_cmd, train_val_cmd]
