//! The job graph of a run as an inline SVG, laid out by dependency depth:
//! jobs with no dependency in the top band, each other job one band below
//! its deepest dependency, bands wrapped into rows of at most [`COLUMNS`]
//! nodes so that a run of thousands of jobs stays a readable grid. Nodes
//! are coloured by status (classes `status-<status>`, styled in
//! `kiln.css`); the critical path (the chain of dependencies with the
//! longest summed build time) is marked `critical`.
//!
//! Written by hand rather than with a graph-layout crate: the layering is a
//! dozen lines, and the page needs the SVG as markup it can stream, not a
//! drawing library's output.

use std::collections::HashMap;
use std::fmt::Write as _;

use maud::{Markup, PreEscaped};

/// Nodes per row of a band.
pub const COLUMNS: usize = 6;
const NODE_W: u32 = 180;
const NODE_H: u32 = 30;
const GAP_X: u32 = 20;
const GAP_Y: u32 = 14;
/// Space between bands, where the edges bend.
const BAND_GAP: u32 = 36;
const MARGIN: u32 = 10;
/// Longest label drawn; the full attribute is in the node's `data-attr`
/// and the jobs table (no `<title>` per node: at 5,000 nodes it costs the
/// browser a fifth of its time).
const LABEL: usize = 22;

/// One job as the graph needs it.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    /// The job's id (its page is `/jobs/{id}`).
    pub id: i64,
    /// The attribute, `x86_64-linux.hello`.
    pub attr: &'a str,
    /// The job's status.
    pub status: &'a str,
    /// How long it built, for the critical path.
    pub duration_ms: i64,
}

/// The computed layout: each node's band and position, edges by index.
#[derive(Debug)]
pub struct Layout {
    /// `(x, y)` of each node's top-left corner, by input index.
    pub at: Vec<(u32, u32)>,
    /// Dependency edges as `(dependent, dependency)` indices.
    pub edges: Vec<(usize, usize)>,
    /// Nodes on the critical path.
    pub critical: Vec<bool>,
    /// The drawing's size.
    pub size: (u32, u32),
}

