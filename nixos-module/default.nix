# services.buildref: record every local Nix build (post-build-hook) into buildref's index.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkPackageOption mkOption mkIf types literalExpression optionals;
  cfg = config.services.buildref;
  settingsFormat = pkgs.formats.toml { };
  stateDir = "/var/lib/buildref";
  spoolDir = "${stateDir}/spool";

  # The settings the module owns (paths that systemd and the hook must agree on), under the user's.
  configFile = settingsFormat.generate "buildref.toml" (lib.recursiveUpdate cfg.settings {
    state_dir = stateDir;
    database = cfg.settings.database or "sqlite://${stateDir}/buildref.db";
    hook = { socket = cfg.hookSocket; spool_dir = spoolDir; };
    query = { socket = cfg.querySocket; mode = cfg.querySocketMode; };
    repository = map (r: { inherit (r) name path; } // lib.optionalAttrs (r.url != null) { inherit (r) url; })
      cfg.repositories;
  });

  # The hook file from the package, with this system's interpreter and paths baked in: Nix runs
  # it after every build, so it must not depend on an environment.
  hook = pkgs.runCommand "buildref-hook" { } ''
    substitute ${cfg.package}/${pkgs.python3.sitePackages}/buildref/hook.py $out \
      --replace-fail '#!/usr/bin/python3 -IS' '#!${pkgs.python3}/bin/python3 -IS' \
      --replace-fail 'DEFAULT_SOCKET = "/run/buildref/hook.sock"' 'DEFAULT_SOCKET = "${cfg.hookSocket}"' \
      --replace-fail 'DEFAULT_SPOOL = "/var/lib/buildref/spool"' 'DEFAULT_SPOOL = "${spoolDir}"'
    chmod +x $out
  '';

  mirrors = builtins.any (r: r.url != null) cfg.repositories;

  socketUnit = name: path: mode: user: {
    description = "buildref ${name} socket";
    wantedBy = [ "sockets.target" ];
    socketConfig = {
      ListenStream = path;
      SocketMode = mode;
      SocketUser = user;
      FileDescriptorName = name;
      Service = "buildref.service";
      RemoveOnStop = true;
    };
  };
in
{
  options.services.buildref = {
    enable = mkEnableOption "buildref, which records every local Nix build and matches it to git refs";

    package = mkPackageOption pkgs "buildref" { };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''{ flake_locks = [ "/srv/infra/flake.lock" ]; log.level = "debug"; }'';
      description = ''
        buildref's TOML configuration (see docs/service.md). The state directory, the socket paths
        and the repositories are set from the other options.
      '';
    };

    repositories = mkOption {
      type = types.listOf (types.submodule {
        options = {
          name = mkOption { type = types.str; description = "Name used in lookups."; };
          path = mkOption {
            type = types.str;
            description = "Path of the repository (bare or not); the service reads it, read-only, as user buildref.";
          };
          url = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "Remote to mirror; lets the service use the network.";
          };
        };
      });
      default = [ ];
      example = literalExpression ''[ { name = "app"; path = "/srv/app"; } ]'';
      description = "Git repositories whose refs are watched and matched to builds.";
    };

    hookSocket = mkOption {
      type = types.str;
      default = "/run/buildref/hook.sock";
      description = "Socket the post-build hook writes to (root only).";
    };

    querySocket = mkOption {
      type = types.str;
      default = "/run/buildref/query.sock";
      description = "Socket `buildref` clients query.";
    };

    querySocketMode = mkOption {
      type = types.str;
      default = "0666";
      description = "Permissions of the query socket (the default lets every local user query).";
    };
  };

  config = mkIf cfg.enable {
    nix.settings.post-build-hook = hook;

    users.users.buildref = { isSystemUser = true; group = "buildref"; };
    users.groups.buildref = { };

    systemd.sockets.buildref-hook = socketUnit "hook" cfg.hookSocket "0600" "root";
    systemd.sockets.buildref-query = socketUnit "query" cfg.querySocket cfg.querySocketMode "buildref";

    systemd.services.buildref = {
      description = "buildref: record Nix builds and match them to git refs";
      requires = [ "buildref-hook.socket" "buildref-query.socket" ];
      after = [ "buildref-hook.socket" "buildref-query.socket" "nix-daemon.socket" ];
      wantedBy = [ "multi-user.target" ];
      path = [ config.nix.package pkgs.git ];
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/buildref serve --config ${configFile}";
        User = "buildref";
        Group = "buildref";
        StateDirectory = "buildref buildref/spool";
        StateDirectoryMode = "0750";
        Restart = "on-failure";
        TimeoutStopSec = 90;
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        ReadOnlyPaths = map (r: r.path) cfg.repositories;
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" ] ++ optionals mirrors [ "AF_INET" "AF_INET6" ];
      };
    };
  };
}
