"""Errors meant for people: every message starts with ``error:``."""


class BuildrefError(Exception):
    """Base of every error buildref reports; ``str()`` gives the one-line message."""

    def __str__(self) -> str:
        return f"error: {self.args[0] if self.args else 'unknown failure'}"


class BadHash(BuildrefError):
    """A hash string in none of the forms Nix accepts."""


class BadStorePath(BuildrefError):
    """A store path or store path name that Nix would reject."""


class BadDerivation(BuildrefError):
    """A .drv file that is not a well-formed derivation."""


class BadArchive(BuildrefError):
    """A file system object that cannot be put in a NAR."""


class BadLockFile(BuildrefError):
    """A flake.lock this version of buildref cannot read."""


class GitError(BuildrefError):
    """A repository or revision that cannot be read."""


class UnknownRevision(GitError):
    """A revision that does not name a commit in the repository."""


class BadConfig(BuildrefError):
    """A configuration file or option the service cannot run with."""


class BadRequest(BuildrefError):
    """A hook event or query that does not follow the protocol."""


class ServiceUnavailable(BuildrefError):
    """The service's socket cannot be reached or did not answer."""


class BadNarInfo(BuildrefError):
    """A ``.narinfo`` or ``nix-cache-info`` file that Nix would reject as corrupt."""


class BadSigningKey(BuildrefError):
    """A binary cache public or secret key that is not ``name:base64`` of the right size."""
