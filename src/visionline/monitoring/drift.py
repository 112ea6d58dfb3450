"""Drift statistics: is a window of inputs and predictions unlike the reference?

- every numeric feature: Kolmogorov-Smirnov (scipy) for the p-value, the population
  stability index (PSI) for the size of the shift;
- the predicted-class distribution: chi-squared on the 2 x K contingency table (scipy),
  PSI over the classes for the size;
- the embedding: maximum mean discrepancy (MMD, Gaussian kernel, median-distance
  bandwidth) with a permutation test, in torch; MMD² is its own size.

The p-values of one report are corrected together with Benjamini-Hochberg (the false
discovery rate is ``alpha``), and a test flags drift only when its corrected p-value is
under ``alpha`` *and* its effect reaches the threshold: with thousands of captures a
test finds differences too small to matter, and with a few dozen a large PSI may be
noise. Both must agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from visionline.config import MonitorConfig
from visionline.monitoring.features import numeric_features

PSI_BINS = 10
_SMOOTH = 0.5  # additive smoothing of bin counts: an empty bin is not an infinite PSI


def _psi_from_counts(ref: np.ndarray, cur: np.ndarray) -> float:
    r = (ref + _SMOOTH) / (ref.sum() + _SMOOTH * len(ref))
    c = (cur + _SMOOTH) / (cur.sum() + _SMOOTH * len(cur))
    return float(np.sum((c - r) * np.log(c / r)))


def psi(reference: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of ``current`` against ``reference``.

    Bins are the reference's deciles, so each holds about a tenth of it. A feature with
    few distinct reference values (image sizes) is binned by those values plus one bin
    for anything else, so a new size is a shift even when it is the largest.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    values = np.unique(ref)
    if len(values) <= bins:
        ref_idx = np.searchsorted(values, ref)
        pos = np.clip(np.searchsorted(values, cur), 0, len(values) - 1)
        cur_idx = np.where(values[pos] == cur, pos, len(values))
        n = len(values) + 1
    else:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
        ref_idx = np.searchsorted(edges, ref, side="right")
        cur_idx = np.searchsorted(edges, cur, side="right")
        n = len(edges) + 1
    return _psi_from_counts(
        np.bincount(ref_idx, minlength=n).astype(float),
        np.bincount(cur_idx, minlength=n).astype(float),
    )


def class_psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    return _psi_from_counts(np.asarray(ref_counts, float), np.asarray(cur_counts, float))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    res = stats.ks_2samp(reference, current)
    p = float(res.pvalue)
    return float(res.statistic), (1.0 if np.isnan(p) else p)


def chi2_classes(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity: are the two samples' class shares the same?"""
    table = np.vstack([ref_counts, cur_counts]).astype(float)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 0.0, 1.0
    res = stats.chi2_contingency(table, correction=False)
    return float(res.statistic), float(res.pvalue)


def _median_bandwidth(d2: torch.Tensor) -> float:
    n = d2.shape[0]
    off = d2[~torch.eye(n, dtype=torch.bool)]
    if off.numel() > 1_000_000:  # the median of a large sample of pairs is as good
        off = off[
            torch.randperm(off.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]
        ]
    med = float(off.median())
    return med if med > 0 else 1.0