/// Lay out `nodes`, whose dependencies are `edges` as `(attr, depends_on)`
/// pairs; edges naming a job not in `nodes` are dropped, and a cycle (which
/// a derivation graph cannot have) is broken where it is found.
pub fn layout(nodes: &[Node<'_>], edges: &[(String, String)]) -> Layout {
    let index: HashMap<&str, usize> = nodes.iter().enumerate().map(|(i, n)| (n.attr, i)).collect();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut pairs = Vec::with_capacity(edges.len());
    for (attr, on) in edges {
        if let (Some(&a), Some(&b)) = (index.get(attr.as_str()), index.get(on.as_str()))
            && a != b
        {
            deps[a].push(b);
            pairs.push((a, b));
        }
    }
    // Depth and the longest (by build time) chain ending at each node, by
    // an iterative depth-first walk.
    const UNSEEN: u32 = u32::MAX;
    const ACTIVE: u32 = u32::MAX - 1;
    let mut depth = vec![UNSEEN; nodes.len()];
    let mut chain = vec![0i64; nodes.len()];
    let mut via: Vec<Option<usize>> = vec![None; nodes.len()];
    for root in 0..nodes.len() {
        if depth[root] != UNSEEN {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        depth[root] = ACTIVE;
        while let Some(&mut (n, ref mut next)) = stack.last_mut() {
            if let Some(&d) = deps[n].get(*next) {
                *next += 1;
                if depth[d] == UNSEEN {
                    depth[d] = ACTIVE;
                    stack.push((d, 0));
                }
                continue;
            }
            let (mut dd, mut best, mut from) = (0, 0i64, None);
            for &d in &deps[n] {
                if depth[d] == ACTIVE {
                    continue; // a cycle: ignore this edge
                }
                dd = dd.max(depth[d] + 1);
                if chain[d] > best || from.is_none() {
                    best = chain[d];
                    from = Some(d);
                }
            }
            depth[n] = dd;
            chain[n] = best + nodes[n].duration_ms.max(0);
            via[n] = from;
            stack.pop();
        }
    }
    let mut critical = vec![false; nodes.len()];
    if let Some(end) = (0..nodes.len()).max_by_key(|&i| (chain[i], std::cmp::Reverse(i))) {
        let mut at = Some(end);
        while let Some(n) = at {
            critical[n] = true;
            at = via[n];
        }
    }
    // Bands by depth, nodes in input order within a band.
    let bands = depth.iter().copied().max().map_or(0, |d| d as usize + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); bands];
    for (i, &d) in depth.iter().enumerate() {
        members[d as usize].push(i);
    }
    let widest = members
        .iter()
        .map(|m| m.len().min(COLUMNS))
        .max()
        .unwrap_or(0) as u32;
    let width = 2 * MARGIN + widest * NODE_W + widest.saturating_sub(1) * GAP_X;
    let mut at = vec![(0, 0); nodes.len()];
    let mut y = MARGIN;
    for band in &members {
        // Centre each band's rows.
        let cols = band.len().min(COLUMNS) as u32;
        let row_w = cols * NODE_W + cols.saturating_sub(1) * GAP_X;
        let left = (width - row_w) / 2;
        for (k, &i) in band.iter().enumerate() {
            let (row, col) = ((k / COLUMNS) as u32, (k % COLUMNS) as u32);
            at[i] = (left + col * (NODE_W + GAP_X), y + row * (NODE_H + GAP_Y));
        }
        let rows = band.len().div_ceil(COLUMNS) as u32;
        y += rows * NODE_H + rows.saturating_sub(1) * GAP_Y + BAND_GAP;
    }
    let height = if nodes.is_empty() {
        2 * MARGIN
    } else {
        y - BAND_GAP + MARGIN
    };
    Layout {
        at,
        edges: pairs,
        critical,
        size: (width.max(2 * MARGIN), height),
    }
}

/// The `<svg id="job-graph">` of `nodes` laid out as `layout`.
pub fn svg(nodes: &[Node<'_>], layout: &Layout) -> Markup {
    // Built as one string: maud's per-element overhead shows at 5,000 nodes.
    let mut s = String::with_capacity(200 + nodes.len() * 260 + layout.edges.len() * 90);
    let (w, h) = layout.size;
    let _ = write!(
        s,
        r#"<svg id="job-graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="Job graph: {} jobs, {} dependencies">"#,
        nodes.len(),
        layout.edges.len()
    );
    s.push_str("<g class=\"edges\">");
    for &(a, b) in &layout.edges {
        // From the bottom of the dependency to the top of its dependent.
        let (bx, by) = layout.at[b];
        let (ax, ay) = layout.at[a];
        let (x1, y1) = (bx + NODE_W / 2, by + NODE_H);
        let (x2, y2) = (ax + NODE_W / 2, ay);
        let mid = (y1 + y2) / 2;
        let class = if layout.critical[a] && layout.critical[b] {
            "edge critical"
        } else {
            "edge"
        };
        let _ = write!(
            s,
            r#"<path class="{class}" d="M{x1} {y1}C{x1} {mid} {x2} {mid} {x2} {y2}"/>"#
        );
    }
    s.push_str("</g>");
    for (i, n) in nodes.iter().enumerate() {
        let (x, y) = layout.at[i];
        let crit = if layout.critical[i] { " critical" } else { "" };
        let attr = escape(n.attr);
        let short = n.attr.split_once('.').map_or(n.attr, |(_, rest)| rest);
        let label = if short.chars().count() > LABEL {
            let cut: String = short.chars().take(LABEL - 1).collect();
            escape(&format!("{cut}…"))
        } else {
            escape(short)
        };
        let _ = write!(
            s,
            r#"<a class="node status-{status}{crit}" href="/jobs/{id}" data-attr="{attr}"><rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="4"/><text x="{tx}" y="{ty}">{label}</text></a>"#,
            status = escape(n.status),
            id = n.id,
            tx = x + 8,
            ty = y + NODE_H / 2 + 5,
        );
    }
    s.push_str("</svg>");
    PreEscaped(s)
}

/// `text` safe inside an attribute or element (maud's escaping).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = maud::Escaper::new(&mut out).write_str(text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, attr: &str, ms: i64) -> Node<'_> {
        Node {
            id,
            attr,
            status: "succeeded",
            duration_ms: ms,
        }
    }

    fn e(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    /// Dependents sit below their deepest dependency; the slowest chain is
    /// critical; unknown and self edges are dropped.
    #[test]
    fn bands_follow_depth_and_the_slowest_chain_is_critical() {
        let nodes = [
            node(1, "s.a", 10),
            node(2, "s.b", 500),
            node(3, "s.c", 10),
            node(4, "s.d", 10),
        ];
        // c depends on a and b; d on c.
        let edges = [
            e("s.c", "s.a"),
            e("s.c", "s.b"),
            e("s.d", "s.c"),
            e("s.d", "s.x"),
            e("s.a", "s.a"),
        ];
        let l = layout(&nodes, &edges);
        assert_eq!(l.edges.len(), 3);
        let y = |i: usize| l.at[i].1;
        assert_eq!(y(0), y(1), "a and b share the top band");
        assert!(y(2) > y(1) && y(3) > y(2));
        assert_eq!(l.critical, vec![false, true, true, true]);
        for &(x, y) in &l.at {
            assert!(x + NODE_W <= l.size.0 && y + NODE_H <= l.size.1);
        }
    }

    /// A wide band wraps into rows; a cycle does not hang the layout.
    #[test]
    fn wide_bands_wrap_and_cycles_end() {
        let names: Vec<String> = (0..20).map(|i| format!("s.n{i}")).collect();
        let nodes: Vec<Node<'_>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| node(i as i64, n, 1))
            .collect();
        let l = layout(&nodes, &[e("s.n0", "s.n1"), e("s.n1", "s.n0")]);
        let rows: std::collections::BTreeSet<u32> = l.at.iter().map(|p| p.1).collect();
        assert!(rows.len() >= 20 / COLUMNS, "{rows:?}");
        assert!(l.size.0 <= 2 * MARGIN + COLUMNS as u32 * (NODE_W + GAP_X));
        let svg = svg(&nodes, &l).into_string();
        assert_eq!(svg.matches("<a class=\"node").count(), 20);
        assert!(svg.starts_with("<svg id=\"job-graph\""));
    }

    #[test]
    fn labels_and_attributes_are_escaped() {
        let nodes = [node(1, "s.<b>\"x\"", 1)];
        let s = svg(&nodes, &layout(&nodes, &[])).into_string();
        assert!(s.contains("data-attr=\"s.&lt;b&gt;&quot;x&quot;\""), "{s}");
        assert!(!s.contains("<b>"));
    }
}
