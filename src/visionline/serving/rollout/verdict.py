"""The statistics of a rollout, pure: no I/O, plain numbers in and out.

- agreement: the share of requests on which the challenger's top class differs from
  the champion's, with a Wilson score interval (good at rates near 0, where a Wald
  interval collapses), overall and per champion class;
- health: error rate (5xx and timeouts) and p50/p99 latency per side;
- accuracy on late labels: McNemar's exact test (a two-sided binomial test on the
  discordant pairs) and a non-inferiority check on the paired accuracy difference;
- the decision: which checks pass, which block a promotion, and how many more
  requests or labels a check still needs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p: under H0 the b + c discordant pairs split as
    Binomial(b + c, 1/2). 1.0 when there is no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(b: int, c: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Challenger minus champion accuracy on n paired labelled requests, where ``b``
    only the champion got right and ``c`` only the challenger: (difference, one-sided
    lower confidence bound) with the paired (McNemar) variance."""
    if n <= 0:
        return 0.0, -1.0
    d = (c - b) / n
    var = max(0.0, (b + c) / n - d * d) / n
    z = NormalDist().inv_cdf(confidence)
    return d, d - z * math.sqrt(var)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (nearest rank, as latency percentiles are usually read)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


@dataclass(frozen=True)
class SideStats:
    """What one side answered: requests, errors (5xx or no answer), latency in ms."""

    requests: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def side_stats(records: Iterable[tuple[int, float]]) -> SideStats:
    """(HTTP status, latency in seconds) per request -> SideStats. A 4xx is the
    client's error (a bad image, a missing credential), not the model's."""
    statuses, latencies = [], []
    for status, seconds in records:
        statuses.append(status)
        latencies.append(1000.0 * seconds)
    errors = sum(1 for s in statuses if s >= 500 or s == 0)
    return SideStats(len(statuses), errors, quantile(latencies, 0.5), quantile(latencies, 0.99))


def disagreement(pairs: Iterable[tuple[str, str]], confidence: float = 0.95) -> dict[str, Any]:
    """(champion's class, challenger's class) per request joined by id -> the
    disagreement rate with its Wilson interval, overall and per champion class."""
    by_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    n = k = 0
    for champ, chall in pairs:
        n += 1
        differ = int(champ != chall)
        k += differ
        by_class[champ][0] += 1
        by_class[champ][1] += differ
    lo, hi = wilson(k, n, confidence)
    return {
        "n": n,
        "disagree": k,
        "rate": k / n if n else None,
        "interval": [lo, hi],
        "per_class": {
            c: {"n": m, "disagree": d, "rate": d / m, "interval": list(wilson(d, m, confidence))}
            for c, (m, d) in sorted(by_class.items())
        },
    }


def labelled_comparison(
    rows: Iterable[tuple[str, str, str]], confidence: float = 0.95
) -> dict[str, Any]:
    """(truth, champion's class, challenger's class) per labelled request -> both
    accuracies, the discordant counts, McNemar's exact p and the paired difference."""
    n = b = c = champ_right = chall_right = 0
    for truth, champ, chall in rows:
        n += 1
        a, x = champ == truth, chall == truth
        champ_right += a
        chall_right += x
        b += a and not x
        c += x and not a
    diff, lower = paired_difference(b, c, n, confidence)
    return {
        "n": n,
        "champion_accuracy": champ_right / n if n else None,
        "challenger_accuracy": chall_right / n if n else None,
        "champion_only_right": b,
        "challenger_only_right": c,
        "mcnemar_p": mcnemar_exact(b, c),
        "difference": diff,
        "difference_lower": lower,
    }


@dataclass(frozen=True)
class Margins:
    """The rollout's thresholds (``deploy.rollout`` in the config)."""

    min_requests: int = 200
    min_labelled: int = 100
    accuracy_margin: float = 0.02
    error_margin: float = 0.01
    latency_margin: float = 0.5
    latency_slack_ms: float = 50.0
    confidence: float = 0.95


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    needs: int = 0  # more requests (or labels) before this check can pass


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)

    @property
    def promotable(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def blocking(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"promotable": self.promotable, "checks": [asdict(c) for c in self.checks]}


def health_checks(champ: SideStats, chall: SideStats, m: Margins) -> list[Check]:
    """Errors and latency: what a canary is rolled back on, and part of any verdict.
    Each needs ``min_requests`` on both sides before it can pass (or fail)."""
    need = max(m.min_requests - champ.requests, m.min_requests - chall.requests, 0)
    if need:
        detail = (
            f"{chall.requests} challenger and {champ.requests} champion requests; "
            f"needs {need} more on each side (deploy.rollout.min_requests {m.min_requests})"
        )
        return [Check("errors", False, detail, need), Check("latency", False, detail, need)]
    excess = chall.error_rate - champ.error_rate
    errors = Check(
        "errors",
        excess <= m.error_margin,
        f"error rate {chall.error_rate:.2%} vs the champion's {champ.error_rate:.2%} "
        f"(margin {m.error_margin:.2%})",
    )
    limit = (champ.p99_ms or 0.0) * (1 + m.latency_margin) + m.latency_slack_ms
    latency = Check(
        "latency",
        (chall.p99_ms or 0.0) <= limit,
        f"p99 {chall.p99_ms:.0f} ms vs the champion's {champ.p99_ms:.0f} ms "
        f"(at most {limit:.0f} ms)",
    )
    return [errors, latency]


def decide(
    champ: SideStats,
    chall: SideStats,
    agreement: dict[str, Any],
    labelled: dict[str, Any],
    m: Margins,
) -> Verdict:
    """Promotable only when every check passes: enough joined requests, errors and
    latency within their margins, and accuracy on labels non-inferior by the margin."""
    checks = []
    need = max(0, m.min_requests - agreement["n"])
    checks.append(
        Check(
            "requests",
            need == 0,
            f"{agreement['n']} requests answered by both sides"
            + (f"; needs {need} more" if need else ""),
            need,
        )
    )
    checks += health_checks(champ, chall, m)
    n = labelled["n"]
    if n < m.min_labelled:
        checks.append(
            Check(
                "accuracy",
                False,
                f"{n} labelled requests; needs {m.min_labelled - n} more labels "
                "(visionline labels feedback)",
                m.min_labelled - n,
            )
        )
    else:
        lower = labelled["difference_lower"]
        checks.append(
            Check(
                "accuracy",
                lower > -m.accuracy_margin,
                f"accuracy {labelled['challenger_accuracy']:.2%} vs the champion's "
                f"{labelled['champion_accuracy']:.2%}: difference "
                f"{labelled['difference']:+.2%}, lower bound {lower:+.2%} "
                f"(non-inferior when above -{m.accuracy_margin:.2%}); "
                f"McNemar p = {labelled['mcnemar_p']:.3g}",
            )
        )
    return Verdict(checks)
