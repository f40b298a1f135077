"""The records a comparison is made of (`Run`: one run's trace and settings) and what it returns
(`CompareResult` and its parts), as plain dataclasses; `analyzers.compare` computes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyzers.metrics import finite
from analyzers.monotonicity import MonotonicityResult
from analyzers.trajectory_summary import TrajectoryResult


@dataclass
class Run:
    """One input (a seed of a group), as read from its trace."""

    group: str
    path: str
    config: dict[str, Any]
    depths: list[int]
    errors: np.ndarray  # (n, D) per-sample error the metric is based on
    monotonicity: MonotonicityResult
    correct: np.ndarray | None = None  # (n, D) or (n, D, T) for LMs: per-sample/token correctness
    max_prob: np.ndarray | None = None  # same shape as correct
    entropy: np.ndarray | None = None
    argmax: np.ndarray | None = None  # (n, D) classification predictions (for the patience rule)
    predictions: np.ndarray | None = None  # (n, D, out) regression predictions (for heatmaps)
    targets: np.ndarray | None = None  # (n, out) regression targets (for heatmaps)
    flops: list[float] | None = None  # per depth, per sample
    latency_ms: list[float] | None = None  # per depth, per sample
    log: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: str | None = None  # the model behind the run, when at hand (for measured exits)


@dataclass
class Difference:
    """A config key whose values differ between groups."""

    key: str
    values: dict[str, list[Any]]  # group -> the distinct values its runs have


@dataclass
class GroupCurve:
    """Per-depth error of one group, its seeds averaged.

    ``depths``, ``mean``, ``low``, ``high``: (D,). ``per_seed``: (seeds, D), each seed's own curve.
    ``band`` says how ``low``/``high`` were made: a bootstrap over seeds and the shared test samples
    (percentiles of the resampled group mean; never outside the range an error can take), or for
    one seed that run's bootstrap over test samples.
    """

    depths: list[int]
    mean: list[float]
    low: list[float]
    high: list[float]
    seeds: int
    band: str
    per_seed: list[list[float]]

    def __post_init__(self) -> None:
        D = len(self.depths)
        if not len(self.mean) == len(self.low) == len(self.high) == D or any(len(c) != D for c in self.per_seed):
            raise ValueError("every per-depth list of a group curve has one entry per depth")


@dataclass
class Gap:
    """Per-sample error of ``group`` minus ``vs`` at one depth, with its 95% interval."""

    group: str
    vs: str
    depth: int
    gap: float
    low: float
    high: float


@dataclass
class FinalComparison:
    """The final depth of ``group`` against ``vs``'s, stated plainly with the test used."""

    group: str
    vs: str
    depth: int
    vs_depth: int
    metric: str
    value: float
    vs_value: float
    error_ratio: float
    p: float
    t: float
    test: str
    statement: str


@dataclass
class Violation:
    frm: int
    to: int
    delta: float
    p_holm: float


@dataclass
class RunVerdict:
    """One run's monotonicity verdict. ``curve``: (D,)."""

    group: str
    path: str
    verdict: str
    monotone: bool
    monotone_strict: bool
    curve: list[float]
    deploy_depth: int
    violations: list[Violation]


@dataclass
class Cost:
    """What every depth of a group costs. ``depths``, ``error``, ``flops``, ``latency_ms``: (D,)."""

    depths: list[int]
    error: list[float]
    flops: list[float] | None
    latency_ms: list[float] | None
    pareto: list[int] = field(default_factory=list)  # depths on the Pareto front of (FLOPs, error)


@dataclass
class ExitSweep:
    """An early-exit rule swept over thresholds; every list has one entry per threshold."""

    threshold: list[float]
    accuracy: list[float]
    depth: list[float]  # average exit depth
    flops: list[float] | None  # average FLOPs per sample, when costs are known


@dataclass
class TradeOff:
    """One exit setting run for real (`lpa_cli.serving.generate`): its quality and its measured speed-up over
    the full model, beside the speed-up a simulation from FLOPs per depth would claim."""

    strategy: str  # confidence | exit | self-speculative
    setting: str  # e.g. "0.9" or "draft 2, speculate 4"
    quality: float  # accuracy; for language models the share of tokens equal to full greedy decoding's
    full_quality: float
    mean_depth: float | None
    measured_speedup: float  # median over `repeats` rounds, each timing the full model and this setting back to back
    simulated_speedup: float | None
    speedup_low: float | None = None  # the range of the rounds' speed-ups: the figure's noise on this machine
    speedup_high: float | None = None
    repeats: int = 1

    @property
    def beyond_flops(self) -> bool:
        """A measured speed-up above what the FLOPs it skips allow (by more than 25%): timing noise or a
        difference in overheads, not a speed-up to expect; the report flags it."""
        return self.simulated_speedup is not None and self.measured_speedup > 1.25 * self.simulated_speedup

    def speedup_text(self) -> str:
        """``2.10x (1.9-2.3, 5 runs)``, with a flag where the FLOPs contradict it."""
        spread = f" ({self.speedup_low:.2f}-{self.speedup_high:.2f}, {self.repeats} runs)" if self.speedup_low is not None else ""
        flag = " [above its FLOPs bound: noise]" if self.beyond_flops else ""
        return f"{self.measured_speedup:.2f}x{spread}{flag}"


@dataclass
class Heatmaps:
    """2-D surfaces: the target and each group's prediction at every depth on the test grid."""

    grid: list[int]  # (rows, columns)
    target: list[list[float]] | None  # (rows, columns)
    groups: dict[str, list[list[list[float]]]]  # group -> (D, rows, columns)
    depths: dict[str, list[int]]


@dataclass
class CompareResult:
    metric: str
    kind: str
    groups: dict[str, list[str]]  # group -> run paths
    diff: list[Difference]  # config keys that differ between groups
    shared: dict[str, Any]  # config keys every run has the same value for
    curves: dict[str, GroupCurve]
    gaps: list[Gap]  # vs the first group, per common depth
    final: list[FinalComparison]
    runs: list[RunVerdict]
    cost: dict[str, Cost]
    early_exit: dict[str, dict[str, ExitSweep]]  # group -> rule -> sweep
    heatmaps: Heatmaps | None
    training: dict[str, list[dict[str, Any]]]  # run path -> its log records
    first_correct: dict[str, list[float]] = field(default_factory=dict)  # classification: share of samples first right at each depth
    measured: dict[str, list[TradeOff]] = field(default_factory=dict)  # group -> exit settings run for real (first seed)
    notes: list[str] = field(default_factory=list)
    never_learned: list[str] = field(default_factory=list)  # groups whose every run ends no better than a constant predictor
    trajectory: dict[str, TrajectoryResult] = field(default_factory=dict)  # group -> alignment, KL to final, calibration (seeds pooled)

    def to_dict(self) -> dict[str, Any]:
        return finite(self)
