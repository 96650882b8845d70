"""Evaluation: perplexity, generation, generation metrics, probes."""
