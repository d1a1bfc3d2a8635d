"""How ingest deals listed files into read tasks (no Spark: the planning is a pure function)."""

from __future__ import annotations

import os
from pathlib import Path

from medimg_spark.io.datasource import balance_slices
from medimg_spark.io.planning import LOCAL_OPEN_COST, task_slices

HOSTILE = Path(__file__).parent / "data" / "hostile"  # copies of ../shared/data/hostile


def _listing(root: Path) -> list[tuple[str, int]]:
    rows = []
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            rows.append((path, os.path.getsize(path)))
    return rows


def test_large_files_listed_together_go_to_different_tasks() -> None:
    # listing order puts the three big files of one folder last, as a directory walk does
    rows = [(f"a/{i:02d}.dcm", 50_000) for i in range(10)] + [
        ("cines/1.dcm", 40 << 20),
        ("cines/2.dcm", 30 << 20),
        ("cines/3.dcm", 20 << 20),
    ]
    groups = balance_slices(rows, 3)
    assert sorted(r for g in groups for r in g) == sorted(rows)  # every file exactly once
    cines = [[r[0] for r in g if r[0].startswith("cines/")] for g in groups]
    assert sorted(len(c) for c in cines) == [1, 1, 1]
    for g in groups:  # each task reads in listing order
        assert g == sorted(g, key=rows.index)
    loads = [sum(s + LOCAL_OPEN_COST for _, s in g) for g in groups]
    assert max(loads) - min(loads) <= max(s for _, s in rows) + LOCAL_OPEN_COST
    assert balance_slices(rows, 3) == groups  # deterministic


def test_hostile_regression_folder_spreads_its_big_files() -> None:
    """The three stray-delimiter files (a 65-frame cine among them, OCR'd at ingest) used to share one task."""
    rows = _listing(HOSTILE)
    assert len(rows) > 3, f"the hostile regression files are missing from {HOSTILE}"
    n = task_slices([s for _, s in rows], 2)
    groups = balance_slices(rows, n)
    assert sorted(r for g in groups for r in g) == sorted(rows)
    biggest = max(rows, key=lambda r: r[1])
    with_biggest = next(g for g in groups if biggest in g)
    stray = [r for r in rows if "stray-delimiters" in r[0]]
    assert sum(r in with_biggest for r in stray) == 1, [r[0] for r in with_biggest]


def test_fewer_files_than_tasks_and_one_task() -> None:
    rows = [("x.dcm", 10), ("y.dcm", 5)]
    assert balance_slices(rows, 1) == [rows]
    groups = balance_slices(rows, 4)
    assert [g for g in groups if g] == [[("x.dcm", 10)], [("y.dcm", 5)]]
    assert balance_slices([], 2) == [[], []]


def _scan_lpt(rows: list[tuple[str, int]], slices: int) -> list[list[tuple[str, int]]]:
    """The definition: each file, largest first, to the least-loaded task (lowest index on ties)."""
    loads = [0] * slices
    members: list[list[int]] = [[] for _ in range(slices)]
    for i in sorted(range(len(rows)), key=lambda i: (-rows[i][1], i)):
        k = min(range(slices), key=lambda j: (loads[j], j))
        loads[k] += rows[i][1] + LOCAL_OPEN_COST
        members[k].append(i)
    return [[rows[i] for i in sorted(m)] for m in members]


def test_heap_planning_equals_the_scan_definition_on_the_hostile_listing_and_many_tasks() -> None:
    # the heap version plans 100k files into 1,600 tasks in well under a second (the scan took 65 CPU-s);
    # its assignment must be exactly the definition's, ties included (equal sizes are common)
    rows = _listing(HOSTILE)
    many = rows * 7 + [(f"zero/{i}", 0) for i in range(50)] + [(f"eq/{i}", 4096) for i in range(60)]
    for listing, slices in ((rows, 1), (rows, 3), (rows, 64), (many, 5), (many, 400)):
        assert balance_slices(listing, slices) == _scan_lpt(listing, slices)


def test_task_count_is_a_multiple_of_the_cores_and_tasks_hold_up_to_512_mib() -> None:
    from medimg_spark.io.planning import LOCAL_BYTES_PER_TASK, LOCAL_MAX_TASKS

    assert LOCAL_BYTES_PER_TASK == 512 << 20
    # benchmarks/run.py's N = 2,000 corpus: 2,000 CT files of ~0.5 MB and 1,000 PNGs of ~0.5 MB
    bench = [520_000] * 2000 + [480_000] * 1000
    weight = sum(s + LOCAL_OPEN_COST for s in bench)
    for cores in (1, 2, 3, 8):
        n = task_slices(bench, cores)
        assert n % cores == 0 and n >= -(-weight // LOCAL_BYTES_PER_TASK), (cores, n)
        assert n - cores < -(-weight // LOCAL_BYTES_PER_TASK), (cores, n)  # rounded up by less than a round
    assert task_slices(bench, 2) == 28  # 106 tasks of 128 MiB before
    # a small corpus: one task per core; fewer files than cores: one task per file
    assert task_slices([1000] * 10, 4) == 4
    assert task_slices([1000] * 3, 8) == 3
    assert task_slices([], 2) == 1
    # a huge listing stops at the task cap
    assert task_slices([300 << 20] * 200_000, 2) == LOCAL_MAX_TASKS
    # the tasks dealt by weight differ by at most one file's weight
    rows = [(f"f{i}", s) for i, s in enumerate(bench[::10])]
    groups = balance_slices(rows, task_slices([s for _, s in rows], 2))
    loads = [sum(s + LOCAL_OPEN_COST for _, s in g) for g in groups]
    assert max(loads) - min(loads) <= max(s for _, s in rows) + LOCAL_OPEN_COST
