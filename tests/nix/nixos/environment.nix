# Mirrors the declarations of environment.systemPackages (nixos/modules/config/system-path.nix),
# environment.variables (nixos/modules/config/shells-environment.nix), environment.sessionVariables
# (nixos/modules/config/system-environment.nix, which also merges them into environment.variables)
# and the `text` of environment.etc (nixos/modules/system/etc/etc.nix).
{ config, lib, options, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.environment = {
    systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "The set of packages that appear in /run/current-system/sw.";
    };

    variables = mkOption {
      default = { };
      description = "A set of environment variables used in the global environment.";
      type = with types; attrsOf (nullOr (oneOf [ (listOf (oneOf [ int str path ])) int str path ]));
      apply =
        let
          toStr = v: if lib.isPath v then "${v}" else toString v;
        in
        attrs: lib.mapAttrs (n: v: if lib.isList v then lib.concatMapStringsSep ":" toStr v else toStr v)
          (lib.filterAttrs (n: v: v != null) attrs);
    };

    sessionVariables = mkOption {
      default = { };
      description = "A set of environment variables used in the global environment, set by PAM.";
      inherit (options.environment.variables) type apply;
    };

    etc = mkOption {
      default = { };
      type = types.attrsOf (types.submodule {
        options.text = mkOption { type = types.nullOr types.lines; default = null; description = "Text of the file."; };
      });
      description = "Set of files that have to be linked in {file}`/etc`.";
    };
  };

  config.environment.variables = config.environment.sessionVariables;
}
