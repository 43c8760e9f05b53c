"""Chapter 7 part 2: translate-en-fr on a real Multi30k slice, beam search, and the `fdl translate` shell."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import metric_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from fdlcli import config, launch, registry, runs
from fdlcli.commands.translate import Shell, decode_line, translate_cmd
from fdlcli.data.translation import EOS_ID, bucket_batches, detokenize, tokenize
from fdlcli.engine.checkpoint import CheckpointManager
from fdlcli.errors import ConfigError, TrainingInterrupted
from fdlcli.experiments import seq2seq

TINY = [
    "data.train_limit=800", "data.eval_limit=16", "data.source_vocab=400", "data.target_vocab=400",
    "data.batch_size=32", "model.embedding=24", "model.hidden=32", "model.attention=24", "trainer.epochs=2",
    "trainer.threads=1", "trainer.beam=3", "optim.lr=0.01", "trainer.max_output=12",
    # the book's lr rule every 5 steps (it decays once, at step 45), the cost logged every 7 steps
    "trainer.lr_decay=0.9", "trainer.decay_every=5", "trainer.log_every=7",
]  # fmt: skip


def _train(path: Path, overrides: list[str], resume: bool = False) -> runs.Run:
    """Train (or resume) a translate-en-fr run in-process, as `fdl train` does."""
    run_config = config.validate(config.compose("translate-en-fr", overrides))
    if not resume:
        runs.save_config(path, run_config, overrides)
    run = runs.Run(path=path, config=run_config, resume=resume)
    registry.get("translate-en-fr").train(run)
    return run


def _weights_digest(run: runs.Run, which: str = "latest") -> str:
    ref = CheckpointManager(run.checkpoint_dir, run.config.name).resolve(which)
    weights = load_file(str(ref.path / "model.safetensors"))
    return hashlib.sha256(b"".join(weights[k].numpy().tobytes() for k in sorted(weights))).hexdigest()


def _task_state(run: runs.Run) -> dict:
    """The lr rule's state in the latest checkpoint (lr, the last windows' losses, the open window's sum)."""
    ref = CheckpointManager(run.checkpoint_dir, run.config.name).resolve("latest")
    return torch.load(ref.path / "trainer.pt", weights_only=True)["task"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> runs.Run:
    """A translate-en-fr run trained in-process for two epochs on 800 real pairs (a few seconds)."""
    return _train(tmp_path_factory.mktemp("translate-run"), [*TINY, f"data.dir={mirror}"])


def test_training_on_a_real_slice_learns_and_records_everything(tiny_run):
    summary = tiny_run.summary()
    final = summary["final"]
    # two epochs on 800 pairs are far from a translator, but far better than guessing among 404 words
    assert final["test/perplexity"] < 150, final
    history = [h["val/perplexity"] for h in summary["history"]]
    assert history[1] < history[0], history
    for key in (
        "test/bleu",
        "test/bleu_beam3",
        "val/bleu",
        "test/bleu_tok",
        "test/bleu_tok_beam3",
        "val/bleu_tok",
    ):
        assert 0.0 <= final[key] <= 100.0
    signatures = summary["bleu_signatures"]  # what the two BLEU figures are
    assert signatures["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "|tok:none|" in signatures["bleu_tok"]
    assert (tiny_run.path / "vocab.json").is_file()
    assert (tiny_run.artifacts_dir / "attention.png").stat().st_size > 1000
    metrics = launch.evaluate(tiny_run.path, "best", "test")  # `fdl eval RUN_DIR`
    assert set(metrics) == {
        "test/cost", "test/perplexity", "test/bleu", "test/bleu_beam3", "test/bleu_tok", "test/bleu_tok_beam3",
    }  # fmt: skip
    recorded = json.loads((tiny_run.path / "eval-best-test.json").read_text())
    assert recorded["bleu_signatures"] == signatures
    assert math.isclose(metrics["test/perplexity"], final["test/perplexity"], rel_tol=1e-5)


def test_batched_beam_search_equals_the_one_hypothesis_reference(tiny_run):
    model, source_vocab, _ = seq2seq.load_model(tiny_run, "best", torch.device("cpu"))
    sentences = ["a man is riding a bike .", "two dogs play in the snow .", "a girl in a red dress sings"]
    for text in sentences:
        ids = source_vocab.encode(tokenize(text))[::-1]
        for width in (1, 3, 5):
            fast = seq2seq.beam_search(model, ids, width, 20)
            slow = seq2seq.reference_beam_search(model, ids, width, 20)
            assert [h.ids for h in fast] == [h.ids for h in slow]
            assert [h.log_prob for h in fast] == pytest.approx([h.log_prob for h in slow], abs=1e-4)
            assert torch.allclose(fast[0].attention, slow[0].attention, atol=1e-5)
        # width 1 is greedy decoding
        greedy, _ = seq2seq.greedy(model, torch.tensor([ids]), torch.tensor([len(ids)]), 20)
        assert seq2seq.beam_search(model, ids, 1, 20)[0].ids == greedy[0]
        best = seq2seq.beam_search(model, ids, 4, 20)
        assert len(best) == 4 and [h.score for h in best] == sorted((h.score for h in best), reverse=True)
        assert all(EOS_ID not in h.ids for h in best)


def test_book_buckets_cover_every_pair_once_and_repeat_per_seed():
    source = torch.tensor([3, 12, 7, 30, 5, 9, 22, 1, 40, 14])
    target = torch.tensor([4, 11, 16, 45, 2, 9, 25, 3, 50, 15])
    buckets = [[5, 10], [10, 15], [20, 25], [40, 50]]
    batches = bucket_batches(source, target, buckets, 2, torch.Generator().manual_seed(1))
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    for batch in batches:  # a batch never mixes buckets
        homes = {
            next(i for i, (s, t) in enumerate(buckets) if source[j] <= s and target[j] <= t) for j in batch
        }
        assert len(homes) == 1
    again = bucket_batches(source, target, buckets, 2, torch.Generator().manual_seed(1))
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]


def test_tokens_and_readable_text():
    assert tokenize("L'homme, qu'il voit: «Très-bien» !") == [
        "l'", "homme", ",", "qu'", "il", "voit", ":", "«", "très-bien", "»", "!",
    ]  # fmt: skip
    assert (
        detokenize(["l'", "homme", "regarde", "(", "un", "chien", ")", "."]) == "L'homme regarde (un chien)."
    )


@pytest.mark.parametrize(
    "text",
    [
        # the dataset's own sentences (Multi30k test), lowercased and tokenized, come back as written
        "Un terrier de boston court sur l'herbe verdoyante devant une clôture blanche.",  # (but "Boston")
        "Des gens réparent le toit d'une maison.",
        "Cinq personnes avec des vestes d'hiver et des casques sont debout dans la neige, avec des motoneiges "
        "en arrière-plan.",
        "Un homme en tenue claire photographie un groupe d'hommes portant des costumes sombres et des chapeaux, "
        "debout autour d'une femme vêtue d'une robe bustier.",
        # French spacing: a space before ; : ! ? and inside « », none before , . or after an elision;
        # compounds keep their hyphens, a dash between words its spaces; each sentence starts uppercase
        "Qu'il dit : « bonjour » ! N'est-ce pas ? Jusqu'à demain ; aujourd'hui (peut-être).",
        "Un chien court dehors - la balle est loin.",
    ],
)
def test_detokenized_french_is_written_as_french_is(text):
    assert detokenize(tokenize(text), "fr") == text


def test_detokenize_joins_elisions_and_keeps_punctuation_tight():
    assert detokenize(["un", "homme", ",", "qu'", "il", "voit", "."], "fr") == "Un homme, qu'il voit."
    assert (
        detokenize(["l'", "homme", "a", "<unk>", "un", "t-shirt", "."], "fr") == "L'homme a <unk> un t-shirt."
    )
    assert detokenize(["<unk>", "court", ".", "(", "un", "chat", ")", "."], "fr") == "<unk> court. (Un chat)."
    assert detokenize(["don'", "t", "go", ",", "he", "said", "."], "en") == "Don't go, he said."
    assert detokenize([], "fr") == ""


def test_bleu_is_sacrebleu_on_detokenized_text_and_bleu_tok_on_our_tokens():
    from sacrebleu.metrics import BLEU

    from fdlcli.data.translation import ParallelSplit

    texts = ["Un homme fait du vélo.", "Des gens réparent le toit d'une maison."]
    split = ParallelSplit(None, None, [" ".join(tokenize(t)) for t in texts], texts, "fr")
    outputs = [tokenize("un homme fait du vélo ."), tokenize("des gens regardent le toit d'une maison .")]
    scores = seq2seq.corpus_bleu(outputs, split)
    detokenized = ["Un homme fait du vélo.", "Des gens regardent le toit d'une maison."]
    assert scores["bleu"] == pytest.approx(BLEU().corpus_score(detokenized, [texts]).score)
    tokenized = [" ".join(o) for o in outputs]
    assert scores["bleu_tok"] == pytest.approx(
        BLEU(tokenize="none").corpus_score(tokenized, [split.references]).score
    )
    assert 0 < scores["bleu"] < 100 and scores["bleu_tok"] != scores["bleu"]
    assert seq2seq.corpus_bleu([tokenize(t) for t in texts], split)["bleu"] == pytest.approx(100.0)


def test_line_mode_one_translation_per_line_with_notices_on_stderr(tiny_run):
    long_line = " ".join(["dog"] * 300)
    stdin = b"A man is riding a bike.\n\n   \nzqxj \xff\xfe plays\n" + long_line.encode() + b"\n"
    result = CliRunner().invoke(translate_cmd, [str(tiny_run.path), "--beam", "2"], input=stdin)
    assert result.exit_code == 0, result.output
    lines = result.stdout.split("\n")
    assert len(lines) == 6 and lines[-1] == "" and lines[1] == lines[2] == ""  # 5 inputs, 5 outputs
    assert all(lines[i].strip() for i in (0, 3, 4))
    assert "not valid UTF-8" in result.stderr
    assert "unknown words read as <unk>: zqxj" in result.stderr
    assert "truncated to its first 40 words (260 dropped)" in result.stderr

    nbest = CliRunner().invoke(
        translate_cmd, [str(tiny_run.path), "--nbest", "3", "--attention"], input=b"two dogs run .\n"
    )
    assert nbest.exit_code == 0, nbest.output
    rows = nbest.stdout.strip().split("\n")
    scores = [float(row.split("\t")[0]) for row in rows]
    assert len(rows) == 3 and scores == sorted(scores, reverse=True)
    assert "1=two" in nbest.stderr and list((tiny_run.artifacts_dir / "translate").rglob("attention-001.png"))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_fuzzed_input_lines_always_give_exactly_one_output_line(tiny_run, capsys, data):
    translator = _translator(tiny_run)
    shell = Shell(translator, beam=1, nbest=1, attention=False, out_dir=tiny_run.artifacts_dir)
    for raw in data.split(b"\n"):
        shell.handle(decode_line(raw, 1), keep_alignment=True)
    out = capsys.readouterr().out
    assert out.count("\n") == len(data.split(b"\n"))


_translators: dict[Path, seq2seq.Translator] = {}


def _translator(run: runs.Run) -> seq2seq.Translator:
    if run.path not in _translators:
        _translators[run.path] = seq2seq.Translator(run)
    return _translators[run.path]


def test_interactive_prompt_in_a_terminal(tiny_run, env):
    """The real shell in a pseudo-terminal: a translation, an empty line, Ctrl-C, history, Ctrl-D."""
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable, ["-m", "fdlcli", "translate", str(tiny_run.path)],
        env={**env, "TERM": "dumb", "PROMPT_TOOLKIT_NO_CPR": "1", "PYTHONPATH": os.getcwd()},
        encoding="utf-8", timeout=60, dimensions=(24, 120),
    )  # fmt: skip
    transcript = []
    try:
        child.expect("en> ")
        child.send("a man is riding a bike .\r")
        child.expect("en> ")
        transcript.append(child.before)
        child.send("\r")  # an empty line: nothing printed, a new prompt
        child.expect("en> ")
        transcript.append(child.before)
        child.send("half a sentence")
        child.send("\x03")  # Ctrl-C cancels the line
        child.expect("en> ")
        transcript.append(child.before)
        child.send("\x1b[A\r")  # up arrow: the last translated line again, from the history
        child.expect("en> ")
        transcript.append(child.before)
        child.send("\x04")  # Ctrl-D exits
        child.expect(pexpect.EOF)
        transcript.append(child.before)
    finally:
        child.close(force=True)
    text = "\n".join(transcript)
    assert child.exitstatus == 0, text
    assert "Traceback" not in text and "Error" not in text
    expected = _translator(tiny_run).text(
        _translator(tiny_run).translate("a man is riding a bike .", 5).hypotheses[0]
    )
    assert expected in transcript[0] and expected in transcript[3]
    assert expected not in transcript[1] + transcript[2]


