"""The eval section is validated like the others: one line naming the
option as the user wrote it, before any data or model is touched."""

import pytest

from ct_core.cli.common import compose_recipe
from ct_core.errors import ConfigError
from ct_core.train.run_config import RunConfig


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["memory.cmem_len=0", "eval.cmem_len=3072"],
         "eval.cmem_len=3072 needs a model trained with compressed memory, but this one has memory.cmem_len=0"),
        (["eval.mem_len=-3"], "eval.mem_len=-3 must be an integer >= 0"),
        (["eval.cmem_len=-1"], "eval.cmem_len=-1 must be an integer >= 0"),
        (["eval.batch_size=0"], "eval.batch_size=0 must be a positive integer"),
    ],
)
def test_eval_errors_name_the_eval_option(overrides, message):
    raw = compose_recipe(["experiment=smoke/synthetic", *overrides], "test")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw, vocab_size=32)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_longer_eval_memories_are_accepted():
    raw = compose_recipe(["experiment=smoke/synthetic", "eval.mem_len=64", "eval.cmem_len=48"], "test")
    cfg = RunConfig.from_dict(raw, vocab_size=32)
    assert (cfg.eval_mem_len, cfg.eval_cmem_len) == (64, 48)
