"""The questions buildref answers, read-only: each takes a snapshot of the index (and, for
revisions not recorded yet, git objects) and returns models. Nothing here writes."""
