"""Planner-in-the-loop generation: forced plans are obeyed, KV cache = no cache, the planner re-plans, CLI."""

from __future__ import annotations

import json

import pytest
import torch

from generate_env import ENCODER, build_env, first_generation, planner_context
from planlm.cli import main
from planlm.data.encoders import load_encoder
from planlm.errors import PlanlmError
from planlm.stages.generate import parse_plan
from planlm.eval.generator import DecodingState, PlannedGenerator, SamplingConfig


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return build_env(tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def generator(env):
    return PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER))


class ConditioningRecorder:
    """Records, for every position, the action weights of its live KV-cache column: the feed that conditions what
    follows it. A re-feed masks the earlier column, so that is normally the position's last feed; a recall (the
    generator unmasks an earlier feed's column instead of feeding again) makes that earlier feed's weights count."""

    def __init__(self, model):
        self.model, self.rows, self.by_column = model, {}, {}
        self.handle = model.lm.register_forward_pre_hook(self.hook, with_kwargs=True)
        self.recall = DecodingState.recall
        recorder = self

        def recall(state, valid, row):
            logits = recorder.recall(state, valid, row)
            if logits is not None:  # the position is live again in the column it was fed into before
                recorder.rows[len(state.ids) - 1] = recorder.by_column[state.columns[-1]]
            return logits

        DecodingState.recall = recall

    def hook(self, module, args, kwargs):
        adapters = self.model.adapters
        positions = kwargs["position_ids"][0]  # (T,) the generator passes every fed position explicitly
        first_column = kwargs["attention_mask"].shape[1] - positions.shape[0]  # the cache length before this feed
        slot = adapters._token_slot[0]  # (T,)
        for p in range(slot.shape[0]):
            weights = adapters._weights[slot[p]].detach().clone()  # (K,)
            self.rows[int(positions[p])] = self.by_column[first_column + p] = weights

    def close(self):
        self.handle.remove()
        DecodingState.recall = self.recall


def conditioning_of_sentences(g, rows) -> list[set[int]]:
    """For each generated sentence, the argmaxes of the rows that conditioned the positions predicting its tokens."""
    out = []
    for s in g.sentences:
        if not s.generated:
            continue
        positions = range(max(s.token_start - 1, 0), s.token_end - 1)  # position p predicts token p + 1
        out.append({int(rows[p].argmax()) for p in positions})
        for p in positions:
            assert float(rows[p].max()) == 1.0  # forced actions are one-hot
    return out


def test_forced_plan_is_exactly_the_plan_used(env, generator):
    plan = [3, 6, 1]

    def recorded(seed):
        rec = ConditioningRecorder(env["model"])
        try:
            g = generator.generate_one("", plan, SamplingConfig(max_new_tokens=250, temperature=1.5, seed=seed))
        finally:
            rec.close()
        return g, rec.rows

    # the tiny LM finishes three sentences within 250 tokens for some seeds (which ones follows the CPU's rounding)
    g, rows = first_generation(recorded, lambda r: r[0].stop_reason == "plan", seeds=range(3, 23))
    assert g.plan == plan and [s.source for s in g.sentences] == ["plan"] * 3
    assert conditioning_of_sentences(g, rows) == [{3}, {6}, {1}]
    # what the generator reports is what conditioned the LM
    assert all(g.position_actions[p] == int(rows[p].argmax()) for p in range(len(g.token_ids)))
    # the sentences are the splitter's sentences of the generated text
    from planlm.data.sentences import split_sentences

    assert [g.text[s:e] for s, e in split_sentences([g.text])[0]] == [s.text for s in g.sentences]


