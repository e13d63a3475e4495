# Mirrors the declarations of nix.enable and nix.package (nixos/modules/services/system/nix-daemon.nix)
# and of nix.settings and nix.extraOptions (nixos/modules/config/nix.nix): `nix.settings` is a
# submodule whose freeform type is nix.nix's semanticConfType, with a few declared settings. nix.conf
# is rendered the way nix.nix renders it (mkValueString, extra-* last), as text instead of the
# checked writeTextFile.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.nix;

  semanticConfType =
    with types;
    let
      confAtom =
        nullOr (oneOf [ bool int float str path package ])
        // { description = "Nix config atom (null, bool, int, float, str, path or package)"; };
    in
    attrsOf (either confAtom (listOf confAtom));

  mkValueString =
    v:
    if v == null then ""
    else if lib.isInt v then toString v
    else if lib.isBool v then lib.boolToString v
    else if lib.isFloat v then lib.floatToString v
    else if lib.isList v then toString v
    else if lib.isDerivation v then toString v
    else if builtins.isPath v then toString v
    else if lib.isString v then v
    else if lib.strings.isConvertibleWithToString v then toString v
    else abort "The nix conf value: ${lib.toPretty { } v} can not be encoded";

  mkKeyValue = k: v: "${lib.escape [ "=" ] k} = ${mkValueString v}";
  mkKeyValuePairs = attrs: lib.concatStringsSep "\n" (lib.mapAttrsToList mkKeyValue attrs);
  isExtra = key: lib.hasPrefix "extra-" key;
in
{
  options.nix = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether to enable Nix.";
    };

    package = mkOption {
      type = types.package;
      default = pkgs.nix;
      description = "This option specifies the Nix package instance to use throughout the system.";
    };

    extraOptions = mkOption {
      type = types.lines;
      default = "";
      description = "Additional text appended to {file}`nix.conf`.";
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = semanticConfType;
        options = {
          max-jobs = mkOption {
            type = types.either types.int (types.enum [ "auto" ]);
            default = "auto";
            description = "Maximum number of build jobs.";
          };
          sandbox = mkOption {
            type = types.either types.bool (types.enum [ "relaxed" ]);
            default = true;
            description = "Whether builds run in a sandbox.";
          };
          trusted-users = mkOption {
            type = types.listOf types.str;
            description = "Users with additional rights when connecting to the Nix daemon.";
          };
        };
      };
      default = { };
      description = "Configuration for Nix, see {manpage}`nix.conf(5)`.";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings.trusted-users = [ "root" ];
    environment.etc."nix/nix.conf".text = ''
      # WARNING: this file is generated from the nix.* options in
      # your NixOS configuration, typically
      # /etc/nixos/configuration.nix.  Do not edit it!
      ${mkKeyValuePairs (lib.filterAttrs (key: value: !(isExtra key)) cfg.settings)}
      ${mkKeyValuePairs (lib.filterAttrs (key: value: isExtra key) cfg.settings)}
      ${cfg.extraOptions}
    '';
  };
}
