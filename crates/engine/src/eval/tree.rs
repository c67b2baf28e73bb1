//! The attribute walk of Kiln's own evaluator: the Nix expression one
//! evaluator process runs, the messages it traces, and the cursor that knows
//! which attribute a process was on when it died.
//!
//! The walk is a depth-first traversal in `attrNames` order that traces one
//! `kiln-eval {json}` line per visited attribute *after* evaluating it, so a
//! process that aborts names its culprit: the next node in traversal order.
//! This module must not spawn processes.

use std::collections::VecDeque;

use serde::Deserialize;

/// Prefix of the trace lines the walk prints (after Nix's `trace: `).
pub const MARKER: &str = "trace: kiln-eval ";

/// The job name of an attribute path, as nix-eval-jobs prints it: components
/// joined with `.`, a component containing `.` wrapped in double quotes.
pub fn attr_name(path: &[String]) -> String {
    let quoted: Vec<String> = path
        .iter()
        .map(|c| {
            if c.contains('.') {
                format!("\"{c}\"")
            } else {
                c.clone()
            }
        })
        .collect();
    quoted.join(".")
}

/// The system an attribute path is for when its first component looks like
/// one (`<arch>-<os>`, e.g. `x86_64-linux`, `aarch64-darwin`), else empty.
pub fn system_of(path: &[String]) -> String {
    const OSES: &[&str] = &[
        "linux", "darwin", "freebsd", "openbsd", "netbsd", "windows", "cygwin", "wasi", "none",
        "genode", "redox", "solaris", "illumos", "mmixware", "ghcjs",
    ];
    let Some(first) = path.first() else {
        return String::new();
    };
    let Some((arch, os)) = first.split_once('-') else {
        return String::new();
    };
    let arch_ok = arch.starts_with(|c: char| c.is_ascii_lowercase())
        && arch
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if arch_ok && OSES.contains(&os) {
        first.clone()
    } else {
        String::new()
    }
}

/// The components of an attribute path as written on the command line:
/// `checks."a.b".c` → `checks`, `a.b`, `c`.
pub fn split_attribute(attribute: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in attribute.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|c| !c.is_empty());
    out
}

/// A Nix string literal for `s`.
fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `--apply` function walking `roots` below the selected attribute.
/// With `full`, derivations are instantiated (`drvPath`, outputs); without,
/// the walk only classifies nodes (cheap enumeration for splitting work).
pub fn apply_expr(roots: &[Vec<String>], full: bool) -> String {
    let list: Vec<String> = roots
        .iter()
        .map(|p| {
            let comps: Vec<String> = p.iter().map(|c| nix_string(c)).collect();
            format!("[{}]", comps.join(" "))
        })
        .collect();
    format!(
        r#"root: let
  roots = [ {roots} ];
  full = {full};
  get = builtins.foldl' (v: n: builtins.getAttr n v);
  emit = msg: x: builtins.seq (builtins.trace ("kiln-eval " + builtins.toJSON msg) null) x;
  isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
  info = p: v: if !full then {{ p = p; k = "drv"; }} else {{
    p = p; k = "drv"; d = v.drvPath; s = v.system or "";
    f = v.requiredSystemFeatures or [ ];
    o = builtins.listToAttrs (map (o: {{ name = o; value = (builtins.getAttr o v).outPath; }}) (v.outputs or [ "out" ]));
  }};
  visit = p: v:
    if isDrv v then emit (info p v) 1
    else if builtins.isAttrs v then
      let names = builtins.attrNames v; in
      emit {{ p = p; k = "set"; n = names; }}
        (builtins.foldl' (acc: n: builtins.seq acc (acc + visit (p ++ [ n ]) (builtins.getAttr n v))) 0 names)
    else emit {{ p = p; k = "skip"; }} 0;
in builtins.foldl' (acc: p: builtins.seq acc (acc + visit p (get root p))) 0 roots"#,
        roots = list.join(" "),
        full = if full { "true" } else { "false" },
    )
}

/// One traced message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Message {
    /// Attribute path of the node.
    pub p: Vec<String>,
    /// `drv`, `set` or `skip`.
    pub k: String,
    /// Child names (`set`).
    #[serde(default)]
    pub n: Vec<String>,
    /// `drvPath` (`drv`, full walk).
    #[serde(default)]
    pub d: Option<String>,
    /// `system`.
    #[serde(default)]
    pub s: Option<String>,
    /// `requiredSystemFeatures`: a list, or a string in odd derivations.
    #[serde(default)]
    pub f: Option<serde_json::Value>,
    /// Output name → path.
    #[serde(default)]
    pub o: std::collections::BTreeMap<String, String>,
}

/// Parse a stderr line of the walk; `None` for any other line. Colour
/// escapes (some Nix versions colour `trace:`) are ignored.
pub fn parse_trace(line: &str) -> Option<Message> {
    if line.contains('\x1b') {
        return parse_trace(&strip_ansi(line));
    }
    serde_json::from_str(line.strip_prefix(MARKER)?).ok()
}

/// `line` without ANSI CSI sequences (`ESC [ … final-byte`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

struct Frame {
    prefix: Vec<String>,
    remaining: VecDeque<String>,
}

/// Follows one process's traversal to know which node comes next.
pub struct Cursor {
    roots: VecDeque<Vec<String>>,
    stack: Vec<Frame>,
    /// Nodes completed by this process.
    pub visited: usize,
}

impl Cursor {
    /// A cursor at the start of a walk over `roots`.
    pub fn new(roots: Vec<Vec<String>>) -> Self {
        Cursor {
            roots: roots.into(),
            stack: Vec::new(),
            visited: 0,
        }
    }

