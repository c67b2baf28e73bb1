//! Which Nix is installed: parses `nix --version` once into a [`NixVersion`].
//!
//! Owns the version-to-capability mapping (which generation of commands and
//! JSON shapes to expect). It must not run any process itself.

use std::fmt;

use crate::NixError;

/// The implementation behind `nix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// CppNix (NixOS/nix, Determinate Nix).
    Nix,
    /// Lix (a fork of Nix 2.18; versions start at 2.90).
    Lix,
}

/// The command and JSON generation to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Nix before 2.15: `nix show-derivation`, `path-info --json` is a list,
    /// no `drv^*` installables.
    Legacy,
    /// Nix 2.18+ and Lix: `nix derivation show`, `path-info --json` an object.
    Modern,
}

/// A parsed `nix --version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixVersion {
    /// Nix or Lix.
    pub implementation: Implementation,
    /// Major, minor, patch (missing parts are 0).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
    /// The line as printed.
    pub raw: String,
}

impl NixVersion {
    /// Parse the first line of `nix --version`, e.g. `nix (Nix) 2.8.0`,
    /// `nix (Nix) 2.24.10`, `nix (Lix, like Nix) 2.91.1`,
    /// `nix (Determinate Nix 3.6.2) 2.29.0`.
    pub fn parse(output: &str) -> Result<Self, NixError> {
        let line = output.lines().next().unwrap_or("").trim();
        let err = || NixError::Version(line.to_string());
        let implementation = if line.contains("Lix") {
            Implementation::Lix
        } else if line.starts_with("nix ") {
            Implementation::Nix
        } else {
            return Err(err());
        };
        let version = line.rsplit(' ').next().ok_or_else(err)?;
        let mut parts = version
            .split(['.', '-', '+'])
            .map(|p| p.parse::<u32>().ok());
        let major = parts.next().flatten().ok_or_else(err)?;
        let minor = parts.next().flatten().ok_or_else(err)?;
        let patch = parts.next().flatten().unwrap_or(0);
        Ok(NixVersion {
            implementation,
            major,
            minor,
            patch,
            raw: line.to_string(),
        })
    }

    /// Which command/JSON generation this version speaks.
    pub fn generation(&self) -> Generation {
        match (self.implementation, self.major, self.minor) {
            (Implementation::Lix, _, _) => Generation::Modern,
            (_, 2, m) if m < 15 => Generation::Legacy,
            (_, 0 | 1, _) => Generation::Legacy,
            _ => Generation::Modern,
        }
    }

    /// Whether `--reference-lock-file` is available (Nix 2.19+, Lix).
    pub fn has_reference_lock_file(&self) -> bool {
        match self.implementation {
            Implementation::Lix => true,
            Implementation::Nix => (self.major, self.minor) >= (2, 19),
        }
    }
}

impl fmt::Display for NixVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_versions() {
        let v = NixVersion::parse("nix (Nix) 2.8.0\n").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 8, 0));
        assert_eq!(v.generation(), Generation::Legacy);
        assert!(!v.has_reference_lock_file());

        let v = NixVersion::parse("nix (Nix) 2.18.1").unwrap();
        assert_eq!(v.generation(), Generation::Modern);
        assert!(!v.has_reference_lock_file());

        let v = NixVersion::parse("nix (Nix) 2.24.10").unwrap();
        assert_eq!((v.major, v.minor, v.patch), (2, 24, 10));
        assert_eq!(v.generation(), Generation::Modern);
        assert!(v.has_reference_lock_file());

        let v = NixVersion::parse("nix (Lix, like Nix) 2.91.1").unwrap();
        assert_eq!(v.implementation, Implementation::Lix);
        assert_eq!(v.generation(), Generation::Modern);

        let v = NixVersion::parse("nix (Determinate Nix 3.6.2) 2.29.0").unwrap();
        assert_eq!((v.major, v.minor), (2, 29));
        assert_eq!(v.implementation, Implementation::Nix);

        let v = NixVersion::parse("nix (Nix) 2.25.0pre20241101_dirty").unwrap();
        assert_eq!((v.major, v.minor), (2, 25));

        assert!(NixVersion::parse("bash: nix: command not found").is_err());
    }
}
