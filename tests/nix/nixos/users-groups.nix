# Mirrors the parts of nixos/modules/config/users-groups.nix that buildref's module touches: the
# users.users and users.groups declarations (the user options it sets or relies on) and the
# assertions NixOS makes about every user (exactly one of isSystemUser/isNormalUser, a group).
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.users;

  userOpts = { name, ... }: {
    options = {
      name = mkOption { type = types.str; description = "The name of the user account."; };
      description = mkOption { type = types.singleLineStr; default = ""; description = "A short description of the user account."; };
      uid = mkOption { type = with types; nullOr int; default = null; description = "The account UID."; };
      isSystemUser = mkOption { type = types.bool; default = false; description = "Whether this is a system user."; };
      isNormalUser = mkOption { type = types.bool; default = false; description = "Whether this is a real user."; };
      group = mkOption { type = types.str; default = ""; description = "The user's primary group."; };
      extraGroups = mkOption { type = types.listOf types.str; default = [ ]; description = "The user's auxiliary groups."; };
      home = mkOption { type = types.path; default = "/var/empty"; description = "The user's home directory."; };
    };
    config.name = lib.mkDefault name;
  };

  groupOpts = { name, ... }: {
    options = {
      name = mkOption { type = types.str; description = "The name of the group."; };
      gid = mkOption { type = with types; nullOr int; default = null; description = "The group GID."; };
      members = mkOption { type = with types; listOf str; default = [ ]; description = "The user names of the group members."; };
    };
    config.name = lib.mkDefault name;
  };
in
{
  options.users = {
    users = mkOption {
      default = { };
      type = with types; attrsOf (submodule userOpts);
      description = "Additional user accounts to be created automatically by the system.";
    };
    groups = mkOption {
      default = { };
      type = with types; attrsOf (submodule groupOpts);
      description = "Additional groups to be created automatically by the system.";
    };
  };

  config.assertions = lib.flatten (lib.flip lib.mapAttrsToList cfg.users (name: user: [
    {
      assertion =
        let
          xor = a: b: a && !b || b && !a;
          isEffectivelySystemUser = user.isSystemUser || (user.uid != null && user.uid < 1000 && !user.isNormalUser);
        in
        xor isEffectivelySystemUser user.isNormalUser;
      message = ''
        Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.
      '';
    }
    {
      assertion = user.group != "";
      message = ''
        users.users.${user.name}.group is unset. This used to default to
        nogroup, but this is unsafe.
      '';
    }
  ]));
}