def test_planner_takes_over_and_reads_the_finished_sentences(env, generator):
    corpus, model = env["corpus"], env["model"]
    plan = [2]
    # the tiny LM writes long sentences: the longest generation its 256 positions allow, a seed that ends several
    g = first_generation(
        lambda seed: generator.generate_one("The Moon is big.", plan, SamplingConfig(
            max_new_tokens=240, temperature=0.7, seed=seed), after_plan="planner"),
        lambda g: [s.source for s in g.sentences].count("planner") >= 2, seeds=range(5, 25))
    sources = [s.source for s in g.sentences]
    assert sources[0] == "prompt" and sources[1] == "plan" and sources.count("planner") >= 2
    assert g.sentences[0].action == int(((corpus.centroids - load_encoder(ENCODER).encode(["The Moon is big."])) ** 2)
                                        .sum(1).argmin())  # the prompt sentence's nearest centroid
    enc = load_encoder(ENCODER)
    n_ctx = model.planner.config.context_sentences  # the tiny planner reads the last 3 sentences
    for j, s in enumerate(g.sentences):
        if s.source != "planner":
            continue
        with torch.no_grad():
            logits = model.planner(**planner_context(enc, g.sentences, j, n_ctx))
        assert s.action == int(logits.argmax())
        assert s.probability == pytest.approx(float(torch.softmax(logits, -1).max()), rel=1e-5)


def test_kv_cache_gives_the_tokens_of_uncached_greedy_decoding(env, generator):
    kw = dict(prompt="The Moon is Earth's only natural satellite. It orbits", plan=[5, 0],
              after_plan="planner", sampling=SamplingConfig(max_new_tokens=120, temperature=0.0))
    cached = generator.generate_one(use_cache=True, **kw)
    uncached = generator.generate_one(use_cache=False, **kw)
    assert cached.token_ids == uncached.token_ids
    assert cached.position_actions == uncached.position_actions
    assert [s.action for s in cached.sentences] == [s.action for s in uncached.sentences]
    assert len([s for s in cached.sentences if s.generated]) >= 2  # at least one re-planning happened
    # the continued prompt sentence is generated under plan[0]
    assert cached.sentences[1].text.startswith("It orbits") and cached.sentences[1].action == 5


def test_sampling_is_seeded(generator):
    s = SamplingConfig(max_new_tokens=30, top_p=0.9, seed=11)
    a = generator.generate_one("The Moon", sampling=s)
    b = generator.generate_one("The Moon", sampling=s)
    c = generator.generate_one("The Moon", sampling=SamplingConfig(max_new_tokens=30, top_p=0.9, seed=12))
    assert a.token_ids == b.token_ids != c.token_ids and a.new_tokens <= 30


def test_bad_generation_arguments(env, generator):
    with pytest.raises(PlanlmError) as e:
        generator.generate_one("x", [1, 99], SamplingConfig(max_new_tokens=0, top_p=1.5), after_plan="maybe")
    msg = str(e.value)
    assert "[99]" in msg and "max_new_tokens" in msg and "top_p" in msg and "after_plan" in msg
    with pytest.raises(PlanlmError, match="positions"):
        generator.generate_one("x", sampling=SamplingConfig(max_new_tokens=10_000))
    assert parse_plan("17,4,903") == [17, 4, 903] and parse_plan(None) is None
    with pytest.raises(PlanlmError, match="comma-separated"):
        parse_plan("17;4")


