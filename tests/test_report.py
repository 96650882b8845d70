"""`planlm report` on fake run folders: Table 1 values, seeds vs Fixed, HTML, PNGs, validation, CLI."""

import json

import pytest

from planlm.errors import PlanlmError
from planlm.stages.report import report


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    ed = {"128": 2.0, "256": 1.5}
    for seed, fixed_ppl, soft_ppl, soft_mauve in ((0, 26.0, 25.0, 0.80), (1, 27.0, 26.46, 0.90)):
        write(root / f"seed{seed}" / "fixed" / "metrics.json",
              {"variant": "Fixed", "seed": seed, "ppl": fixed_ppl, "mauve": 0.7, "edit_distance": ed})
        write(root / f"seed{seed}" / "soft" / "metrics.json",
              {"variant": "Soft", "seed": seed, "ppl": soft_ppl, "mauve": soft_mauve, "latent_ppl": 30.0 + seed,
               "rouge2": 0.05, "edit_distance": {"128": 1.0 + seed, "256": 0.5}, "extra": "kept"})
        write(root / f"seed{seed}" / "soft" / "probes.json",
              [{"layer": layer, "kind": kind, "distance": d, "accuracy": 0.5 / d, "baseline": 0.05}
               for layer in (2, 3) for kind in ("pre", "post") for d in (1, 2, 3)])
    for p, ppl, oracle in ((0.0, 26.9, 24.0), (0.5, 25.8, 24.5), (1.0, 25.5, 25.4)):
        write(root / "mixing" / f"p{p}" / "metrics.json",
              {"variant": f"Hard p={p}", "seed": 0, "ppl": ppl, "ppl_oracle": oracle, "p_predicted": p})
    write(root / "bench" / "overhead.json", {"Fixed": 1.0, "Soft": 1.4})
    return root


def test_report_table_html_and_plots(runs, tmp_path):
    out = report([runs], out=tmp_path / "report")
    data = json.loads((out / "report.json").read_text())
    table = {row["variant"]: row for row in data["table"]}
    assert [row["variant"] for row in data["table"]][0] == "Fixed"  # the baseline leads
    soft = table["Soft"]
    assert soft["seeds"] == [0, 1]
    assert soft["ppl"]["mean"] == pytest.approx(25.73)
    assert soft["ppl"]["std"] == pytest.approx(1.46 / 2**0.5)  # sample std of two seeds
    # relative to the Fixed run of the SAME seed: -3.846 % and -2.0 %
    assert soft["ppl_rel"]["mean"] == pytest.approx((100 * (25 / 26 - 1) + 100 * (26.46 / 27 - 1)) / 2)
    assert soft["mauve"]["mean"] == pytest.approx(0.85)
    assert soft["latent_ppl"]["mean"] == pytest.approx(30.5) and soft["rouge2"]["mean"] == pytest.approx(0.05)
    assert soft["edit_distance"]["128"]["mean"] == pytest.approx(1.5)
    assert table["Fixed"]["ppl_rel"]["mean"] == 0.0 and table["Fixed"]["latent_ppl"] is None
    assert table["Hard p=0.5"]["ppl_rel"]["mean"] == pytest.approx(100 * (25.8 / 26 - 1))
    assert data["overhead"] == {"Fixed": 1.0, "Soft": 1.4}
    assert any(r["metrics"].get("extra") == "kept" for r in data["runs"])

    md = (out / "report.md").read_text()
    assert "| Variant | Seeds | PPL | PPL vs Fixed (%) | MAUVE | Latent PPL | ROUGE-2 | Edit dist. @128 | " \
           "Edit dist. @256 |" in md
    assert "| Soft | 2 | 25.73 ± 1.03 | -2.92 ± 1.31 | 0.850 ± 0.071 | 30.50 ± 0.71 | 0.0500 ± 0.0000 | " \
           "1.50 ± 0.71 | 0.50 ± 0.00 |" in md
    assert "| Hard p=1.0 | 1 | 25.50 | -1.92 | – | – | – | – | – |" in md
    assert "| Paper PPL (GPT-2, Wikipedia) |" in md  # no run says its base LM: the paper's main column

    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"probes-soft.png", "mixing.png", "seeds.png", "overhead.png"}
    for name in pngs:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
        assert f"]({name})" in md
    page = (out / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and ".png'" not in page  # self-contained
    assert "<td>25.73 ± 1.03</td>" in page
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "report" and manifest["counts"]["runs"] == 7


def test_report_without_optional_parts(tmp_path):
    write(tmp_path / "a" / "metrics.json", {"variant": "Uniform", "ppl": 26.7})
    out = report(tmp_path / "a", out=tmp_path / "r")
    assert not list(out.glob("*.png"))  # no probes, no mixing, no seeds, no overhead
    assert "| Uniform | 1 | 26.70 | – |" in (out / "report.md").read_text()
    with pytest.raises(PlanlmError, match="already exists"):
        report([tmp_path / "a"], out=tmp_path / "r")
    report([tmp_path / "a"], out=tmp_path / "r", force=True)


def test_report_lists_every_problem(tmp_path):
    write(tmp_path / "x" / "metrics.json", {"variant": "Soft", "seed": "zero", "mauve": "high"})
    write(tmp_path / "y" / "one" / "metrics.json", {"variant": "Soft", "ppl": 25.0})
    write(tmp_path / "y" / "two" / "metrics.json", {"variant": "Soft", "ppl": 25.1})
    write(tmp_path / "y" / "two" / "probes.json", [{"layer": 1}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PlanlmError) as e:
        report([tmp_path / "x", tmp_path / "y", tmp_path / "empty", tmp_path / "missing"], out=tmp_path / "r")
    msg = str(e.value)
    for part in ('needs "ppl"', '"seed" must be an integer', '"mauve" must be a number', "probes.json must be",
                 "variant 'Soft' seed 0 appears twice", "no metrics.json under", "missing does not exist"):
        assert part in msg, part
    assert not (tmp_path / "r").exists()


def test_cli_report_help_and_run(runs, tmp_path, capsys):
    import planlm.cli as cli

    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "Table 1" in help_text and "--out" in help_text and "--baseline" in help_text
    assert cli.main(["report", str(runs), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.html").exists()
    several = f"[{runs / 'seed0'}, {runs / 'seed1'}]"
    assert cli.main(["report", several, "--out", str(tmp_path / "cli2")]) == 0
    assert json.loads((tmp_path / "cli2" / "report.json").read_text())["table"][1]["seeds"] == [0, 1]
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "cli3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_olmo_base_lm_gets_the_olmo_column(tmp_path):
    for variant, ppl in (("Fixed", 30.0), ("Cornille PA", 29.0)):
        write(tmp_path / "runs" / variant / "metrics.json", {"variant": variant, "ppl": ppl, "lm_model_type": "olmo"})
    md = (report([tmp_path / "runs"], out=tmp_path / "report") / "report.md").read_text()
    assert "Paper PPL (OLMo-1B, Wikipedia)" in md and "GPT-2" not in md
    assert "25.55" not in md  # the GPT-2 number is not set next to an OLMo run
