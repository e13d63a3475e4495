# Evaluates nixos-module/default.nix with small stand-ins for the lib functions and pkgs attributes
# it uses (the real nixpkgs is not available offline). Files the module generates are written to
# the store with builtins.toFile, so the test can read them.
{ enable ? true, repositories ? [ ], settings ? { } }:
let
  lib = rec {
    mkEnableOption = description: { _type = "option"; default = false; inherit description; };
    mkPackageOption = pkgs: name: _: { _type = "option"; default = pkgs.${name}; };
    mkOption = attrs: attrs // { _type = "option"; };
    mkIf = cond: value: if cond then value else { };
    optionals = cond: list: if cond then list else [ ];
    optionalAttrs = cond: attrs: if cond then attrs else { };
    literalExpression = text: { _type = "literalExpression"; inherit text; };
    recursiveUpdate = a: b: a // builtins.mapAttrs
      (name: value: if builtins.isAttrs value && builtins.isAttrs (a.${name} or null)
                    then recursiveUpdate a.${name} value else value) b;
    types = {
      str = "str";
      nullOr = t: { nullOr = t; };
      listOf = t: { listOf = t; };
      submodule = m: { submodule = builtins.attrNames m.options; };
    };
  };
  pkgs = {
    buildref = "/nix/store/00000000000000000000000000000000-buildref";
    python3 = { outPath = "/nix/store/11111111111111111111111111111111-python3"; sitePackages = "lib/python3.11/site-packages"; };
    git = "/nix/store/22222222222222222222222222222222-git";
    formats.toml = _: { type = "toml"; generate = name: value: builtins.toFile name (builtins.toJSON value); };
    runCommand = name: env: script: builtins.toFile name script;
  };
  fill = r: { url = null; } // r;
  config = {
    nix.package = "/nix/store/33333333333333333333333333333333-nix";
    services.buildref = {
      inherit enable settings;
      repositories = map fill repositories;
      package = pkgs.buildref;
      hookSocket = "/run/buildref/hook.sock";
      querySocket = "/run/buildref/query.sock";
      querySocketMode = "0666";
    };
  };
  module = import ../../nixos-module { inherit config lib pkgs; };
in {
  options = builtins.attrNames module.options.services.buildref;
  config = module.config;
}
