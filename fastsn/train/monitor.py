"""The collapse monitor: every k steps the loop hands it the modes G hits, the fake/real mean pairwise-distance
ratio ("diversity") and D's spectral norms; a sustained drop of modes or diversity is a collapse event.

Rule: a measure has dropped when it is below (1 - drop) times its best value since the start (or since the last
event); ``patience`` consecutive checks with a drop make an event, after which the bests restart from the current
values (so one collapse is reported once). The loop then acts per ``--on-collapse``:
    warn        log the event and go on
    stop        log it and end training (the report still evaluates the last G)
    strengthen  double the gradient-penalty weight, or, without a penalty, turn on R1 at weight 1
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

ACTIONS = ("warn", "stop", "strengthen")


@dataclass
class Check:
    """One monitor check.

    Attributes:
        step: the training step (G updates done).
        modes: modes hit by a monitor sample of G (2-D: modes nearest to a high-quality sample).
        diversity: mean pairwise distance of G's samples over that of real samples.
        sigmas: {layer: spectral norm} of D's spectral norms, their power-iteration estimates (empty without --sn).
        spectra: {layer: (sigma_max, sigma_min)} of every Linear/Conv weight of D, by an SVD
            (:func:`fastsn.train.spectra.layer_spectra`).
    """
    step: int
    modes: int
    diversity: float
    sigmas: dict[str, float] = field(default_factory=dict)
    spectra: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass
class CollapseMonitor:
    """Detects sustained drops (module docstring).

    Attributes:
        action: one of :data:`ACTIONS`; drop: the relative drop that counts; patience: consecutive checks.
    """
    action: str = "warn"
    drop: float = 0.25
    patience: int = 3
    checks: list[Check] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    _best: dict[str, float] = field(default_factory=dict)
    _streak: int = 0

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown --on-collapse action {self.action!r}: choose one of {', '.join(ACTIONS)}")

    def check(self, check: Check) -> Optional[dict]:
        """Record a check; return the collapse event it completes, or None.

        Returns:
            {"step", "measure" ("modes" or "diversity"), "value", "best", "action"} or None.
        """
        self.checks.append(check)
        values = {"modes": float(check.modes), "diversity": check.diversity}
        dropped = [name for name, value in values.items()
                   if name in self._best and value < (1 - self.drop) * self._best[name]]
        for name, value in values.items():
            if value == value:  # not NaN
                self._best[name] = max(self._best.get(name, value), value)
        self._streak = self._streak + 1 if dropped else 0
        if self._streak < self.patience:
            return None
        measure = dropped[0]
        event = {"step": check.step, "measure": measure, "value": values[measure], "best": self._best[measure],
                 "action": self.action}
        self.events.append(event)
        self._best, self._streak = dict(values), 0
        return event