def _mmd2_unbiased(k: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD² for each row of ``a`` (P, N), a 0/1 indicator of the first sample,
    given the pooled kernel matrix ``k`` (N, N) whose diagonal is 1."""
    b = 1.0 - a
    n = a.sum(1)
    m = b.sum(1)
    ka = a @ k
    kb = b @ k
    sxx = (ka * a).sum(1) - n  # minus the diagonal: i != j
    syy = (kb * b).sum(1) - m
    sxy = (ka * b).sum(1)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    permutations: int = 200,
    max_samples: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(MMD², permutation p-value) between samples ``x`` (n, d) and ``y`` (m, d).

    Gaussian kernel with the median pairwise squared distance of the pooled sample as
    bandwidth; the p-value counts permutations of the pooled sample whose MMD² reaches
    the observed one, (1 + hits) / (1 + permutations). Samples larger than
    ``max_samples`` are subsampled (seeded).
    """
    gen = torch.Generator().manual_seed(seed)

    def sub(a: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(a, dtype=np.float32))
        if t.shape[0] > max_samples:
            t = t[torch.randperm(t.shape[0], generator=gen)[:max_samples]]
        return t.double()

    xs, ys = sub(x), sub(y)
    n, m = xs.shape[0], ys.shape[0]
    if n < 2 or m < 2:
        return 0.0, 1.0
    z = torch.cat([xs, ys])
    d2 = torch.cdist(z, z).pow(2)
    k = torch.exp(-d2 / _median_bandwidth(d2))
    first = torch.zeros(1, n + m, dtype=torch.float64)
    first[0, :n] = 1.0
    observed = float(_mmd2_unbiased(k, first)[0])
    hits = 0
    done = 0
    while done < permutations:
        p = min(64, permutations - done)  # (p, N) at a time: memory stays small
        order = torch.argsort(torch.rand(p, n + m, generator=gen), dim=1)
        a = (order < n).double()
        hits += int((_mmd2_unbiased(k, a) >= observed).sum())
        done += p
    return observed, (1 + hits) / (1 + permutations)


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    if not p_values:
        return []
    return [float(p) for p in stats.false_discovery_control(np.asarray(p_values), method="bh")]


@dataclass
class FeatureTest:
    feature: str
    test: str  # ks, chi2, mmd
    statistic: float
    p_value: float
    effect_name: str  # psi or mmd2
    effect: float
    threshold: float
    p_adjusted: float = 1.0
    drifted: bool = False


@dataclass
class DriftResult:
    n_reference: int
    n_window: int
    alpha: float
    tests: list[FeatureTest] = field(default_factory=list)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    drifted: bool | None = None  # None: too few captures for a verdict
    note: str = ""

    @property
    def drifted_tests(self) -> list[FeatureTest]:
        return [t for t in self.tests if t.drifted]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    reference: pd.DataFrame,
    window: pd.DataFrame,
    classes: list[str],
    channels: int,
    cfg: MonitorConfig,
    seed: int = 0,
) -> DriftResult:
    """Every test of a window against the reference, corrected and judged together."""
    res = DriftResult(len(reference), len(window), cfg.alpha)
    ref_counts = reference["label"].value_counts().reindex(classes, fill_value=0)
    cur_counts = (
        window["label"].value_counts().reindex(classes, fill_value=0)
        if len(window)
        else ref_counts * 0
    )
    res.class_counts = {
        "reference": {c: int(v) for c, v in ref_counts.items()},
        "window": {c: int(v) for c, v in cur_counts.items()},
    }
    if len(window) < cfg.min_window:
        res.note = (
            f"{len(window)} records in the window, fewer than monitor.min_window "
            f"({cfg.min_window}): no verdict"
        )
        return res

    for name in numeric_features(channels):
        if name not in window or name not in reference:
            continue
        r = reference[name].to_numpy(dtype=float)
        c = window[name].dropna().to_numpy(dtype=float)
        d, p = ks_test(r, c)
        res.tests.append(FeatureTest(name, "ks", d, p, "psi", psi(r, c), cfg.psi_threshold))
    chi, p = chi2_classes(ref_counts.to_numpy(), cur_counts.to_numpy())
    res.tests.append(
        FeatureTest(
            "predicted_class",
            "chi2",
            chi,
            p,
            "psi",
            class_psi(ref_counts.to_numpy(), cur_counts.to_numpy()),
            cfg.psi_threshold,
        )
    )
    if "embedding" in window and "embedding" in reference:
        emb = window["embedding"].dropna()
        if len(emb) >= 2:
            mmd2, p = mmd_test(
                np.stack(reference["embedding"].to_numpy()),
                np.stack(emb.to_numpy()),
                cfg.permutations,
                cfg.max_mmd_samples,
                seed,
            )
            res.tests.append(
                FeatureTest("embedding", "mmd", mmd2, p, "mmd2", mmd2, cfg.mmd_threshold)
            )

    for t, q in zip(res.tests, benjamini_hochberg([t.p_value for t in res.tests]), strict=True):
        t.p_adjusted = q
        t.drifted = q < cfg.alpha and t.effect >= t.threshold
    res.drifted = any(t.drifted for t in res.tests)
    return res