    /// The node the walk is evaluating now (the next one to be traced).
    pub fn next(&mut self) -> Option<Vec<String>> {
        while let Some(top) = self.stack.last() {
            if let Some(name) = top.remaining.front() {
                let mut p = top.prefix.clone();
                p.push(name.clone());
                return Some(p);
            }
            self.stack.pop();
        }
        self.roots.front().cloned()
    }

    /// Record a traced message; returns false when it is not the expected
    /// node (then the caller cannot trust the cursor).
    pub fn advance(&mut self, msg: &Message) -> bool {
        if self.next().as_ref() != Some(&msg.p) {
            return false;
        }
        match self.stack.last_mut() {
            Some(top) => {
                top.remaining.pop_front();
            }
            None => {
                self.roots.pop_front();
            }
        }
        self.visited += 1;
        if msg.k == "set" && !msg.n.is_empty() {
            self.stack.push(Frame {
                prefix: msg.p.clone(),
                remaining: msg.n.iter().cloned().collect(),
            });
        }
        true
    }

    /// Skip the current node (after it failed) and return every subtree root
    /// still to walk, in traversal order.
    pub fn rest_after_current(mut self) -> Vec<Vec<String>> {
        if self.next().is_some() {
            match self.stack.last_mut() {
                Some(top) => {
                    top.remaining.pop_front();
                }
                None => {
                    self.roots.pop_front();
                }
            }
        }
        self.rest()
    }

    /// Every subtree root still to walk, current node included.
    pub fn rest(self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for frame in self.stack.iter().rev() {
            for name in &frame.remaining {
                let mut p = frame.prefix.clone();
                p.push(name.clone());
                out.push(p);
            }
        }
        out.extend(self.roots);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &[&str]) -> Vec<String> {
        s.iter().map(|c| c.to_string()).collect()
    }

    fn msg(path: &[&str], k: &str, n: &[&str]) -> Message {
        Message {
            p: p(path),
            k: k.into(),
            n: p(n),
            d: None,
            s: None,
            f: None,
            o: Default::default(),
        }
    }

    #[test]
    fn names_attributes_like_nix_eval_jobs() {
        assert_eq!(
            attr_name(&p(&["x86_64-linux", "hello"])),
            "x86_64-linux.hello"
        );
        assert_eq!(attr_name(&p(&["a", "b.c"])), "a.\"b.c\"");
        assert_eq!(attr_name(&[]), "");
    }

    #[test]
    fn systems_and_attribute_components() {
        assert_eq!(system_of(&p(&["x86_64-linux", "a"])), "x86_64-linux");
        assert_eq!(system_of(&p(&["aarch64-darwin"])), "aarch64-darwin");
        assert_eq!(system_of(&p(&["my-check", "a"])), "");
        assert_eq!(system_of(&p(&["tests", "x86_64-linux"])), "");
        assert_eq!(system_of(&p(&["-linux"])), "");
        assert_eq!(system_of(&[]), "");
        assert_eq!(
            split_attribute("checks.x86_64-linux.greeting"),
            p(&["checks", "x86_64-linux", "greeting"])
        );
        assert_eq!(split_attribute(r#"a."b.c""#), p(&["a", "b.c"]));
    }

    #[test]
    fn escapes_nix_strings() {
        assert_eq!(nix_string("a\"b\\c${d}"), r#""a\"b\\c\${d}""#);
    }

    #[test]
    fn cursor_finds_the_culprit_and_the_rest() {
        let mut c = Cursor::new(vec![p(&[])]);
        assert_eq!(c.next(), Some(p(&[])));
        assert!(c.advance(&msg(&[], "set", &["x", "y"])));
        assert!(c.advance(&msg(&["x"], "set", &["a", "b", "c"])));
        assert!(c.advance(&msg(&["x", "a"], "drv", &[])));
        assert!(!c.advance(&msg(&["x", "c"], "drv", &[])));
        // The process dies while on x.b.
        assert_eq!(c.next(), Some(p(&["x", "b"])));
        assert_eq!(c.visited, 3);
        assert_eq!(c.rest_after_current(), vec![p(&["x", "c"]), p(&["y"])]);
    }

    #[test]
    fn cursor_pops_finished_sets() {
        let mut c = Cursor::new(vec![p(&["a"]), p(&["b"])]);
        assert!(c.advance(&msg(&["a"], "set", &["z"])));
        assert!(c.advance(&msg(&["a", "z"], "skip", &[])));
        assert_eq!(c.next(), Some(p(&["b"])));
        assert!(c.advance(&msg(&["b"], "set", &[])));
        assert_eq!(c.next(), None);
        assert!(c.rest().is_empty());
    }

    #[test]
    fn parses_trace_lines() {
        let m = parse_trace(r#"trace: kiln-eval {"d":"/nix/store/x.drv","k":"drv","o":{"out":"/nix/store/x"},"p":["a"],"s":"x86_64-linux","f":[]}"#).unwrap();
        assert_eq!(m.d.as_deref(), Some("/nix/store/x.drv"));
        assert_eq!(m.o["out"], "/nix/store/x");
        assert!(parse_trace("trace: hello").is_none());
        let coloured = "\x1b[35;1mtrace:\x1b[0m kiln-eval {\"k\":\"skip\",\"p\":[\"a\"]}";
        assert_eq!(parse_trace(coloured).unwrap().k, "skip");
        assert!(parse_trace("error: boom").is_none());
    }
}
