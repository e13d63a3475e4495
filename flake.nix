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

      # A NixOS VM: the module enabled next to a post-build hook of the machine's own, a derivation
      # built (the daemon runs buildref's hook, which runs the other one), then found by the ref of
      # the repository its source came from, which appears only after boot. Not run here (no nixpkgs
      # offline); tests/test_nixos_module.py evaluates the module with the real nixpkgs lib.
      checks.x86_64-linux.vm = nixpkgs.legacyPackages.x86_64-linux.testers.runNixOSTest {
        name = "buildref";
        nodes.machine = { pkgs, ... }: {
          imports = [ self.nixosModules.default ];
          services.buildref.enable = true;
          services.buildref.repositories = [ { name = "app"; path = "/srv/app"; } ];
          nix.settings.experimental-features = [ "nix-command" ];
          nix.settings.post-build-hook = pkgs.writeShellScript "log-builds" ''
            echo "$DRV_PATH" >> /run/builds.log
          '';
          environment.systemPackages = [ pkgs.git ];  # the module installs buildref
          virtualisation.writableStore = true;
        };
        testScript = ''
          machine.wait_for_unit("buildref-hook.socket")
          machine.wait_for_unit("buildref-query.socket")
          machine.succeed(
              "mkdir -p /srv/app && cd /srv/app && git init -q -b main && echo hello > data"
              " && git add data && git -c user.name=t -c user.email=t@t commit -qm one && git tag v1"
          )
          machine.succeed("cat > /tmp/demo.nix <<'NIX'\n"
              "let src = builtins.fetchGit /srv/app; in derivation {\n"
              "  name = \"demo\"; system = builtins.currentSystem; builder = \"/bin/sh\";\n"
              "  args = [ \"-c\" \"read x < ''${src}/data; echo $x > $out\" ];\n"
              "}\nNIX")
          out = machine.succeed("nix-build /tmp/demo.nix --no-out-link").strip()
          machine.wait_until_succeeds(f"buildref builds --json | grep -F {out}")
          machine.succeed("grep -F -- -demo.drv /run/builds.log")  # the machine's own hook ran too
          machine.succeed("systemctl show buildref.service -p LimitNOFILE | grep -Fx LimitNOFILE=65536")
          machine.succeed("buildref record app")  # /srv/app did not exist when the watcher started
          machine.succeed("buildref refs app | grep -F refs/tags/v1")
          machine.succeed(f"buildref lookup app v1 --json | grep -F {out}")
          machine.succeed(f"buildref why {out} | grep -F refs/tags/v1")
          machine.succeed("systemctl stop buildref.service")
          # builds go on (the hook socket starts the service again, or the hook spools)
          machine.succeed("nix-build /tmp/demo.nix --no-out-link --check")
          machine.succeed("systemctl start buildref.service")
          machine.wait_until_succeeds("buildref status | grep -F 'spool        0 file(s)'")
        '';
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
