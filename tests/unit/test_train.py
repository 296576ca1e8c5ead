"""Freezing the lower part of an encoder before fine-tuning (tiny random models, no training)."""

import pytest


def _tiny(kind: str):
    from transformers import (BertConfig, BertForSequenceClassification, DistilBertConfig,
                              DistilBertForSequenceClassification)

    if kind == "bert":
        return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3,
                                                        num_attention_heads=2, intermediate_size=32))
    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=16, n_layers=3, n_heads=2,
                                                                hidden_dim=32))


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_the_embeddings_and_the_first_layers_are_frozen_and_the_rest_trains(kind):
    from sentiment.model.train import _encoder_layers, freeze_lower_layers

    model = _tiny(kind)
    total = sum(p.numel() for p in model.parameters())
    assert freeze_lower_layers(model, 0) == total and all(p.requires_grad for p in model.parameters())
    trainable = freeze_lower_layers(model, 2)
    layers = list(_encoder_layers(model))
    frozen = [model.base_model.embeddings, *layers[:2]]
    assert trainable == total - sum(p.numel() for m in frozen for p in m.parameters())
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in layers[2].parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if "classifier" in n)
