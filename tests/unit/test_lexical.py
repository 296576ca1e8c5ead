"""The lexical head: its n-gram features, its file, how it combines with the network's answer, its
fits, and the classifier applying it to exactly the tokens the model read."""

import shutil

import numpy as np
import pytest

from sentiment.model.answers import WindowAnswers
from sentiment.model.build import default_base
from sentiment.model.lexical_fit import LexicalRecipe, fit_combinations, fit_lexical_head
from tests.unit.test_classifier import HEAD, LONG, RecordingPredictor, classify, make_classifier
from transformer.bundle import BundleError
from transformer.core.lexical import Combination, LexicalHead, content_ids, ngram_features
from transformer.core.tokenization import TextEncoder
from transformer.core.windows import Truncation


def head_of(weights: dict[int, float], vocab_size: int = 30522, buckets: int = 1 << 10, max_n: int = 2,
            intercept: float = 0.0, texts: Combination | None = None, documents: Combination | None = None):
    features = vocab_size + buckets
    w = np.zeros(features, dtype=np.float32)
    for index, value in weights.items():
        w[index] = value
    return LexicalHead(vocab_size, buckets, max_n, np.ones(features, dtype=np.float32), w, intercept, texts, documents)


def test_ngram_features_are_the_ids_and_their_hashed_runs_counted():
    indices, counts = ngram_features(np.array([1, 2, 1, 2]), vocab_size=10, buckets=7, max_n=2)
    # unigrams 1 and 2 twice each; bigram (1,2) -> 10 + (12 % 7) twice, (2,1) -> 10 + (21 % 7) once
    assert dict(zip(indices.tolist(), counts.tolist())) == {1: 2, 2: 2, 15: 2, 10: 1}


def test_longer_ngrams_hash_as_the_whole_run_would_without_overflow():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30522, size=200)
    vocab, buckets = 30522, 1 << 20
    indices, counts = ngram_features(ids, vocab, buckets, max_n=3)
    a, b, c = (ids[i:len(ids) - 2 + i].astype(object) for i in range(3))
    trigrams = [vocab + (x * vocab * vocab + y * vocab + z) % buckets for x, y, z in zip(a, b, c)]
    found = dict(zip(indices.tolist(), counts.tolist()))
    assert all(found.get(int(code), 0) >= 1 for code in trigrams)
    assert sum(counts) == len(ids) + (len(ids) - 1) + (len(ids) - 2)
    assert ngram_features(np.array([], dtype=np.int64), vocab, buckets, 3)[0].size == 0


def test_content_ids_are_the_texts_tokens_once_whatever_the_windows_and_stride():
    tokenizer_file = default_base() / "tokenizer.json"
    whole = TextEncoder(tokenizer_file, 512, True).windows([LONG])[0]
    expected = content_ids(whole.windows, whole.new_tokens)
    assert len(whole.windows) == 1 and len(expected) == whole.token_count
    for stride in (0, 5):
        text = TextEncoder(tokenizer_file, 24, True, stride=stride).windows([LONG])[0]
        assert len(text.windows) > 3
        assert content_ids(text.windows, text.new_tokens).tolist() == expected.tolist()


def test_the_margin_is_the_normalized_tfidf_dot_the_weights():
    head = head_of({5: 2.0, 6: -1.0}, intercept=0.5)
    # unigrams 5, 6 and one bigram, each once: three equal features, L2-normalized to 1/sqrt(3)
    assert head.margin(np.array([5, 6])) == pytest.approx(0.5 + (2.0 - 1.0) / np.sqrt(3), rel=1e-6)
    assert head.margin(np.array([], dtype=np.int64)) == pytest.approx(0.5)


