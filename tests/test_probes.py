"""Linear probes: above chance on a planted signal, at chance without one; the table, the plot, feature collection."""

import contextlib

import numpy as np
import pytest
import torch

from planlm.errors import PlanlmError
from planlm.eval.probes import (
    ProbeConfig,
    collect_probe_features,
    fit_probe,
    plot_probes,
    rows_to_json,
    run_probes,
)

B, T, H, VOCAB = 40, 30, 16, 10
FAST = ProbeConfig(distances=[1, 2, 3], max_iter=25)



def planted(seed=0):
    """Random tokens; "post" at t encodes the token at t + 1 (plus noise); "pre" is pure noise."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    codes = torch.randn(VOCAB, H, generator=g)  # one direction per token
    nxt = torch.cat([ids[:, 1:], torch.zeros(B, 1, dtype=torch.long)], 1)  # (B, T)
    post = codes[nxt] + 0.3 * torch.randn(B, T, H, generator=g)  # (B, T, H)
    pre = torch.randn(B, T, H, generator=g)
    return ids, {3: {"pre": pre, "post": post}, 5: {"pre": pre.clone(), "post": torch.randn(B, T, H, generator=g)}}


def test_probe_beats_chance_on_planted_signal_and_not_without():
    ids, feats = planted()
    rows = run_probes(feats, ids, config=FAST, progress=False)
    assert [(r.layer, r.kind, r.distance) for r in rows] == [
        (layer, kind, d) for layer in (3, 5) for kind in ("pre", "post") for d in (1, 2, 3)]
    table = {(r.layer, r.kind, r.distance): r for r in rows}
    signal = table[(3, "post", 1)]
    assert signal.accuracy > 0.9 and signal.baseline < 0.25  # 10 uniform tokens: majority ~ 0.1
    for key, r in table.items():
        if key != (3, "post", 1):  # noise, or the wrong distance: chance level
            assert r.accuracy < r.baseline + 0.1, (key, r)
    assert signal.n_train + signal.n_held_out == B * (T - 1)
    assert all(r.n_held_out == 8 * (T - r.distance) for r in rows)  # 20% of 40 sequences, whole sequences


def test_held_out_positions_come_from_other_sequences():
    from planlm.eval.probes import _split

    groups = np.repeat(np.arange(10), 7)
    held = _split(len(groups), groups, 0.2, np.random.default_rng(0))
    assert set(groups[held]).isdisjoint(set(groups[~held])) and len(set(groups[held])) == 2


def test_vocabulary_restricted_to_frequent_tokens_plus_other():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 50, 400)
    out = fit_probe(rng.standard_normal((400, 8)), targets, config=ProbeConfig(vocab_size=5, max_iter=20))
    assert out.num_classes == 6
    # the "other" class holds ~90% of the targets, so the majority baseline is high
    assert out.baseline > 0.7


def test_padding_is_skipped_and_bad_shapes_rejected():
    ids, feats = planted()
    mask = torch.ones(B, T, dtype=torch.long)
    mask[:, 20:] = 0
    rows = run_probes({3: {"post": feats[3]["post"]}}, ids, mask, config=ProbeConfig(distances=[1], max_iter=30),
                      progress=False)
    assert rows[0].n_train + rows[0].n_held_out == B * 19
    with pytest.raises(PlanlmError, match="do not match input_ids"):
        run_probes({3: {"post": feats[3]["post"][:, :10]}}, ids, config=FAST, progress=False)
    with pytest.raises(PlanlmError, match="distances"):
        run_probes(feats, ids, config=ProbeConfig(distances=[T]), progress=False)


def test_plot_and_json(tmp_path):
    ids, feats = planted()
    rows = run_probes(feats, ids, config=ProbeConfig(distances=[1, 2], max_iter=20), progress=False)
    as_json = rows_to_json(rows)
    assert set(as_json[0]) >= {"layer", "kind", "distance", "accuracy", "baseline"}
    for source in (rows, as_json):
        path = plot_probes(source, tmp_path / "probes.png", title="planted")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _FakeAdapters:
    """Stands in for the planned LM's capture hook: ``capturing()`` + ``captured[layer] = {"pre", "post"}``."""

    def __init__(self):
        self.captured = {}
        self.active = False

    @contextlib.contextmanager
    def capturing(self):
        self.captured, self.active = {}, True
        try:
            yield
        finally:
            self.active = False


class _FakePlannedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, H)
        self.adapters = _FakeAdapters()

    def forward(self, input_ids, attention_mask=None, token_slot=None, oracle_actions=None):
        h = self.embed(input_ids)  # (B, T, H)
        if self.adapters.active:
            self.adapters.captured[2] = {"pre": h * 0 + 1, "post": h}
        return h


def test_collect_probe_features_pads_batches():
    lm = _FakePlannedLM()
    batches = [
        {"input_ids": torch.randint(0, VOCAB, (2, 6)), "attention_mask": torch.ones(2, 6), "sentence_ids": None,
         "labels": torch.zeros(2, 6)},
        {"input_ids": torch.randint(0, VOCAB, (3, 4)), "attention_mask": torch.ones(3, 4), "sentence_ids": None},
    ]
    out = collect_probe_features(lm, batches, progress=False)
    assert out.input_ids.shape == (5, 6) and out.attention_mask[2:, 4:].sum() == 0
    assert out.features[2]["post"].shape == (5, 6, H)
    torch.testing.assert_close(out.features[2]["post"][2:, :4], lm.embed(batches[1]["input_ids"]).detach())
    assert collect_probe_features(lm, batches, max_batches=1, progress=False).input_ids.shape == (2, 6)


def test_collect_probe_features_from_a_real_planned_lm():
    """The same function on the real PlannedLM capture hook (planlm.models.adapters.ActionAdapters.capturing)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from planlm.models.planned_lm import PlannedLM, PlannedLMConfig

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    planned = PlannedLM(lm, PlannedLMConfig(num_actions=4, action_dim=8, layers=[0, 1], selection="hard")).eval()
    g = torch.Generator().manual_seed(0)
    batches = []
    for width in (12, 9):  # two batches of different lengths
        slot = torch.sort(torch.randint(0, 3, (2, width), generator=g), dim=1).values  # (B, T)
        batches.append({"input_ids": torch.randint(0, 50, (2, width), generator=g),
                        "attention_mask": torch.ones(2, width),
                        "token_slot": slot, "oracle_actions": torch.tensor([0, 1, 2]), "sentence_ids": torch.arange(3),
                        "labels": torch.full((2, width), -100)})
    out = collect_probe_features(planned, batches, progress=False)
    assert sorted(out.features) == [0, 1] and out.input_ids.shape == (4, 12)
    for layer in (0, 1):
        pre, post = out.features[layer]["pre"], out.features[layer]["post"]
        assert pre.shape == post.shape == (4, 12, 32)
        # pre-merge is r of the token's action: equal within a sentence, different across actions
        slot = batches[0]["token_slot"][0]
        first = pre[0, slot == slot[0]]  # (tokens of the first sentence, H)
        assert torch.equal(first, first[:1].expand_as(first))
        assert not torch.allclose(pre[0, 0], pre[0, -1]) or slot[0] == slot[-1]
        assert pre[2:, 9:].abs().sum() == 0 and out.attention_mask[2:, 9:].sum() == 0  # padding of the short batch
    rows = run_probes(out.features, out.input_ids, out.attention_mask, ProbeConfig(distances=[1], max_iter=5),
                      progress=False)
    assert len(rows) == 4
