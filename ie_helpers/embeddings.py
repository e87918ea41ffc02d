"""Frozen encoder features and the contrastive loss: word embeddings (first sub-token of each word), mean-pooled
sentence embeddings (as sentence-transformers pool MiniLM and MPNet), InfoNCE with in-batch negatives, and a linear
probe on frozen features."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ie_helpers import encoder


def payload_key(payload: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def word_embeddings(model_dir, token_seqs: Sequence[Sequence[str]], *, max_length: int = 128,
                    batch_size: int = 64, precision: str = "auto") -> list[np.ndarray]:
    """Last-layer embedding of each word's first sub-token, one (words, hidden) array per sentence (words cut by
    ``max_length`` are left out: arrays can be shorter than their sentence)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    with encoder._quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir)).eval()
    out: list[np.ndarray] = [np.zeros((0, model.config.hidden_size), np.float32)] * len(token_seqs)
    order = sorted(range(len(token_seqs)), key=lambda k: len(token_seqs[k]))
    with torch.inference_mode(), encoder._autocast("cpu", precision):
        for b in range(0, len(order), batch_size):
            idx = [k for k in order[b:b + batch_size] if token_seqs[k]]
            if not idx:
                continue
            enc, word_ids, _ = encoder._encode(tok, [token_seqs[k] for k in idx], max_length, padding=True)
            inputs = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
            hidden = model(**inputs).last_hidden_state.float().numpy()
            for row, k in enumerate(idx):
                firsts = {}
                for pos, w in enumerate(word_ids[row]):
                    if w is not None and w not in firsts:
                        firsts[w] = pos
                out[k] = hidden[row, [firsts[w] for w in sorted(firsts)]]
    return out


def _mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def embed(model, batch):
    """Mean-pooled, L2-normalised sentence embeddings (as sentence-transformers' MiniLM and MPNet pool)."""
    import torch.nn.functional as F

    return F.normalize(_mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]).float(), dim=-1)


def info_nce(a, b, scale: float = 20.0):
    """InfoNCE with in-batch negatives: each anchor's positive is its pair, every other pair is a negative
    (sentence-transformers' MultipleNegativesRankingLoss with cosine similarity and scale 20)."""
    import torch

    return torch.nn.functional.cross_entropy(scale * a @ b.T, torch.arange(len(a), device=a.device))


def sentence_embeddings(model_dir, texts: Sequence[str], *, max_length: int = 128, batch_size: int = 64,
                        precision: str = "auto", cache: Path | None = None) -> np.ndarray:
    """Frozen mean-pooled embeddings (float32, L2-normalised), stored as .npy under ``cache``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from ie_helpers.models import resolve_model

    path = None
    if cache is not None:
        key = payload_key({"m": resolve_model(str(model_dir)).fingerprint, "t": list(texts), "l": max_length,
                           "p": precision})
        path = cache / f"{key}.npy"
        if path.exists():
            return np.load(path)
    with encoder._quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir)).eval()
    order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.inference_mode(), encoder._autocast("cpu", precision):
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            batch = dict(tok([texts[k] for k in idx], padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt"))
            out[idx] = embed(model, batch).numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.rename(path)
    return out


def linear_probe(train_x: np.ndarray, train_y: Sequence[str], eval_x: np.ndarray, C: float) -> list[str]:
    """scikit-learn logistic regression on frozen embeddings (standardised first)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    return list(clf.fit(train_x, list(train_y)).predict(eval_x))
