"""Run a batch of requests through a compiled model: stack their rows, run once, split."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError
from phi_engine.graph import CompiledModel

__all__ = ["ModelRunner"]

Payload = Mapping[str, Any]


class ModelRunner:
    """A ``run_batch`` for :class:`~phi_engine.serving.Scheduler` over a :class:`CompiledModel`.

    Each payload maps input names to arrays whose first axis holds that request's rows. Requests
    whose other dimensions agree (e.g. the same sequence length) run as one model call; a batch
    mixing shapes runs one call per shape, so one request never fails another.

    Args:
        model: The compiled model.
        threads: Kernel threads per call (0: the process default, see
            :func:`phi_engine.set_num_threads`); a deployment gives each replica its share.
        checked: Payloads were checked against the model on arrival (as a deployment does), so
            the model skips its own input checks.
    """

    def __init__(self, model: CompiledModel, threads: int = 0, *, checked: bool = False) -> None:
        self.model = model
        self.threads = threads
        self.checked = checked
        self.input_names = list(model.inputs)

    def rows(self, payload: Payload) -> int:
        """A payload's rows (its cost), checked against the model's inputs.

        Raises:
            InvalidRequestError: a missing input, an array with no batch axis, or inputs that
                disagree on the number of rows.
        """
        counts = set()
        for name in self.input_names:
            if name not in payload:
                raise InvalidRequestError(f"input {name!r} is missing", field=name)
            shape = np.shape(payload[name])
            if not shape:
                raise InvalidRequestError(f"input {name!r} needs a batch axis", field=name)
            counts.add(shape[0])
        if len(counts) != 1 or 0 in counts:
            raise InvalidRequestError(
                "inputs must have the same, non-zero number of rows", field="input"
            )
        return int(counts.pop())

    def __call__(self, payloads: list[Payload]) -> list[dict[str, np.ndarray]]:
        if len(payloads) == 1:  # nothing to stack or split
            return [self.model.run(payloads[0], self.threads, check=not self.checked)]
        if self._uniform(payloads):  # the common batch: one model call, no grouping
            return self._run_group(payloads, range(len(payloads)))[1]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(payloads):
            key = tuple((np.shape(p[n])[1:], np.asarray(p[n]).dtype.str) for n in self.input_names)
            groups.setdefault(key, []).append(i)
        results: list[dict[str, np.ndarray]] = [{} for _ in payloads]
        for members in groups.values():
            for i, result in zip(*self._run_group(payloads, members), strict=True):
                results[i] = result
        return results

    def _uniform(self, payloads: list[Payload]) -> bool:
        """Whether every payload's arrays agree with the first's past the batch axis (shape and
        dtype), so that they stack into one call."""
        for name in self.input_names:
            first = payloads[0][name]
            if type(first) is not np.ndarray:
                return False
            tail, dtype = first.shape[1:], first.dtype
            for p in payloads:
                a = p[name]
                if type(a) is not np.ndarray or a.shape[1:] != tail or a.dtype != dtype:
                    return False
        return True

    def _run_group(
        self, payloads: list[Payload], group: Iterable[int]
    ) -> tuple[list[int], list[dict[str, np.ndarray]]]:
        """Stack the members' rows, run the model once, split its outputs back per member."""
        members = list(group)
        feeds = {
            n: np.concatenate([np.asarray(payloads[i][n]) for i in members])
            for n in self.input_names
        }
        outputs = self.model.run(feeds, self.threads, check=not self.checked)
        first = self.input_names[0]
        counts = [len(payloads[i][first]) for i in members]
        items = list(outputs.items())
        split: list[dict[str, np.ndarray]] = []
        start = 0
        for count in counts:
            stop = start + count
            split.append({name: out[start:stop] for name, out in items})
            start = stop
        return members, split
