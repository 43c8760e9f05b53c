"""``fdl translate RUN_DIR``: an interactive translation shell over a trained ``translate-en-fr`` run.

On a terminal it is a prompt with line editing and history (prompt_toolkit): Ctrl-C cancels the line
(or a translation in progress), Ctrl-D exits. Otherwise it reads stdin line by line and writes one
translation per line (an empty line for an empty input, so outputs stay aligned with inputs). Notices
(truncated input, unknown words, undecodable bytes, where an attention PNG went) go to stderr, so stdout
holds just the translations.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click


def _notice(text: str) -> None:
    click.echo(f"notice: {text}", err=True)


def decode_line(raw: bytes, number: int) -> str:
    """One input line as text: invalid UTF-8 is replaced (with a notice), never fatal."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        _notice(f"line {number} is not valid UTF-8; undecodable bytes replaced")
        line = raw.decode("utf-8", errors="replace")
    return line.rstrip("\r\n")


def _stdin_lines() -> Iterator[str]:
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        yield decode_line(raw, number)


class Shell:
    """What happens to one line of input: translate, print, report."""

    def __init__(self, translator: Any, beam: int, nbest: int, attention: bool, out_dir: Path) -> None:
        self.translator, self.beam, self.nbest = translator, beam, nbest
        self.attention, self.out_dir = attention, out_dir
        self.count = 0

    def handle(self, line: str, keep_alignment: bool) -> None:
        result = self.translator.translate(line, beam=self.beam, nbest=self.nbest)
        if result is None:  # no words: nothing to translate
            if keep_alignment:
                click.echo("")
            return
        if result.dropped:
            _notice(f"input truncated to its first {len(result.source)} words ({result.dropped} dropped)")
        if result.unknown:
            _notice(f"unknown words read as <unk>: {', '.join(dict.fromkeys(result.unknown))}")
        if self.nbest == 1:
            click.echo(self.translator.text(result.hypotheses[0]))
        else:
            for hypothesis in result.hypotheses:
                click.echo(f"{hypothesis.score:.4f}\t{self.translator.text(hypothesis)}")
        if self.attention:
            self.show_attention(result)

    def show_attention(self, result: Any) -> None:
        from fdlcli.analysis.attention import attention_png, attention_text

        best = result.hypotheses[0]
        words = self.translator.output_words(best)
        click.echo(attention_text(best.attention, result.source, words), err=True)
        self.count += 1
        path = attention_png(
            best.attention, result.source, words, self.out_dir / f"attention-{self.count:03d}.png"
        )
        _notice(f"attention heatmap saved to {path}")


def _interactive(shell: Shell, history: Path | None, source: str, target: str) -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    session: PromptSession = PromptSession(
        history=FileHistory(str(history)) if history else InMemoryHistory()
    )
    click.echo(f"{source} -> {target}; Ctrl-D exits, Ctrl-C cancels a line", err=True)
    while True:
        try:
            line = session.prompt(f"{source}> ")
        except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, ask again
            continue
        except EOFError:  # Ctrl-D: done
            return
        try:
            shell.handle(line, keep_alignment=False)
        except KeyboardInterrupt:
            _notice("translation cancelled")


@click.command("translate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--beam",
    type=click.IntRange(1, 64),
    default=None,
    help="Beam width (1 = greedy); default: the run's trainer.beam.",
)
@click.option(
    "--nbest",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Print the N best translations with their scores (log p / length ** length_penalty).",
)
@click.option(
    "--attention",
    is_flag=True,
    help="Show each translation's attention as a terminal heatmap and save it as a PNG.",
)
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
@click.option(
    "--history",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the prompt's history in this file (default: this session only).",
)
@click.option(
    "--threads", type=click.IntRange(min=0), default=0, show_default=True, help="CPU threads (0 = auto)."
)
def translate_cmd(
    run_dir: Path, beam: int | None, nbest: int, attention: bool, checkpoint: str, history: Path | None,
    threads: int,
) -> None:  # fmt: skip
    """Translate sentences with a trained translate-en-fr run: a prompt on a terminal, else line by line
    (one translation per input line; with --nbest N, N lines of "score<TAB>translation")."""
    from fdlcli import config
    from fdlcli.engine.devices import configure_threads
    from fdlcli.errors import UsageError
    from fdlcli.experiments.seq2seq import Translator

    run = config.open_run(run_dir)
    if not hasattr(run.config.data, "source_vocab"):
        raise UsageError(f"{run.path} is a {run.config.name} run, not a translation run")
    configure_threads(threads)
    translator = Translator(run, checkpoint, device="cpu")  # loaded once, for every line
    out_dir = run.artifacts_dir / "translate" / time.strftime("%Y%m%d-%H%M%S")
    shell = Shell(translator, beam or run.config.trainer.beam, nbest, attention, out_dir)
    try:
        if sys.stdin.isatty() and sys.stdout.isatty():
            _interactive(shell, history, run.config.data.source, run.config.data.target)
        else:
            for line in _stdin_lines():
                shell.handle(line, keep_alignment=True)
                sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


COMMANDS = [translate_cmd]
