"""Routing: each sample's ``source`` picks the reward function that scores it.

Routes are the ``reward`` section's ``RewardRoute``s (``rollout.settings``; a dict of their fields
is validated into one). One run can so mix verifiable prompts (``math_verify``), open-ended ones
(``reward_model``) and the user's own functions (``python``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rewards.base import RewardFunction, RewardResult, RewardRouteError
from rollout.records import Sample
from rollout.settings import RewardConfig, RewardRoute


def build_scorer(route: RewardRoute, name: str = "default") -> RewardFunction:
    """The reward function a route (named ``name``) describes."""
    if route.kind == "math_verify":
        from rewards.math_verify import MathVerifier

        return MathVerifier(timeout_s=route.timeout_s, require_boxed=route.require_boxed)
    if route.kind == "reward_model":
        from rewards.reward_model import RewardModelScorer

        return RewardModelScorer(
            route.model_path,
            batch_size=route.batch_size,
            batch_tokens=route.batch_tokens,
            dtype=route.dtype,
            label_index=route.label_index,
        )
    from rewards.python_function import PythonReward  # kind "python": RewardRoute allows no other

    return PythonReward(route.functions, route.weights, route.timeout_s, route.on_error, route=name)


class RewardRouter:
    """Scores a mixed batch: samples go to the route named by their ``source`` (an unknown source
    goes to ``default``), each route's scorer is built once, on first use (or all of them at
    ``start()``, as a reward worker does), and the results come back in the order of the input.
    The routes and the default are checked as the ``reward`` section checks them (``RewardConfig``).
    """

    def __init__(self, routes: Mapping[str, RewardRoute | Mapping[str, Any]], default: str = "default") -> None:
        self.config = RewardConfig.model_validate({"routes": dict(routes), "default": default})
        self.routes: dict[str, RewardRoute] = self.config.routes
        self._scorers: dict[str, RewardFunction] = {}

    def start(self) -> None:
        """Build every route's scorer and start it (a grader process, a reward model) now, while
        the rest of the run starts, instead of inside the first step."""
        for name, route in self.routes.items():
            try:
                self.scorer(name).start()
            except Exception as err:  # noqa: BLE001 - whatever fails, one line naming the route
                cause = " ".join(str(err).split())[:300]
                raise RewardRouteError(
                    f"reward route {name!r} ({route.kind}) did not start on a reward worker: "
                    f"{type(err).__name__}: {cause}"
                ) from None

    def route_name(self, sample: Sample) -> str:
        """The route that scores ``sample``: its source if that is a route, else the default."""
        return self.config.route_name(sample.source)

    def scorer(self, name: str) -> RewardFunction:
        """The reward function of route ``name``, built on first use."""
        if name not in self._scorers:
            self._scorers[name] = build_scorer(self.routes[name], name)
        return self._scorers[name]

    def score(self, samples: Sequence[Sample]) -> list[RewardResult]:
        """One result per sample, in input order; each result's info names its ``route``."""
        by_route: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            by_route.setdefault(self.route_name(sample), []).append(i)
        results: list[RewardResult | None] = [None] * len(samples)
        for name, indices in by_route.items():
            scored = self.scorer(name).score([samples[i] for i in indices])
            if len(scored) != len(indices):
                raise RuntimeError(f"route {name!r} returned {len(scored)} results for {len(indices)} samples")
            for i, result in zip(indices, scored, strict=True):
                result.info["route"] = name
                results[i] = result
        return results  # type: ignore[return-value]

    def apply(self, samples: Sequence[Sample]) -> list[Sample]:
        """Score ``samples`` and write each result into its sample (``reward``, ``reward_info``)."""
        for sample, result in zip(samples, self.score(samples), strict=True):
            sample.reward = result.reward
            sample.reward_info = result.info
        return list(samples)

    def stats(self) -> dict[str, dict[str, int]]:
        """Each built route's counters, by route name."""
        return {name: scorer.stats() for name, scorer in self._scorers.items()}

    def close(self) -> None:
        """Close every built scorer (grader processes, models)."""
        for scorer in self._scorers.values():
            scorer.close()
        self._scorers.clear()
