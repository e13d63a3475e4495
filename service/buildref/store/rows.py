"""Rows both SQL backends read the same way: the columns asked for, and the record each row
makes (the schemas agree on these tables' columns)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from buildref.models import Build, DerivationInfo, FixedOutput
from buildref.store.api import ClosureItem, ContentRecord, ContentState, TreeRecord

TREE = "form, raw, nar_hash, nar_size, files, identifying"
CONTENT = "path, state, nar_hash, nar_size, form, files, identifying, error"
REVISION = "id, repo_id, rev, commit_time, root_export_ignore, root_raw"


def tree(row: Any) -> TreeRecord:
    form, raw, nar_hash, nar_size, files, identifying = row
    return TreeRecord(form, raw, nar_hash, nar_size, files, bool(identifying))


def content(row: Any) -> ContentRecord:
    path, state, nar_hash, nar_size, form, files, identifying, error = row
    return ContentRecord(path, ContentState(state), nar_hash, nar_size, form, files, bool(identifying), error)


def derivation_info(path: str, head: Any, outputs: dict[str, str | None], inputs: list[Any], srcs: list[Any],
                    built: list[Any], build_outputs: dict[int, Any]) -> DerivationInfo:
    """A derivation from its row (``name, system, fixed_mode, fixed_hash``), its outputs, its
    inputs' (path, outputs) rows, its source rows, and its builds' (id, built_at, builder) rows
    newest first with their outputs by build id."""
    name, system, mode, fixed_hash = head
    return DerivationInfo(
        drv_path=path, name=name, system=system,
        fixed=FixedOutput(mode, fixed_hash) if mode else None,
        outputs=outputs,
        input_drvs={p: tuple(outs.split()) for p, outs in inputs},
        input_srcs=tuple(p for (p,) in srcs),
        builds=tuple(Build(path, name, system, at, build_outputs[i], builder) for i, at, builder in built),
    )


def closure_items(distance: dict[int, int], sources: Iterable[Any], fixed: Iterable[Any]
                  ) -> list[ClosureItem]:
    """A closure's sources and fixed outputs, each once at its least distance, nearest first:
    ``distance`` by derivation id; ``sources`` (drv id, input source path) rows; ``fixed`` (drv
    id, fixed hash, rev hint, path hint, output path) rows."""
    items: dict[tuple[str | None, str | None], ClosureItem] = {}

    def keep(key: tuple[str | None, str | None], item: ClosureItem) -> None:
        if items.setdefault(key, item).distance > item.distance:
            items[key] = item

    for i, path in sources:
        if not path.endswith(".drv"):
            keep((path, None), ClosureItem(path, distance[i]))
    for i, fixed_hash, rev_hint, path_hint, path in fixed:
        keep((path, fixed_hash), ClosureItem(path, distance[i], fixed_hash, rev_hint, path_hint))
    return sorted(items.values(), key=lambda c: (c.distance, c.path or "", c.fixed_hash or ""))
