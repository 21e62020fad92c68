"""Resource placement: memory sizes, strict refusals, best-effort substitutions, memory budgets."""

from __future__ import annotations

import pytest

from phi_engine.errors import InvalidRequestError, ResourceError
from phi_engine.serving._resources import (
    Inventory,
    Placement,
    check_memory,
    format_bytes,
    parse_memory,
    place,
)

GIB = 1024**3
CPU_ONLY = Inventory(cpu_cores=8, memory_bytes=16 * GIB)
WITH_GPUS = Inventory(cpu_cores=8, memory_bytes=16 * GIB, gpus=("cuda:0", "cuda:1"))
WITH_TPUS = Inventory(cpu_cores=8, memory_bytes=16 * GIB, tpus=("xla:0",))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("256GB", 256 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5 GiB", 3 * 2**29),
        ("100M", 100 * 10**6),
        ("2Ki", 2048),
        ("1kb", 1000),
        ("4 TB", 4 * 10**12),
        ("1024", 1024),
        ("10 bytes", 10),
        (".5 MiB", 2**19),
        (1024, 1024),
    ],
)
def test_parse_memory_units(text: str | int, expected: int) -> None:
    assert parse_memory(text, "resource_allocation.memory") == expected


@pytest.mark.parametrize("bad", ["", "GB", "12 XB", "-1GB", "1e9", "1.2.3 GB", "0", 0, -5, True])
def test_parse_memory_refuses_non_sizes(bad: str | int) -> None:
    with pytest.raises(InvalidRequestError) as info:
        parse_memory(bad, "resource_allocation.memory")
    assert info.value.field == "resource_allocation.memory"


def test_format_bytes() -> None:
    assert format_bytes(512 * 2**20) == "512 MiB"
    assert format_bytes(3 * 2**29) == "1.5 GiB"
    assert format_bytes(100) == "100 B"


def test_defaults_fit_and_describe() -> None:
    p = place(None, inventory=CPU_ONLY)
    assert (p.device, p.replicas, p.threads_per_replica, p.memory_budget_bytes) == (
        "cpu",
        1,
        2,
        None,
    )
    assert p.notes == ()
    assert p.describe() == "1 replica x 2 threads on cpu (2 of 8 cores)"
    # A default thread count never over-asks: many replicas get one thread each.
    assert place({"nodes": 8}, inventory=CPU_ONLY).threads_per_replica == 1


def test_describe_and_to_dict() -> None:
    p = place({"cpu": 2, "nodes": 2, "memory": "512MiB"}, inventory=CPU_ONLY)
    assert p.describe() == "2 replicas x 2 threads on cpu (4 of 8 cores), memory budget 512 MiB"
    d = p.to_dict()
    assert d["replicas"] == 2 and d["memory_budget_bytes"] == 512 * 2**20 and d["gpus"] == []
    assert p.max_replicas == 4


def test_strict_gpu_refusal_names_field_and_what_is_available() -> None:
    with pytest.raises(ResourceError) as info:
        place({"gpu": 2}, inventory=CPU_ONLY)
    assert info.value.field == "resource_allocation.gpu"
    assert "2 GPUs requested, this machine has 0" in info.value.message
    assert "available: cpu (8 cores, 16 GiB memory)" in info.value.message


def test_strict_gpu_needs_a_cuda_backend() -> None:
    with pytest.raises(ResourceError) as info:
        place({"gpu": 1}, inventory=WITH_GPUS, available_devices=("cpu",))
    assert "no cuda backend" in info.value.message
    p = place({"gpu": 1}, inventory=WITH_GPUS, available_devices=("cpu", "triton"))
    assert p.device == "cuda" and p.gpus == ("cuda:0",)


@pytest.mark.parametrize(
    ("allocation", "field"),
    [
        ({"cpu": 4, "nodes": 3}, "resource_allocation.cpu"),
        ({"nodes": 9}, "resource_allocation.nodes"),
        ({"memory": "64GiB"}, "resource_allocation.memory"),
        ({"tpu": 1}, "resource_allocation.tpu"),
    ],
)
def test_strict_refusals(allocation: dict[str, object], field: str) -> None:
    with pytest.raises(ResourceError) as info:
        place(allocation, inventory=CPU_ONLY)
    assert info.value.field == field
    assert "available: cpu (8 cores" in info.value.message


def test_strict_places_what_exists() -> None:
    p = place({"gpu": 2, "cpu": 1, "nodes": 4}, inventory=WITH_GPUS, available_devices=["cuda"])
    assert (p.device, p.gpus, p.replicas) == ("cuda", ("cuda:0", "cuda:1"), 4)
    assert "cuda:0, cuda:1" in p.describe()
    t = place({"tpu": 1}, inventory=WITH_TPUS, available_devices=("cpu", "xla"))
    assert (t.device, t.tpus) == ("xla", ("xla:0",))


