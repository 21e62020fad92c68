"""A real run's machine, replayed in the simulator (issue 4, item 5).

``simulate`` draws every batch's latency independently from one table. A real run on this shared
two-core machine differs from that in three ways, each measured from the run's own batches:

1. **Submission times.** The open-loop generator submits a little after each nominal arrival,
   and now and then a clump at once (its thread waited for a core or the GIL; the worst slips
   are over 100 ms). The simulator is given the measured submission times, and the deadlines
   the scheduler was given (submission plus relative deadline).
2. **Per-batch overhead.** The worker holds a batch longer than the model runs: the dispatch hands
   it to Python, the futures are settled, and the worker goes back to the core for the next one.
   When requests were waiting, one batch's start to the next one's is the worker's whole
   *occupancy* for it; the simulator's batches take that occupancy (a batch followed by idle time
   takes its model time plus the run's median overhead).
3. **Speed over time.** Other work on the shared cores slows the model by up to 1.5–2× for
   seconds at a time. Drawing from the whole run's latencies at random loses that, and biases
   them: the queue, and so the batch size, grows while the machine is slow, so the run's large
   batches were mostly timed in slow spells. The run's speed profile s(t), each batch's occupancy
   over its size's median occupancy and then the median of that over a ``window`` of seconds,
   defines a virtual clock τ(t) = ∫ dt / s(t): the simulator runs on τ, with submission times and
   deadlines mapped onto it and each latency sample divided by the speed when it was measured.
   Its finish times are mapped back to seconds. τ is increasing, so "finished by the deadline"
   means the same on either clock.

The window is the one free choice: the same for every load and policy, stated with the results
(0.25, 0.5 and 1 s did equally well on exploratory runs; a window of one batch replays every
batch's own time, but then the latency model sees no spread and Φ's batches go wrong). A limit:
on τ the scheduler's latency model learns speed-normalised latencies, a narrower spread than the
real scheduler's, and it sees slow spells at once as shorter deadlines rather than late, through
its window of recent batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW_S = 0.5  # the default window of the speed profile: tens to hundreds of batches
MIN_SAMPLES = 5  # a batch size the run ran fewer times also gets the warm-up sweep's samples


@dataclass
class Batches:
    """The batches a real run executed, in order, on the scheduler's clock (seconds).

    Attributes:
        size: Requests per batch.
        enter: When the model started on it.
        exit: When the model finished it.
        first_arrival: The submission time of its earliest member.
    """

    size: np.ndarray
    enter: np.ndarray
    exit: np.ndarray
    first_arrival: np.ndarray

    @classmethod
    def from_log(
        cls, log: Sequence[tuple[Sequence[int], float, float]], submitted: np.ndarray
    ) -> Batches:
        """From ``(request indices, model start, model end)`` per batch and submission times."""
        return cls(
            size=np.array([len(ids) for ids, _, _ in log], dtype=np.int64),
            enter=np.array([t for _, t, _ in log], dtype=np.float64),
            exit=np.array([t for _, _, t in log], dtype=np.float64),
            first_arrival=np.array([submitted[list(ids)].min() for ids, _, _ in log]),
        )


def occupancy(b: Batches) -> tuple[np.ndarray, float]:
    """Seconds the worker was held by each batch, and the median overhead beyond the model.

    A batch followed at once by the next (a member of the next was waiting before this one's model
    finished) held the worker from its model start to the next one's: the dispatch lag, the model,
    settling the futures and asking the core again, all measured. Any other batch is followed by
    idle time, so it gets its model time plus the median overhead of the back-to-back ones.
    """
    model = b.exit - b.enter
    busy = np.zeros(b.size.size, dtype=bool)
    busy[:-1] = b.first_arrival[1:] < b.exit[:-1]
    gap = np.diff(b.enter, append=np.nan)
    overhead = float(np.median(gap[busy] - model[busy])) if busy.any() else 0.0
    return np.where(busy, gap, model + overhead), overhead


def per_size_median(size: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """For each batch, the median of ``seconds`` over the batches of its size."""
    out = np.empty(seconds.size)
    for s in np.unique(size):
        mask = size == s
        out[mask] = np.median(seconds[mask])
    return out


def rolling_median(at: np.ndarray, x: np.ndarray, window: float) -> np.ndarray:
    """For each (ascending) time in ``at``, the median of ``x`` within half a window of it."""
    lo = np.searchsorted(at, at - window / 2)
    hi = np.searchsorted(at, at + window / 2, side="right")
    return np.array([np.median(x[a:b]) for a, b in zip(lo, hi, strict=True)])


def relative_speed(size: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Each batch's seconds over the median seconds of the run's batches of its size."""
    return seconds / per_size_median(size, seconds)


