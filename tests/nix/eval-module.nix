# Evaluates nixos-module/default.nix with lib.evalModules from the vendored nixpkgs lib
# (./nixpkgs-lib, see its README), next to stand-ins for the NixOS modules that declare the options
# it sets (./nixos/*.nix, each naming the real file it mirrors) and for the pkgs it uses
# (./pkgs.nix). `modules` are the test's own configuration modules.
#
#   nix-instantiate --eval --strict --json -A report eval-module.nix --arg modules '[ ... ]'
#   nix-instantiate --eval --strict -A toplevel ...   fails like nixos-rebuild on failed assertions
#   nix-build -A hook ...                              the post-build hook as nix.conf names it
{ modules ? [ ] }:
let
  lib = import ./nixpkgs-lib;
  pkgs = import ./pkgs.nix { inherit lib; };

  eval = lib.evalModules {
    modules = [
      ./nixos/assertions.nix
      ./nixos/nix.nix
      ./nixos/systemd.nix
      ./nixos/users-groups.nix
      ./nixos/environment.nix
      ./nixos/networking.nix
      ./nixos/postgresql.nix
      ../../nixos-module
      { _module.args.pkgs = pkgs; }
    ] ++ modules;
  };
  inherit (eval) config options;

  failedAssertions = map (x: x.message) (lib.filter (x: !x.assertion) config.assertions);

  unitsOf = prefix: lib.filterAttrs (name: _: lib.hasPrefix prefix name) config.systemd.units;
in
{
  report = {
    inherit failedAssertions;
    inherit (config) warnings;
    nixConf = config.environment.etc."nix/nix.conf".text;
    postBuildHook = config.nix.settings.post-build-hook;
    service = config.systemd.services.buildref or null;
    sockets = lib.filterAttrs (name: _: lib.hasPrefix "buildref" name) config.systemd.sockets;
    units = lib.mapAttrs (_: unit: unit.text) (unitsOf "buildref");
    users = {
      users = lib.filterAttrs (name: _: name == "buildref") config.users.users;
      groups = lib.filterAttrs (name: _: name == "buildref") config.users.groups;
    };
    systemPackages = config.environment.systemPackages;
    inherit (config.environment) variables sessionVariables;
    allowedTCPPorts = config.networking.firewall.allowedTCPPorts;
    # What the NixOS manual would list: every option of services.buildref, as documented.
    options = map (o: { inherit (o) name description type; })
      (lib.filter (o: o.visible && !o.internal) (lib.optionAttrSetToDocList options.services.buildref));
  };

  # As nixos/modules/system/activation/top-level.nix: no system while an assertion fails.
  toplevel =
    if failedAssertions != [ ]
    then throw "\nFailed assertions:\n${lib.concatStringsSep "\n" (map (x: "- ${x}") failedAssertions)}"
    else lib.showWarnings config.warnings "toplevel";

  hook = config.nix.settings.post-build-hook;
  inherit (pkgs) buildref;
}
