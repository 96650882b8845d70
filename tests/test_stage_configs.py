"""One field list per stage (planlm/stage_config.py): each stage's config dataclass is its signature (minus where to
write and whether to rebuild), its fingerprint counts a new field by default, and the fingerprints of configs built
before the configs were derived are unchanged, so existing artifacts are still reused.

generate, run and mtp-compare write no artifact of their own (no manifest, no reuse check): they have no config.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pickle
import typing
from pathlib import Path

import numpy as np
import pytest

from planlm import artifacts
from planlm.stage_config import Fingerprint, config_of

# config_fingerprint of each case of cases(), computed by the hand-written configs before they were derived from
# the signatures (commit 584d0a8). A value changes only when a config gains or loses a field or a default: every
# artifact built with the old one is then rebuilt, so update a value deliberately, saying so in the commit.
RECORDED = {
    "prepare": "59b5bbbabc103fb8",
    "prepare-set": "954806d348628ea7",
    "prepare-from": "7f54492886aa43f9",
    "prepare-split-train": "7bc5a05c7cb4e3e9",  # split.train (issue 25) counts when set, is absent when unset
    "pretrain-lm": "9c2231a8913cdcb5",
    "pretrain-lm-set": "1f8f38402b4d2d5c",
    "pretrain-lm-trainer": "1f8f38402b4d2d5c",  # the trainer does not count
    "pretrain-lm-mtp-myopic": "e6bcf9b6a15930ab",
    "pretrain-lm-planned": "2a5c954c7e954a40",
    "train-planner": "7bc3ca4b9db6c4d7",
    "train-planner-set": "4b7278d47d978d08",
    "train-planner-ntp": "ce3acaa28f2d082b",  # its --windows.* (the val loss on the val windows finetune reads): rebuilt
    "finetune": "1bdc0ef945f07865",
    "finetune-set": "aed6e93cd77b201f",
    "evaluate": "d0b70bdce2603e91",
    "evaluate-set": "bbe5546f90f5eed2",  # generation on: --gen.window (a new field) counts
    "evaluate-off": "d0b70bdce2603e91",  # device, and gen / probe / probe_windows while off, do not count
    "myopia-dp": "a0970d053378c142",
    "myopia-dp-set": "87b08ad482e931ec",
    "myopia-lm": "4d3ea7cf32b10bdb",
    "myopia-lm-set": "65977b2726c79f20",
    "myopia-planned": "b4ab856e5b4f5b89",
    "myopia-planned-set": "00f127951b5aab02",
    "report": "1ae67d633e0c23cf",
    "report-set": "ea5b9456e154444c",
}


# ---- every stage's fingerprint, through the stage function itself ----------------------------------------------
# Each stage is called on tiny fake input artifacts (manifests with fixed ids) and stopped where it asks whether its
# --out is up to date; the config it asks with is hashed as planlm.artifacts.config_fingerprint hashes it. Paths are
# relative to the test's folder, so the values do not depend on where the tests run.
class Captured(Exception):
    def __init__(self, config):
        self.config = config


def _stop(out, stage, config, force):
    raise Captured(config)


def fake_artifact(path: str, stage: str, id: str, **fields) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    (p / "manifest.json").write_text(json.dumps({"stage": stage, "id": id, **fields}))
    return p


def make_inputs() -> None:
    """The fake inputs the cases read (in the current folder)."""
    Path("corpus.txt").write_text("One sentence here. Another sentence there.\n\nA second article. It ends.\n")
    fake_artifact("prep", "prepare", "prep-id-1", num_actions=4, embedding_dim=8, encoder="fake:8")
    src = fake_artifact("src", "prepare", "src-id-2", num_actions=4, embedding_dim=8, encoder="fake:8")
    np.save(src / "centroids.npy", np.eye(4, 8, dtype=np.float32))
    fake_artifact("planner", "train-planner", "planner-id-3")
    fake_artifact("plm", "finetune", "plm-id-4")
    fake_artifact("run", "finetune", "run-id-5")
    Path("lm-dir").mkdir(exist_ok=True)
    Path("a").mkdir(exist_ok=True)
    (Path("a") / "metrics.json").write_text(json.dumps({"variant": "Uniform", "ppl": 26.7}))
    Path("b").mkdir(exist_ok=True)
    (Path("b") / "metrics.json").write_text(json.dumps({"variant": "Fixed", "ppl": 26.9}))


def cases() -> dict:
    """name -> a call of a stage function (default and non-default configs of every stage with a fingerprint)."""
    from planlm.data.actions import KMeansConfig
    from planlm.data.corpus import SourceConfig, SplitConfig
    from planlm.data.encoders import EncoderConfig
    from planlm.data.sentences import SentenceConfig
    from planlm.eval.generation_metrics import GenerationMetricsConfig
    from planlm.eval.perplexity import PerplexityConfig
    from planlm.eval.probes import ProbeConfig
    from planlm.models.mtp import MTPConfig
    from planlm.models.planner import PlannerConfig
    from planlm.stages.evaluate import evaluate
    from planlm.stages.finetune import finetune
    from planlm.stages.prepare import prepare
    from planlm.stages.pretrain_lm import pretrain_lm
    from planlm.stages.report import report
    from planlm.stages.train_planner import train_planner
    from planlm.studies.myopia import (
        DpConfig,
        LMBudget,
        MyopiaProbeConfig,
        myopia_dp,
        myopia_lm,
        myopia_planned,
    )
    from planlm.train.lm_pretraining import PlannedPretraining, lm_optim
    from planlm.train.recipe import RecipeConfig
    from planlm.train.start import AdapterConfig, WindowConfig
    from planlm.train.trainer import OptimConfig, TrainerConfig

    cpu = TrainerConfig(accelerator="cpu", logger="none", progress_bar=False)
    return {
        "prepare": lambda: prepare(out="out", source=SourceConfig(source="corpus.txt")),
        "prepare-set": lambda: prepare(
            out="out", source=SourceConfig(source="corpus.txt", max_articles=2), split=SplitConfig(seed=3),
            sentences=SentenceConfig(min_chars=5), encoder=EncoderConfig(name="fake:8", batch_size=4),
            kmeans=KMeansConfig(backend="sklearn", seed=1), num_actions=16, preset="small", progress=False),
        "prepare-from": lambda: prepare(out="out", source=SourceConfig(source="corpus.txt"), actions_from="src",
                                        encoder=EncoderConfig(batch_size=4)),
        "prepare-split-train": lambda: prepare(out="out", source=SourceConfig(source="corpus.txt"),
                                               split=SplitConfig(train=1, val=1, test=0)),
        "pretrain-lm": lambda: pretrain_lm(prepared="prep", out="out"),
        "pretrain-lm-set": lambda: pretrain_lm(prepared="prep", out="out", preset="tiny", vocab_size=300,
                                               block_size=32, optim=lm_optim("tiny", max_steps=6), seed=1),
        "pretrain-lm-trainer": lambda: pretrain_lm(prepared="prep", out="out", preset="tiny", vocab_size=300,
                                                   block_size=32, optim=lm_optim("tiny", max_steps=6), seed=1,
                                                   trainer=cpu),
        "pretrain-lm-mtp-myopic": lambda: pretrain_lm(prepared="prep", out="out", preset="tiny", myopic=True,
                                                      mtp=MTPConfig(n_heads=2, backward="naive")),
        "pretrain-lm-planned": lambda: pretrain_lm(prepared="prep", out="out", preset="tiny",
                                                   planned=PlannedPretraining(actions="fixed")),
        "train-planner": lambda: train_planner(prepared="prep", out="out", lm="gpt2"),
        "train-planner-set": lambda: train_planner(
            prepared="prep", out="out", planner=PlannerConfig(context_sentences=3, n_layers=2), seed=2,
            optim=OptimConfig(lr=3e-4, weight_decay=1e-4, max_steps=5), init_from_centroids=False, trainer=cpu),
        "train-planner-ntp": lambda: train_planner(prepared="prep", out="out", lm="gpt2", objective="ntp",
                                                   planned_lm="plm"),
        "finetune": lambda: finetune(prepared=Path("prep"), planner=Path("planner"), out=Path("out")),
        "finetune-set": lambda: finetune(
            prepared="prep", lm="lm-dir", out="out", recipe=RecipeConfig(selection="fixed"),
            optim=OptimConfig(lr=1e-3, batch_size=4, max_steps=3), windows=WindowConfig(context_length=32, stride=31),
            adapters=AdapterConfig(gate=True), trainer=cpu, mtp=MTPConfig(n_heads=2, backward="naive"),
            checkpoint_every=5, seed=1, myopic=True),
        "evaluate": lambda: evaluate(run=Path("run")),
        "evaluate-set": lambda: evaluate(
            run="run", prepared="prep", split="val", ppl=PerplexityConfig(max_articles=3), generation=True,
            gen=GenerationMetricsConfig(unconditional=2), probes=True, probe=ProbeConfig(max_iter=5),
            probe_windows=8, variant="X", encoder="fake:8", device="cpu"),
        "evaluate-off": lambda: evaluate(run="run", gen=GenerationMetricsConfig(unconditional=2),
                                         probe=ProbeConfig(max_iter=5), probe_windows=8, device="cpu"),
        "myopia-dp": lambda: myopia_dp(out="out"),
        "myopia-dp-set": lambda: myopia_dp(out="out", dp=DpConfig(steps=10, p=0.25), seeds=[3]),
        "myopia-lm": lambda: myopia_lm(prepared="prep", out="out"),
        "myopia-lm-set": lambda: myopia_lm(
            prepared="prep", out="out", budget=LMBudget(preset="tiny", optim=lm_optim("tiny", max_steps=4)),
            seeds=[0], probes=MyopiaProbeConfig(enabled=False), split="val", bootstrap=200, trainer=cpu),
        "myopia-planned": lambda: myopia_planned(prepared="prep", lm="lm-dir", planner="planner", out="out"),
        "myopia-planned-set": lambda: myopia_planned(
            prepared="prep", lm="lm-dir", planner="planner", out="out", variant="Soft / unfreeze halfway",
            seeds=[4], optim=OptimConfig(lr=2e-3), context_length=64, eval_stride=32, eval_max_articles=5,
            train_lm=False, bootstrap=300, trainer=cpu),
        "report": lambda: report("a", out="r-1"),
        "report-set": lambda: report(["a", Path("b")], out="r-2", baseline="Uniform", title="T"),
    }


def stage_fingerprint(name: str, monkeypatch) -> tuple[str, object]:
    """(config_fingerprint, JSON view of the config) that stage call ``name`` computes (cwd: :func:`make_inputs`)."""
    import planlm.stages.prepare
    import planlm.stages.pretrain_lm
    import planlm.stages.train_planner
    import planlm.studies.myopia

    monkeypatch.setattr(artifacts, "up_to_date", _stop)
    for module in (planlm.stages.prepare, planlm.stages.pretrain_lm, planlm.stages.train_planner,
                   planlm.studies.myopia):
        monkeypatch.setattr(module, "up_to_date", _stop, raising=False)
    try:
        out = cases()[name]()
    except Captured as c:
        return artifacts.config_fingerprint(c.config), artifacts.to_jsonable(c.config)
    manifest = json.loads((Path(out) / "manifest.json").read_text())  # report: always rebuilt, no reuse check
    return manifest["config_fingerprint"], manifest["config"]


@pytest.mark.parametrize("name", list(RECORDED))
def test_recorded_fingerprints_unchanged(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_inputs()
    got, config = stage_fingerprint(name, monkeypatch)
    assert got == RECORDED[name], f"{name}: the fingerprint changed ({json.dumps(config)[:400]} ...)"


def test_every_case_is_recorded():
    assert set(cases()) == set(RECORDED)


def stage_configs():
    """(stage function, its config class, the parameters that are no field of it)."""
    from planlm.stages.evaluate import EvaluateConfig, evaluate
    from planlm.stages.finetune import FinetuneConfig, finetune
    from planlm.stages.prepare import PrepareConfig, prepare
    from planlm.stages.pretrain_lm import PretrainLMConfig, pretrain_lm
    from planlm.stages.report import ReportConfig, report
    from planlm.stages.train_planner import TrainPlannerConfig, train_planner
    from planlm.studies.myopia import (
        MyopiaDpConfig,
        MyopiaLMConfig,
        MyopiaPlannedConfig,
        myopia_dp,
        myopia_lm,
        myopia_planned,
    )

    return [
        (prepare, PrepareConfig, {"out", "force"}),
        (pretrain_lm, PretrainLMConfig, {"out", "force"}),
        (train_planner, TrainPlannerConfig, {"out", "force"}),
        (finetune, FinetuneConfig, {"out", "resume", "force"}),
        (evaluate, EvaluateConfig, {"out", "force"}),
        (report, ReportConfig, {"out", "force"}),
        (myopia_dp, MyopiaDpConfig, {"out", "force"}),
        (myopia_lm, MyopiaLMConfig, {"out", "force"}),
        (myopia_planned, MyopiaPlannedConfig, {"out", "force"}),
    ]


@pytest.mark.parametrize("stage, config, excluded", stage_configs(), ids=lambda x: getattr(x, "__name__", ""))
def test_config_fields_are_the_signature(stage, config, excluded):
    params = inspect.signature(stage).parameters
    hints = typing.get_type_hints(stage)
    fields = {f.name: f for f in dataclasses.fields(config)}
    assert list(fields) == [p for p in params if p not in excluded]
    assert excluded <= set(params)
    for name, f in fields.items():
        assert f.type == hints[name], name
        default = params[name].default
        if default is inspect.Parameter.empty:
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        elif f.default_factory is not dataclasses.MISSING:  # a fresh equal copy per config, never the shared one
            made = f.default_factory()
            assert made == default and made is not default and f.default_factory() is not made, name
        else:
            assert f.default == default, name
    assert config.__module__ == stage.__module__


def test_finetune_config_built_directly_and_pickled():
    from planlm.models.mtp import MTPConfig
    from planlm.stages.finetune import FinetuneConfig

    a, b = FinetuneConfig(), FinetuneConfig(lm="tiny", seed=3)
    assert a.mtp == MTPConfig(init="copy") and a.mtp is not b.mtp  # the signature's default, one copy each
    assert (b.lm, b.seed, b.prepared) == ("tiny", 3, Path("runs/prepared"))
    assert pickle.loads(pickle.dumps(b)) == b
    assert dataclasses.asdict(dataclasses.replace(b, seed=4))["seed"] == 4
    # the manifest records the whole config; its fingerprint is the declared view of it (every field, DataLoader
    # workers as 0: they change no number, and a default of None must not move older runs' fingerprints; W_A's
    # initialisation only once it departs from the default xavier, which the runs before the option had)
    whole = artifacts.to_jsonable(dataclasses.asdict(b))
    whole["windows"]["num_workers"] = 0
    assert whole["adapters"].pop("projection_init") == "xavier"
    assert b.fingerprint() == whole
    zeros = dataclasses.replace(b, adapters=dataclasses.replace(b.adapters, gate=False, projection_init="zeros"))
    assert zeros.fingerprint()["adapters"]["projection_init"] == "zeros"
    assert artifacts.config_fingerprint(b) == artifacts.config_fingerprint(b.fingerprint())


# ---- the helper on toy stages ------------------------------------------------------------------------------------
def toy(out: str = "o", steps: int = 3, data: Path = Path("d"), init: Path | None = None, name: str | None = None,
        sizes: list[int] = [1, 2], force: bool = False):  # noqa: B006
    return ToyConfig.from_call(locals())


ToyConfig = config_of(toy, exclude=("out", "force"))


def test_a_new_field_counts_by_default():
    def toy_plus(out: str = "o", steps: int = 3, data: Path = Path("d"), init: Path | None = None,
                 name: str | None = None, sizes: list[int] = [1, 2], lr: float = 0.1,  # noqa: B006
                 force: bool = False):
        return ToyPlus.from_call(locals())

    ToyPlus = config_of(toy_plus, exclude=("out", "force"))
    assert [f.name for f in dataclasses.fields(ToyPlus)] == ["steps", "data", "init", "name", "sizes", "lr"]
    assert toy_plus().lr == 0.1 and toy_plus().fingerprint()["lr"] == 0.1
    assert artifacts.config_fingerprint(toy_plus()) != artifacts.config_fingerprint(toy())
    assert artifacts.config_fingerprint(toy_plus(lr=0.2)) != artifacts.config_fingerprint(toy_plus())

    # declared exceptions, once: an unused new field may keep old fingerprints; others never count, or only when on
    Kept = config_of(toy_plus, exclude=("out", "force"), fingerprint=Fingerprint(
        absent_unless={"lr": lambda c: c.lr != 0.1}, ignore=("name",), null_unless={"init": lambda c: c.steps > 1},
        extra=lambda c: {"id": "x"}))
    same = Kept.from_call({"steps": 3, "data": "d", "init": "i", "name": "n", "sizes": [1, 2], "lr": 0.1})
    assert same.fingerprint() == {"steps": 3, "data": "d", "init": "i", "sizes": [1, 2], "id": "x"}
    off = dataclasses.replace(same, steps=1, lr=0.5, name="other")
    assert off.fingerprint() == {"steps": 1, "data": "d", "init": None, "sizes": [1, 2], "lr": 0.5, "id": "x"}


@dataclasses.dataclass
class Inner:
    a: int = 1
    b: int | None = None


def test_a_new_nested_field_can_keep_old_fingerprints():
    def nested(out: str = "o", inner: Inner = Inner(), force: bool = False):  # noqa: B008
        return Nested.from_call(locals())

    Nested = config_of(nested, exclude=("out", "force"), fingerprint=Fingerprint(
        absent_unless={"inner.b": lambda c: c.inner.b is not None}))
    assert nested().fingerprint() == {"inner": {"a": 1}}
    assert nested(inner=Inner(b=2)).fingerprint() == {"inner": {"a": 1, "b": 2}}
    assert nested().inner == Inner()  # the config keeps the field; only its fingerprint leaves it out
    with pytest.raises(TypeError, match="no parameter iner"):
        config_of(nested, fingerprint=Fingerprint(absent_unless={"iner.b": lambda c: True}))


def test_from_call_converts_paths_as_their_types_say():
    cfg = toy(data="here", init="", name=Path("a/b"))
    assert cfg.data == Path("here") and cfg.init is None and cfg.name == "a/b"
    assert toy(init="p").init == Path("p") and toy(init=None).init is None and toy().name is None
    assert toy(sizes=[3]).sizes == [3] and ToyConfig().sizes == [1, 2] and ToyConfig().sizes is not ToyConfig().sizes
    with pytest.raises(TypeError, match="no value for steps"):
        ToyConfig.from_call({"data": "d"})


def test_a_declaration_names_real_parameters():
    with pytest.raises(TypeError, match="no parameter stesp"):
        config_of(toy, exclude=("out", "force"), fingerprint=Fingerprint(ignore=("stesp",)))
    with pytest.raises(TypeError, match="no parameter resume"):
        config_of(toy, exclude=("out", "resume"))
