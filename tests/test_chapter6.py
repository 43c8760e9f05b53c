"""Chapter 6: autoencoders (+ PCA analysis) and skip-gram, on tiny slices of the real data."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import fdl, fdl_call, fdl_in_process, metric_records, read_summary, run_dirs

from fdlcli.experiments import autoencoder as ae
from fdlcli.experiments import word2vec as w2v


@pytest.mark.parametrize(
    ("experiment", "figures"),
    [
        ("autoencoder-mnist", {"codes_pca_vs_autoencoder.png", "reconstructions.png"}),
        ("denoising-autoencoder-mnist", {"denoising.png", "reconstructions.png"}),
        ("sparse-autoencoder-mnist", {"code_activations.png"}),  # its KL penalty on (model.sparsity_beta=0.1)
    ],
)
def test_autoencoders_train_and_compare_with_pca(golden_run, experiment, figures):
    """The golden runs (200 digits, 2 epochs, hidden [64,32]; autoencoder-mnist with 2-number codes) finish
    with the PCA comparison and the figures; test_golden pins its values."""
    trained = golden_run(experiment)
    summary = read_summary(trained.run)
    final = summary["final"]
    for key in ("val/cost", "val/corrupted_cost", "val/mean_activation", "val/near_zero", "test/cost"):
        assert math.isfinite(final[key]), key
    assert summary["best"]["metric"] in ("val/cost", "val/corrupted_cost")
    codes = summary["codes"]
    for method in ("autoencoder", "pca"):
        assert 0.1 < codes[method]["knn_accuracy"] <= 1.0  # better than chance on real digits
        assert 0.1 < codes[method]["logistic_accuracy"] <= 1.0
        assert codes[method]["test_cost"] > 0
    assert figures <= {p.name for p in (trained.run / "artifacts").iterdir()}
    assert "codes (k=" in trained.stdout


def test_autoencoder_rejects_bad_values(env, capsys):
    code, err = fdl_in_process(["train", "sparse-autoencoder-mnist", "model.sparsity_rho=1.5"], capsys)
    assert code == 2 and "sparsity_rho" in err and "Traceback" not in err


def test_autoencoder_init_follows_the_books_layer():
    torch.manual_seed(0)
    book = ae.Autoencoder(ae.AutoencoderConfig(hidden=[1000, 500], code_size=2))
    first, batch_norm = book.encoder[0], book.encoder[1]
    assert abs(first.weight.std().item() - 784**-0.5) < 0.02 * 784**-0.5  # N(0, 1/fan_in)
    assert torch.count_nonzero(first.bias) == 0 and batch_norm.eps == 1e-3
    default = ae.Autoencoder(ae.AutoencoderConfig(hidden=[1000, 500], code_size=2, init="torch"))
    assert default.encoder[0].weight.std().item() < 0.7 * 784**-0.5  # PyTorch's U(+-1/sqrt(fan_in))


def test_pca_matches_svd_reconstruction_and_kl_is_zero_at_target():
    torch.manual_seed(0)
    x = torch.randn(200, 12) @ torch.randn(12, 12)
    pca = ae.PCA(x, 3)
    recon = pca.decode(pca.encode(x))
    centered = x - x.mean(0)
    u, s, vh = torch.linalg.svd(centered, full_matrices=False)
    best = (u[:, :3] * s[:3]) @ vh[:3] + x.mean(0)  # Eckart-Young: the best rank-3 reconstruction
    assert torch.allclose(recon, best, atol=1e-3)
    assert ae.kl_sparsity(torch.full((10, 4), 0.05), 0.05).abs().item() < 1e-6
    assert ae.kl_sparsity(torch.full((10, 4), 0.5), 0.05).item() > 0


@pytest.mark.parametrize("loss", ["nce", "neg"])
def test_sgd_step_applies_the_gradient_of_each_groups_mean_loss(loss):
    """The hand-written update equals an autograd SGD step on the sum over groups of each group's mean
    loss, each group with its own shared negatives (duplicate words included)."""
    torch.manual_seed(0)
    cfg = w2v.SkipGramConfig(dim=8, negatives=3, loss=loss, init="book", share=2)
    model = w2v.SkipGram(30, cfg)
    targets, contexts = torch.tensor([1, 2, 2, 7]), torch.tensor([3, 3, 9, 1])
    negatives = torch.tensor([[4, 4, 5], [3, 0, 2]])  # group 0: pairs 0-1, group 1: pairs 2-3
    noise = w2v.noise_distribution(torch.arange(30, 0, -1), cfg)
    log_kq = (noise * cfg.negatives).log() if loss == "nce" else None
    embed, out, bias = (p.detach().clone().requires_grad_() for p in (model.embed, model.out, model.bias))
    reference = torch.zeros(())
    for group in range(2):
        t, c, n = targets[2 * group : 2 * group + 2], contexts[2 * group : 2 * group + 2], negatives[group]
        pos, neg = (embed[t] * out[c]).sum(1), embed[t] @ out[n].T
        if log_kq is not None:
            pos = pos + bias[c] - log_kq[c]
            neg = neg + bias[n] - log_kq[n]
        group_loss = torch.nn.functional.softplus(-pos).sum() + torch.nn.functional.softplus(neg).sum()
        (group_loss / 2).backward()  # the mean over the group's two pairs
        reference = reference + group_loss.detach()
    total = w2v.sgd_step(model, targets, contexts, negatives, log_kq, lr=0.5)
    assert torch.allclose(total, reference)
    assert torch.allclose(model.embed, embed.detach() - 0.5 * embed.grad, atol=1e-6)
    assert torch.allclose(model.out, out.detach() - 0.5 * out.grad, atol=1e-6)
    if loss == "nce":
        assert torch.allclose(model.bias, bias.detach() - 0.5 * bias.grad, atol=1e-6)


def test_epoch_pairs_stay_inside_the_window_and_are_reproducible():
    corpus = torch.arange(1000) % 50
    cfg = w2v.SkipGramConfig(window=3, contexts_per_target=4, negatives=7, share=32)
    noise = w2v.noise_distribution(torch.ones(50), cfg)
    first = w2v.draw_epoch(corpus, cfg, noise, seed=1, epoch=2)
    again = w2v.draw_epoch(corpus, cfg, noise, seed=1, epoch=2)
    assert torch.equal(first.contexts, again.contexts) and torch.equal(first.negatives, again.negatives)
    gap = (first.contexts - first.targets) % 50  # ids are positions mod 50 here
    assert set(gap.unique().tolist()) <= {1, 2, 3, 47, 48, 49}
    assert first.negatives.shape == (4000 // 32, 7) and len(first.targets) == 4000 // 32 * 32
    per_target = (first.contexts.view(-1, 4) - first.targets.view(-1, 4)) % 50
    assert all(len(set(row)) == 4 for row in per_target.tolist())  # distinct context words per target


def test_damped_step_divides_each_rows_summed_step_by_one_plus_its_curvature():
    """model.update=damped: row r moves by -step * sum(grad) / (1 + step * sum(sigmoid'(z) |other|^2)),
    summed over the terms (pair logits) that touch r, written here one pair and one noise word at a time."""
    torch.manual_seed(0)
    cfg = w2v.SkipGramConfig(dim=6, negatives=3, loss="neg", init="book", share=2)
    model = w2v.SkipGram(12, cfg)
    model.out.normal_()
    targets, contexts = torch.tensor([1, 1, 2, 7]), torch.tensor([3, 5, 9, 1])
    negatives = torch.tensor([[4, 4, 5], [3, 0, 2]])
    embed, out = model.embed.clone(), model.out.clone()
    lr, share = 0.8, 2
    step = lr / share
    grad_in, grad_out = torch.zeros_like(embed), torch.zeros_like(out)
    h_in, h_out = torch.zeros(12), torch.zeros(12)
    for i, (t, c) in enumerate(zip(targets.tolist(), contexts.tolist(), strict=True)):
        for word, label in [(c, 1.0), *[(n, 0.0) for n in negatives[i // share].tolist()]]:
            p = torch.sigmoid(embed[t] @ out[word])
            grad_in[t] += (p - label) * out[word]
            grad_out[word] += (p - label) * embed[t]
            h_in[t] += p * (1 - p) * out[word].square().sum()
            h_out[word] += p * (1 - p) * embed[t].square().sum()
    w2v.sgd_step(model, targets, contexts, negatives, None, lr, damped=True)
    expected_in = embed - step * grad_in / (1 + step * h_in)[:, None]
    expected_out = out - step * grad_out / (1 + step * h_out)[:, None]
    assert torch.allclose(model.embed, expected_in, atol=1e-5)
    assert torch.allclose(model.out, expected_out, atol=1e-5)
    assert not torch.allclose(expected_out, out - step * grad_out, atol=1e-3)  # the damping did something


def test_subsampling_keeps_gensims_fraction_of_frequent_words():
    # gensim's keep probability, t = sample * corpus words: (sqrt(c / t) + 1) * t / c, capped at 1
    keep = w2v.keep_probability(torch.tensor([810, 160, 20, 10]), sample=0.01)  # t = 10
    assert torch.allclose(keep, torch.tensor([(9 + 1) * 10 / 810, (4 + 1) * 10 / 160, 1.0, 1.0]))
    corpus = torch.cat([torch.zeros(9000, dtype=torch.int64), torch.arange(1, 1001)])  # word 0: 90%
    corpus = corpus[torch.randperm(len(corpus), generator=torch.Generator().manual_seed(0))]
    cfg = w2v.SkipGramConfig(window=3, contexts_per_target=4, subsample=1e-3, negatives=5, share=4)
    epoch = w2v.draw_epoch(corpus, cfg, w2v.noise_distribution(torch.ones(1001), cfg), seed=0, epoch=0)
    kept_zeros = int((epoch.targets == 0).sum()) / 4  # 4 pairs per kept target
    expected = 9000 * (math.sqrt(900) + 1) * 10 / 9000  # t = 1e-3 * 10,000 words = 10: about 310 kept
    assert abs(kept_zeros - expected) < 4 * math.sqrt(expected)
    assert int((epoch.targets != 0).sum()) == 4 * 1000  # words rarer than t are never dropped


def test_skipgram_config_rejects_unknown_options():
    assert "choose from: sample, dynamic" in w2v.SkipGramConfig(contexts="all").check()
    assert "choose from: sgd, damped" in w2v.SkipGramConfig(update="adam").check()
    assert "[0, 1)" in w2v.SkipGramConfig(subsample=1.5).check()
    assert w2v.SkipGramConfig(contexts="dynamic", update="damped", subsample=1e-3).check() is None


def test_dynamic_windows_take_every_word_within_a_random_reach():
    corpus = torch.arange(1000)  # ids are positions
    cfg = w2v.SkipGramConfig(window=3, contexts="dynamic", negatives=5, share=1)
    epoch = w2v.draw_epoch(corpus, cfg, w2v.noise_distribution(torch.ones(1000), cfg), seed=0, epoch=0)
    gap = (epoch.contexts - epoch.targets + 500) % 1000 - 500
    assert set(gap.unique().tolist()) == {-3, -2, -1, 1, 2, 3}
    for target in epoch.targets.unique()[:50].tolist():  # each target: all of -b..-1, 1..b for one b
        offsets = sorted(gap[epoch.targets == target].tolist())
        reach = offsets[-1]
        assert offsets == [*range(-reach, 0), *range(1, reach + 1)]
    assert 3.7 < len(epoch.targets) / 1000 < 4.3  # b ~ U{1, 2, 3}: 4 context words on average
    again = w2v.draw_epoch(corpus, cfg, w2v.noise_distribution(torch.ones(1000), cfg), seed=0, epoch=0)
    assert torch.equal(epoch.contexts, again.contexts)


def test_analogy_and_wordsim_scoring(tmp_path):
    words = ["king", "queen", "man", "woman", "apple"]
    index = {w: i for i, w in enumerate(words)}
    vectors = torch.tensor([[1.0, 1, 0], [1, -1, 0], [0, 1, 0.1], [0, -1, 0.1], [0, 0, 1]])
    questions = tmp_path / "q.txt"
    questions.write_text(": test\nman woman king queen\nMan King woman Queen\nman woman king zebra\n")
    accuracy, count = w2v.analogy_accuracy(vectors, index, questions)
    assert count == 2 and accuracy == 1.0
    sims = tmp_path / "ws.tsv"
    sims.write_text("# header\nking\tqueen\t8\nking\tapple\t1\nman\twoman\t9\nqueen\tapple\t0.5\n")
    rho, pairs = w2v.wordsim_spearman(vectors, index, sims)
    assert pairs == 4 and -1 <= rho <= 1


def test_skipgram_trains_exports_and_evaluates(env, capsys):
    overrides = [
        "data.train_limit=20000",
        "data.batch_size=256",
        "optim.lr=0.4",
        "model.loss=neg",
        "model.sampler=unigram",
        "model.init=small",
        "model.subsample=1e-3",  # gensim's recipe: the epochs' pair counts vary, the lr decays over both
        "model.contexts=dynamic",
        "model.update=damped",
        "model.lr_decay=true",
        "trainer.epochs=2",
        "trainer.tsne=false",
        "trainer.neighbours_every=100",
    ]
    result = fdl("train", "skipgram", *overrides, env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "skipgram")
    summary = read_summary(run)
    assert summary["epochs"] == 2 and summary["words_per_s"] > 0
    assert summary["final"]["eval/analogy_questions"] > 0 and summary["final"]["eval/wordsim_pairs"] > 0
    assert "nearest neighbours" in result.stdout
    assert "# step 100\n" in (run / "artifacts" / "neighbours.txt").read_text()
    names = [record["name"] for record in metric_records(run)]
    assert names.count("train/words_per_s") == 2 and names.count("eval/wordsim") == 2
    assert names.count("train/epoch_cost") == 2 and "train/lr" in names
    # the scores come from test sets: nothing is monitored, no best checkpoint
    assert summary["best"] == {"metric": None, "value": None}
    assert not (run / "checkpoints" / "best.json").exists()
    lines = (run / "artifacts" / "embeddings.txt").read_text().splitlines()
    count, dim = map(int, lines[0].split())
    assert count == len(lines) - 1 == summary["vocabulary"] and dim == 128
    assert len(lines[1].split()) == dim + 1
    code, _, err = fdl_call(["eval", str(run)], capsys)  # "best" falls back to the last checkpoint
    assert code == 0, err
    record = json.loads((run / "eval-best-test.json").read_text())
    assert record["checkpoint"] == json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    assert record["metrics"]["eval/analogy"] == pytest.approx(summary["final"]["eval/analogy"])


def test_skipgram_stopped_mid_epoch_resumes_exactly(env):
    """A SIGTERM during training, then --resume: the same records (timings aside) and the same vectors as
    an uninterrupted run; the draws of the interrupted epoch are redrawn from (seed, epoch)."""
    overrides = [
        "data.train_limit=10000",
        "data.batch_size=256",
        "model.subsample=1e-3",  # the epochs' step counts are draws
        "model.lr_decay=true",
        "trainer.epochs=2",
        "trainer.log_every=5",
        "trainer.checkpoint_every=40",
        "trainer.tsne=false",
        "seed=5",
    ]
    assert fdl("train", "skipgram", *overrides, env=env).returncode == 0
    (reference,) = run_dirs(env, "skipgram")
    process = subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", "skipgram", *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        runs = [run for run in run_dirs(env, "skipgram") if run != reference]
        if runs and (runs[0] / "metrics.jsonl").exists() and (runs[0] / "metrics.jsonl").read_bytes():
            break  # training has logged its first records
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode != 0 and "resume with" in stderr, stderr  # stopped before the end
    (stopped,) = [run for run in run_dirs(env, "skipgram") if run != reference]
    resumed = fdl("train", "--resume", str(stopped), env=env)
    assert resumed.returncode == 0, resumed.stderr

    def records(run):  # without the words/s records (timings; a resumed epoch logs none)
        return [record for record in metric_records(run) if not record["name"].endswith("_per_s")]

    assert records(stopped) == records(reference)
    embeddings = [(run / "artifacts" / "embeddings.txt").read_text() for run in (reference, stopped)]
    assert embeddings[0] == embeddings[1]


def _hogwild_step(
    inputs, outputs, stream, sentence, noise_word, span, window, per_target, lr, group=1, seed=1
):
    """One kernel call with 4 negatives that are all ``noise_word`` (every alias bucket points to it)."""
    from fdlcli.experiments import _word2vec_hogwild as hw

    vocab = len(outputs)
    accept, alias = np.zeros(vocab, np.float32), np.full(vocab, noise_word, np.int64)
    args = (
        stream,
        sentence,
        accept,
        alias,
        *hw.sigmoid_tables(),
        *span,
        window,
        per_target,
        4,
        group,
        lr,
        lr,
        seed,
    )
    return hw.train_chunk(inputs, outputs, *args)


@pytest.mark.parametrize("group", [1, 2])
def test_hogwild_kernel_takes_one_sgd_step_per_group_of_targets_sharing_negatives(group):
    """Stream 0 1 2 4, window 1 with both neighbours taken, 4 negatives all drawn as word 3. group=1: target 1
    with contexts 0 and 2; group=2: targets 1 and 2 (contexts 1 and 4) share the negatives. With U the
    contexts' input rows and V the output rows of the targets, then the negatives:
    in(c) += lr (labels - sigmoid(U V^T)) V, out(v) += lr (labels - sigmoid(U V^T))^T U, where a context's
    label is 1 for its own target, 0 for the negatives and it has no term for the other target; the four
    copies of out(3) add up, and the loss is the sum of -log sigmoid(+-score) over the terms."""
    torch.manual_seed(0)
    inputs, outputs = torch.randn(5, 8) * 0.5, torch.randn(5, 8) * 0.5
    contexts, owners = ([0, 2], [0, 0]) if group == 1 else ([0, 2, 1, 4], [0, 0, 1, 1])
    targets = [1] if group == 1 else [1, 2]
    rows = [*targets, 3, 3, 3, 3]
    u, v = inputs[contexts], outputs[rows]
    scores = u @ v.T
    labels = torch.zeros_like(scores)
    present = torch.ones_like(scores)
    for row, owner in enumerate(owners):
        labels[row, owner] = 1.0
        present[row, :group] = 0.0
        present[row, owner] = 1.0
    g = 0.1 * (labels - torch.sigmoid(scores)) * present
    expected_in, expected_out = inputs.clone(), outputs.clone()
    expected_in.index_add_(0, torch.tensor(contexts), g @ v)
    expected_out.index_add_(0, torch.tensor(rows), g.T @ u)
    terms = torch.nn.functional.logsigmoid(torch.where(labels.bool(), scores, -scores))
    expected_loss = -(terms * present).sum()
    a, b = inputs.numpy().copy(), outputs.numpy().copy()
    stream, sentence = np.array([0, 1, 2, 4]), np.zeros(4, np.int64)
    loss, pairs = _hogwild_step(a, b, stream, sentence, 3, (1, 1 + group), 1, 2, 0.1, group=group)
    assert pairs == len(contexts)
    assert loss == pytest.approx(float(expected_loss), rel=0.02)  # the sigmoid comes from a 1,000-cell table
    assert torch.allclose(torch.from_numpy(a), expected_in, atol=2e-3)
    assert torch.allclose(torch.from_numpy(b), expected_out, atol=2e-3)
    assert not torch.allclose(torch.from_numpy(b), outputs, atol=1e-2)  # the step did something


def test_alias_table_draws_the_noise_distribution_exactly():
    from fdlcli.experiments import _word2vec_hogwild as hw

    noise = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625])
    accept, alias = hw.alias_table(noise)
    # P(i) = (accept[i] + sum of (1 - accept[j]) over the buckets j whose alias is i) / vocabulary
    probability = torch.from_numpy(accept.astype(np.float64)).clone()
    probability.index_add_(0, torch.from_numpy(alias), torch.from_numpy(1.0 - accept.astype(np.float64)))
    assert torch.allclose(probability / len(noise), noise.double(), atol=1e-6)


def test_hogwild_windows_stay_inside_a_sentence_and_are_reproducible():
    inputs = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    stream, sentence = np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1])
    runs = []
    for _ in range(2):
        a, b = inputs.copy(), np.zeros((6, 8), np.float32) + 0.1
        _hogwild_step(a, b, stream, sentence, 5, (0, 4), 3, 0, 0.1, seed=7)  # dynamic windows
        runs.append((a, b))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    a = inputs.copy()
    _hogwild_step(a, np.zeros((6, 8), np.float32) + 0.1, stream, sentence, 5, (0, 1), 3, 0, 0.1)
    changed = [row for row in range(6) if not np.array_equal(a[row], inputs[row])]
    assert changed == [1]  # target 0's only context in its sentence; 2 and 3 are in the next one


def test_hogwild_engine_resumes_exactly_and_respects_its_config(env, capsys):
    overrides = [
        "model.engine=hogwild",
        "model.loss=neg",
        "model.sampler=unigram",
        "model.init=small",
        "model.subsample=1e-3",
        "model.contexts=dynamic",
        "model.shared_targets=2",
        "optim.lr=0.05",
        "data.train_limit=20000",
        "trainer.chunk_words=3000",
        "trainer.threads=1",  # one thread: bit-identical runs (two race on shared rows, as gensim's)
        "trainer.tsne=false",
        "seed=3",
    ]
    assert fdl("train", "skipgram", *overrides, "trainer.epochs=2", env=env).returncode == 0
    (full,) = run_dirs(env, "skipgram")
    first = fdl("train", "skipgram", *overrides, "trainer.epochs=1", env=env)
    assert first.returncode == 0, first.stderr
    assert "steps of 3,000 target words" in first.stdout
    (half,) = [run for run in run_dirs(env, "skipgram") if run != full]
    resumed = fdl("train", "--resume", str(half), "trainer.epochs=2", env=env)
    assert resumed.returncode == 0, resumed.stderr
    final_full, final_resumed = read_summary(full)["final"], read_summary(half)["final"]
    assert final_full["eval/analogy_questions"] > 0
    assert final_resumed["eval/wordsim"] == final_full["eval/wordsim"]
    embeddings = [(run / "artifacts" / "embeddings.txt").read_text() for run in (full, half)]
    assert embeddings[0] == embeddings[1]
    code, err = fdl_in_process(["train", "skipgram", "model.engine=hogwild"], capsys)  # the book's NCE loss
    assert code != 0 and "model.loss=neg" in err
    assert "Traceback" not in err


def test_corpus_keeps_its_line_lengths_through_a_train_limit(tmp_path):
    from fdlcli.data.text import TextDataConfig, load_corpus

    text = tmp_path / "c.txt"
    text.write_text("a b c\n\nd e\nf g h i\n")
    corpus = load_corpus(TextDataConfig(file=str(text)))
    assert corpus.line_lengths.tolist() == [3, 0, 2, 4] and len(corpus.ids) == 9
    assert corpus.sentence_ids.tolist() == [0, 0, 0, 2, 2, 3, 3, 3, 3]
    cut = load_corpus(TextDataConfig(file=str(text), train_limit=6))
    assert cut.line_lengths.tolist() == [3, 0, 2, 1] and len(cut.ids) == 6


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.file={tmp}/nope.txt", "no such file"),
        ("data.batch_size=100", "multiple of model.share"),
        ("optim=adam", "takes optim.lr only"),  # its SGD is written out by hand
    ],
)
def test_skipgram_bad_input_is_one_line(env, tmp_path, capsys, override, message):
    code, err = fdl_in_process(["train", "skipgram", override.format(tmp=tmp_path)], capsys)
    assert code != 0 and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=bf16"], "does not support precision"),  # no autograd: nothing to autocast
        (["trainer.compile=true"], "does not support compile"),
        (["trainer.devices=2"], "does not support devices"),
        (["optim.schedule=linear"], "does not support schedule"),  # model.lr_decay is its rule
        (["trainer.grad_clip=1"], "no gradient to clip"),
        (["data.eval_limit=10"], "no evaluation split"),
    ],
)
def test_skipgram_refuses_what_it_cannot_honour(overrides, message):
    from fdlcli import config
    from fdlcli.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config.validate(config.compose("skipgram", overrides))


def test_hogwild_engine_refuses_an_accelerator_and_takes_the_cpu_for_auto():
    from fdlcli import config
    from fdlcli.errors import ConfigError

    hogwild = ["model.engine=hogwild", "model.loss=neg"]
    with pytest.raises(ConfigError, match="runs on the CPU only"):  # at validation: before any run dir
        config.validate(config.compose("skipgram", [*hogwild, "trainer.device=cuda"]))
    assert w2v.ignored_setting(config.validate(config.compose("skipgram", hogwild))) is None


def test_skipgram_on_a_tiny_text_file(env, tmp_path, capsys):
    """A 7-word vocabulary: fewer than 8 neighbours and a t-SNE perplexity below sklearn's 30; a corpus with
    fewer pairs than one minibatch's share is refused in one line."""
    small = tmp_path / "small.txt"
    small.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 300)
    result = fdl("train", "skipgram-word2vec", f"data.file={small}", "trainer.epochs=1", env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "skipgram-word2vec")
    assert (run / "artifacts" / "tsne.png").is_file()
    assert "nearest neighbours" in result.stdout
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a b a\n")
    code, err = fdl_in_process(["train", "skipgram", f"data.file={tiny}"], capsys)
    assert code != 0 and "fewer than model.share=32" in err
    assert "Traceback" not in err
