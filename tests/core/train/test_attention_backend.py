"""trainer.attention_backend: auto falls back to SDPA in one line when
FlexAttention fails its self-test, an explicit flex stops the run in one
line instead, flex is refused for training on a CPU before anything is
written, and the self-test's comparison catches a wrong gradient or logit.

The decision runs here with the self-test given as a function: on a CPU a
CUDA device is only a name, and FlexAttention's backward really fails
there, which is the failure the fallback is tested with."""

import dataclasses

import pytest
import torch

from ct_core.errors import ConfigError
from ct_core.model.execution import Execution
from ct_core.train.attention_backend import (choose_attention, disagreement, flex_self_test, run_segments,
                                             self_test_model)
from ct_core.train.runtime import exact_fp32
from tests.conftest import run_cli
from tests.core.model.test_execution import flex_unavailable

CUDA = torch.device("cuda", 0)  # a name only: the self-test given below runs on the CPU
VERSION = torch.__version__


def self_test_on_cpu(device, precision, execution):
    """The real self-test, forward and backward, on the CPU, where
    FlexAttention has no backward: it fails as a broken kernel would."""
    flex_self_test(torch.device("cpu"), "fp32", execution)


def passes(device, precision, execution):
    pass


def test_auto_falls_back_to_sdpa_in_one_line_when_the_self_test_fails():
    if flex_unavailable():
        pytest.skip(flex_unavailable())
    choice = choose_attention("auto", CUDA, "auto", Execution(), self_test=self_test_on_cpu)
    assert choice.backend == "sdpa"
    assert choice.message.startswith(f"attention: SDPA, since FlexAttention failed its self-test with torch "
                                     f"{VERSION} (NotImplementedError: FlexAttention does not support backward on CPU")
    assert "\n" not in choice.message


def test_explicit_flex_stops_in_one_line_when_the_self_test_fails():
    def fails(device, precision, execution):
        raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered\nmore lines")

    with pytest.raises(ConfigError) as err:
        choose_attention("flex", CUDA, "auto", Execution(compile_backend="inductor"), self_test=fails)
    assert str(err.value) == (f"trainer.attention_backend=flex: FlexAttention failed its self-test on cuda:0 with "
                              f"torch {VERSION} (RuntimeError: Triton Error [CUDA]: an illegal memory access was "
                              "encountered); use trainer.attention_backend=sdpa")


def test_the_self_test_sees_the_runs_execution_and_a_pass_picks_flex():
    seen = []
    execution = Execution(activation_checkpointing=True, compile_backend="inductor")
    choice = choose_attention("auto", CUDA, "bf16", execution,
                              self_test=lambda *args: seen.append(args))
    assert choice.backend == "flex" and seen == [(CUDA, "bf16", dataclasses.replace(execution, attention="flex"))]
    assert choice.message == f"attention: FlexAttention (its self-test against SDPA passed with torch {VERSION})"
    assert choose_attention("flex", CUDA, "bf16", execution, self_test=passes).backend == "flex"


def test_every_rank_falls_back_when_one_ranks_self_test_failed():
    choice = choose_attention("auto", CUDA, "auto", Execution(), self_test=passes, agree=lambda ok: False)
    assert choice == type(choice)("sdpa", f"attention: SDPA, since FlexAttention failed its self-test with torch "
                                          f"{VERSION} (it failed on another rank)")
    with pytest.raises(ConfigError, match="it failed on another rank"):
        choose_attention("flex", CUDA, "auto", Execution(), self_test=passes, agree=lambda ok: False)


def test_sdpa_and_the_cpu_need_no_self_test():
    def must_not_run(*args):
        raise AssertionError("the self-test ran")

    assert choose_attention("sdpa", CUDA, "auto", Execution(), self_test=must_not_run).backend == "sdpa"
    assert choose_attention("auto", torch.device("cpu"), "auto", Execution(), self_test=must_not_run).backend == "sdpa"
    with pytest.raises(ConfigError) as err:
        choose_attention("flex", torch.device("cpu"), "auto", Execution(), self_test=must_not_run)
    assert str(err.value) == ("trainer.attention_backend=flex cannot train on a CPU (FlexAttention has no CPU "
                              "backward); use trainer.attention_backend=auto or sdpa")


@pytest.mark.slow
def test_ct_train_refuses_flex_on_a_cpu_before_writing_anything(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("ct-train", "experiment=smoke/synthetic", "trainer.device=cpu", "trainer.attention_backend=flex",
                   f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == ("ct-train: error: trainer.attention_backend=flex cannot train on a CPU "
                                   "(FlexAttention has no CPU backward); use trainer.attention_backend=auto or sdpa")
    assert not run_dir.exists()


def test_the_real_self_test_passes_forward_on_the_cpu_and_keeps_the_rng():
    if flex_unavailable():
        pytest.skip(flex_unavailable())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    flex_self_test(torch.device("cpu"), "fp32", Execution(attention="flex"), backward=False)
    assert torch.equal(torch.get_rng_state(), before)


def test_the_comparison_catches_a_wrong_gradient_or_logit():
    """Two paths that agree (checkpointed and plain SDPA, forward and
    backward), then one of them damaged by less than a bf16 run would notice."""
    torch.manual_seed(0)
    model = self_test_model(torch.device("cpu"), head_dim=8)
    tokens = torch.randint(0, 64, (2, 3 * 64 + 1))
    want = run_segments(model, tokens, Execution(), "fp32", backward=True)
    got = run_segments(model, tokens, Execution(activation_checkpointing=True), "fp32", backward=True)
    assert set(want.grads) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert disagreement(got, want, torch.float32) is None
    got.grads["blocks.0.attn.v"] *= 1.01
    assert disagreement(got, want, torch.float32) == ("the gradient of blocks.0.attn.v differs from SDPA's by "
                                                      "1.00e-02 (relative; tolerance 0.001)")
    assert disagreement(got, want, torch.bfloat16) is None  # within bf16's tolerance
    got.grads["blocks.0.attn.v"] /= 1.01
    got.logits[0, 5, 3] = float("nan")
    assert disagreement(got, want, torch.bfloat16) == ("logits differ from SDPA's by nan (relative; "
                                                       "tolerance 0.02)")
    got.logits = want.logits.clone()
    del got.grads["blocks.0.attn.u"]
    assert disagreement(got, want, torch.float32) == "gradients of blocks.0.attn.u are missing on one side"


def test_exact_fp32_turns_tf32_off_inside_only():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with exact_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
