"""Rows both SQL backends read the same way: the columns asked for, and the record each row
makes (the schemas agree on these tables' columns)."""

from __future__ import annotations

from typing import Any

from buildref.store.api import ContentRecord, ContentState, TreeRecord

TREE = "form, raw, nar_hash, nar_size, files, identifying"
CONTENT = "path, state, nar_hash, nar_size, form, files, identifying, error"
REVISION = "id, repo_id, rev, commit_time, root_export_ignore, root_raw"


def tree(row: Any) -> TreeRecord:
    form, raw, nar_hash, nar_size, files, identifying = row
    return TreeRecord(form, raw, nar_hash, nar_size, files, bool(identifying))


def content(row: Any) -> ContentRecord:
    path, state, nar_hash, nar_size, form, files, identifying, error = row
    return ContentRecord(path, ContentState(state), nar_hash, nar_size, form, files, bool(identifying), error)
