//! Nix configuration values Kiln needs: the host system and the systems of
//! configured remote builders (`builders`, including `@file` references).
//!
//! Owns parsing of `nix show-config` output and of the machines syntax
//! (`ssh://host x86_64-linux,aarch64-linux key 4 1 kvm`). It must not run Nix;
//! the file reader is passed in.

use std::collections::{BTreeMap, BTreeSet};

/// Parse `key = value` lines of `nix show-config` / `nix config show`.
pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            l.split_once(" = ")
                .or_else(|| l.strip_suffix(" =").map(|k| (k, "")))
        })
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The systems offered by a `builders` value. Machine specs are separated by
/// `;` or newlines; `@path` includes a machines file (read with `read`, and
/// silently empty when it does not exist, as Nix treats it). A spec without a
/// systems field (or `-`) offers `local_system`.
pub fn builder_systems(
    builders: &str,
    local_system: &str,
    read: &dyn Fn(&str) -> Option<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect(builders, local_system, read, &mut out, 0);
    out
}

fn collect(
    text: &str,
    local_system: &str,
    read: &dyn Fn(&str) -> Option<String>,
    out: &mut BTreeSet<String>,
    depth: usize,
) {
    for spec in text.split([';', '\n']) {
        let spec = spec.split('#').next().unwrap_or("").trim();
        if spec.is_empty() {
            continue;
        }
        if let Some(file) = spec.strip_prefix('@') {
            if depth < 4
                && let Some(content) = read(file.trim())
            {
                collect(&content, local_system, read, out, depth + 1);
            }
            continue;
        }
        let mut fields = spec.split_whitespace();
        let _uri = fields.next();
        match fields.next() {
            None | Some("-") | Some("") => {
                out.insert(local_system.to_string());
            }
            Some(systems) => out.extend(
                systems
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_config() {
        let c = parse_config(
            "builders = @/etc/nix/machines\nextra-platforms = i686-linux\nsubstituters =\nsystem = x86_64-linux\n",
        );
        assert_eq!(c["builders"], "@/etc/nix/machines");
        assert_eq!(c["system"], "x86_64-linux");
        assert_eq!(c["substituters"], "");
    }

    #[test]
    fn parses_machine_specs_and_files() {
        let read = |p: &str| {
            (p == "/etc/nix/machines").then(|| {
                "# comment\nssh://arm aarch64-linux /key 4 1 kvm,big-parallel\n\nssh-ng://mac aarch64-darwin,x86_64-darwin\n".to_string()
            })
        };
        let s = builder_systems(
            "ssh://a x86_64-linux,i686-linux - 2; @/etc/nix/machines; @/missing",
            "x86_64-linux",
            &read,
        );
        let v: Vec<&str> = s.iter().map(String::as_str).collect();
        assert_eq!(
            v,
            [
                "aarch64-darwin",
                "aarch64-linux",
                "i686-linux",
                "x86_64-darwin",
                "x86_64-linux"
            ]
        );
        assert!(builder_systems("", "x86_64-linux", &read).is_empty());
        assert!(builder_systems("@/etc/nix/missing", "x86_64-linux", &read).is_empty());
        let s = builder_systems("ssh://host", "riscv64-linux", &read);
        assert!(s.contains("riscv64-linux"));
    }
}