def test_cli_generate_json_and_text(env, capsys):
    args = ["generate", "--run", str(env["run"]), "--encoder", ENCODER, "--plan", "4,2", "--sampling.max_new_tokens",
            "200", "--sampling.temperature", "1.5", "--sampling.seed", "3"]
    assert main(args + ["--json", "true"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    generated = [s for s in out["sentences"] if s["generated"]]
    # how many sentences the tiny random LM ends within 200 tokens depends on the CPU's float rounding (AVX2 and
    # AVX512 machines differ): the plan must be followed in order, for however many sentences there are
    assert generated and [s["action"] for s in generated][:2] == [4, 2][: len(generated)]
    assert all(s["source"] == "plan" for s in generated)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "action 4 (plan)" in text and ("action 2 (plan)" in text) == (len(generated) > 1)


def test_cli_help_and_bad_inputs(env, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--plan" in help_text and "--sampling.top_p" in help_text and "nearest exemplar" in help_text
    assert main(["generate", "--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", "--run", str(env["root"] / "prep")]) == 2
    assert "is a `prepare` artifact" in capsys.readouterr().err
    assert main(["generate", "--run", str(env["run"]), "--plan", "1,x"]) == 2
    assert "comma-separated" in capsys.readouterr().err


def test_sentence_tracker_is_split_sentences_on_growing_and_cut_back_texts():
    """SentenceTracker (incremental) == split_sentences (whole text) after every change, on random texts built from
    the pieces that trouble a splitter: "scur." + "5an", abbreviations, decimals, quotes, line breaks, runs of
    punctuation, sentences starting inside a run ("end.The"), cut backs, min_chars / max_chars."""
    import random

    from planlm.data.sentences import SentenceTracker, split_sentences

    pieces = ["The", " cat", ".", " It", "5an", " sat", "!", "?", "..", " ", "  ", "\n", "\n\n", "U.S.", " Dr.", " 3.5",
              "-", " --", '"', " (", ")", '."', " \u201c", "\u201d", "end.The", " e.g.", "!!", " a", "...", "'s", ";",
              "\u2014", "\u00e9", "\t"]
    for seed in range(60):
        rng = random.Random(seed)
        min_chars, max_chars = [(1, None), (3, None), (1, 20)][seed % 3]
        tracker, text = SentenceTracker(min_chars, max_chars), ""
        for _ in range(60):
            if rng.random() < 0.07 and text:
                text = text[: rng.randrange(len(text))]
            else:
                text += rng.choice(pieces)
            assert tracker.spans(text) == split_sentences([text], min_chars=min_chars, max_chars=max_chars)[0], \
                (seed, text)


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_generated_sentences_are_the_splitters_on_many_texts(generator, temperature):
    """Batched unconditional and prompted texts over many seeds: the generator's sentences are exactly the splitter's
    sentences of the whole text, and each generated text is the decode of its tokens."""
    from planlm.data.sentences import split_sentences

    tok = generator.tokenizer
    prompts = [""] * 6 + ["The Moon is big.", "The Moon is Earth's only natural satellite. It orbits"] * 2
    for seed in (0, 100):
        gs = generator.generate(prompts, None, SamplingConfig(max_new_tokens=120, temperature=temperature, seed=seed),
                                after_plan="planner")
        for g in gs:
            full = g.prompt + g.text
            assert g.text == tok.decode(g.token_ids[g.prompt_tokens:])
            assert [full[s:e] for s, e in split_sentences([full])[0]] == [s.text for s in g.sentences]
            assert all(a.token_end == b.token_start for a, b in zip(g.sentences, g.sentences[1:]))


def test_a_batch_gives_each_text_what_it_gives_alone(generator):
    """Per-text seeds, padding, stale-column masking and dropping finished texts from the cache change nothing: the
    planned text stops early (its plan ends) and leaves the batch while the others go on."""
    # text 1 is test_forced_plan_is_exactly_the_plan_used's first sentence (seed 3, action 3), then stops
    s = SamplingConfig(max_new_tokens=250, temperature=1.5, seed=2)
    batch = generator.generate(["", "", ""], [None, [3], None], s)
    assert batch[1].stop_reason == "plan" and batch[0].new_tokens > batch[1].new_tokens
    for i, plan in enumerate([None, [3]]):
        alone = generator.generate_one("", plan, SamplingConfig(250, 1.5, 1.0, seed=2 + i))
        assert batch[i].token_ids == alone.token_ids and batch[i].plan == alone.plan
    assert batch[0].token_ids != batch[2].token_ids  # seeds 2 and 4


def test_the_whole_position_range_is_reachable(env, generator):
    """The last sampled token is never fed: a 256-position LM generates 256 new tokens from BOS."""
    n = env["model"].lm.config.n_positions
    g = generator.generate_one("", sampling=SamplingConfig(max_new_tokens=n, temperature=1.0, seed=1))
    assert g.stop_reason in ("length", "eos") and g.new_tokens <= n
    with pytest.raises(PlanlmError, match="positions"):
        generator.generate_one("", sampling=SamplingConfig(max_new_tokens=n + 1))


class PositionRecorder:
    """The largest position id the LM saw during a generation."""

    def __init__(self, model):
        self.max_position = -1
        self.handle = model.lm.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.max_position = max(self.max_position, int(kwargs["position_ids"].max()))  # (B, T) explicit positions


def test_a_window_bounds_the_positions_and_the_cache_gives_the_uncached_tokens(env):
    """With a 32-position window a 200-token generation never shows the LM a position id past 31, and the KV-cached
    decoder (cache columns masked when the window restarts) gives exactly the tokens and conditioning of decoding
    every step afresh from the window's start, sentence ends and re-planning included."""
    window = 32
    gen = PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER), window=window)

    def generate(seed):
        rec = PositionRecorder(env["model"])
        try:
            s = SamplingConfig(max_new_tokens=200, temperature=1.0, seed=seed)
            return gen.generate_one("The Moon is Earth's only natural satellite. It orbits", sampling=s), rec, seed
        finally:
            rec.handle.remove()

    cached, rec, seed = first_generation(generate, lambda r: len([s for s in r[0].sentences if s.generated]) >= 3
                                     and r[0].new_tokens > 3 * window, seeds=range(20))
    uncached = gen.generate_one("The Moon is Earth's only natural satellite. It orbits", use_cache=False,
                                sampling=SamplingConfig(max_new_tokens=200, temperature=1.0, seed=seed))
    assert rec.max_position == window - 1
    assert cached.token_ids == uncached.token_ids
    assert cached.position_actions == uncached.position_actions
    assert [s.action for s in cached.sentences] == [s.action for s in uncached.sentences]


def test_a_window_runs_past_the_lms_positions(env):
    """Every Appendix B length runs on any LM: 1.5x the LM's positions of new tokens from BOS."""
    n = env["model"].lm.config.n_positions
    gen = PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER), window=64)
    assert gen.max_positions is None
    g = gen.generate_one("", sampling=SamplingConfig(max_new_tokens=n + n // 2, temperature=1.0, seed=1))
    assert g.stop_reason in ("length", "eos")
    with pytest.raises(PlanlmError, match="window"):
        PlannedGenerator(env["model"], env["tokenizer"], env["corpus"], load_encoder(ENCODER), window=n + 1)


def test_window_restart_keeps_positions_and_columns_consistent():
    """A retraction behind the window's start moves the window back so that the re-fed position is inside it."""
    st = DecodingState(0, "", [], 0, 100, tracker=None, window=8)
    st.ids, st.slot = list(range(20)), [0] * 20
    valid = torch.ones(1, 40, dtype=torch.bool)
    st.columns, st.feed_from = list(range(20)), 20
    st.slide(valid, 0)  # 20 positions > 8: restart at the last 4
    assert (st.window_start, st.feed_from, st.columns) == (16, 16, []) and not valid[0, :20].any()
    st.columns, st.feed_from = [30, 31, 32, 33], 20
    st.ids = st.ids[:15]  # a retraction truncated the text to position 14, before the window
    st.refeed_from(14, valid, 0)
    assert st.window_start <= 14 and st.feed_from == st.window_start and st.columns == []
    assert not valid[0, 30:34].any()


def test_training_context_length_is_the_default_window():
    from planlm.eval.generator import resolve_window, training_context_length

    assert training_context_length({"windows": {"context_length": 128}}) == 128
    assert training_context_length({"block_size": 64}) == 64
    assert training_context_length({}) is None
    assert resolve_window(None, {"windows": {"context_length": 128}}) == 128
    assert resolve_window(0, {"windows": {"context_length": 128}}) is None
    assert resolve_window(48, {}) == 48
