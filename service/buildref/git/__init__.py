"""Git sources as Nix sees them: NAR hashes and store paths of commit trees, read with pygit2."""
