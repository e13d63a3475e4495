"""The pure Nix core: what Nix computes, byte for byte, with no sockets, database or processes."""
