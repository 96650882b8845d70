"""planlm: planner-conditioned language modeling.

An external planner predicts an abstract *writing action* (a k-means cluster of sentence embeddings) for the next
sentence; a causal LM generates that sentence conditioned on it through small per-layer action adapters.
"""

__version__ = "0.1.0"
