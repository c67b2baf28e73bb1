//! Store derivations as `nix show-derivation` (Nix 2.8) and
//! `nix derivation show` (modern Nix, Lix) print them, normalised into one
//! [`Derivation`] type.
//!
//! Owns parsing of every recorded JSON shape (input-drv lists vs objects,
//! full store paths vs base names, the `{"derivations": …}` wrapper of newer
//! Nix). It must not run Nix.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::NixError;

/// The default store directory, used to complete base names.
pub const STORE_DIR: &str = "/nix/store";

/// One store derivation, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Derivation {
    /// Output name → output path (`None` for content-addressed outputs).
    pub outputs: BTreeMap<String, Option<String>>,
    /// Input derivation path → the outputs used.
    pub input_drvs: BTreeMap<String, Vec<String>>,
    /// Input sources (plain store paths).
    pub input_srcs: Vec<String>,
    /// `system` (platform) of the derivation.
    pub system: String,
    /// `builder`.
    pub builder: String,
    /// `requiredSystemFeatures` from the environment, split on spaces.
    pub required_system_features: Vec<String>,
    /// The derivation's environment.
    pub env: BTreeMap<String, String>,
}

fn full_path(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{STORE_DIR}/{p}")
    }
}

/// Parse the JSON printed by `nix show-derivation [-r]` or
/// `nix derivation show [-r]`, of any recorded generation, into a map keyed by
/// full derivation path.
pub fn parse_derivations(json: &str) -> Result<HashMap<String, Derivation>, NixError> {
    const CMD: &str = "nix derivation show";
    let value: Value = serde_json::from_str(json).map_err(|e| NixError::parse(CMD, e))?;
    let mut map = value
        .as_object()
        .ok_or_else(|| NixError::parse(CMD, "expected a JSON object"))?;
    // Newer Nix wraps the map: {"derivations": {...}, "version": N}.
    if let Some(inner) = map.get("derivations").and_then(Value::as_object)
        && map.contains_key("version")
    {
        map = inner;
    }
    let mut out = HashMap::with_capacity(map.len());
    for (path, drv) in map {
        let drv = parse_one(drv).map_err(|m| NixError::parse(CMD, format!("{path}: {m}")))?;
        out.insert(full_path(path), drv);
    }
    Ok(out)
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn parse_one(v: &Value) -> Result<Derivation, String> {
    let obj = v.as_object().ok_or("expected an object")?;
    let mut d = Derivation::default();
    if let Some(outputs) = obj.get("outputs").and_then(Value::as_object) {
        for (name, o) in outputs {
            let path = o.get("path").and_then(Value::as_str).map(full_path);
            d.outputs.insert(name.clone(), path);
        }
    }
    // Nix ≤ 2.32: inputDrvs/inputSrcs; newer: inputs.{drvs,srcs}.
    let inputs = obj.get("inputs").and_then(Value::as_object);
    let drvs = obj
        .get("inputDrvs")
        .or_else(|| inputs.and_then(|i| i.get("drvs")))
        .and_then(Value::as_object);
    for (drv, outs) in drvs.into_iter().flatten() {
        // 2.8: ["out"]; 2.18+: {"outputs": ["out"], "dynamicOutputs": {}}.
        let outs = match outs {
            Value::Array(_) => str_list(Some(outs)),
            Value::Object(o) => str_list(o.get("outputs")),
            _ => return Err(format!("unexpected inputDrvs entry for {drv}")),
        };
        d.input_drvs.insert(full_path(drv), outs);
    }
    let srcs = obj
        .get("inputSrcs")
        .or_else(|| inputs.and_then(|i| i.get("srcs")));
    d.input_srcs = str_list(srcs).iter().map(|s| full_path(s)).collect();
    d.system = obj
        .get("system")
        .and_then(Value::as_str)
        .ok_or("missing system")?
        .to_string();
    d.builder = obj
        .get("builder")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(env) = obj.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            if let Some(s) = v.as_str() {
                d.env.insert(k.clone(), s.to_string());
            }
        }
    }
    // Structured attrs keep features in __json; plain ones in env.
    d.required_system_features = match d.env.get("requiredSystemFeatures") {
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
        None => d
            .env
            .get("__json")
            .and_then(|j| serde_json::from_str::<Value>(j).ok())
            .map(|j| str_list(j.get("requiredSystemFeatures")))
            .unwrap_or_default(),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEGACY: &str = include_str!("../tests/fixtures/show-derivation-2.8.json");
    const MODERN: &str = include_str!("../tests/fixtures/derivation-show-2.24.json");
    const V4: &str = include_str!("../tests/fixtures/derivation-show-2.33.json");

    fn check_top_graph(m: &HashMap<String, Derivation>) {
        assert_eq!(m.len(), 3);
        let top = &m["/nix/store/w1pw5wv0gfcnxafki73wg0i3lcdh2kqh-top.drv"];
        assert_eq!(top.system, "x86_64-linux");
        assert_eq!(
            top.outputs["out"].as_deref(),
            Some("/nix/store/nw0yx2cyaraaqp7w0v0h3fgqndrvp9bm-top")
        );
        assert_eq!(
            top.input_drvs["/nix/store/xw4h01amabgys1d92bsbgdzccv843671-multi.drv"],
            vec!["dev".to_string()]
        );
        assert_eq!(
            top.input_srcs,
            vec!["/nix/store/k075s2k2hw2j7avr4i6scif49jfpnhfg-flake.nix".to_string()]
        );
        let multi = &m["/nix/store/xw4h01amabgys1d92bsbgdzccv843671-multi.drv"];
        assert_eq!(multi.outputs.len(), 2);
        assert_eq!(multi.required_system_features, vec!["kvm".to_string()]);
        assert!(
            multi
                .input_drvs
                .contains_key("/nix/store/04ma2axabr4rfn7im6fbr1y5q5ampg0v-base.drv")
        );
        let base = &m["/nix/store/04ma2axabr4rfn7im6fbr1y5q5ampg0v-base.drv"];
        assert!(base.input_drvs.is_empty());
        assert_eq!(base.builder, "/bin/sh");
    }

    #[test]
    fn parses_nix_2_8_show_derivation() {
        check_top_graph(&parse_derivations(LEGACY).unwrap());
    }

    #[test]
    fn parses_modern_derivation_show() {
        check_top_graph(&parse_derivations(MODERN).unwrap());
    }

    #[test]
    fn parses_wrapped_base_name_format() {
        check_top_graph(&parse_derivations(V4).unwrap());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_derivations("[1]").is_err());
        assert!(parse_derivations("{\"/nix/store/x.drv\": {}}").is_err());
    }
}
