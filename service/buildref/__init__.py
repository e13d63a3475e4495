"""buildref: match Nix builds to the git revisions they came from."""

__version__ = "0.1.0"
