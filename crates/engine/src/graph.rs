//! The job graph: which job needs which, from the derivation graph.
//!
//! Job A depends on job B when B's derivation is in A's closure. This module
//! interns every derivation path once (a dense `u32` per derivation, edges as
//! index lists), remembers which derivations are jobs, and answers "the
//! nearest jobs below this one" and "the jobs above this one" as jobs stream
//! in, in any order. Each non-job derivation memoises its frontier of nearest
//! jobs, so a closure shared by many jobs is walked once: building the graph
//! costs O(V+E) plus the size of those frontiers. It must not run Nix or keep
//! job state: the scheduler owns states, the caller feeds derivations in.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::scheduler::JobId;

const NO_JOB: u32 = u32::MAX;

#[derive(Debug, Default)]
struct Node {
    inputs: Vec<u32>,
    users: Vec<u32>,
    job: u32,
    loaded: bool,
    /// Its outputs are valid: nothing below it needs building.
    built: bool,
    /// Nearest jobs at or below this non-job node, once computed.
    frontier: Option<Box<[JobId]>>,
}

/// The lookup key of a derivation: the 32-character hash part of a store
/// path held inline (no pointer to chase), or the whole path otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Hash([u8; 32]),
    Path(Box<str>),
}

fn key(path: &str) -> Key {
    let base = path
        .strip_prefix(kiln_nix::STORE_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .map(str::as_bytes);
    match base {
        Some(b) if b.len() > 33 && b[32] == b'-' && !b.contains(&b'/') => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b[..32]);
            Key::Hash(k)
        }
        _ => Key::Path(path.into()),
    }
}

/// Interned derivation graph with job markers.
#[derive(Debug, Default)]
pub struct DrvGraph {
    index: FxHashMap<Key, u32>,
    paths: Vec<Box<str>>,
    nodes: Vec<Node>,
}

