//! Kiln's Nix adapter: the one place that runs `nix`, `nix-store` and friends.
//!
//! It detects the Nix version once and hides the differences between Debian's
//! Nix 2.8 and modern Nix/Lix (`show-derivation` vs `derivation show`,
//! `path-info --json` list vs object, `drv^*`). It always passes
//! `--extra-experimental-features 'nix-command flakes'` itself.
//! It must not know about jobs, schedules or reports.