def test_combine_weighs_the_networks_log_odds_and_the_margin_per_kind_of_text():
    texts, documents = Combination(1.0, 0.0, 0.0), Combination(0.5, 2.0, -0.25)
    head = head_of({7: 3.0}, texts=texts, documents=documents)
    scores = np.array([0.2, 0.8], dtype=np.float32)
    np.testing.assert_allclose(head.combine(scores, np.array([7]), documents=False), scores, rtol=1e-6)
    z = 0.5 * np.log(0.8 / 0.2) + 2.0 * head.margin(np.array([7])) - 0.25
    np.testing.assert_allclose(head.combine(scores, np.array([7]), documents=True),
                               [1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], rtol=1e-5)
    # no fitted combination (a checkpoint's head): the network's answer is left as it is
    assert head_of({}).combine(scores, np.array([7]), documents=True) is scores
    # a head for documents only (the default model's) leaves one-window texts as the network answered
    documents_only = head_of({7: 3.0}, documents=documents)
    assert documents_only.combines and documents_only.combine(scores, np.array([7]), documents=False) is scores


def test_a_head_survives_its_file_and_its_digest_names_weights_and_combinations(tmp_path):
    head = head_of({3: 1.5, 30600: -2.0}, intercept=0.1, texts=Combination(0.9, 1.1, 0.0))
    head.write_beside(tmp_path / "tokenizer.json")
    loaded = LexicalHead.beside(tmp_path / "tokenizer.json")
    assert loaded.digest == head.digest and loaded.texts == head.texts and loaded.documents is None
    ids = np.array([3, 9, 3, 4])
    assert loaded.margin(ids) == head.margin(ids)
    assert head_of({3: 1.5, 30600: -2.0}, intercept=0.1).digest != head.digest
    assert LexicalHead.beside(tmp_path / "elsewhere" / "tokenizer.json") is None
    (tmp_path / "lexical_head.npz").write_bytes(b"not a head")
    with pytest.raises(ValueError, match="is not a lexical head"):
        LexicalHead.beside(tmp_path / "tokenizer.json")


def test_fitted_weights_read_the_words_that_decide_the_label():
    rng = np.random.default_rng(1)
    good, bad, filler = 11, 12, list(range(100, 140))
    ids, labels = [], []
    for _ in range(400):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(filler, size=8)) + [good if label else bad]
        ids.append(np.array(rng.permutation(words)))
        labels.append(label)
    head = fit_lexical_head(ids, np.array(labels), vocab_size=200, recipe=LexicalRecipe(max_n=2, buckets=256, c=4.0))
    assert head.weights[good] > 0 > head.weights[bad]
    assert head.margin(np.array([100, good, 101])) > 0 > head.margin(np.array([100, bad, 101]))


def test_combinations_are_fitted_per_kind_of_text_and_documents_need_enough_of_them():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=600)
    sign = 2 * labels - 1
    network = sign * rng.uniform(0.5, 2, size=600)
    noisy = sign * rng.uniform(-1, 3, size=600)
    documents = np.arange(600) >= 400
    # one-window texts: the network is the one to trust; documents: the head
    log_odds = np.where(documents, noisy, network)
    margins = np.where(documents, network, noisy)
    texts, docs = fit_combinations(log_odds, margins, labels, documents)
    assert texts.network > texts.lexical and docs.lexical > docs.network
    assert fit_combinations(log_odds, margins, labels, np.arange(600) >= 580)[1] is None
    texts, docs = fit_combinations(log_odds, margins, labels, documents, kinds=("documents",))
    assert texts is None and docs.lexical > docs.network


def test_window_answers_combine_only_once_the_head_has_combinations():
    logits = [np.array([[0.0, 1.0]], dtype=np.float32), np.array([[0.0, -1.0], [0.0, 3.0]], dtype=np.float32)]
    margins = np.array([-4.0, 2.0])
    plain = WindowAnswers(logits, [np.array([5]), np.array([5, 5])], margins, head_of({}))
    combined = plain.with_head(head_of({}, texts=Combination(0.0, 1.0, 0.0), documents=Combination(1.0, 0.0, 0.0)))
    np.testing.assert_allclose(plain.log_scores(), plain.with_head(None).log_scores())
    scores = np.exp(combined.log_scores())
    assert scores[0].argmax() == 0 and scores[0][1] == pytest.approx(1 / (1 + np.exp(4.0)), rel=1e-5)
    np.testing.assert_allclose(scores[1], np.exp(plain.log_scores()[1]), rtol=1e-5)  # documents: the network's
    assert combined.only(np.array([False, True])).margins.tolist() == [2.0]


