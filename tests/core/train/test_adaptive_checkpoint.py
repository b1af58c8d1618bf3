"""An adaptive-softmax model goes through a checkpoint, a resume and
ct-export like any other: every state-dict key survives, tied tables load
back as one tensor, and the reloaded model computes the same NLL."""

import torch
from safetensors.torch import load_file

from ct_core.cli.common import compose_recipe
from ct_core.cli.export import main as export_main
from ct_core.cli.run_setup import build_run
from ct_core.train.checkpoint import load_checkpoint
from ct_core.train.model_loading import build_model, load_model
from ct_core.train.trainer import Trainer

OVERRIDES = ["experiment=smoke/synthetic", "+model.adaptive_cutoffs=[8,16,24]", "+model.adaptive_div=2",
             "model.tie_embeddings=true", "trainer.steps=3", "trainer.eval_every=100", "trainer.save_every=100",
             "trainer.eval_max_batches=1", "trainer.final_eval=false", "trainer.sample_tokens=0",
             "trainer.eval_sample_tokens=0"]


def test_checkpoint_resume_and_export_of_an_adaptive_model(tmp_path, capsys):
    cfg, frontend = build_run(compose_recipe(OVERRIDES, "test"))
    trainer = Trainer(cfg, frontend, tmp_path / "run")
    trainer.fit()
    path = trainer.checkpoints.last_path
    state = trainer.model.state_dict()
    payload = load_checkpoint(path)
    assert payload["model"].keys() == state.keys()
    assert "head.tables.projections.3" in state and "embed.tables.projections.3" in state

    model = build_model(path, payload, cfg)
    assert model.head.tables.weights[1] is model.embed.tables.weights[1]
    x = torch.randint(0, 32, (2, cfg.model.seq_len))
    y = torch.randint(0, 32, (2, cfg.model.seq_len))
    with torch.no_grad():
        want = trainer.model.eval()(x, targets=y).nll
        assert torch.equal(model(x, targets=y).nll, want)

    resumed = Trainer(cfg, frontend, tmp_path / "resumed")
    resumed.resume(path)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), state.values()))

    out = tmp_path / "adaptive.safetensors"
    export_main([str(path), str(out)])
    assert "wrote" in capsys.readouterr().out
    tensors = load_file(str(out))
    assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state)
    fresh = load_model(out)  # the export alone: its metadata holds the recipe
    assert fresh.head.tables.weights[1] is fresh.embed.tables.weights[1]
    with torch.no_grad():
        assert torch.equal(fresh(x, targets=y).nll, want)
