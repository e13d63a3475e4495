"""A floor of free space for the index: below it, work a user asks for (recording a repository)
is refused, so that what is left goes to recording builds (the hook's events must always commit:
their spool may share the file system)."""

from __future__ import annotations

import os

from buildref.errors import ServiceUnavailable

ROW_BYTES = 256  # what one index row may take on disk, its indexes and log included (generous)


class SpaceFloor:
    def __init__(self, directory: str, min_free_mb: int) -> None:
        self._directory = directory
        self._floor = min_free_mb << 20

    def free(self) -> int | None:
        """Bytes free to this process where the index lives; None when it cannot be told."""
        try:
            st = os.statvfs(self._directory)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def check(self, rows: int, what: str) -> None:
        """Refuse ``what`` if writing ``rows`` rows would leave less free space than the floor."""
        if not self._floor:
            return
        free = self.free()
        if free is not None and free - rows * ROW_BYTES < self._floor:
            raise ServiceUnavailable(
                f"{what} refused: {free >> 20} MiB free for the index in '{self._directory}', and"
                f" {self._floor >> 20} MiB (limits.min_free_mb) are kept for recording builds")
