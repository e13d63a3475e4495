# Stand-ins for the pkgs attributes buildref's module uses. They are real derivations, built by the
# real Nix when a test asks for them (tests run with the sandbox off, so they may link the host's
# tools), with the interfaces nixpkgs gives them:
#   - runCommand: bash runs the script with $out set; `substitute IN OUT --replace-fail A B ...`
#     behaves as stdenv's (every occurrence replaced, an error when A does not occur).
#   - formats.toml: the type is nixpkgs' own (pkgs/pkgs-lib/formats.nix). `generate` writes the
#     value as JSON, which is what nixpkgs hands to json2toml; the tests turn that JSON into TOML
#     with tomli-w and read it back with tomllib, so a value TOML cannot hold still fails.
#   - buildref: the package layout the module relies on (bin/buildref, the hook in site-packages),
#     with this checkout's hook.py; python3, git and nix: the host's, under a store path.
{ lib }:
let
  system = builtins.currentSystem;
  sitePackages = "lib/python3.11/site-packages";

  substitute = ''
    substitute() {
      local input="$1" output="$2" content pattern replacement
      shift 2
      content="$(cat "$input"; printf x)"
      content="''${content%x}"
      while [ "$#" -gt 0 ]; do
        case "$1" in
          --replace-fail)
            pattern="$2" replacement="$3"
            shift 3
            if [[ "$content" != *"$pattern"* ]]; then
              echo "substitute: ERROR: pattern $pattern doesn't match anything in file '$input'" >&2
              return 1
            fi
            content="''${content//"$pattern"/"$replacement"}"
            ;;
          *) echo "substitute: unsupported argument $1" >&2; return 1 ;;
        esac
      done
      printf '%s' "$content" > "$output"
    }
  '';

  runCommand = name: env: script:
    derivation (env // {
      inherit name system;
      builder = "/bin/bash";
      # The trailing ":" keeps bash from exec'ing the script's last command: coreutils close their
      # stdout before exiting, and Nix 2.8 takes that end of output for the end of the build and
      # kills the builder (signal 9) if it is still running.
      args = [ "-euc" (substitute + script + "\n:") ];
      PATH = "/usr/bin:/bin";
    });

  hostTool = name: tools: runCommand name { } ''
    mkdir -p $out/bin
    ${lib.concatMapStrings (t: "ln -s /usr/bin/${t} $out/bin/${t}\n") tools}
  '';

  writeShellScript = name: text: runCommand name { inherit text; } ''
    printf '#!/bin/bash\n%s' "$text" > $out
    chmod +x $out
  '';
in
{
  inherit runCommand writeShellScript;

  writeText = name: text: runCommand name { inherit text; } ''printf '%s' "$text" > $out'';

  formats.toml = { }: {
    type =
      with lib.types;
      let
        valueType = oneOf [ bool int float str path (attrsOf valueType) (listOf valueType) ]
          // { description = "TOML value"; };
      in
      valueType;
    generate = name: value: builtins.toFile name (builtins.toJSON value);
  };

  python3 = hostTool "python3" [ "python3" ] // { inherit sitePackages; };
  git = hostTool "git" [ "git" ];
  nix = hostTool "nix" [ "nix" "nix-build" "nix-store" "nix-instantiate" ];

  buildref = runCommand "buildref-0.1.0" { } ''
    mkdir -p $out/bin $out/${sitePackages}/buildref
    cp ${builtins.path { name = "hook.py"; path = ../../service/buildref/hook.py; }} $out/${sitePackages}/buildref/hook.py
    printf '#!/bin/sh\nexec /usr/bin/python3 -m buildref "$@"\n' > $out/bin/buildref
    chmod +x $out/bin/buildref
  '';
}
