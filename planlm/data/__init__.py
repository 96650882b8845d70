"""Corpus sources, sentence splitting, embeddings, writing actions, token alignment and batches."""
