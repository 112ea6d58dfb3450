"""How a served model runs its forward pass on CPU: chosen by measurement, verified.

TorchServe's stock handler calls the eager module. On CPU the forward pass is most of
a request's cost, and two graph rewrites make it cheaper without changing what it
computes:

- ``fused``: batch norm folded into the preceding convolution and dropout removed
  (``torch.fx``).
- ``mkldnn``: ``fused``, plus chains of convolutions, ReLUs and pooling run in oneDNN's
  blocked layout with the weights prepacked once
  (``torch.fx.experimental.optimization.optimize_for_inference``).

Which one is fastest depends on the architecture, the input size and the batch size:
oneDNN's layout pays for resnet18 at 224 px (about 1.2-1.35x here) and costs the
small CNN at 8 px, which is dominated by per-call overhead. So in ``auto`` mode the
worker times the candidates when it loads the model, alternating them call by call,
and keeps the fastest one only if it beats eager by ``min_gain``.

Every candidate is checked against the eager model on seeded inputs first: one that
fails to build or to run, or whose class probabilities differ from eager by more than
``atol``, is dropped with the reason recorded. The served model therefore computes the
same function; the deploy parity check (1e-4 against the in-process model) checks it
once more end to end.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import get_args

import torch
from torch import nn
from torch.fx.experimental.optimization import fuse, optimize_for_inference, remove_dropout

from visionline.config import CpuInference

CPU_INFERENCE_MODES: tuple[str, ...] = get_args(CpuInference)


@dataclass(frozen=True)
class InferencePlan:
    """The module to serve and why: ``ms_per_call`` holds the median time per forward
    call for every candidate that was timed, keyed by batch size."""

    model: nn.Module
    choice: str
    mode: str
    ms_per_call: dict[str, dict[int, float]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)

    def speedup(self, candidate: str | None = None) -> float | None:
        """Geometric-mean speed of ``candidate`` (default: the choice) over eager."""
        name = candidate or self.choice
        if name not in self.ms_per_call or "eager" not in self.ms_per_call:
            return None
        eager, cand = self.ms_per_call["eager"], self.ms_per_call[name]
        logs = [math.log(eager[b] / cand[b]) for b in eager if b in cand and cand[b] > 0]
        return math.exp(sum(logs) / len(logs)) if logs else None

    def summary(self) -> str:
        parts = [f"cpu inference: {self.choice} (mode {self.mode})"]
        for name, times in self.ms_per_call.items():
            per_batch = ", ".join(f"batch {b}: {ms:.2f} ms" for b, ms in sorted(times.items()))
            parts.append(f"{name} [{per_batch}]")
        parts += [f"{name} rejected: {why}" for name, why in self.rejected.items()]
        return "; ".join(parts)


def _fused(model: nn.Module) -> nn.Module:
    return remove_dropout(fuse(model))


def _mkldnn(model: nn.Module) -> nn.Module:
    # torch.utils.mkldnn's prepacked modules are ScriptModules, which warn about
    # TorchScript's deprecation on construction; they work on the pinned torch.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return optimize_for_inference(model)


BUILDERS: dict[str, Callable[[nn.Module], nn.Module]] = {"fused": _fused, "mkldnn": _mkldnn}


def _inputs(shape: Sequence[int], batch_sizes: Sequence[int]) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {b: torch.randn((b, *shape), generator=gen) for b in batch_sizes}


def _check(candidate: nn.Module, reference: dict[int, torch.Tensor], inputs, atol: float) -> str:
    """Why ``candidate`` may not replace eager, or '' when it may."""
    with torch.inference_mode():
        for b, x in inputs.items():
            out = candidate(x)
            if not isinstance(out, torch.Tensor) or out.shape != reference[b].shape:
                shape = getattr(out, "shape", type(out).__name__)
                return f"batch {b}: output {shape}, eager gives {tuple(reference[b].shape)}"
            if not torch.isfinite(out).all():
                return f"batch {b}: non-finite outputs"
            diff = (torch.softmax(out.float(), 1) - torch.softmax(reference[b], 1)).abs().max()
            if diff.item() > atol:
                return f"batch {b}: probabilities differ from eager by {diff.item():.2e} > {atol:g}"
    return ""


def _time(
    candidates: dict[str, nn.Module], inputs: dict[int, torch.Tensor], budget_s: float
) -> dict[str, dict[int, float]]:
    """Median ms per call; the candidates alternate call by call, so a machine that
    speeds up or slows down during the measurement affects them alike."""
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in inputs} for n in candidates}
    with torch.inference_mode():
        for b, x in inputs.items():
            for m in candidates.values():
                m(x)  # warm-up: oneDNN primitives and allocator caches
            deadline = time.perf_counter() + budget_s / len(inputs)
            rounds = 0
            while rounds < 3 or (time.perf_counter() < deadline and rounds < 50):
                for name, m in candidates.items():
                    t = time.perf_counter()
                    m(x)
                    times[name][b].append((time.perf_counter() - t) * 1000)
                rounds += 1
    return {n: {b: statistics.median(v) for b, v in per.items()} for n, per in times.items()}


def plan_cpu_inference(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1,),
    mode: str = "auto",
    *,
    atol: float = 1e-5,
    min_gain: float = 0.05,
    budget_s: float = 3.0,
) -> InferencePlan:
    """Choose how ``model`` (eval mode, float32, on CPU) runs inputs of ``input_shape``
    (C, H, W) at the given batch sizes. ``mode`` is ``auto`` (measure), ``eager``, or a
    candidate to use if it passes the check. Never raises for a candidate's failure:
    the plan falls back to eager and says why."""
    if mode not in CPU_INFERENCE_MODES:
        raise ValueError(f"cpu inference mode {mode!r}: expected one of {CPU_INFERENCE_MODES}")
    model.eval()
    if mode == "eager":
        return InferencePlan(model, "eager", mode)
    param = next(model.parameters(), None)
    if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
        return InferencePlan(
            model,
            "eager",
            mode,
            rejected={
                "all": f"model is {param.dtype} on {param.device}: rewrites are for CPU float32"
            },
        )

    sizes = sorted({1, 3, *batch_sizes})  # 3: a partial batch, as TorchServe sends them
    inputs = _inputs(input_shape, sizes)
    with torch.inference_mode():
        reference = {b: model(x).float() for b, x in inputs.items()}

    wanted = list(BUILDERS) if mode == "auto" else [mode]
    built: dict[str, nn.Module] = {}
    rejected: dict[str, str] = {}
    for name in wanted:
        try:
            candidate = BUILDERS[name](copy.deepcopy(model))
            why = _check(candidate, reference, inputs, atol)
        except Exception as e:  # a rewrite that cannot handle this model: keep eager
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
        if why:
            rejected[name] = why
        else:
            built[name] = candidate
    if not built:
        return InferencePlan(model, "eager", mode, rejected=rejected)

    timed = {b: inputs[b] for b in sorted({1, *batch_sizes})}
    ms = _time({"eager": model, **built}, timed, budget_s)
    plan = InferencePlan(model, "eager", mode, ms, rejected)
    if mode != "auto":
        return InferencePlan(built[mode], mode, mode, ms, rejected)
    best = max(built, key=lambda n: plan.speedup(n) or 0.0)
    if (plan.speedup(best) or 0.0) >= 1 + min_gain:
        return InferencePlan(built[best], best, mode, ms, rejected)
    return plan