def test_strict_refuses_gpu_and_tpu_together() -> None:
    with pytest.raises(InvalidRequestError) as info:
        place({"gpu": 1, "tpu": 1}, inventory=WITH_GPUS, available_devices=("cuda", "xla"))
    assert info.value.field == "resource_allocation.tpu"


def test_best_effort_notes_each_substitution() -> None:
    # The product sheet's example request, on an 8-core machine without accelerators.
    sheet = {"cpu": 32, "gpu": 8, "tpu": 2, "memory": "256GB", "nodes": 5}
    p = place(sheet, placement="best_effort", inventory=CPU_ONLY)
    assert p.device == "cpu"
    assert (p.replicas, p.threads_per_replica) == (5, 1)
    assert p.memory_budget_bytes == 16 * GIB
    assert p.notes == (
        "8 GPUs requested, this machine has 0: placed on cpu",
        "2 TPUs requested, this machine has 0: placed on cpu",
        "5 replicas x 32 threads need 160 cores, this machine has 8: placed 5 replicas x 1 thread",
        "256GB (238.4 GiB) of memory requested, this machine has 16 GiB: budget set to 16 GiB",
    )
    assert p.describe().startswith(
        "5 replicas x 1 thread on cpu (5 of 8 cores), memory budget 16 GiB"
    )
    assert "Best effort: 8 GPUs requested" in p.describe()


def test_best_effort_uses_fewer_gpus_and_fewer_replicas() -> None:
    p = place(
        {"gpu": 4, "tpu": 1, "nodes": 10},
        placement="best_effort",
        inventory=WITH_GPUS,
        available_devices=("cuda",),
    )
    assert p.device == "cuda" and p.gpus == ("cuda:0", "cuda:1") and p.tpus == ()
    assert (p.replicas, p.threads_per_replica) == (8, 1)
    assert p.notes[0] == "4 GPUs requested, this machine has 2: placed on 2"
    assert p.notes[1] == "1 TPU requested as well: not used"


@pytest.mark.parametrize(
    ("allocation", "field"),
    [
        ({"cpus": 2}, "resource_allocation.cpus"),
        ({"cpu": 0}, "resource_allocation.cpu"),
        ({"cpu": "2"}, "resource_allocation.cpu"),
        ({"cpu": 2.5}, "resource_allocation.cpu"),
        ({"gpu": -1}, "resource_allocation.gpu"),
        ({"gpu": True}, "resource_allocation.gpu"),
        ({"nodes": 0}, "resource_allocation.nodes"),
        ({"memory": "lots"}, "resource_allocation.memory"),
        ({"memory": 1.5}, "resource_allocation.memory"),
    ],
)
def test_malformed_fields(allocation: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        place(allocation, placement="best_effort", inventory=CPU_ONLY)
    assert info.value.field == field


def test_unknown_placement_and_non_object() -> None:
    with pytest.raises(InvalidRequestError) as info:
        place({}, placement="anywhere", inventory=CPU_ONLY)
    assert info.value.field == "placement"
    with pytest.raises(InvalidRequestError) as info:
        place([1, 2], inventory=CPU_ONLY)  # type: ignore[arg-type]
    assert info.value.field == "resource_allocation"


def test_check_memory() -> None:
    p = place({"memory": "1GiB"}, inventory=CPU_ONLY)
    check_memory(p, GIB)
    check_memory(Placement("cpu", 1, 1), 10**15)  # no budget: nothing to check
    with pytest.raises(ResourceError) as info:
        check_memory(p, GIB + 1)
    assert info.value.field == "resource_allocation.memory"
    assert f"({GIB + 1} bytes)" in info.value.message
    assert f"budget of 1 GiB ({GIB} bytes)" in info.value.message


def test_inventory_from_devices_and_detect() -> None:
    found = [
        {"kind": "cpu", "cores": 6},
        {"kind": "cuda", "index": 0},
        {"kind": "cuda", "index": 3},
    ]
    inv = Inventory.from_devices(found, memory_bytes=GIB)
    assert inv == Inventory(6, GIB, ("cuda:0", "cuda:3"), ())
    here = Inventory.detect()
    assert here.cpu_cores >= 1 and here.memory_bytes > 0
    assert all(name.startswith("cuda:") for name in here.gpus)
    # What is detected is what a default placement fits.
    assert place(None, inventory=here).replicas == 1


def test_check_device_memory() -> None:
    from phi_engine.serving._resources import check_device_memory

    found = [{"kind": "cuda", "index": 0, "memory_bytes": GIB}, {"kind": "cuda", "index": 1}]
    p = place({"gpu": 1}, inventory=WITH_GPUS, available_devices=("cpu", "cuda"))
    check_device_memory(p, GIB, found)
    with pytest.raises(ResourceError) as info:
        check_device_memory(p, GIB + 1, found)
    assert info.value.field == "resource_allocation.gpu"
    assert f"({GIB + 1} bytes)" in info.value.message and "1 GiB of cuda:0" in info.value.message
    # A device that does not report its memory is not refused on a guess.
    check_device_memory(Placement("cuda", 1, 1, gpus=("cuda:1",)), 10**15, found)
