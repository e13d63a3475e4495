# Mirrors the declarations of services.postgresql.enable, ensureDatabases and ensureUsers
# (nixos/modules/services/databases/postgresql.nix) and its assertion that a user with
# ensureDBOwnership has a database of its name. buildref's module does not read them: this is here
# so that the README's example with a local PostgreSQL is evaluated against the real declarations.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.services.postgresql;
in
{
  options.services.postgresql = {
    enable = lib.mkEnableOption "PostgreSQL Server";

    ensureDatabases = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Ensures that the specified databases exist.";
    };

    ensureUsers = mkOption {
      type = types.listOf (types.submodule {
        options = {
          name = mkOption { type = types.str; description = "Name of the user to ensure."; };
          ensureDBOwnership = mkOption {
            type = types.bool;
            default = false;
            description = "Grants the user ownership to a database with the same name.";
          };
          ensureClauses = mkOption {
            type = types.submodule {
              options = lib.genAttrs [ "superuser" "createrole" "createdb" "inherit" "login" "replication" "bypassrls" ]
                (clause: mkOption { type = types.nullOr types.bool; default = null; description = "ALTER USER ... WITH ${clause}."; });
            };
            default = { };
            description = "An attrset of clauses to grant to the user.";
          };
        };
      });
      default = [ ];
      description = "Ensures that the specified users exist.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = map ({ name, ensureDBOwnership, ... }: {
      assertion = ensureDBOwnership -> lib.elem name cfg.ensureDatabases;
      message = ''
        For each database user defined with `services.postgresql.ensureUsers` and
        `ensureDBOwnership = true;`, a database with the same name must be defined
        in `services.postgresql.ensureDatabases`.

        Offender: ${name} has not been found among databases.
      '';
    }) cfg.ensureUsers;
  };
}
