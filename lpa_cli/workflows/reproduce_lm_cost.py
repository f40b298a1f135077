"""`lpa reproduce lm-cost`: does the sampled head loss keep the per-depth curve that exact LPA gives?

The `llm` experiment's set-up with a vocabulary large enough that the head dominates. The licences
alone hold too few distinct merges for one (a BPE trained on them stops near 3,900 tokens), so the
text adds the Python language reference that every Python installs (`pydoc_data.topics`, 465 kB of
English): its first `REFERENCE_PRETRAIN` joins the licences' first 60% in pretraining, the rest joins
their last 40% as held-out text (about 9x the licences' alone, so the equal-wall-clock runs do not
exhaust it; the tokenizer is trained on the whole reference). A byte-level BPE of `VOCAB` tokens and a
Llama-layout decoder (8 blocks, width 128; its head's 2.1 MFLOP per token are 42% of the model's, so
exact LPA over 9 depths needs about 4.3x E2E's head-and-block FLOPs) are pretrained E2E and exported as a
Hugging Face directory, then fine-tuned from that directory on the held-out text with

- E2E, exact LPA (every depth through the full head), sampled LPA (`--head-loss sampled:K`: depths < N
  read the batch's targets and K sampled vocabulary rows; depth N exact), and sampled LPA with
  LayerSkip's rotation (each shallower depth every 4 steps), at **equal steps**;
- exact LPA and the two sampled forms at **equal wall-clock**: each sampled group gets the steps that
  fit in exact LPA's median training time, measured on the equal-steps runs of the same machine.

Targets (issue 25): at equal steps, sampled LPA's per-depth perplexity within 2% of exact LPA's at every
depth; at equal wall-clock, better than exact LPA's at every depth.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from pathlib import Path

from lpa_core.errors import DataError, UsageError
from lpa_core.files import readable
from lpa_cli.config import RunConfig, TaskConfig
from lpa_cli.formats.checkpoint import read_info
from lpa_cli.training.setup import on_hardware
from lpa_cli.workflows.reproduce_llm import FINETUNE_CONTEXT, finetune, prepare
from lpa_cli.workflows.study import Study, Target, all_lpa_monotone, run_path

VOCAB = 8192
REFERENCE_PRETRAIN = 0.2  # the Python reference's share in pretraining; the rest is held out, about 9x the licences' held-out text
K = 1024  # sampled rows: an eighth of the vocabulary, besides the batch's targets
EXACT, SAMPLED, ROTATED = "LPA exact", f"LPA sampled:{K}", f"LPA sampled:{K} + rotation:4"
FORMS = {
    "E2E": ("e2e", {}),
    EXACT: ("lpa", {}),
    SAMPLED: ("lpa", {"head_loss": f"sampled:{K}"}),
    ROTATED: ("lpa", {"head_loss": f"sampled:{K}", "depth_schedule": "rotation:4"}),
}


def reference_text() -> str:
    """The Python language reference shipped with Python (`pydoc_data.topics`), in a fixed order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _ppl(metrics: list[dict[str, list[float]]]) -> list[float]:
    """Mean per-depth perplexity over a group's seeds."""
    return [statistics.mean(m["ppl"][k] for m in metrics) for k in range(len(metrics[0]["ppl"]))]


def within(share: float):
    def check(m, c) -> tuple[bool, str]:
        exact = _ppl(m[EXACT])
        worst = {g: max(abs(a / b - 1) for a, b in zip(_ppl(m[g]), exact)) for g in (SAMPLED, ROTATED) if g in m}
        return all(w <= share for w in worst.values()), ", ".join(f"{g}: at most {w:.1%} from exact" for g, w in worst.items())
    return check


def better(m, c) -> tuple[bool, str]:
    exact = _ppl(m[EXACT])
    rows = {g: sum(a < b for a, b in zip(_ppl(m[g]), exact)) for g in (SAMPLED, ROTATED)}
    return all(n == len(exact) for n in rows.values()), ", ".join(f"{g} lower at {n}/{len(exact)} depths" for g, n in rows.items())


def seconds(cfg: RunConfig, label: str, out: Path) -> float | None:
    """The training time a finished run took: its log's last record (checkpoints hold no times, so
    that the same seeded run writes the same bytes)."""
    path = run_path(out, "lm-cost", "equal-steps", label, cfg.train.seed)
    log = path.with_suffix(".jsonl")
    if not path.exists() or not log.is_file() or read_info(path).config != on_hardware(cfg):
        return None
    lines = readable(log, "text", error=DataError).read_text(encoding="utf-8", errors="replace").strip().splitlines()
    try:
        return float(json.loads(lines[-1])["elapsed_s"]) if lines else None
    except (ValueError, KeyError, TypeError):
        return None


def lm_cost_studies(seeds: int, quick: bool, out: Path, progress) -> Iterator[Study]:
    """Equal steps first; its measured times then decide the equal-wall-clock runs' steps."""
    ref = reference_text()
    cut = ref.rfind("\n", 0, int(len(ref) * REFERENCE_PRETRAIN)) + 1
    paths = prepare(out, quick, progress, vocab=VOCAB, folder="lm-cost", extra=ref[:cut], steps=150 if quick else 600,
                    held_extra=ref[cut:], tokenizer_extra=ref[cut:])
    task = TaskConfig(name=f"text:{paths['held_out']}", options={"context": FINETUNE_CONTEXT})
    steps = 40 if quick else 100  # as `llm`: more steps overfit the held-out text
    runs = {label: [finetune(paths["base"], task, objective, i, steps, **settings) for i in range(seeds)]
            for label, (objective, settings) in FORMS.items()}
    yield Study("equal-steps", runs, [Target("sampled LPA's per-depth perplexity within 2% of exact LPA's at every depth", within(0.02)),
                                      Target("every LPA form monotone (every seed)", all_lpa_monotone)], metric="ce")
    measured = {label: [t for t in (seconds(c, label, out) for c in runs[label]) if t] for label in (EXACT, SAMPLED, ROTATED)}
    if not all(measured.values()):
        raise UsageError(f"{out / 'lm-cost' / 'equal-steps'}: the equal-steps runs' training logs (.jsonl) are missing, and their "
                         "times decide the equal-wall-clock budgets; remove the folder's checkpoints to train them again")
    times = {label: statistics.median(v) for label, v in measured.items()}
    progress("median training times at equal steps: " + ", ".join(f"{g} {t:.1f} s" for g, t in times.items()))
    budget = {label: max(steps, round(steps * times[EXACT] / times[label])) for label in times}
    wall = {label: [finetune(paths["base"], task, FORMS[label][0], i, budget[label], **FORMS[label][1]) for i in range(seeds)]
            for label in (EXACT, SAMPLED, ROTATED)}
    yield Study("equal-wall-clock", wall, [Target(f"at exact LPA's time ({steps} steps; sampled {budget[SAMPLED]}, with rotation "
                                                  f"{budget[ROTATED]}), sampled LPA's perplexity lower at every depth", better)],
                metric="ce")
