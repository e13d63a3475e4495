{
  description = "buildref: find the Nix build that came from a git ref, and the commit a store path came from";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in {
      packages = forAll (pkgs: rec {
        buildref = pkgs.python3Packages.buildPythonApplication {
          pname = "buildref";
          version = "0.1.0";
          pyproject = true;
          src = ./.;
          build-system = [ pkgs.python3Packages.setuptools ];
          dependencies = with pkgs.python3Packages; [ pygit2 structlog aiosqlite watchdog tomli-w ];
          # The tests need a writable /nix/store and run real Nix: run them with tests/run.sh.
          doCheck = false;
        };
        default = buildref;
      });

      nixosModules.default = { pkgs, lib, ... }: {
        imports = [ ./nixos-module ];
        services.buildref.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.buildref;
      };

      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.nix pkgs.git
            (pkgs.python3.withPackages (ps: with ps; [
              pygit2 structlog aiosqlite watchdog tomli-w pytest hypothesis mypy
            ]))
            pkgs.ruff
          ];
        };
      });
    };
}
