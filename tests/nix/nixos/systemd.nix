# Mirrors what NixOS declares for systemd.services and systemd.sockets and how it renders them:
#   - unitNameType, assertValueOneOf, checkUnitConfig, toOption, attrsToSection, the unitConfig
#     and serviceConfig (PATH from `path`) modules, serviceToUnit and socketToUnit:
#     nixos/lib/systemd-lib.nix
#   - unitOption (the merge of repeatable and single settings), checkService (Type=, Restart=), the
#     common unit options, serviceOptions (environment, path, serviceConfig), socketOptions:
#     nixos/lib/systemd-unit-options.nix
#   - systemd.services / systemd.sockets / systemd.units: nixos/modules/system/boot/systemd.nix
# Left out, because buildref's module does not use them: script/preStart/... (job scripts),
# timers, targets, mounts, the default PATH of stage-2 services (coreutils, findutils, ...) and the
# [Install] handling (NixOS links wantedBy instead of writing [Install]).
{ config, lib, ... }:
let
  inherit (lib) mkOption types optionalAttrs concatStrings concatLists mapAttrsToList isList;
  cfg = config.systemd;

  # systemd-lib.nix
  unitNameType = types.strMatching
    "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  assertValueOneOf = name: values: group: attr:
    lib.optional (attr ? ${name} && !lib.elem attr.${name} values)
      "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";

  checkUnitConfig = group: checks: attrs:
    let
      # Applied at the top-level type (attrsOf unitOption): unwrap mkOverride and mkIf first.
      defs = lib.mapAttrs (lib.const (v:
        if v._type or "" == "override" then v.content
        else if v._type or "" == "if" then v.content
        else v)) attrs;
      errors = lib.concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;

  toOption = x:
    if x == true then "true"
    else if x == false then "false"
    else toString x;

  attrsToSection = as:
    concatStrings (concatLists (mapAttrsToList (name: value:
      map (x: ''
        ${name}=${toOption x}
      '') (if isList value then value else [ value ])) as));

  # systemd-unit-options.nix
  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [ "exec" "simple" "forking" "oneshot" "dbus" "notify" "notify-reload" "idle" ])
    (assertValueOneOf "Restart" [ "no" "on-success" "on-failure" "on-abnormal" "on-abort" "always" ])
  ];

  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge = loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: isList def.value) defs'
      then lib.concatMap (def: lib.toList def.value) defs'
      else lib.mergeEqualOption loc defs';
  };

  listOfUnits = description: mkOption {
    default = [ ];
    type = types.listOf unitNameType;
    inherit description;
  };

  commonUnitOptions = { config, options, ... }: {
    options = {
      enable = mkOption { default = true; type = types.bool; description = "Whether the unit exists."; };
      description = mkOption {
        default = "";
        type = types.singleLineStr;
        description = "Description of this unit used in systemd messages and progress indicators.";
      };
      requires = listOfUnits "Start the specified units when this unit is started.";
      wants = listOfUnits "Start the specified units when this unit is started.";
      after = listOfUnits "Order this unit after the specified units.";
      before = listOfUnits "Order this unit before the specified units.";
      bindsTo = listOfUnits "Like requires, and stop when they disappear.";
      partOf = listOfUnits "Stop or restart with the specified units.";
      conflicts = listOfUnits "Stop when the specified units start.";
      wantedBy = listOfUnits "Units that want (i.e. depend on) this unit.";
      requiredBy = listOfUnits "Units that require this unit.";
      restartTriggers = mkOption { default = [ ]; type = types.listOf types.unspecified; description = "Restart on change."; };
      unitConfig = mkOption {
        default = { };
        type = types.attrsOf unitOption;
        description = "Each attribute in this set specifies an option in the `[Unit]` section of the unit.";
      };
    };
    # systemd-lib.nix, unitConfig
    config.unitConfig =
      optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
      // optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
      // optionalAttrs (config.after != [ ]) { After = toString config.after; }
      // optionalAttrs (config.before != [ ]) { Before = toString config.before; }
      // optionalAttrs (config.bindsTo != [ ]) { BindsTo = toString config.bindsTo; }
      // optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
      // optionalAttrs (config.conflicts != [ ]) { Conflicts = toString config.conflicts; }
      // optionalAttrs (config.description != "") { Description = config.description; };
  };

  serviceOptions = { config, ... }: {
    options = {
      environment = mkOption {
        default = { };
        type = with types; attrsOf (nullOr (oneOf [ str path package ]));
        description = "Environment variables passed to the service's processes.";
      };
      path = mkOption {
        default = [ ];
        type = with types; listOf (oneOf [ package str ]);
        description = "Packages added to the service's {env}`PATH` environment variable.";
      };
      serviceConfig = mkOption {
        default = { };
        type = types.addCheck (types.attrsOf unitOption) checkService;
        description = "Each attribute in this set specifies an option in the `[Service]` section of the unit.";
      };
    };
    # systemd-lib.nix, serviceConfig
    config.environment.PATH = lib.mkIf (config.path != [ ])
      "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
  };

  socketOptions = {
    options = {
      listenStreams = mkOption {
        default = [ ];
        type = types.listOf types.str;
        description = "For each item in this list, a `ListenStream` option in the `[Socket]` section will be created.";
      };
      socketConfig = mkOption {
        default = { };
        type = types.attrsOf unitOption;
        description = "Each attribute in this set specifies an option in the `[Socket]` section of the unit.";
      };
    };
  };

  # systemd-lib.nix, serviceToUnit / socketToUnit
  commonUnitText = def: ''
    [Unit]
    ${attrsToSection def.unitConfig}
  '';

  serviceToUnit = name: def: {
    inherit (def) wantedBy requiredBy enable;
    text = commonUnitText def + ''
      [Service]
      ${concatStrings (map (n:
        lib.optionalString (def.environment.${n} != null)
          "Environment=${builtins.toJSON "${n}=${def.environment.${n}}"}\n")
        (lib.attrNames def.environment))}
      ${attrsToSection def.serviceConfig}
    '';
  };

  socketToUnit = name: def: {
    inherit (def) wantedBy requiredBy enable;
    text = commonUnitText def + ''
      [Socket]
      ${attrsToSection def.socketConfig}
      ${lib.concatStringsSep "\n" (map (s: "ListenStream=${s}") def.listenStreams)}
    '';
  };
in
{
  options.systemd = {
    services = mkOption {
      default = { };
      type = types.attrsOf (types.submodule [ commonUnitOptions serviceOptions ]);
      description = "Definition of systemd service units.";
    };

    sockets = mkOption {
      default = { };
      type = types.attrsOf (types.submodule [ commonUnitOptions socketOptions ]);
      description = "Definition of systemd socket units.";
    };

    units = mkOption {
      default = { };
      internal = true;
      type = types.attrsOf (types.submodule {
        options = {
          text = mkOption { type = types.str; description = "Text of this systemd unit."; };
          enable = mkOption { type = types.bool; default = true; description = "Whether the unit exists."; };
          wantedBy = mkOption { type = types.listOf unitNameType; default = [ ]; description = "Wanted by."; };
          requiredBy = mkOption { type = types.listOf unitNameType; default = [ ]; description = "Required by."; };
        };
      });
      description = "Definition of systemd units; the generated ones, here.";
    };
  };

  config.systemd.units =
    lib.mapAttrs' (n: v: lib.nameValuePair "${n}.service" (serviceToUnit n v)) cfg.services
    // lib.mapAttrs' (n: v: lib.nameValuePair "${n}.socket" (socketToUnit n v)) cfg.sockets;
}
