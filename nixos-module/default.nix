# services.buildref: record every local Nix build (post-build-hook) into buildref's index.
{ config, lib, pkgs, ... }:

let
  inherit (lib) mkEnableOption mkPackageOption mkOption mkIf types literalExpression optional optionals
    optionalAttrs hasPrefix concatStringsSep;
  cfg = config.services.buildref;
  settingsFormat = pkgs.formats.toml { };
  stateDir = "/var/lib/buildref";
  spoolDir = "${stateDir}/spool";
  cacheDir = "/var/cache/buildref";
  defaultHookSocket = "/run/buildref/hook.sock";
  defaultQuerySocket = "/run/buildref/query.sock";
  uploadKeyCredential = "upload-secret-key";

  # An absolute path outside the store, given as a string: a path literal would be copied into the
  # store, and a socket or a repository there is never what is meant. types.pathWith is in the lib
  # from NixOS 25.05 on; older ones get the absolute-string check alone.
  absolutePath =
    if types ? pathWith then types.pathWith { inStore = false; absolute = true; }
    else types.strMatching "/.*";

  # URLs that reach another machine: anything but a local path or file://.
  remote = url: !(hasPrefix "file://" url || hasPrefix "/" url);
  fileDirectory = url: lib.head (lib.splitString "?" (lib.removePrefix "file://" url));

  # -- the database
  sqlite = hasPrefix "sqlite://" cfg.database;
  sqlitePath = lib.removePrefix "sqlite://" cfg.database;

  # libpq: postgresql://[user[:password]@][host][:port][,...][/dbname][?param=value&...]. A host= or
  # hostaddr= parameter overrides the URI's hosts; a host that is empty, an absolute directory
  # (/run/postgresql, or %2F-encoded in the URI) or an abstract socket (@name) is a Unix socket.
  postgresOverTcp = url:
    let
      m = builtins.match "postgres(ql)?://([^/?]*)(/[^?]*)?([?](.*))?" url;
      authority = lib.elemAt m 1;
      query = lib.elemAt m 4;
      params = map (kv: lib.splitString "=" kv)
        (lib.filter (kv: kv != "") (lib.splitString "&" (if query == null then "" else query)));
      param = name: lib.findFirst (kv: lib.head kv == name) null params;
      withoutPort = h:
        if hasPrefix "[" h then lib.head (lib.splitString "]" h) + "]" else lib.head (lib.splitString ":" h);
      hosts =
        if param "host" != null then lib.splitString "," (concatStringsSep "=" (lib.tail (param "host")))
        else map withoutPort (lib.splitString "," (lib.last (lib.splitString "@" authority)));
      socket = h: h == "" || hasPrefix "/" h || hasPrefix "%2F" (lib.toUpper h) || hasPrefix "@" h;
    in
    param "hostaddr" != null || lib.any (h: !socket h) hosts;

  # -- the HTTP API
  httpHost = lib.head (builtins.match "(.*):[0-9]+" cfg.http.listen);
  httpPort = lib.toInt (lib.last (lib.splitString ":" cfg.http.listen));
  loopback = httpHost == "localhost" || httpHost == "[::1]" || hasPrefix "127." httpHost;

  # -- upload: the key, handed to the service by systemd (LoadCredential), goes into the store URI
  uploadUri =
    if cfg.upload.secretKeyFile == null then cfg.upload.to
    else cfg.upload.to + (if lib.hasInfix "?" cfg.upload.to then "&" else "?")
      + "secret-key=/run/credentials/buildref.service/${uploadKeyCredential}";

  needsNetwork =
    lib.any (r: r.url != null && remote r.url) cfg.repositories
    || cfg.http.enable
    || (!sqlite && postgresOverTcp cfg.database)
    || lib.any (c: remote c.url) cfg.caches
    || (cfg.upload.to != null && remote cfg.upload.to);

  # Directories outside the state directory the service writes. Each gets a "-": a missing one is
  # then the service's own error to report, not systemd's refusal to start (226/NAMESPACE).
  writableDirectories =
    optional (sqlite && !hasPrefix "${stateDir}/" sqlitePath) (dirOf sqlitePath)
    ++ optional (cfg.upload.to != null && hasPrefix "file://" cfg.upload.to) (fileDirectory cfg.upload.to);

  names = map (r: r.name) cfg.repositories;
  repeatedNames = lib.unique (lib.filter (n: lib.count (x: x == n) names > 1) names);

  # Top-level keys of the TOML settings the module writes from its own options.
  ownedKeys = {
    state_dir = "";
    hook = "hookSocket";
    query = "querySocket, querySocketMode";
    repository = "repositories";
    builder = "builder";
    http = "http";
    cache = "caches";
    upload = "upload";
  };

  configFile = settingsFormat.generate "buildref.toml" (cfg.settings // {
    state_dir = stateDir;
    database = cfg.database;
    hook = { socket = cfg.hookSocket; spool_dir = spoolDir; };
    query = { socket = cfg.querySocket; mode = cfg.querySocketMode; };
    repository = map (r: { inherit (r) name path; } // optionalAttrs (r.url != null) { inherit (r) url; })
      cfg.repositories;
  } // optionalAttrs (cfg.builder != "") { inherit (cfg) builder; }
    // optionalAttrs cfg.http.enable { http.listen = cfg.http.listen; }
    // optionalAttrs (cfg.caches != [ ]) {
      cache = map (c: { inherit (c) url; public_keys = c.publicKeys; }) cfg.caches;
    }
    // optionalAttrs (cfg.upload.to != null) { upload.to = uploadUri; });

  # -- the post-build hook

  # `NAME = "value"` as one shell word (a JSON string is a Python string literal too).
  assign = name: value: lib.escapeShellArg "${name} = ${builtins.toJSON value}";

  # Nix runs one post-build-hook. buildref's is the package's hook.py with this system's interpreter
  # and paths baked in (Nix runs it after every build, so it must not depend on an environment);
  # when another hook is configured, buildref's runs first and then executes that one in its place.
  # `chained` is what nix.conf would have named (nix.nix renders paths and packages as their path).
  hookScript = chained:
    let program = if chained == null then "" else toString chained;
    in pkgs.runCommand "buildref-hook" { } ''
      substitute ${cfg.package}/${pkgs.python3.sitePackages}/buildref/hook.py $out \
        --replace-fail '#!/usr/bin/python3 -IS' '#!${pkgs.python3}/bin/python3 -IS' \
        --replace-fail 'DEFAULT_SOCKET = "/run/buildref/hook.sock"' ${assign "DEFAULT_SOCKET" cfg.hookSocket} \
        --replace-fail 'DEFAULT_SPOOL = "/var/lib/buildref/spool"' 'DEFAULT_SPOOL = "${spoolDir}"' \
        --replace-fail 'CHAINED_HOOK = ""' ${assign "CHAINED_HOOK" program} \
        --replace-fail 'SERVICE_USER = ""' 'SERVICE_USER = "buildref"'
      chmod +x $out
    '';

  # What users may give nix.settings.post-build-hook (nix.nix's config atom, for this key): one
  # program, or null for none. Definitions merge as usual (priorities, mkForce); two different ones
  # at the same priority are an error: Nix runs one hook, and buildref's chains one.
  hookType = lib.mkOptionType {
    name = "post-build-hook";
    description = "null or path of a program (string, path or package)";
    descriptionClass = "noun";
    check = v: v == null || lib.isStringLike v;
    merge = loc: defs:
      let first = lib.head defs;
      in
      if lib.all (def: def.value == first.value) defs then first.value
      else throw ''
        The option `${lib.showOption loc}' is defined more than once, with different programs:${
          lib.options.showDefs defs}
        Nix runs one post-build hook (services.buildref runs its own first, then this one):
        combine them into one script.'';
  };

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
        buildref's TOML configuration (see docs/service.md), for the keys no other option sets: the
        state directory, sockets, repositories, database, builder, HTTP API, caches and upload come
        from the other options, and setting them here is an error.
      '';
    };

    repositories = mkOption {
      type = types.listOf (types.submodule {
        options = {
          name = mkOption { type = types.str; description = "Name used in lookups; unique."; };
          path = mkOption {
            type = absolutePath;
            description = ''
              Path of the repository (bare or not). The service reads it, read-only, as user buildref;
              it need not exist when the service starts.
            '';
          };
          url = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "Remote to mirror; one not a local path or file:// lets the service use IP.";
          };
        };
      });
      default = [ ];
      example = literalExpression ''[ { name = "app"; path = "/srv/app"; } ]'';
      description = "Git repositories whose refs are watched and matched to builds.";
    };

    hookSocket = mkOption {
      type = absolutePath;
      default = defaultHookSocket;
      description = ''
        Socket the post-build hook writes to (root only). Another path than the default is baked
        into the hook and exported to every session as `BUILDREF_HOOK_SOCKET` (for `buildref import`).
      '';
    };

    querySocket = mkOption {
      type = absolutePath;
      default = defaultQuerySocket;
      description = ''
        Socket `buildref` clients query. Another path than the default is exported to every session
        as `BUILDREF_SOCKET`.
      '';
    };

    querySocketMode = mkOption {
      type = types.strMatching "0[0-7]{3}";
      default = "0666";
      description = "Permissions of the query socket, in octal (the default lets every local user query).";
    };

    database = mkOption {
      type = types.strMatching "sqlite:///.+|postgres(ql)?://.*";
      default = cfg.settings.database or "sqlite://${stateDir}/buildref.db";
      defaultText = literalExpression
        ''config.services.buildref.settings.database or "sqlite://${stateDir}/buildref.db"'';
      example = "postgresql:///buildref?host=/run/postgresql";
      description = ''
        Where the index lives: `sqlite:///path`, or a libpq URL `postgresql://…`. A SQLite file
        outside ${stateDir} must be in an existing directory the user buildref may write. With
        PostgreSQL the service is ordered after postgresql.service (postgresql.target on NixOS 25.11),
        and may use the network only when the URL names a TCP host: a socket directory
        (`?host=/run/postgresql`) keeps it local. See nixos-module/README.md for a local PostgreSQL.
      '';
    };

    builder = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = ''
        The name this machine's builds are recorded under. Empty: the service uses the host name
        it finds at run time.
      '';
    };

    http = {
      enable = mkEnableOption "buildref's read-only HTTP API (/api/v1/..., /metrics)";
      listen = mkOption {
        type = types.strMatching "(\\[[0-9A-Fa-f:.]+]|[A-Za-z0-9._-]+):[0-9]{1,5}";
        default = "127.0.0.1:8745";
        example = "[::]:8745";
        description = "Address and port the HTTP API listens on.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Whether to open the HTTP API's port in the firewall.";
      };
    };

    caches = mkOption {
      type = types.listOf (types.submodule {
        options = {
          url = mkOption {
            type = types.strMatching "[a-z][a-z0-9+.-]*://.+";
            example = "https://cache.example.org";
            description = "Binary cache URL; anything but file:// lets the service use the network.";
          };
          publicKeys = mkOption {
            type = types.listOf (types.strMatching "[^:]+:[A-Za-z0-9+/]+={0,2}");
            default = [ ];
            example = [ "cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            description = "Keys whose signatures the service accepts for this cache's narinfos.";
          };
        };
      });
      default = [ ];
      description = "Binary caches the service checks builds against (`lookup --cached`).";
    };

    upload = {
      to = mkOption {
        type = types.nullOr (types.strMatching "[a-z][a-z0-9+.-]*://.+");
        default = null;
        example = "s3://nix-cache?region=eu-west-1";
        description = ''
          Store URI the service copies every recorded build to (`nix copy --to`), from a durable
          queue, after the build's event is acknowledged: this replaces the Nix manual's
          sign-and-upload `post-build-hook` (`upload-to-cache.sh`), without making builds wait on
          the upload, and retrying a failing target with backoff while one bad path never holds up
          the others (`buildref status` shows the queue). Anything but file:// lets the service use
          the network; a file:// directory must exist and be writable by user buildref. To sign, set
          {option}`services.buildref.upload.secretKeyFile` (or put `?secret-key=PATH` in the URI
          yourself, with a key file user buildref can read).
        '';
      };
      secretKeyFile = mkOption {
        type = types.nullOr absolutePath;
        default = null;
        example = "/etc/nix/cache-priv-key.pem";
        description = ''
          Key (from `nix-store --generate-binary-cache-key`) to sign uploads with. The file may stay
          root's own: systemd hands it to the service (LoadCredential) and the module adds
          `secret-key=` for it to the store URI.
        '';
      };
    };
  };

  # Declared here too, inside NixOS's freeform nix.settings: buildref's hook is then installed
  # whatever the user defines for this key, and runs the user's hook after its own.
  options.nix.settings = mkOption {
    type = types.submodule {
      options.post-build-hook = mkOption {
        type = hookType;
        default = null;
        apply = hook: if cfg.enable then hookScript hook else hook;
        example = "/etc/nix/upload-to-cache.sh";
        description = ''
          Program Nix runs after every build (`post-build-hook` in nix.conf).

          With services.buildref enabled, nix.conf names buildref's hook, and a program defined here
          is chained after it: buildref's hook delivers (or spools) the build, then executes this
          program in its place, with the same environment (`DRV_PATH`, `OUT_PATHS`, ...), so the
          program's output and exit status are what Nix sees, as without buildref: a failing
          hook still stops further builds. A program that cannot be started makes the hook exit 1
          with one line, as Nix's own attempt would. buildref's part never fails.
        '';
      };
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = repeatedNames == [ ];
        message = "services.buildref.repositories: names must be unique; more than once: "
          + concatStringsSep ", " repeatedNames + ".";
      }
      {
        assertion = !(cfg.settings ? database) || cfg.settings.database == cfg.database;
        message = "services.buildref: settings.database and database differ; "
          + "set services.buildref.database only.";
      }
      {
        assertion = cfg.upload.secretKeyFile == null || cfg.upload.to == null
          || !lib.hasInfix "secret-key=" cfg.upload.to;
        message = "services.buildref.upload: the URI already has a secret-key=; drop it or secretKeyFile.";
      }
    ] ++ lib.mapAttrsToList (key: option: {
      assertion = !(cfg.settings ? ${key});
      message = "services.buildref.settings.${key} is written by the module${
        lib.optionalString (option != "") "; set services.buildref.${option} instead"}.";
    }) ownedKeys;

    warnings =
      optional (cfg.http.enable && cfg.http.openFirewall && loopback)
        ("services.buildref.http.openFirewall opens port ${toString httpPort}, "
          + "but the API listens on ${cfg.http.listen} only.")
      ++ optional (lib.hasInfix "post-build-hook" config.nix.extraOptions)
        ("nix.extraOptions sets post-build-hook, which replaces buildref's hook: "
          + "set nix.settings.post-build-hook, which buildref chains.");

    environment.systemPackages = [ cfg.package ];
    # Clients find the sockets there when they are not at their default paths.
    environment.sessionVariables =
      optionalAttrs (cfg.querySocket != defaultQuerySocket) { BUILDREF_SOCKET = cfg.querySocket; }
      // optionalAttrs (cfg.hookSocket != defaultHookSocket) { BUILDREF_HOOK_SOCKET = cfg.hookSocket; };

    networking.firewall.allowedTCPPorts = mkIf (cfg.http.enable && cfg.http.openFirewall) [ httpPort ];

    users.users.buildref = { isSystemUser = true; group = "buildref"; };
    users.groups.buildref = { };

    systemd.sockets.buildref-hook = socketUnit "hook" cfg.hookSocket "0600" "root";
    systemd.sockets.buildref-query = socketUnit "query" cfg.querySocket cfg.querySocketMode "buildref";

    systemd.services.buildref = {
      description = "buildref: record Nix builds and match them to git refs";
      requires = [ "buildref-hook.socket" "buildref-query.socket" ];
      after = [ "buildref-hook.socket" "buildref-query.socket" "nix-daemon.socket" ]
        ++ optionals (!sqlite) [ "postgresql.service" "postgresql.target" ];
      wantedBy = [ "multi-user.target" ];
      path = [ config.nix.package pkgs.git ];
      # nix keeps its narinfo and fetcher caches under XDG_CACHE_HOME; buildref's home is /var/empty.
      environment.XDG_CACHE_HOME = cacheDir;
      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/buildref serve --config ${configFile}";
        User = "buildref";
        Group = "buildref";
        StateDirectory = "buildref buildref/spool";
        # What the service narrows them to at start (the index, the spool and mirrors of private
        # repositories are for buildref alone; the hook writes the spool as root).
        StateDirectoryMode = "0700";
        CacheDirectory = "buildref";
        Restart = "on-failure";
        TimeoutStopSec = 90;
        # The service caps its own connections; this is the floor it counts on.
        LimitNOFILE = 65536;
        # Everything else is read-only (repositories need no ReadOnlyPaths, and may appear later).
        ProtectSystem = "strict";
        ProtectHome = "read-only";
        ReadWritePaths = mkIf (writableDirectories != [ ]) (map (d: "-${d}") writableDirectories);
        LoadCredential = mkIf (cfg.upload.secretKeyFile != null)
          [ "${uploadKeyCredential}:${cfg.upload.secretKeyFile}" ];
        PrivateTmp = true;
        PrivateDevices = true;
        NoNewPrivileges = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
        RestrictAddressFamilies = [ "AF_UNIX" ] ++ optionals needsNetwork [ "AF_INET" "AF_INET6" ];
      };
    };
  };
}
