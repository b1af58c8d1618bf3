"""The evidence runner: real ct-train/ct-eval runs, one progress line per
run, finished runs never redone, a report with mean (min–max) over seeds and
the generated blocks of docs/results.md filled between their markers."""

import json

import pytest

from bench import evidence, evidence_report
from bench.evidence_studies import RunSpec, Study, all_studies
from ct_core.cli.common import compose_recipe

pytestmark = pytest.mark.slow

TINY = ("trainer.steps=3", "trainer.eval_every=100", "trainer.save_every=100", "trainer.final_eval=false",
        "trainer.eval_max_batches=1", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0",
        "data.n_documents=20", "data.min_len=100", "data.max_len=100")


def tiny_studies(size, data):
    study = Study("recall", "tiny recall", "probe_accuracy", lower_is_better=False)
    for seed in (0, 1):
        study.runs += [RunSpec("ct", "synthetic/recall_ct", TINY, seed, eval_split="test"),
                       RunSpec("txl", "synthetic/recall_txl", TINY, seed, eval_split="test")]
    return [study]


def test_runs_once_reports_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(evidence, "all_studies", tiny_studies)
    out = tmp_path / "out"
    evidence.main(["--quick", "--only", "recall", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "[1/4] recall: ct seed 0 ..." in printed and "[4/4] recall: txl seed 1: probe_accuracy" in printed
    report = (out / "report.md").read_text()
    assert "| CT (conv + attention loss) | 2 |" in report and "| Transformer-XL | 2 |" in report
    assert (out / "figures" / "recall_accuracy.png").is_file()
    results = sorted(out.glob("runs/*/train_result.json"))
    assert len(results) == 4 and all(json.loads(p.read_text())["parameters"] > 0 for p in results)
    stamps = [p.stat().st_mtime_ns for p in results]

    evidence.main(["--quick", "--only", "recall", "--out", str(out)])  # everything done: nothing retrained
    assert "(done before)" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_docs_blocks_are_replaced_between_markers(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- evidence:race -->\nold\n<!-- /evidence:race -->\noutro\n")
    evidence_report.replace_blocks(doc, {"race": "new table"})
    assert doc.read_text() == "intro\n<!-- evidence:race -->\nnew table\n<!-- /evidence:race -->\noutro\n"
    doc.write_text("<!-- evidence:race -->\n<!-- /evidence:race -->\n")  # an empty block, as in a new page
    evidence_report.replace_blocks(doc, {"race": "table"})
    assert doc.read_text() == "<!-- evidence:race -->\ntable\n<!-- /evidence:race -->\n"
    evidence_report.replace_blocks(doc, {"race": "table"})
    assert doc.read_text() == "<!-- evidence:race -->\ntable\n<!-- /evidence:race -->\n"
    with pytest.raises(SystemExit, match="no <!-- evidence:speech --> block"):
        evidence_report.replace_blocks(doc, {"speech": "x"})


def test_a_partial_study_rewrites_only_its_blocks_with_its_environment(tmp_path, monkeypatch):
    doc = tmp_path / "results.md"
    kept = "<!-- evidence:environment -->\nold env\n<!-- /evidence:environment -->\n"
    doc.write_text(kept + "<!-- evidence:wikitext -->\nNot run yet.\n<!-- /evidence:wikitext -->\n"
                   "<!-- evidence:race -->\nold race\n<!-- /evidence:race -->\n")
    monkeypatch.setattr(evidence_report, "DOCS", doc)
    monkeypatch.setattr(evidence_report, "environment", lambda size, seconds: f"Size `{size}`; commit `abc`")
    study = Study("wikitext", "WikiText", "ppl")
    runs = [{"label": label, "seed": seed, "run_dir": f"{label}{seed}", "eval": None,
             "metrics": {"ppl": value, "unigram_ppl": 570.9},
             "train": {"train_seconds": 10.0, "parameters": 100, "compressor_parameters": 0}}
            for label, seed, value in (("ct", 0, 300.0), ("ct", 1, 310.0), ("txl", 0, 320.0), ("txl", 1, 330.0))]
    evidence_report.write_report({"wikitext": {"study": study, "runs": runs}}, None, size="cpu", out=tmp_path,
                                 write_docs=True, partial=True)
    text = doc.read_text()
    assert text.startswith(kept) and "old race" in text  # other blocks untouched
    block = text.split("<!-- evidence:wikitext -->\n")[1].split("<!-- /evidence:wikitext -->")[0]
    assert "| CT (conv + attention loss) | 2 | 305.000 (300.000–310.000) | 570.900 (570.900–570.900) |" in block
    assert "worst seed is better than Transformer-XL's best" in block
    assert block.endswith("Size `cpu`; commit `abc`\n")


def test_spread_of_seeds():
    assert evidence_report.spread([1.0, 2.0, 3.0]) == "2.000 (1.000–3.000)"
    assert evidence_report.spread([0.5], digits=2) == "0.50"


@pytest.mark.parametrize("size", ["quick", "cpu", "full"])
def test_every_comparison_is_at_equal_attention_cost(size, tmp_path):
    """Same seq_len, layers, width and steps; CT's mem + cmem slots equal
    Transformer-XL's mem slots; at least two seeds per model."""
    for study in all_studies(size, tmp_path):
        if study.name not in ("recall", "shakespeare", "pg19", "wikitext", "speech"):
            continue
        shapes = {}
        for spec in study.runs:
            raw = compose_recipe([a for a in spec.train_args(tmp_path) if not a.startswith(("hydra.", "resume="))],
                                 "test")
            model, memory = raw["model"], raw["memory"]
            shapes.setdefault(spec.label, set()).add(
                (memory["seq_len"], model["n_layers"], model["d_model"], raw["trainer"]["steps"],
                 memory["mem_len"] + memory["cmem_len"]))
            assert raw["trainer"]["seed"] == spec.seed
        assert len({frozenset(v) for v in shapes.values()}) == 1, (study.name, shapes)
        assert all(len({spec.seed for spec in study.runs if spec.label == label}) >= 2 for label in shapes)


def test_race_scales_nanogpt_to_this_machine(tmp_path, monkeypatch):
    """nanoGPT's 133 s was measured elsewhere: a command timed on both machines
    scales it, and the verdict compares against the scaled time."""
    timed = {"race_shakespeare_cpu": (80.0, 1.82), "race_calibration": (118.2, 1.74)}

    def fake(run_dir, data, overrides):
        seconds, nats = timed[run_dir.name]
        assert (run_dir.name == "race_calibration") == bool(overrides)
        return {"command": "ct-train ...", "seconds": seconds, "valid_nats": nats, "valid_bpc": None}

    monkeypatch.setattr(evidence, "timed_shakespeare", fake)
    result = evidence.race(tmp_path, tmp_path, {"done": 0, "total": 1})
    assert result["nanogpt"]["seconds_here"] == 79.8 and result["calibration"]["scale"] == 0.6
    block = evidence_report.race_block(result)
    assert "| 80 s (scaled; 133 s measured on 2 EPYC cores) | 1.886 nats/char |" in block
    assert "**Not** both faster and lower" in block  # 80 s is under 133 s but over the scaled 79.8 s
    timed["race_shakespeare_cpu"] = (60.0, 1.82)
    assert "Within nanoGPT's wall clock" in evidence_report.race_block(evidence.race(tmp_path, tmp_path,
                                                                                        {"done": 0, "total": 1}))
