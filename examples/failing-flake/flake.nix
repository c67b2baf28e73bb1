# Every way a check can go wrong, for trying `kiln run examples/failing-flake`
# (it exits 1): a failing build and its dependent, evaluation errors (`throw`,
# `abort`, a missing attribute) that must not hide the other checks, and a
# check for a system this machine does not build. One check still succeeds.
{
  description = "Kiln example: failing checks";

  outputs = { self }:
    let
      sh = system: name: script: derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
      };
      x86 = sh "x86_64-linux";
      broken = x86 "broken" ''echo "this check fails on purpose" >&2; exit 1'';
    in
    {
      checks.x86_64-linux = {
        ok = x86 "ok" "echo ok > $out";
        inherit broken;
        after-broken = x86 "after-broken" "read l < ${broken}; echo $l > $out";
        thrown = throw "this check throws on purpose";
        aborted = abort "this check aborts on purpose";
        missing = (x86 "missing" "echo > $out").no-such-attribute;
      };
      checks.aarch64-linux.foreign = sh "aarch64-linux" "foreign" "echo > $out";
    };
}
