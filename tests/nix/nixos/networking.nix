# Mirrors the declarations of networking.hostName (nixos/modules/tasks/network-interfaces.nix, whose
# default is config.system.nixos.distroId, "nixos") and of networking.firewall.enable and
# allowedTCPPorts (nixos/modules/services/networking/firewall.nix, which sorts and deduplicates).
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options.networking = {
    hostName = mkOption {
      default = "nixos";
      # Only allow hostnames without the domain name part, and valid DNS labels (underscores too).
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      description = "The name of the machine. Leave it empty to obtain it from a DHCP server.";
    };

    firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Whether to enable the firewall.";
      };
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
        description = "List of TCP ports on which incoming connections are accepted.";
      };
    };
  };
}
