{
  description = "buildref demo: a tiny package whose output is its greeting";

  outputs = { self }: {
    # @system@ is replaced by the demo with the machine's system (flakes evaluate purely).
    packages."@system@".default = derivation {
      name = "greeting";
      system = "@system@";
      builder = "/bin/sh";
      # Builders get an empty PATH: shell builtins only.
      args = [ "-c" "while IFS= read -r line; do echo \"$line\"; done < ${self}/hello.txt > $out" ];
    };
  };
}