class VirtualClock:
    """τ(t) = ∫ dt / s(t) for a speed s that is constant from each breakpoint to the next.

    Before the first breakpoint the speed is the first one; after the last, the last one.
    """

    def __init__(self, at: np.ndarray, speed: np.ndarray) -> None:
        if at.size == 0 or at.size != speed.size or np.any(np.diff(at) < 0) or np.any(speed <= 0):
            raise ValueError("breakpoints must be ascending, with one positive speed each")
        self.at = np.asarray(at, dtype=np.float64)
        self.speed = np.asarray(speed, dtype=np.float64)
        self.tau = np.concatenate([[0.0], np.cumsum(np.diff(self.at) / self.speed[:-1])])

    def virtual(self, t: np.ndarray) -> np.ndarray:
        """Real times to τ."""
        t = np.asarray(t, dtype=np.float64)
        i = np.clip(np.searchsorted(self.at, t, side="right") - 1, 0, self.at.size - 1)
        return self.tau[i] + (t - self.at[i]) / self.speed[i]

    def real(self, tau: np.ndarray) -> np.ndarray:
        """τ back to real times (NaN stays NaN)."""
        tau = np.asarray(tau, dtype=np.float64)
        safe = np.where(np.isnan(tau), 0.0, tau)
        i = np.clip(np.searchsorted(self.tau, safe, side="right") - 1, 0, self.at.size - 1)
        return np.where(np.isnan(tau), np.nan, self.at[i] + (safe - self.tau[i]) * self.speed[i])


def slow_spells(
    duration: float,
    factor: float,
    rng: np.random.Generator,
    spell: float = 1.0,
    gap: float = 4.0,
) -> VirtualClock:
    """A machine that runs ``factor`` times slower in spells, as this shared machine does.

    Spells and the gaps between them last exponential times of means ``spell`` and ``gap``
    seconds (a fifth of the time slow by default), drawn from ``rng`` over ``duration`` seconds
    and a margin for the drain; the clock starts fast. A synthetic stand-in for a real run's
    measured profile (``speed_profile``): every policy can be run through the same spells.
    """
    if factor < 1 or spell <= 0 or gap <= 0 or duration < 0:
        raise ValueError("slow spells need factor >= 1 and positive spell and gap lengths")
    at, speed, t, fast = [], [], 0.0, True
    while t < duration + 60.0:
        at.append(t)
        speed.append(1.0 if fast else factor)
        t += rng.exponential(gap if fast else spell)
        fast = not fast
    return VirtualClock(np.array(at), np.array(speed))


def speed_profile(at: np.ndarray, speed: np.ndarray, window: float) -> VirtualClock:
    """A clock whose speed from each batch's start to the next one's is that batch's ``speed``,
    or, with a ``window`` > 0, the median speed of the batches started within half a window of
    it (so that one batch's own noise is drawn at random, as the table's spread, not replayed)."""
    return VirtualClock(at, rolling_median(at, speed, window) if window > 0 else speed)


@dataclass
class Replay:
    """What the simulator needs to rerun a real run: a virtual clock and a latency table.

    Attributes:
        clock: Real seconds (relative to the run's start) to and from τ.
        cost: Batch costs of the table (ascending).
        seconds: Per cost, the occupancies of the run's batches of that size, in τ seconds.
        overhead: The median per-batch overhead beyond the model, seconds (reported).
    """

    clock: VirtualClock
    cost: list[float]
    seconds: list[list[float]]
    overhead: float

    @classmethod
    def from_batches(
        cls,
        b: Batches,
        t0: float,
        window: float = WINDOW_S,
        sweep: Mapping[int, Sequence[float]] | None = None,
    ) -> Replay:
        """Build from a run's batches.

        Args:
            b: The run's batches.
            t0: The run's start on the scheduler's clock.
            window: Seconds over which the speed profile takes its median (0: every batch its own).
            sweep: Model seconds by batch size from the warm-up sweep that seeded the real
                scheduler's latency model. Sizes the run ran fewer than MIN_SAMPLES times get
                them (plus the overhead) too, so that the simulated scheduler starts from what
                the real one believed about batches it hardly ran.
        """
        if b.size.size:
            occ, overhead = occupancy(b)
            clock = speed_profile(b.enter - t0, relative_speed(b.size, occ), window)
            scaled = occ / clock.speed
        else:  # nothing ran: nothing to replay
            overhead, clock, scaled = 0.0, VirtualClock(np.zeros(1), np.ones(1)), np.zeros(0)
        table = {int(s): scaled[b.size == s].tolist() for s in np.unique(b.size)}
        for size, seconds in (sweep or {}).items():
            if len(table.get(size, [])) < MIN_SAMPLES:
                table.setdefault(size, []).extend(s + overhead for s in seconds)
        cost = sorted(table)
        return cls(clock, [float(c) for c in cost], [table[c] for c in cost], overhead)

    def result(self, sim: Mapping[str, Any]) -> dict[str, Any]:
        """A simulation's result with its times mapped back to seconds from the run's start."""
        out = dict(sim)
        out["start"] = self.clock.real(sim["start"])
        out["finish"] = self.clock.real(sim["finish"])
        return out

    def workload(self, wl: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A workload as it was submitted (seconds from the run's start), on τ."""
        out = dict(wl)
        out["arrival"] = self.clock.virtual(wl["arrival"])
        out["deadline"] = self.clock.virtual(wl["deadline"])
        return out