def test_bad_run_directories_are_one_line_errors(tmp_path, capsys, env, tiny_run):
    from fdlcli.cli import main

    not_translation = tmp_path / "copy"
    import shutil

    shutil.copytree(tiny_run.path, not_translation)
    (not_translation / "vocab.json").write_text("[1, 2]")
    for argv in (["translate", str(tmp_path / "nope")], ["translate", str(not_translation)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code != 0
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_resume_replays_the_same_training(tiny_run, tmp_path, mirror):
    """One epoch, then a resumed second one: the metrics and weights equal those of the two-epoch run."""
    run = _train(tmp_path, [*TINY, f"data.dir={mirror}", "trainer.epochs=1"])
    vocab = (tmp_path / "vocab.json").read_text()
    longer = config.apply_overrides(run.config, ["trainer.epochs=2"])
    registry.get("translate-en-fr").train(runs.Run(path=tmp_path, config=longer, resume=True))
    assert metric_records(tmp_path) == metric_records(tiny_run.path)
    assert _weights_digest(run) == _weights_digest(tiny_run)
    assert (tmp_path / "vocab.json").read_text() == vocab  # the resumed run kept its vocabularies


def test_sigterm_mid_epoch_then_resume_is_exact(tiny_run, tmp_path, mirror, monkeypatch):
    """SIGTERM at step 48 (mid-epoch, mid logging window, mid lr-rule window, after the rule's decay at
    step 45): its checkpoint resumes to the uninterrupted run's metrics, summary, weights and lr rule."""
    train_step = seq2seq.TranslationTask.train_step

    def interrupted(task, step, index):
        if step == 47:
            signal.raise_signal(signal.SIGTERM)
        return train_step(task, step, index)

    monkeypatch.setattr(seq2seq.TranslationTask, "train_step", interrupted)
    with pytest.raises(TrainingInterrupted, match="at step 48"):
        _train(tmp_path, [*TINY, f"data.dir={mirror}"])
    monkeypatch.setattr(seq2seq.TranslationTask, "train_step", train_step)
    run = _train(tmp_path, [*TINY, f"data.dir={mirror}"], resume=True)
    assert metric_records(tmp_path) == metric_records(tiny_run.path)
    assert _weights_digest(run) == _weights_digest(tiny_run)
    assert _weights_digest(run, "best") == _weights_digest(tiny_run, "best")
    assert _task_state(run) == _task_state(tiny_run)
    ours, theirs = run.summary(), tiny_run.summary()
    assert ours["history"] == theirs["history"] and ours["final"] == theirs["final"]


def test_bf16_autocast_changes_the_figures_but_still_learns(tiny_run, tmp_path, mirror):
    run = _train(tmp_path, [*TINY, f"data.dir={mirror}", "trainer.epochs=1", "trainer.precision=bf16"])
    bf16 = {(r["name"], r["step"]): r["value"] for r in metric_records(tmp_path)}
    fp32 = {(r["name"], r["step"]): r["value"] for r in metric_records(tiny_run.path)}
    epoch_end = (("train/epoch_cost", 27), ("val/perplexity", 27))
    assert all(key in fp32 for key in bf16 if not key[0].startswith("test/"))
    assert bf16[("train/cost", 7)] != fp32[("train/cost", 7)]  # autocast really ran the matmuls in bf16
    for key in epoch_end:  # ... at about the fp32 figures
        assert bf16[key] != fp32[key] and math.isclose(bf16[key], fp32[key], rel_tol=0.1), key
    assert run.summary()["status"] == "completed"


def test_compile_traces_the_attention_and_output_layer_without_graph_breaks(tmp_path, mirror, monkeypatch):
    """trainer.compile=true: dynamo captures the decoder step's attention and output layer (the GRU runs
    eager), training and evaluation go on. The eager backend keeps it fast: tracing is what can break."""
    from torch._dynamo.utils import counters

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    counters.clear()
    small = [*TINY, f"data.dir={mirror}", "data.train_limit=96", "trainer.epochs=1", "trainer.compile=true"]
    run = _train(tmp_path, small)
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert math.isfinite(run.summary()["final"]["test/perplexity"])
    torch._dynamo.reset()


def test_features_the_task_cannot_honour_are_refused(mirror):
    for setting in ("trainer.devices=2", "optim.schedule=cosine"):
        with pytest.raises(ConfigError, match="does not support"):
            config.validate(config.compose("translate-en-fr", [f"data.dir={mirror}", setting]))


@pytest.mark.parametrize(
    "cell, layers, bidirectional", [("lstm", 1, False), ("gru", 2, True), ("lstm", 2, True)]
)
def test_every_cell_and_shape_trains_and_searches(cell, layers, bidirectional):
    """Shapes only (tiny random data): LSTM states, stacked layers and a bidirectional encoder."""
    torch.manual_seed(0)
    cfg = seq2seq.Seq2SeqConfig(
        cell=cell, embedding=8, hidden=12, layers=layers, bidirectional=bidirectional, attention=6
    )
    model = seq2seq.Seq2Seq(20, 30, cfg)
    source = torch.randint(4, 20, (3, 7))
    lengths = torch.tensor([7, 4, 1])
    source[1, 4:] = source[2, 1:] = 0
    logits = model(source, lengths, torch.randint(4, 30, (3, 5)))
    assert logits.shape == (3, 5, 30)
    logits.sum().backward()
    model.eval()
    fast = seq2seq.beam_search(model, source[1, :4].tolist(), 3, 6)
    slow = seq2seq.reference_beam_search(model, source[1, :4].tolist(), 3, 6)
    assert [h.ids for h in fast] == [h.ids for h in slow]


def test_the_books_learning_rate_rule():
    """lr *= decay when a window's mean loss exceeds the largest of the three windows before."""
    rule = seq2seq.LossPlateauDecay(lr=1.0, decay=0.5)
    lrs = [rule.end_window(mean) for mean in (4.0, 3.0, 3.5, 3.75, 4.5, 2.0)]
    # 3.75 <= max(4, 3, 3.5): kept; 4.5 > max(3, 3.5, 3.75): halved; 2: kept
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5]
    assert rule.losses == [3.75, 4.5, 2.0]
    assert seq2seq.LossPlateauDecay(lr=1.0, decay=1.0, losses=[1.0, 1.0, 1.0]).end_window(9.0) == 1.0


def test_sampled_softmax_trains_and_evaluation_keeps_the_full_softmax():
    torch.manual_seed(0)
    cfg = seq2seq.Seq2SeqConfig(embedding=8, hidden=16, attention=8, dropout=0.0, sampled_softmax=10)
    model = seq2seq.Seq2Seq(20, 50, cfg)
    source, lengths = torch.randint(4, 20, (6, 5)), torch.full((6,), 5)
    target = torch.randint(4, 50, (6, 4))
    target_in = torch.cat([torch.full((6, 1), 1), target[:, :-1]], dim=1)
    batch = (source, lengths, target_in, target)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    first = None
    for _ in range(30):
        loss = seq2seq.token_loss(model, batch)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first / 2
    model.eval()  # evaluation: the exact softmax over all 50 words
    full = torch.nn.functional.cross_entropy(model(*batch[:3]).flatten(0, 1), target.flatten())
    assert torch.allclose(seq2seq.token_loss(model, batch), full)