def test_the_classifier_combines_what_the_model_read_and_names_the_head_in_its_cache_keys(tmp_path):
    """In chunk mode the head reads the whole text; in head mode only the first window, as the network."""
    shutil.copyfile(default_base() / "tokenizer.json", tmp_path / "tokenizer.json")
    encoder = TextEncoder(tmp_path / "tokenizer.json", 32, True)
    late = encoder.tokenize(["word39"])[0].ids[2]  # "##39": only in LONG's last word
    head = head_of({late: -200.0}, texts=Combination(1.0, 1.0, 0.0), documents=Combination(1.0, 1.0, 0.0))
    head.write_beside(tmp_path / "tokenizer.json")
    plain = make_classifier(RecordingPredictor())
    lexical = make_classifier(RecordingPredictor(), bundle_dir=tmp_path)
    for mode in Truncation:
        assert lexical._how[mode] == plain._how[mode] + f".l{head.digest}"
    chunk_plain, chunk = classify(plain, [LONG])[0], classify(lexical, [LONG])[0]
    assert chunk.windows > 1 and chunk_plain.probabilities[1] > 0.5 > chunk.probabilities[1]
    first = classify(lexical, [LONG], HEAD)[0]
    assert first.probabilities[1] == pytest.approx(classify(plain, [LONG], HEAD)[0].probabilities[1], rel=1e-5)
    assert chunk.raw == chunk_plain.raw  # raw scores stay the network's logits


def test_a_head_on_a_model_that_is_not_two_softmax_labels_is_refused(tmp_path):
    shutil.copyfile(default_base() / "tokenizer.json", tmp_path / "tokenizer.json")
    head_of({}, texts=Combination(1.0, 1.0, 0.0)).write_beside(tmp_path / "tokenizer.json")
    from transformer.bundle import ModelBundle
    from transformer.core.classifier import lexical_head_of

    encoder = TextEncoder(tmp_path / "tokenizer.json", 32, True)
    bundle = ModelBundle(labels=["a", "b", "c"], max_length=32, uses_token_type_ids=True, lowercase=True,
                         fingerprint="f" * 64, max_batch_size=4)
    with pytest.raises(BundleError, match="combines with two softmax scores"):
        lexical_head_of(encoder, bundle)


def test_the_repository_check_names_a_head_the_transformer_would_not_apply(tmp_path):
    from sentiment.model.check import _lexical_problems
    from transformer.bundle import ModelBundle

    shutil.copyfile(default_base() / "tokenizer.json", tmp_path / "tokenizer.json")
    tokenizer_file = tmp_path / "tokenizer.json"
    bundle = ModelBundle(labels=["NEGATIVE", "POSITIVE"], max_length=32, uses_token_type_ids=True, lowercase=True,
                         fingerprint="f" * 64, max_batch_size=4)
    assert _lexical_problems(tokenizer_file, bundle) == []  # no head: nothing to check
    head_of({}, vocab_size=100).write_beside(tokenizer_file)
    problems = _lexical_problems(tokenizer_file, bundle)
    assert any("has no combination" in p for p in problems)
    assert any("reads 100 token ids; its tokenizer has 30522" in p for p in problems)
    head_of({}, texts=Combination(1.0, 1.0, 0.0)).write_beside(tokenizer_file)
    assert _lexical_problems(tokenizer_file, bundle) == []
    three = bundle.model_copy(update={"labels": ["a", "b", "c"]})
    assert any("combines with two softmax scores" in p for p in _lexical_problems(tokenizer_file, three))
