"""What the evidence study runs: CT against Transformer-XL at equal attention
cost, on the long-range recall task, text (bytes and WikiText words) and
speech, the paper's Table 5 ablation, the attention-by-distance figure and
the nanoGPT wall-clock race.

A :class:`RunSpec` is one ``ct-train`` run (an experiment, overrides, a
seed) plus what to evaluate afterwards. Runs are keyed by their content, so
two studies that need the same run share it. Sizes:

- ``quick``: a reduced study for 2 CPU cores, under 30 minutes end to end:
  CT (convolution + attention loss) against Transformer-XL only, 2 seeds,
  short runs, the ablation on one seed, no wall-clock race;
- ``cpu``: the study behind ``docs/results.md`` (about 2¼ hours on 2 cores);
- ``full``: the same comparisons at the GPU recipes' sizes (``trainer=gpu``,
  bf16, ``torch.compile``), for a GPU.

Equal attention cost means equal attended slots per query: a CT with
``mem_len + cmem_len`` slots faces a Transformer-XL with ``mem_len`` equal
to that sum, same ``seq_len``, layers and width. Seeds change the
initialisation and the data order (``trainer.seed``) only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SIZES = ("quick", "cpu", "full")
#: Compression choices of the paper's Table 5 (recipe group compression/).
ABLATION = ("conv_attention", "conv_autoencoding", "conv_bptt", "dilated_conv_attention", "mean_pool", "max_pool",
            "most_used")


@dataclass(frozen=True)
class RunSpec:
    """One training run and what to evaluate afterwards."""

    label: str  # e.g. "ct", "txl", "mean_pool"
    experiment: str
    overrides: tuple[str, ...]
    seed: int
    eval_split: str | None = None  # ct-eval this split after training (None: the final valid pass only)
    attention_report: bool = False  # ct-eval --attention-report on eval_split (or valid)

    @property
    def key(self) -> str:
        """Hash of what is trained (not of what is evaluated), so studies that
        need the same training run share it."""
        blob = json.dumps([self.experiment, sorted(self.overrides), self.seed])
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def run_dir_name(self) -> str:
        return f"{self.experiment.replace('/', '-')}_s{self.seed}_{self.key}"

    def train_args(self, run_dir: Path) -> list[str]:
        return [f"experiment={self.experiment}", *self.overrides, f"trainer.seed={self.seed}",
                f"hydra.run.dir={run_dir}", "resume=auto"]


@dataclass
class Study:
    """A comparison: its runs, grouped by label, and the metric it reads."""

    name: str
    title: str
    metric: str  # key of the run's result metrics, e.g. "bpc", "bits_per_sample", "probe_accuracy"
    runs: list[RunSpec] = field(default_factory=list)
    lower_is_better: bool = True
    note: str = ""


def _seeds(size: str, cpu: int = 3) -> range:
    return range(2 if size == "quick" else cpu)


#: Steps of the quick study's short runs (a speech step costs three text
#: steps). Its PG-19 and speech runs report a partial validation pass
#: (``trainer.eval_max_batches`` batches) instead of the whole test split,
#: which alone would take longer than their training. (Speech runs of every
#: CPU size end with that partial pass: their test split is what counts.)
QUICK_STEPS = 150
QUICK_SPEECH_STEPS = 100


def _test_split(size: str) -> str | None:
    return None if size == "quick" else "test"


def recall_study(size: str) -> Study:
    steps = {"quick": 3200, "cpu": 6400, "full": 6400}[size]
    common = (f"trainer.steps={steps}", "trainer.save_every=100000")
    study = Study("recall", "Long-range recall at equal attention cost", "probe_accuracy", lower_is_better=False,
                  note="1 layer; CT: 64 memory + 64 compressed slots (c = 4) reaching 320 tokens back; "
                       "TXL: 128 memory slots reaching 128 tokens back; seq_len 32 (a query also sees up to "
                       "31 tokens of its own segment).")
    for seed in _seeds(size):
        study.runs.append(RunSpec("ct", "synthetic/recall_ct", common, seed, eval_split="test"))
        if size != "quick":
            study.runs.append(RunSpec("ct_mean_pool", "synthetic/recall_ct", (*common, "compression=mean_pool"),
                                      seed, eval_split="test"))
        study.runs.append(RunSpec("txl", "synthetic/recall_txl", common, seed, eval_split="test"))
    return study


def shakespeare_runs(size: str, data: Path) -> tuple[tuple[str, ...], str]:
    """Overrides of the shakespeare comparison at ``size``, and its experiment."""
    path = f"data.path={data / 'text' / 'tinyshakespeare.txt'}"
    if size == "full":
        return (path, "model=shakespeare", "trainer=gpu", "trainer.steps=20000", "trainer.batch_size=32",
                "optim=paper", "trainer.eval_every=2000", "trainer.sample_tokens=0"), "text/shakespeare_cpu"
    steps = {"quick": QUICK_STEPS, "cpu": 800}[size]
    return (path, f"trainer.steps={steps}", "trainer.sample_tokens=0", "trainer.eval_every=100000",
            "trainer.save_every=100000"), "text/shakespeare_cpu"


#: Transformer-XL at the attention cost of memory=ct_shakespeare (128 + 64 slots).
TXL_SHAKESPEARE = ("memory.mem_len=192", "memory.cmem_len=0", "compression=none")


def shakespeare_study(size: str, data: Path) -> Study:
    base, experiment = shakespeare_runs(size, data)
    study = Study("shakespeare", "tiny-shakespeare, bytes, at equal attention cost", "bpc",
                  note="4 layers, d_model 128; CT: 128 memory + 64 compressed slots (c = 4); TXL: 192 memory "
                       "slots; seq_len 128; validation = the last 10% of the file (nanoGPT's split).")
    for seed in _seeds(size):
        study.runs.append(RunSpec("ct", experiment, (*base, "compression=conv_attention"), seed))
        if size != "quick":
            study.runs.append(RunSpec("ct_mean_pool", experiment, (*base, "compression=mean_pool"), seed))
        study.runs.append(RunSpec("txl", experiment, (*base, *TXL_SHAKESPEARE), seed))
    return study


def pg19_study(size: str, data: Path) -> Study:
    root = f"data.root={data / 'text' / 'pg19_sample'}"
    if size == "full":
        base = (root, "data.tokenizer=bytes", "trainer.steps=20000", "trainer.eval_every=2000")
    else:
        steps = {"quick": QUICK_STEPS, "cpu": 800}[size]
        base = (root, "data.tokenizer=bytes", "model=shakespeare", "memory=ct_shakespeare", "optim=cpu",
                "trainer=cpu", f"trainer.steps={steps}", "trainer.batch_size=12", "eval.batch_size=12",
                "eval.mem_len=null", "eval.cmem_len=null", "trainer.eval_every=100000", "trainer.save_every=100000",
                *(("trainer.final_eval=false",) if size == "quick" else ()))
    # A partial pass (quick) counts no bytes of its own; with byte tokens its bits per token are bits per byte.
    study = Study("pg19", "PG-19 sample (11 books), bytes, at equal attention cost",
                  "bpc" if size == "quick" else "bits_per_byte",
                  note="The PG-19 layout's 4 train books (2.7 MB) and 4 test books (1.2 MB), byte tokens; "
                       + ("bits per byte on a partial validation pass." if size == "quick" else
                          "bits per byte on the whole test split."))
    txl = ("memory.mem_len=192", "memory.cmem_len=0", "compression=none") if size != "full" else (
        "memory=txl_pg19", "compression=none")
    for seed in _seeds(size):
        study.runs += [
            RunSpec("ct", "text/pg19_ct", base, seed, eval_split=_test_split(size)),
            RunSpec("txl", "text/pg19_ct" if size != "full" else "text/pg19_txl", (*base, *txl), seed,
                    eval_split=_test_split(size)),
        ]
    return study


#: Transformer-XL at the attention cost of text/wikitext_cpu (64 memory + 32 compressed slots).
TXL_WIKITEXT = ("memory.mem_len=96", "memory.cmem_len=0", "compression=none")


def wikitext_study(size: str, data: Path) -> Study:
    """text/wikitext_cpu (adaptive input and softmax) against Transformer-XL,
    2 seeds at every size, judged by word perplexity (``<eos>`` included)."""
    root = f"data.root={data / 'text' / 'wikitext2_sample'}"
    quiet = ("trainer.sample_tokens=0", "trainer.save_every=100000")
    if size == "full":
        base = (root, *quiet, "trainer=gpu", "trainer.steps=5000", "trainer.batch_size=32", "trainer.eval_every=1000")
    else:
        steps = {"quick": QUICK_STEPS, "cpu": 600}[size]
        base = (root, *quiet, f"trainer.steps={steps}", "trainer.eval_every=100000")
    study = Study("wikitext", "WikiText sample, words, adaptive input and softmax, at equal attention cost", "ppl",
                  note="text/wikitext_cpu: 4 layers, d_model 128, vocabulary 13,777 (adaptive cutoffs 2,000 / "
                       "6,000); CT: 64 memory + 32 compressed slots (c = 4); TXL: 96 memory slots; seq_len 64. "
                       "Train = WikiText-2's validation split (217,646 tokens), valid and test = the halves of "
                       "its test split; perplexity per word, <eos> included, "
                       + ("on the whole validation split." if size == "quick" else "on the whole test split."))
    for seed in range(2):
        study.runs += [
            RunSpec("ct", "text/wikitext_cpu", base, seed, eval_split=_test_split(size)),
            RunSpec("txl", "text/wikitext_cpu", (*base, *TXL_WIKITEXT), seed, eval_split=_test_split(size)),
        ]
    return study


def speech_study(size: str, data: Path) -> Study:
    root = f"data.root={data / 'speech' / 'librispeech_sample' / 'LibriSpeech'}"
    audio = (root, "data=librispeech", "data.sample_rate=16000", "data.valid_fraction=0.1",
             "data.test_fraction=0.1")
    if size == "full":
        base, experiment, txl = (*audio, "trainer.steps=20000"), "audio/speech_ct", ("memory=txl_speech",
                                                                                      "compression=none")
    else:
        steps = {"quick": QUICK_SPEECH_STEPS, "cpu": 400}[size]
        base = (*audio, f"trainer.steps={steps}", "trainer.sample_tokens=0", "trainer.eval_sample_tokens=0",
                "trainer.eval_every=100000", "trainer.save_every=100000", "trainer.final_eval=false")
        experiment, txl = "audio/demo", ("memory.mem_len=384", "memory.cmem_len=0", "compression=none")
    study = Study("speech", "LibriSpeech sample, 16 kHz μ-law, speaker-disjoint test, at equal attention cost",
                  "bits_per_sample",
                  note="100 utterances of 10 speakers (LibriSpeech test-other): 8 speakers train, 1 valid, "
                       "1 test. CT: 256 memory + 128 compressed slots (c = 4); TXL: 384 memory slots; "
                       "seq_len 256; 4 layers, d_model 128.")
    for seed in _seeds(size):
        study.runs += [
            RunSpec("ct", experiment, base, seed, eval_split=_test_split(size),
                    attention_report=seed == 0 and size != "quick"),
            RunSpec("txl", experiment, (*base, *txl), seed, eval_split=_test_split(size)),
        ]
    return study


def ablation_study(size: str, data: Path) -> Study:
    base, experiment = shakespeare_runs(size, data)
    study = Study("ablation", "Compression functions and losses (the paper's Table 5), tiny-shakespeare bytes",
                  "bpc", note="As the shakespeare comparison's CT; only the compression choice changes.")
    for seed in range(1 if size == "quick" else 2):
        study.runs += [RunSpec(choice, experiment, (*base, f"compression={choice}"), seed) for choice in ABLATION]
    return study


def attention_study(size: str, data: Path) -> Study:
    """Seed 0 of the shakespeare CT (the speech CT's report is in the speech study)."""
    base, experiment = shakespeare_runs(size, data)
    study = Study("attention", "Attention by distance", "bpc")
    study.runs.append(RunSpec("ct", experiment, (*base, "compression=conv_attention"), 0, eval_split="valid",
                              attention_report=True))
    return study


def all_studies(size: str, data: Path) -> list[Study]:
    """Every study at ``size``; ``data`` holds ``text/`` and ``speech/``."""
    return [recall_study(size), shakespeare_study(size, data), pg19_study(size, data), wikitext_study(size, data),
            speech_study(size, data), ablation_study(size, data), attention_study(size, data)]
