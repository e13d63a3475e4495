"""``buildref drv show``: many derivations rendered as ``nix show-derivation`` prints them.

Rendering is independent per derivation, so a large closure is split into contiguous runs (in
Nix's output order) rendered by forked workers, one per CPU; the parent only walks the closure and
joins their bytes. Small jobs stay in one process, where forking would cost more than it saves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from buildref.localstore import DrvReader
from buildref.nix.showjson import show_document, show_member, show_order

PARALLEL_FROM = 400  # derivations; below this a fork costs more than it saves

_job: list[DrvReader] = []  # the reader, handed to forked workers by inheritance, not pickling


def _render(paths: Sequence[str]) -> bytes:
    reader = _job[0]
    return b",".join(show_member(p, reader.split(p)[1], reader.store_dir) for p in paths)


def _runs(paths: list[str], count: int) -> list[list[str]]:
    size = -(-len(paths) // count)
    return [paths[i:i + size] for i in range(0, len(paths), size)]


def show(reader: DrvReader, drvs: Sequence[str], recursive: bool) -> bytes:
    ordered = show_order(reader.select(drvs, recursive))
    workers = min(os.cpu_count() or 1, max(1, len(ordered) // (PARALLEL_FROM // 2)))
    _job.append(reader)
    try:
        if workers < 2:
            return show_document([_render(ordered)])
        import multiprocessing  # only here: importing it costs as much as a small job

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return show_document(pool.map(_render, _runs(ordered, workers)))
    finally:
        _job.clear()
