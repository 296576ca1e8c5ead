"""Tiny randomly initialised classifiers built from a config: exercise export and serving in tests
without any download. They reuse the packaged MiniLM tokenizer (the BERT uncased vocabulary,
which DistilBERT shares)."""

from __future__ import annotations

import shutil
from pathlib import Path

TINY_LABELS = ("NEGATIVE", "POSITIVE")


def build_tiny_checkpoint(kind: str, out_dir: Path, seed: int = 0, tokenizer_dir: Path | None = None,
                          label_names: tuple[str, ...] = TINY_LABELS, problem_type: str | None = None) -> Path:
    """Write a tiny `kind` ('bert', 'distilbert' or 'mpnet') sequence classifier checkpoint to `out_dir`, with
    `label_names` as its id2label and, when given, `problem_type` in its config.json
    (single_label_classification, multi_label_classification or regression)."""
    import torch
    from transformers import (
        BertConfig, BertForSequenceClassification, DistilBertConfig, DistilBertForSequenceClassification, MPNetConfig,
        MPNetForSequenceClassification,
    )

    from sentiment.model.build import default_base

    torch.manual_seed(seed)
    labels = {"id2label": dict(enumerate(label_names)), "label2id": {label: i for i, label in enumerate(label_names)},
              "problem_type": problem_type}
    if kind == "bert":
        config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, initializer_range=0.3, **labels)
        model = BertForSequenceClassification(config)
    elif kind == "distilbert":
        config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=128, initializer_range=0.3, **labels)
        model = DistilBertForSequenceClassification(config)
    elif kind == "mpnet":  # relative position buckets, positions counted from the padding id + 1 (130 hold 128)
        config = MPNetConfig(vocab_size=30527, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=130, initializer_range=0.3, **labels)
        model = MPNetForSequenceClassification(config)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: use 'bert', 'distilbert' or 'mpnet'")
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    source = tokenizer_dir or default_base()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copyfile(source / name, out_dir / name)
    return out_dir
