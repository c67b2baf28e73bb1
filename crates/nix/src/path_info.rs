//! Store path metadata from `nix path-info --json`, normalised across the
//! Nix 2.8 list shape and the modern object shape.
//!
//! Owns parsing only; hashes are kept exactly as Nix printed them (SRI
//! `sha256-…` or `sha256:<base32>`). It must not run Nix.

use serde_json::Value;

use crate::NixError;
use crate::derivation::STORE_DIR;

/// Metadata of one store path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathInfo {
    /// Full store path.
    pub path: String,
    /// Whether the path is valid in the store.
    pub valid: bool,
    /// NAR hash as printed by Nix.
    pub nar_hash: Option<String>,
    /// NAR size in bytes.
    pub nar_size: Option<u64>,
    /// Referenced store paths.
    pub references: Vec<String>,
    /// Deriver, if known.
    pub deriver: Option<String>,
    /// Signatures.
    pub signatures: Vec<String>,
    /// Content address, if any.
    pub ca: Option<String>,
}

fn full(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{STORE_DIR}/{p}")
    }
}

fn strs(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(full).collect())
        .unwrap_or_default()
}

fn info(path: &str, v: &Value) -> PathInfo {
    if v.is_null() || v.get("valid").and_then(Value::as_bool) == Some(false) {
        return PathInfo {
            path: full(path),
            ..PathInfo::default()
        };
    }
    let nar_hash = match v.get("narHash") {
        Some(Value::String(s)) => Some(s.clone()),
        // Newest Nix may print {"algorithm": "sha256", "hash": "…"}.
        Some(Value::Object(o)) => match (o.get("algorithm"), o.get("hash")) {
            (Some(Value::String(a)), Some(Value::String(h))) => Some(format!("{a}:{h}")),
            _ => None,
        },
        _ => None,
    };
    PathInfo {
        path: full(path),
        valid: true,
        nar_hash,
        nar_size: v.get("narSize").and_then(Value::as_u64),
        references: strs(v.get("references")),
        deriver: v.get("deriver").and_then(Value::as_str).map(full),
        signatures: v
            .get("signatures")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        ca: v.get("ca").and_then(Value::as_str).map(str::to_string),
    }
}

/// Parse `nix path-info --json` output of any recorded generation:
/// a list of objects with `path` (Nix 2.8, invalid paths as
/// `{"path", "valid": false}`), or an object keyed by path with `null` for
/// invalid paths (modern), possibly wrapped as `{"info": {…}, "version": N}`.
pub fn parse_path_info(json: &str) -> Result<Vec<PathInfo>, NixError> {
    const CMD: &str = "nix path-info --json";
    let value: Value = serde_json::from_str(json).map_err(|e| NixError::parse(CMD, e))?;
    match &value {
        Value::Array(items) => items
            .iter()
            .map(|v| {
                let path = v
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| NixError::parse(CMD, "list entry without `path`"))?;
                Ok(info(path, v))
            })
            .collect(),
        Value::Object(map) => {
            let map = match (map.get("info"), map.get("version")) {
                (Some(Value::Object(inner)), Some(_)) => inner,
                _ => map,
            };
            Ok(map.iter().map(|(p, v)| info(p, v)).collect())
        }
        _ => Err(NixError::parse(CMD, "expected a list or an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "/nix/store/k075s2k2hw2j7avr4i6scif49jfpnhfg-flake.nix";
    const MISSING: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x";

    fn check(infos: &[PathInfo]) {
        assert_eq!(infos.len(), 2);
        let src = infos.iter().find(|i| i.path == SRC).unwrap();
        assert!(src.valid);
        assert_eq!(src.nar_size, Some(672));
        assert!(src.nar_hash.as_deref().unwrap().starts_with("sha256"));
        assert!(src.ca.as_deref().unwrap().starts_with("fixed:r:sha256:"));
        let missing = infos.iter().find(|i| i.path == MISSING).unwrap();
        assert!(!missing.valid);
        assert_eq!(missing.nar_hash, None);
    }

    #[test]
    fn parses_nix_2_8_list() {
        let infos = parse_path_info(include_str!("../tests/fixtures/path-info-2.8.json")).unwrap();
        check(&infos);
        assert_eq!(
            infos
                .iter()
                .find(|i| i.path == SRC)
                .unwrap()
                .nar_hash
                .as_deref(),
            Some("sha256-jv6Xo1mBQ7jL4iFypSZTsOpto/u7wE/v44YcO4aWPKI=")
        );
    }

    #[test]
    fn parses_modern_object() {
        let infos = parse_path_info(include_str!("../tests/fixtures/path-info-2.24.json")).unwrap();
        check(&infos);
        let src = infos.iter().find(|i| i.path == SRC).unwrap();
        assert_eq!(
            src.nar_hash.as_deref(),
            Some("sha256:18iwjs33n746wgplzh5vzfinvsmhackaawi1wb5vhhw1b6irgzlf")
        );
        assert_eq!(
            src.deriver.as_deref(),
            Some("/nix/store/w1pw5wv0gfcnxafki73wg0i3lcdh2kqh-top.drv")
        );
        assert_eq!(src.signatures, vec!["cache.example.org-1:c2ln".to_string()]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_path_info("3").is_err());
        assert!(parse_path_info("[{\"narHash\": \"x\"}]").is_err());
    }
}
