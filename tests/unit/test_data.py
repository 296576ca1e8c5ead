from sentiment.model.data import LABELS, deduplicate, parse_ground_truth, split_examples

SAMPLE = "\n".join([
    "1\t2.5\tA wonderful, moving film.",
    "2\t-3.1\tA dull mess.",
    "3\t0.2\tIt is a film.",            # near-neutral: dropped
    "4\t-0.5\tExactly on the margin.",   # |rating| <= margin: dropped
    "5\t1.2\tA WONDERFUL, moving film.",  # duplicate of 1 (case-folded), same label
    "6\t-1.0\tSame words, other label.",
    "7\t1.0\tsame words,   OTHER label.",  # conflicts with 6: both dropped
])


def test_parse_labels_by_sign_and_drops_near_neutral():
    examples = parse_ground_truth(SAMPLE, "movies", neutral_margin=0.5)
    assert [e.label for e in examples] == [1, 0, 1, 0, 1]
    assert LABELS[examples[0].label] == "POSITIVE"


def test_deduplicate_keeps_one_copy_and_drops_conflicts():
    kept = deduplicate(parse_ground_truth(SAMPLE, "movies", neutral_margin=0.5))
    assert sorted(e.text for e in kept) == ["A dull mess.", "A wonderful, moving film."]


def test_split_is_deterministic_disjoint_and_stratified():
    examples = parse_ground_truth("\n".join(f"{i}\t{(-1) ** i * 2}\ttext number {i}" for i in range(1000)), "m", 0.5)
    first = split_examples(examples, seed=7, dev_fraction=0.1, test_fraction=0.1)
    second = split_examples(examples, seed=7, dev_fraction=0.1, test_fraction=0.1)
    assert [e.text for e in first.test] == [e.text for e in second.test]
    texts = [set(e.text for e in part) for part in (first.train, first.dev, first.test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert first.sizes() == {"train": 800, "dev": 100, "test": 100}
    assert sum(e.label for e in first.test) == 50
    other = split_examples(examples, seed=8, dev_fraction=0.1, test_fraction=0.1)
    assert [e.text for e in other.test] != [e.text for e in first.test]
