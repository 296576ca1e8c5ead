"""The model card is rendered from the build's measurements and replaces only its README block."""

import pytest

from sentiment.model.card import BEGIN, END, readme_card, render, replace_in_readme

SOURCES = {"tweets": {"rows": 900, "accuracy": 0.91, "ece": 0.02},
           "imdb": {"rows": 1000, "accuracy": 0.85, "ece": 0.06}}


def report():
    test = {"sources": SOURCES, "mean_accuracy": 0.88, "ece": 0.03,
            "uncalibrated_ece": {"all": 0.08, "tweets": 0.07, "imdb": 0.09}}
    fp32_dev = {"sources": {"tweets": {"accuracy": 0.905}, "imdb": {"accuracy": 0.86}}}
    int8_dev = {"sources": {"tweets": {"accuracy": 0.9}, "imdb": {"accuracy": 0.84}}}
    speed = {"sentences_per_second": {"1": 500.0, "8": 700.0}}
    return {"chosen": "int8", "reason": "int8 loses 0.10 points", "threads": 2, "machine": "CPU X",
            "variants": {"fp32": {"size_mb": 91.0, "dev_accuracy": 0.8825, "dev": fp32_dev, "test": None, **speed},
                         "int8": {"size_mb": 23.0, "dev_accuracy": 0.87, "dev": int8_dev, "test": test,
                                  "serving_temperature": 0.8,
                                  "test_accuracy": 0.88, "quantization": "static", **speed}}}


METRICS = {"config": {"epochs": 1, "train_rows": [["tweets", 7000]], "document_sources": ["imdb"], "seed": 13,
                      "learning_rate": 1e-4, "batch_size": 32, "warmup_fraction": 0.06, "max_length": 128},
           "calibration": {"temperature": 1.7}, "data": {"train": 8000, "by_source": {
               "tweets": {"train": 7000, "dev": 900, "test": 900}, "imdb": {"train": 1000, "dev": 500, "test": 1000}}}}


def test_the_card_states_the_measured_figures_and_which_targets_are_met():
    card = render(report(), METRICS)
    assert "| tweets | 900 | 0.9100 | >= 0.90: yes | 0.0700 | 0.0200 |" in card
    assert "| imdb | 1,000 | 0.8500 | >= 0.90: **no** | 0.0900 | 0.0600 |" in card
    assert "| all (mean over sources) | 1,900 | 0.8800 |  | 0.0800 | 0.0300 (<= 0.05: yes) |" in card
    assert "| variant | size | dev tweets | dev imdb | dev mean |" in card
    assert "| fp32 ONNX | 91.0 MB | 0.9050 | 0.8600 | 0.8825 |" in card
    assert "the head divided by T = 1.7" in card and "a further T = 0.8" in card and "logits / 1.3600" in card
    assert "| int8 ONNX (static quantization) (served) | 23.0 MB | 0.9000 | 0.8400 | 0.8700 |" in card
    assert "The served default is **int8**: int8 loses 0.10 points." in card
    assert "sentences/s" not in card and "sentences/s batch 8" in render(report(), METRICS, speeds=True)


def test_the_readme_block_is_replaced_and_read_back():
    readme = f"# Title\n\n{BEGIN}\nold card\n{END}\n\nafter\n"
    updated = replace_in_readme(readme, "new card\n")
    assert readme_card(updated) == "new card\n"
    assert updated.startswith("# Title\n\n") and updated.endswith(f"{END}\n\nafter\n")
    with pytest.raises(ValueError):
        replace_in_readme("no markers", "card")
