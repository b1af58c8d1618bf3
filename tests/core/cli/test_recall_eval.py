"""ct-eval reports exact-match accuracy by distance for the recall task."""

import json

from ct_core.cli import evaluate
from ct_core.cli.common import compose_recipe
from ct_core.cli.run_setup import build_run
from ct_core.train.trainer import Trainer


def test_ct_eval_reports_probe_accuracy_by_distance(tmp_path, capsys):
    raw = compose_recipe(["experiment=synthetic/recall_ct", "trainer.steps=2", "trainer.final_eval=false",
                          "trainer.eval_max_batches=1", "data.n_documents=20", "data.min_len=200",
                          "data.max_len=200"], "test")
    cfg, frontend = build_run(raw)
    Trainer(cfg, frontend, tmp_path).fit()
    report = evaluate.run(tmp_path / "checkpoints" / "last.pt", ["split=test"])
    probes = frontend.probes("test")
    assert report["probes"] == sum(len(p) for p, _ in probes) > 0
    buckets = report["probe_accuracy_by_distance"]
    assert sum(b["probes"] for b in buckets.values()) == report["probes"]
    assert list(buckets)[0] == "1-32" and all(0.0 <= b["accuracy"] <= 1.0 for b in buckets.values())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report
