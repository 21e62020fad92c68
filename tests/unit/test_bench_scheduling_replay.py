"""The real-run replay of the scheduling benchmark (benchmarks/scheduling/replay.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# The benchmarks are scripts beside the package, not part of it: import them the way they import
# each other, with benchmarks/ on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scheduling import replay


def batches(size: list[int], enter: list[float], model: list[float], first: list[float]):
    return replay.Batches(
        size=np.array(size),
        enter=np.array(enter),
        exit=np.array(enter) + np.array(model),
        first_arrival=np.array(first),
    )


def test_virtual_clock_integrates_the_speed_and_inverts() -> None:
    # Twice as slow from t = 1 to t = 3: τ runs at half the rate there.
    clock = replay.VirtualClock(np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0, 1.0]))
    t = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    tau = clock.virtual(t)
    assert tau == pytest.approx([-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    assert clock.real(tau) == pytest.approx(t)
    back = clock.real(np.array([np.nan, 1.25]))
    assert np.isnan(back[0]) and back[1] == pytest.approx(1.5)


def test_virtual_clock_refuses_bad_breakpoints() -> None:
    with pytest.raises(ValueError):
        replay.VirtualClock(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    with pytest.raises(ValueError):
        replay.VirtualClock(np.array([0.0]), np.array([0.0]))


def test_occupancy_measures_back_to_back_batches_and_fills_idle_ones() -> None:
    # Batch 0 runs 1.0 s; batch 1's first request was waiting before it ended, so batch 0 held
    # the worker until batch 1 started (1.25 s: 0.25 s of overhead). Batch 1's successor arrived
    # after it ended (idle), so batch 1 gets its model time plus the median overhead.
    b = batches([2, 4, 1], [0.0, 1.25, 5.0], [1.0, 2.0, 0.5], [0.0, 0.5, 4.0])
    occ, overhead = replay.occupancy(b)
    assert overhead == pytest.approx(0.25)
    assert occ == pytest.approx([1.25, 2.25, 0.75])


def test_relative_speed_is_per_batch_size() -> None:
    size = np.array([1, 1, 1, 8, 8, 8])
    seconds = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    assert replay.relative_speed(size, seconds) == pytest.approx([0.5, 1, 1.5, 0.5, 1, 1.5])


def test_speed_profile_window() -> None:
    at = np.arange(10.0)
    speed = np.array([1.0, 1.0, 5.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    assert replay.speed_profile(at, speed, 0.0).speed == pytest.approx(speed)
    # A 2.5 s window is the median of three batches: the lone slow batch is smoothed away.
    smooth = replay.speed_profile(at, speed, 2.5).speed
    assert smooth[2] == 1.0 and smooth[7] == 2.0


def test_replay_moves_a_slow_spell_into_the_clock() -> None:
    # Batches of 4 back to back: 1 s each for 20 s, then 2 s each (the machine at half speed).
    enter = np.concatenate([np.arange(20.0), 20 + 2 * np.arange(20.0)])
    model = np.where(enter < 20, 0.9, 1.8)
    b = replay.Batches(
        size=np.full(40, 4), enter=enter + 100, exit=enter + 100 + model, first_arrival=enter
    )
    rp = replay.Replay.from_batches(b, t0=100.0, window=3.0, sweep={4: [0.5], 32: [7.0, 8.0]})
    # Occupancies are 1 s, then 2 s (median 1.45 s). In τ nearly every batch takes the median
    # (but the one at the change, whose window mixes both speeds): the clock carries the spell.
    assert rp.overhead == pytest.approx(0.1)
    assert rp.cost == [4.0, 32.0]
    seconds = np.array(rp.seconds[0])
    assert np.sum(np.isclose(seconds, 1.45)) == 39
    assert rp.seconds[1] == pytest.approx([7.1, 8.1])  # never run: the sweep, plus overhead
    slow = 2.0 / 1.45
    tau = rp.clock.virtual(np.array([5.0, 15.0, 30.0, 40.0]))
    assert tau[1] - tau[0] == pytest.approx(10 * 1.45) and tau[3] - tau[2] == pytest.approx(
        10 / slow
    )
    on_tau = rp.workload({"arrival": np.array([30.0]), "deadline": np.array([31.0])})
    assert on_tau["deadline"][0] - on_tau["arrival"][0] == pytest.approx(1.0 / slow)
    back = rp.result({"start": np.array([np.nan]), "finish": on_tau["deadline"]})
    assert np.isnan(back["start"][0]) and back["finish"] == pytest.approx([31.0])


def test_replay_of_a_run_that_ran_nothing_uses_the_sweep() -> None:
    b = batches([], [], [], [])
    rp = replay.Replay.from_batches(b, t0=0.0, sweep={1: [0.002, 0.003]})
    assert rp.cost == [1.0] and rp.seconds == [[0.002, 0.003]]
    assert rp.clock.virtual(np.array([2.0])) == pytest.approx([2.0])


def test_slow_spells_alternate_and_take_their_share_of_time() -> None:
    clock = replay.slow_spells(2000.0, 2.0, np.random.default_rng(3), spell=1.0, gap=4.0)
    assert clock.speed[0] == 1.0  # starts fast
    assert set(np.unique(clock.speed)) == {1.0, 2.0}
    assert np.all(clock.speed[1:] != clock.speed[:-1])  # spells and gaps alternate
    span = np.diff(clock.at)
    slow_share = span[clock.speed[:-1] == 2.0].sum() / span.sum()
    assert slow_share == pytest.approx(0.2, abs=0.03)  # mean spell 1 s per 5 s
    assert clock.at[-1] >= 2000.0
    # Inside a spell, real time passes twice as fast as virtual time.
    step = span[1] / 2
    tau = clock.virtual(np.array([clock.at[1], clock.at[1] + step]))
    assert tau[1] - tau[0] == pytest.approx(step / 2)


def test_slow_spells_are_deterministic_and_refuse_bad_arguments() -> None:
    a = replay.slow_spells(60.0, 1.5, np.random.default_rng(7))
    b = replay.slow_spells(60.0, 1.5, np.random.default_rng(7))
    assert np.array_equal(a.at, b.at) and np.array_equal(a.speed, b.speed)
    for factor, spell, gap in ((0.5, 1.0, 4.0), (2.0, 0.0, 4.0), (2.0, 1.0, -1.0)):
        with pytest.raises(ValueError):
            replay.slow_spells(60.0, factor, np.random.default_rng(0), spell=spell, gap=gap)