impl DrvGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Derivations known (jobs and their closures).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no derivation is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn lookup(&self, path: &str) -> Option<u32> {
        self.index.get(&key(path)).copied()
    }

    fn intern(&mut self, path: &str) -> u32 {
        let k = key(path);
        if let Some(&i) = self.index.get(&k) {
            return i;
        }
        let i = self.nodes.len() as u32;
        self.index.insert(k, i);
        self.paths.push(path.into());
        self.nodes.push(Node {
            job: NO_JOB,
            ..Node::default()
        });
        i
    }

    /// Whether `drv`'s inputs are already known.
    pub fn is_loaded(&self, drv: &str) -> bool {
        self.lookup(drv)
            .is_some_and(|i| self.nodes[i as usize].loaded)
    }

    /// Record `drv` and its input derivations (one entry of
    /// `nix show-derivation -r`). Adding a derivation twice is a no-op.
    pub fn add_derivation<'a>(&mut self, drv: &str, inputs: impl IntoIterator<Item = &'a str>) {
        let n = self.intern(drv);
        if self.nodes[n as usize].loaded {
            return;
        }
        self.nodes[n as usize].loaded = true;
        let inputs = inputs.into_iter();
        self.nodes[n as usize].inputs.reserve(inputs.size_hint().0);
        for input in inputs {
            let i = self.intern(input);
            self.nodes[n as usize].inputs.push(i);
            self.nodes[i as usize].users.push(n);
        }
    }

    /// Mark `drv` as the derivation of `job`. Returns the jobs it depends on
    /// (nearest jobs in its closure) and the already-attached jobs that turn
    /// out to depend on it (their closure contains `drv`).
    pub fn attach_job(&mut self, drv: &str, job: JobId) -> (Vec<JobId>, Vec<JobId>) {
        let n = self.intern(drv);
        if self.nodes[n as usize].job != NO_JOB {
            // Two attributes with one derivation: the second simply waits for
            // the first.
            return (vec![self.nodes[n as usize].job], vec![]);
        }
        self.nodes[n as usize].job = job;
        let mut deps = Vec::new();
        for k in 0..self.nodes[n as usize].inputs.len() {
            let i = self.nodes[n as usize].inputs[k];
            self.collect_frontier(i, &mut deps);
        }
        deps.sort_unstable();
        deps.dedup();
        let above = self.jobs_above(n);
        (deps, above)
    }

    /// Nearest jobs at or below node `n`, appended to `out`.
    fn collect_frontier(&mut self, n: u32, out: &mut Vec<JobId>) {
        let node = &self.nodes[n as usize];
        if node.job != NO_JOB {
            out.push(node.job);
            return;
        }
        if let Some(f) = &node.frontier {
            out.extend_from_slice(f);
            return;
        }
        // Iterative post-order over non-job nodes without a memo.
        let mut stack: Vec<(u32, usize)> = vec![(n, 0)];
        while let Some(&mut (v, ref mut k)) = stack.last_mut() {
            let inputs = &self.nodes[v as usize].inputs;
            if *k < inputs.len() {
                let w = inputs[*k];
                *k += 1;
                let wn = &self.nodes[w as usize];
                // A DAG never reaches a node still on the stack, and finished
                // nodes have a memo: no visited set is needed.
                if wn.job == NO_JOB && wn.frontier.is_none() {
                    stack.push((w, 0));
                }
                continue;
            }
            let mut f: Vec<JobId> = Vec::new();
            for &w in &self.nodes[v as usize].inputs {
                let wn = &self.nodes[w as usize];
                if wn.job != NO_JOB {
                    f.push(wn.job);
                } else if let Some(wf) = &wn.frontier {
                    f.extend_from_slice(wf);
                }
            }
            f.sort_unstable();
            f.dedup();
            self.nodes[v as usize].frontier = Some(f.into_boxed_slice());
            stack.pop();
        }
        out.extend_from_slice(self.nodes[n as usize].frontier.as_deref().unwrap_or(&[]));
    }

    /// Jobs whose closure reaches node `n` through non-job derivations; clears
    /// the memoised frontiers on the way (they now miss `n`'s job).
    fn jobs_above(&mut self, n: u32) -> Vec<JobId> {
        let mut out = Vec::new();
        if self.nodes[n as usize].users.is_empty() {
            return out;
        }
        let mut seen = FxHashSet::default();
        seen.insert(n);
        let mut stack: Vec<u32> = self.nodes[n as usize].users.clone();
        while let Some(u) = stack.pop() {
            if !seen.insert(u) {
                continue;
            }
            let node = &mut self.nodes[u as usize];
            if node.job != NO_JOB {
                out.push(node.job);
            } else {
                node.frontier = None;
                stack.extend_from_slice(&node.users);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The first derivation among `failed` that lies in the closure of `drv`
    /// (excluding `drv` itself), for naming the failing dependency of a job
    /// that Nix refused to build.
    pub fn failed_input(&self, drv: &str, failed: &[String]) -> Option<String> {
        let start = self.lookup(drv)?;
        let targets: Vec<u32> = failed.iter().filter_map(|f| self.lookup(f)).collect();
        let mut seen = FxHashSet::default();
        let mut stack = self.nodes[start as usize].inputs.clone();
        while let Some(v) = stack.pop() {
            if !seen.insert(v) {
                continue;
            }
            if targets.contains(&v) {
                return Some(self.paths[v as usize].to_string());
            }
            stack.extend_from_slice(&self.nodes[v as usize].inputs);
        }
        None
    }

    /// Record that `drv`'s outputs are valid.
    pub fn mark_built(&mut self, drv: &str) {
        if let Some(i) = self.lookup(drv) {
            self.nodes[i as usize].built = true;
        }
    }

    /// Whether `drv` has an input derivation that still needs building and
    /// is not (yet) a job: while evaluation runs it may become one. Direct
    /// inputs suffice: a built input needs nothing below it, and a job input
    /// is scheduled (and checked) on its own.
    pub fn has_unbuilt_input(&self, drv: &str) -> bool {
        self.lookup(drv).is_some_and(|i| {
            self.nodes[i as usize].inputs.iter().any(|&v| {
                let n = &self.nodes[v as usize];
                n.job == NO_JOB && !n.built
            })
        })
    }

    /// The job attached to `drv`, if any.
    pub fn job_of(&self, drv: &str) -> Option<JobId> {
        let i = self.lookup(drv)?;
        let j = self.nodes[i as usize].job;
        (j != NO_JOB).then_some(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_depend_through_non_job_derivations() {
        let mut g = DrvGraph::new();
        // top -> lib (not a job) -> base (job); top -> base directly too.
        g.add_derivation("top", ["lib", "base"]);
        g.add_derivation("lib", ["base", "tool"]);
        g.add_derivation("base", []);
        g.add_derivation("tool", []);
        assert_eq!(g.attach_job("base", 0), (vec![], vec![]));
        assert_eq!(g.attach_job("top", 1), (vec![0], vec![]));
        assert_eq!(g.job_of("top"), Some(1));
        assert_eq!(g.job_of("lib"), None);
    }

    #[test]
    fn late_jobs_find_their_dependents_and_invalidate_frontiers() {
        let mut g = DrvGraph::new();
        g.add_derivation("a", ["shared"]);
        g.add_derivation("b", ["shared"]);
        g.add_derivation("shared", ["leaf"]);
        g.add_derivation("leaf", []);
        assert_eq!(g.attach_job("a", 0), (vec![], vec![]));
        // `leaf` becomes a job after `a`: a must learn it depends on it.
        assert_eq!(g.attach_job("leaf", 1), (vec![], vec![0]));
        // `b` arrives last and sees `leaf` through the shared node.
        assert_eq!(g.attach_job("b", 2), (vec![1], vec![]));
    }

    #[test]
    fn unbuilt_inputs_that_are_not_jobs_are_reported() {
        let mut g = DrvGraph::new();
        g.add_derivation("a", ["stdenv", "pending"]);
        g.add_derivation("stdenv", []);
        g.add_derivation("pending", []);
        g.mark_built("stdenv");
        g.attach_job("a", 0);
        assert!(g.has_unbuilt_input("a"));
        g.attach_job("pending", 1);
        assert!(!g.has_unbuilt_input("a"));
    }

    #[test]
    fn names_a_failed_input() {
        let mut g = DrvGraph::new();
        g.add_derivation("a", ["mid"]);
        g.add_derivation("mid", ["broken"]);
        g.add_derivation("broken", []);
        let failed = vec!["elsewhere".to_string(), "broken".to_string()];
        assert_eq!(g.failed_input("a", &failed).as_deref(), Some("broken"));
        assert_eq!(g.failed_input("broken", &failed), None);
    }
}
