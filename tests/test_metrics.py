"""Generation metrics: ROUGE-2 on known strings, edit-distance normalisation, MAUVE, LM features."""

import numpy as np
import pytest
import torch

from planlm.errors import PlanlmError
from planlm.eval.metrics import (
    ActionTrace,
    action_edit_distance,
    cut_to_tokens,
    edit_distances,
    lm_features,
    mauve_score,
    rouge2_f1,
)


def test_rouge2_on_known_strings():
    # 5 bigrams each, 3 shared ("the cat", "cat sat", "sat on"): P = R = F1 = 3/5.
    assert rouge2_f1(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(0.6)
    assert rouge2_f1(["a b c"], ["a b c"]) == pytest.approx(1.0)
    assert rouge2_f1(["x y z"], ["a b c"]) == pytest.approx(0.0)
    # the mean over pairs
    assert rouge2_f1(["the cat sat on the mat", "a b c"], ["the cat sat on a mat", "a b c"]) == pytest.approx(0.8)
    with pytest.raises(PlanlmError, match="2 predictions but 1 references"):
        rouge2_f1(["a b", "c d"], ["a b"])


def test_actions_within_counts_started_sentences():
    trace = ActionTrace(actions=[1, 2, 3, 4], sentence_ends=[50, 100, 200, 300])
    assert trace.num_tokens == 300
    assert trace.actions_within(128) == [1, 2, 3]  # sentence 3 starts at 100 < 128, cut by the boundary: counted
    assert trace.actions_within(100) == [1, 2]  # sentence 3 starts exactly at 100: not within the first 100
    assert trace.actions_within(1024) == [1, 2, 3, 4]


def test_edit_distance_normalised_per_128_tokens():
    generated = ActionTrace([1, 2, 3, 4], [50, 100, 200, 300])
    true = ActionTrace([1, 5, 3], [60, 130, 300])
    # within 128: [1, 2, 3] vs [1, 5]: substitute 2 -> 5, delete 3 = 2; * 128 / 128
    assert action_edit_distance(generated, true, 128) == pytest.approx(2.0)
    # within 256: [1, 2, 3, 4] vs [1, 5, 3]: substitute 2 -> 5, delete 4 = 2; * 128 / 256
    assert action_edit_distance(generated, true, 256) == pytest.approx(1.0)
    identical = action_edit_distance(generated, generated, 256)
    assert identical == 0.0

    long_generated = ActionTrace([7] * 8, [128 * (i + 1) for i in range(8)])  # 1024 tokens
    long_true = ActionTrace([7] * 4 + [8] * 4, [128 * (i + 1) for i in range(8)])
    out = edit_distances([generated, long_generated], [true, long_true])
    # 128 and 256: both pairs reach; the long pair agrees there (distance 0)
    assert out.mean == pytest.approx({"128": 1.0, "256": 0.5, "512": 0.0, "1024": 4 * 128 / 1024})
    assert out.pairs == {"128": 2, "256": 2, "512": 1, "1024": 1}  # the 300-token pair is too short for 512+


def test_action_trace_rejects_bad_ends():
    with pytest.raises(PlanlmError, match="increasing"):
        ActionTrace([1, 2], [10, 5])
    with pytest.raises(PlanlmError, match="2 actions but 1 sentence ends"):
        ActionTrace([1, 2], [10])


def test_mauve_identical_is_one_and_separated_is_lower():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((200, 16)).astype(np.float32)
    same = mauve_score(p, p.copy())
    assert same.mauve == pytest.approx(1.0, abs=1e-6)
    q = rng.standard_normal((200, 16)).astype(np.float32) + 3.0  # a shifted distribution
    apart = mauve_score(p, q)
    assert apart.mauve < 0.5 < same.mauve
    near = mauve_score(p, rng.standard_normal((200, 16)).astype(np.float32))  # same distribution, other sample
    assert apart.mauve < near.mauve <= 1.0
    with pytest.raises(PlanlmError, match="feature widths differ"):
        mauve_score(p, q[:, :8])


@pytest.fixture
def tiny_lm():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "the moon is a natural satellite of earth and it orbits at a distance".split()
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "<|eos|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<|eos|>")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return model.eval(), tokenizer


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_lm_features_ignore_padding(tiny_lm, pooling):
    model, tokenizer = tiny_lm
    texts = ["the moon is a natural satellite of earth", "it orbits", "the moon"]
    batched = lm_features(model, tokenizer, texts, pooling=pooling, batch_size=3, progress=False)
    one_by_one = np.concatenate([lm_features(model, tokenizer, [t], pooling=pooling, progress=False) for t in texts])
    assert batched.shape == (3, 32) and batched.dtype == np.float32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # "last" is the final layer's hidden state at the last token, by hand
    if pooling == "last":
        ids = torch.tensor([tokenizer("it orbits")["input_ids"]])
        h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
        np.testing.assert_allclose(batched[1], h.detach().numpy(), atol=1e-5)
    # truncation: only the first max_tokens tokens are read
    cut = lm_features(model, tokenizer, ["the moon is a natural"], max_tokens=2, pooling=pooling, progress=False)
    np.testing.assert_allclose(cut, lm_features(model, tokenizer, ["the moon"], pooling=pooling, progress=False),
                               atol=1e-5)


def test_cut_to_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    assert cut_to_tokens(["the moon is a natural satellite", "earth"], tokenizer, max_tokens=3) == [
        "the moon is", "earth"]
