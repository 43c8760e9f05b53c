"""Chapter 7 part 1: the POS tagger and the sentiment LSTM on tiny slices of the real data, the word2vec
file reader, the windows and the length bucketing, and the `fdl tag` / `fdl sentiment` commands."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import fdl, fdl_in_process, read_summary, run_dirs

from fdlcli import launch
from fdlcli.cli import cli
from fdlcli.data.conll import TaggedSentences, normalize, ptb_without_conll_test, tokenize, windows
from fdlcli.data.word2vec_format import read_word2vec, write_word2vec_binary
from fdlcli.errors import DataUnavailableError, UsageError
from fdlcli.experiments.pos import BOOK_SENTENCE, PosConfig, WindowTagger, tag_sentences, unknown_vector

WORDS = ["the", "bank", "woman", "went"]


def _write_text(path, words, vectors):
    lines = [f"{len(words)} {vectors.shape[1]}"] + [
        w + " " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(words, vectors, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_word2vec_text_binary_and_gzip_agree_and_bad_files_fail_in_one_line(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(len(WORDS), 5)).astype(np.float32)
    _write_text(tmp_path / "v.txt", WORDS, vectors)
    write_word2vec_binary(tmp_path / "v.bin", WORDS, vectors)
    with gzip.open(tmp_path / "v.bin.gz", "wb") as handle:
        handle.write((tmp_path / "v.bin").read_bytes())
    for name in ("v.txt", "v.bin", "v.bin.gz"):
        found, dim = read_word2vec(tmp_path / name, wanted={"bank", "went", "absent"})
        assert dim == 5 and set(found) == {"bank", "went"}, name
        assert np.allclose(found["bank"], vectors[1], atol=1e-5)
    (tmp_path / "cut.bin").write_bytes((tmp_path / "v.bin").read_bytes()[:-30])
    (tmp_path / "nohead.txt").write_text("the 0.1 0.2\n")
    for bad in ("cut.bin", "nohead.txt", "missing.txt"):
        with pytest.raises(DataUnavailableError):
            read_word2vec(tmp_path / bad)


def test_windows_tokens_and_unknown_vectors():
    assert windows([[5, 6, 7], [8]], 3).tolist() == [[0, 0, 5], [0, 5, 6], [5, 6, 7], [0, 0, 8]]
    assert normalize("1,234.5") == "#,###.#"
    assert tokenize("The woman's umbrella didn't open.") == [
        "The",
        "woman",
        "'s",
        "umbrella",
        "did",
        "n't",
        "open",
        ".",
    ]
    a, b = unknown_vector("umbrella", 8, 0), unknown_vector("umbrella", 8, 0)
    assert np.array_equal(a, b) and np.abs(a).max() <= 0.25
    assert not np.array_equal(a, unknown_vector("umbrellas", 8, 0))


def test_centered_window_offset_vectors_and_ptb_cut():
    # model.after: the following words, padding after the sentence end; tagging uses the same window
    assert windows([[5, 6, 7], [8]], 2, after=2).tolist() == [
        [0, 5, 6, 7],
        [5, 6, 7, 0],
        [6, 7, 0, 0],
        [0, 8, 0, 0],
    ]
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    table[0] = 0
    cfg = PosConfig(window=2, after=1, hidden=[8], embeddings="file", freeze=False, embed_lr=0.1, dropout=0.5)
    model = WindowTagger(table, 3, cfg).eval()
    vocab = {w: i for i, w in enumerate(["<pad>", "a", "b", "c", "d", "e"])}
    words = ["a", "c", "b", "e"]
    expected = model(windows([[vocab[w] for w in words]], 2, after=1)).argmax(1).tolist()
    (tagged,) = tag_sentences(model, vocab, ["X", "Y", "Z"], [words], cfg)
    assert [t for _, t in tagged] == [["X", "Y", "Z"][i] for i in expected]

    # model.embed_lr: the table stays fixed, a zero offset learns, and Adam moves the vectors by ~lr * 0.1
    assert not model.embed.weight.requires_grad and model.offset.weight.requires_grad
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.tensor([[1, 2, 3]])).sum().backward()  # eval mode: no dropout zeros in the gradient
    optimizer.step()
    moved = (model.table() - table)[1:4].abs()
    assert torch.allclose(moved, torch.full_like(moved, 0.001), rtol=1e-3)
    assert torch.equal(model.embed.weight, table) and torch.equal(model.table()[4:], table[4:])

    # PTB's training text ends with CoNLL-2000's test sentences (WSJ section 20): they are cut off
    test = TaggedSentences([["Rockwell", "International", "Corp."], ["It", "rose", "#", "%"]], [[0], [0]])
    ptb = ["the market fell", "rockwell international corp.", "it rose N N"]
    assert ptb_without_conll_test(ptb, test) == ["the market fell"]
    with pytest.raises(DataUnavailableError, match="does not end with"):
        ptb_without_conll_test(ptb[:2], test)


@pytest.fixture()
def embeddings_file(tmp_path):
    rng = np.random.default_rng(1)
    words = ["the", "to", "her", ",", ".", "bank", "went", "woman"]
    path = tmp_path / "emb.txt"
    _write_text(path, words, rng.uniform(-0.5, 0.5, (len(words), 16)).astype(np.float32))
    return path


def test_pos_tagger_trains_tags_the_book_sentence_and_serves_fdl_tag(env, embeddings_file):
    launch.launch(
        "pos-tagger",
        [
            f"model.embeddings={embeddings_file}",
            "model.freeze=true",
            "model.hidden=[64,32]",
            "data.train_limit=20000",
            "data.eval_limit=3000",
            "trainer.epochs=1",
            "trainer.threads=1",
        ],
        multirun=False,
    )
    (run,) = run_dirs(env, "pos-tagger")
    summary = read_summary(run)
    assert summary["final"]["test/accuracy"] > 0.3, summary["final"]  # the commonest tag (NN): ~0.14
    tagged = (run / "artifacts" / "tagged.txt").read_text()
    assert tagged.startswith("epoch 1: The/") and "umbrella/" in tagged
    vocab = json.loads((run / "artifacts" / "vocab.json").read_text())
    assert vocab["from_file"] >= 8 and len(vocab["tags"]) == 44  # "The" finds "the" too

    runner = CliRunner()
    result = runner.invoke(cli, ["tag", str(run), BOOK_SENTENCE])
    assert result.exit_code == 0, result.output
    assert result.output.count("/") == len(tokenize(BOOK_SENTENCE))
    result = runner.invoke(cli, ["tag", str(run)], input="Stocks fell.\n\nShe went home.\n")
    assert result.exit_code == 0 and len(result.output.splitlines()) == 2
    result = runner.invoke(cli, ["tag", str(run), "   "])  # fdl's main() prints these in one line
    assert isinstance(result.exception, UsageError) and "empty" in str(result.exception)

    metrics = launch.evaluate(run, "best", "test")
    assert metrics["test/accuracy"] == pytest.approx(summary["best"]["test/accuracy"])


def test_pos_tagger_rejects_bad_config(env):
    result = CliRunner().invoke(cli, ["train", "pos-tagger", "model.embeddings=null", "model.freeze=true"])
    assert isinstance(result.exception, UsageError) and "freeze" in str(result.exception)
    for bad in ("model.after=-1", "model.dropout=1", "model.embed_lr=0"):
        result = CliRunner().invoke(cli, ["train", "pos-tagger", bad])
        assert isinstance(result.exception, UsageError) and bad.split("=")[0] in str(result.exception), bad


def test_length_buckets_are_a_seeded_permutation_of_similar_lengths(env):
    from fdlcli import config
    from fdlcli.experiments.sentiment import SentimentClassification

    cfg = config.validate(
        config.compose(
            "sentiment-lstm",
            ["data.val_size=100", "data.train_limit=640", "data.eval_limit=100", "data.bucket=10"],
        )
    )
    task = SentimentClassification(cfg)
    lengths = (task.load_data().train[0] != 0).sum(dim=1)

    def draw() -> torch.Tensor:
        permutation = torch.randperm(640, generator=torch.Generator().manual_seed(3))
        return task.epoch_order(permutation, 32, torch.Generator().manual_seed(4))

    order = draw()
    assert torch.equal(order, draw()) and torch.equal(order.sort().values, torch.arange(640))
    spread = lambda o: (lengths[o].view(-1, 32).amax(1) - lengths[o].view(-1, 32).amin(1)).float().mean()  # noqa: E731
    assert spread(order) < 0.3 * spread(torch.randperm(640))  # batches hold reviews of similar length


def test_sentiment_lstm_trains_and_fdl_sentiment_reads_stdin(env, capsys):
    launch.launch(
        "sentiment-lstm",
        [
            "data.val_size=200",
            "data.train_limit=640",
            "data.eval_limit=200",
            "data.vocab_size=3000",
            "data.max_len=120",
            "model.embed=16",
            "model.hidden=16",
            "trainer.epochs=1",
            "trainer.threads=1",
            "trainer.threads=1",
        ],
        multirun=False,
    )
    (run,) = run_dirs(env, "sentiment-lstm")
    summary = read_summary(run)
    assert 0.0 <= summary["final"]["test/accuracy"] <= 1.0 and summary["steps"] == 20
    result = fdl("sentiment", str(run), "A wonderful, moving film.", env=env)  # the real command line
    assert result.returncode == 0, result.stderr
    label, p, _ = result.stdout.split("\t")
    assert label in ("negative", "positive") and 0.0 <= float(p) <= 1.0
    result = CliRunner().invoke(cli, ["sentiment", str(run)], input="Awful.\nGreat!\n")
    assert result.exit_code == 0 and len(result.output.splitlines()) == 2
    code, err = fdl_in_process(["sentiment", str(run / "nowhere"), "good"], capsys)
    assert code == 1 and err.strip().startswith("error: no such run directory")
    metrics = launch.evaluate(run, "last", "val")
    assert 0.0 <= metrics["val/accuracy"] <= 1.0
