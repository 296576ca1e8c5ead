"""The long-document builders: deterministic, one side only, the shapes the integration tests rely on.

Synthetic sentences only: no model, no download."""

import csv

import pytest

from sentiment.model.data import Example
from sentiment.model.long_documents import (
    FILLER_WORDS,
    KINDS,
    MIN_FILLER_WORDS,
    MAJORITY_SHAPES,
    SENTENCES_PER_DOCUMENT,
    VERDICT_MIN_RATING,
    build_documents,
    filler_half,
    make_documents,
    neutral_filler,
)


def _split(tag: str, n: int = 60) -> list[Example]:
    """n sentences per label; every third one a clear verdict (|rating| >= 2)."""
    examples = []
    for i in range(n):
        strength = 3.0 if i % 3 == 0 else 1.0
        examples.append(Example(f"{tag} good sentence number {i}.", 1, strength, "movies"))
        examples.append(Example(f"{tag} bad sentence number {i}.", 0, -strength, "movies"))
    return examples


def _neutrals(n: int = 200) -> list[Example]:
    """Near-neutral sentences of 12 words each (ratings within +-0.5), plus a few that are not neutral."""
    words = " ".join(["word"] * 10)
    neutral = [Example(f"Neutral {i} {words}.", int(i % 2), (i % 11 - 5) / 10, "movies") for i in range(n)]
    return neutral + [Example("Loud and clear praise, not neutral at all.", 1, 0.6, "movies")]


TRAIN, TEST = _split("train"), _split("test")


def _docs(side: str, seed: int = 1, count: int = 20, kinds=KINDS):
    sentences = TRAIN if side == "train" else TEST
    return make_documents(sentences, neutral_filler(_neutrals(), side), kinds, count, seed)


def test_same_seed_same_documents_other_seed_other_documents():
    assert _docs("train", seed=1) == _docs("train", seed=1)
    assert [d.text for d in _docs("train", seed=1)] != [d.text for d in _docs("train", seed=2)]


def test_filler_halves_are_disjoint_cover_the_pool_and_hold_only_neutrals():
    train, test = neutral_filler(_neutrals(), "train"), neutral_filler(_neutrals(), "test")
    assert train and test and not set(train) & set(test)
    assert len(train) + len(test) == 200  # the 0.6-rated sentence is not filler
    assert all(filler_half(t) == "train" for t in train) and all(filler_half(t) == "test" for t in test)
    assert neutral_filler(_neutrals(), "dev") == train  # dev is training-side


def test_filler_half_ignores_case_and_spacing_and_excludes_split_texts():
    assert filler_half("A  plain Sentence.") == filler_half("a plain sentence.")
    pool = neutral_filler(_neutrals(), "train")
    assert pool[0] not in neutral_filler(_neutrals(), "train", exclude=[pool[0].upper()])


def test_documents_use_only_their_sides_sentences_and_filler():
    train_filler, test_filler = set(neutral_filler(_neutrals(), "train")), set(neutral_filler(_neutrals(), "test"))
    train_texts = {e.text for e in TRAIN}
    for document in _docs("train"):
        for part in document.parts:
            assert part in train_texts or part in train_filler
            assert not part.startswith("test") and part not in test_filler
    for document in _docs("test"):
        assert all(part.startswith("test") or part in test_filler for part in document.parts)


def test_verdict_last_has_enough_filler_before_one_clear_verdict_of_its_label():
    ratings = {e.text: e for e in TRAIN}
    documents = _docs("train", kinds=["verdict_last"], count=30)
    assert len(documents) == 30 and {d.label for d in documents} == {0, 1}
    for document in documents:
        *filler, verdict = document.parts
        assert document.verdict == len(document.parts) - 1
        assert document.text.endswith(verdict) and document.text == " ".join(document.parts)
        assert sum(len(s.split()) for s in filler) >= max(MIN_FILLER_WORDS, FILLER_WORDS[0])
        assert all(s not in ratings for s in filler)
        assert ratings[verdict].label == document.label and abs(ratings[verdict].rating) >= VERDICT_MIN_RATING


def test_verdict_first_is_the_control():
    ratings = {e.text: e for e in TRAIN}
    for document in _docs("train", kinds=["verdict_first"]):
        verdict, *filler = document.parts
        assert document.verdict == 0 and document.text.startswith(verdict)
        assert ratings[verdict].label == document.label and sum(len(s.split()) for s in filler) >= MIN_FILLER_WORDS


def test_homogeneous_documents_have_ten_distinct_sentences_of_their_label():
    labels = {e.text: e.label for e in TRAIN}
    documents = _docs("train", kinds=["homogeneous"])
    assert sorted(d.label for d in documents) == [0] * 10 + [1] * 10
    for document in documents:
        assert len(document.parts) == len(set(document.parts)) == SENTENCES_PER_DOCUMENT == 10
        assert {labels[s] for s in document.parts} == {document.label}


@pytest.mark.parametrize("kind", ["majority", "long_majority"])
def test_majority_documents_have_a_clear_majority(kind):
    labels = {e.text: e.label for e in TRAIN}
    total, minority = MAJORITY_SHAPES[kind]
    assert minority < total / 2
    documents = _docs("train", kinds=[kind])
    assert sorted(d.label for d in documents) == [0] * 10 + [1] * 10
    for document in documents:
        votes = [labels[s] for s in document.parts]
        assert len(votes) == len(set(document.parts)) == total
        assert votes.count(1 - document.label) == minority


def test_kinds_in_order_and_unknown_kinds_refused():
    documents = _docs("train", count=4)
    assert [d.kind for d in documents] == [k for k in KINDS for _ in range(4)]
    with pytest.raises(ValueError):
        _docs("train", kinds=["sarcastic"])
    with pytest.raises(ValueError):
        neutral_filler(_neutrals(), "validation")


def test_build_documents_reads_one_split_and_excludes_split_texts_from_filler(tmp_path, monkeypatch):
    for name, examples in (("train", TRAIN), ("dev", _split("dev")), ("test", TEST)):
        with (tmp_path / f"{name}.tsv").open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["label", "rating", "source", "text"])
            writer.writerows([["NEGATIVE", "-2", "tweets", "a tweet that must not be used."]])
            for e in examples:
                writer.writerow(["POSITIVE" if e.label else "NEGATIVE", e.rating, e.source, e.text])
    leaked = TEST[0].text  # a neutral pool entry that also appears in a split must not be filler

    def fake_filler(side, cache_dir=None, exclude=()):
        return neutral_filler(_neutrals() + [Example(leaked, 1, 0.1, "movies")], side, exclude)

    monkeypatch.setattr("sentiment.model.long_documents.load_neutral_filler", fake_filler)
    documents = build_documents(tmp_path, side="test", count=6, seed=3)
    assert documents == build_documents(tmp_path, side="test", count=6, seed=3)
    parts = [p for d in documents for p in d.parts]
    assert all(p.startswith("test") or p.startswith("Neutral") for p in parts)
    assert "a tweet that must not be used." not in parts
    filler = [p for d in documents if d.verdict is not None for i, p in enumerate(d.parts) if i != d.verdict]
    assert filler and leaked not in filler and all(p.startswith("Neutral") for p in filler)
