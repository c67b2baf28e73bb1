# A small flake for `kiln run examples/hello-flake`: five checks, two of which
# share a dependency, built with nothing but /bin/sh builtins (no nixpkgs, no
# inputs, works offline). See ../failing-flake for failures of every kind.
{
  description = "Kiln example: checks with shared dependencies";

  outputs = { self }:
    let
      system = "x86_64-linux";
      # Builders run with an empty PATH: shell builtins only.
      sh = name: script: deps: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        # Extra inputs, so that dependencies show in the derivation graph.
        inherit deps;
      };
      greeting = sh "greeting" ''echo "hello from kiln" > $out'' [ ];
    in
    {
      checks.${system} = {
        inherit greeting;
        # Two checks depending on the same derivation.
        shout = sh "shout" ''
          read line < ${greeting}
          echo "$line!" > $out
        '' [ greeting ];
        count = sh "count" ''
          read line < ${greeting}
          set -- $line
          echo "$# words" > $out
        '' [ greeting ];
        # Depends on two checks.
        summary = sh "summary" ''
          read a < ${self.checks.${system}.shout}
          read b < ${self.checks.${system}.count}
          echo "$a / $b" > $out
        '' [ ];
        independent = sh "independent" "echo ok > $out" [ ];
      };
    };
}
