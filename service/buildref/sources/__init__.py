"""Where revisions come from: repositories (configured, recorded by users, mirrored), their refs and
each revision's sources, flake.lock pins, and the watchers that keep them current."""
