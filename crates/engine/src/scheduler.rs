//! The scheduler: which job may be built next.
//!
//! It owns the per-job state machine (waiting → ready → dispatched → final),
//! the ready queue of each system ordered critical path first, and the
//! propagation of results to dependents (a failure makes every transitive
//! dependent `dependency_failed`, naming the job that failed). Jobs are dense
//! `u32` indices and edges are `Vec<u32>` lists so that 100,000 jobs with a
//! million edges fit in a few megabytes. It must not run processes, touch the
//! clock or know about Nix: the executor feeds it results.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::job::JobStatus;

/// Index of a job in the scheduler.
pub type JobId = u32;

/// Index of an interned system name.
pub type SystemId = u16;

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Some dependency has not finished.
    Waiting,
    /// In its system's ready queue.
    Ready,
    /// Handed to the executor.
    Dispatched,
    /// Final; see `status`.
    Final,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    state: State,
    status: JobStatus,
    system: SystemId,
    /// Unfinished dependencies.
    pending: u32,
    /// Longest chain of dependents above this job (critical path length).
    height: u32,
    /// The job whose failure made this one `dependency_failed`.
    failed_dependency: JobId,
}

/// Result of a build as far as scheduling is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Outputs exist: dependents may proceed.
    Success(JobStatus),
    /// Dependents can never be built.
    Failure(JobStatus),
}

/// Ready queues, job states and dependency edges.
#[derive(Debug, Default)]
pub struct Scheduler {
    slots: Vec<Slot>,
    dependents: Vec<Vec<JobId>>,
    queues: Vec<BinaryHeap<(u32, Reverse<JobId>)>>,
    ready: usize,
    unfinished: usize,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty scheduler with room for `jobs` jobs.
    pub fn with_capacity(jobs: usize) -> Self {
        Scheduler {
            slots: Vec::with_capacity(jobs),
            dependents: Vec::with_capacity(jobs),
            ..Self::default()
        }
    }

    /// Number of jobs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no job was added.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Jobs that are not final yet.
    pub fn unfinished(&self) -> usize {
        self.unfinished
    }

    /// Jobs in a ready queue.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// Add a job that will be built on `system` once `deps` have succeeded.
    /// Dependencies that already failed make it `dependency_failed` at once
    /// (see [`Scheduler::status`]).
    pub fn add_job(&mut self, system: SystemId, deps: &[JobId]) -> JobId {
        let id = self.slots.len() as JobId;
        self.slots.push(Slot {
            state: State::Waiting,
            status: JobStatus::Queued,
            system,
            pending: 0,
            height: 0,
            failed_dependency: NONE,
        });
        self.dependents.push(Vec::new());
        self.unfinished += 1;
        for &d in deps {
            self.link(id, d);
        }
        if self.slots[id as usize].state == State::Waiting && self.slots[id as usize].pending == 0 {
            self.make_ready(id);
        }
        id
    }

    /// Add a job that is already final (cached, eval error, unsupported
    /// system). Successful final jobs satisfy their dependents.
    pub fn add_final(&mut self, system: SystemId, status: JobStatus) -> JobId {
        let id = self.add_job_waiting(system);
        self.finish(id, status);
        id
    }

    fn add_job_waiting(&mut self, system: SystemId) -> JobId {
        let id = self.slots.len() as JobId;
        self.slots.push(Slot {
            state: State::Waiting,
            status: JobStatus::Queued,
            system,
            pending: 1,
            height: 0,
            failed_dependency: NONE,
        });
        self.dependents.push(Vec::new());
        self.unfinished += 1;
        id
    }

    /// Record that `job` needs `dep`, learnt after `job` was added (its
    /// dependency was evaluated later). Ignored once `job` was dispatched:
    /// Nix builds the dependency as part of it anyway. Jobs that become
    /// `dependency_failed` through this edge are appended to `failed`.
    pub fn add_dependency(&mut self, job: JobId, dep: JobId, failed: &mut Vec<JobId>) {
        let state = self.slots[job as usize].state;
        if matches!(state, State::Dispatched | State::Final) || job == dep {
            return;
        }
        if state == State::Ready {
            // Lazy removal: the heap entry is skipped when popped.
            self.slots[job as usize].state = State::Waiting;
            self.ready -= 1;
        }
        self.link(job, dep);
        let s = self.slots[job as usize];
        if s.state == State::Waiting && s.pending == 0 {
            self.make_ready(job);
        }
        if s.status == JobStatus::DependencyFailed {
            failed.push(job);
            self.propagate_failure(job, s.failed_dependency, failed);
        }
    }

    /// Keep a not-yet-dispatched job from becoming ready until
    /// [`Scheduler::release`] (used while evaluation may still reveal one of
    /// its dependencies as a job). Returns whether it was held.
    pub fn hold(&mut self, job: JobId) -> bool {
        let s = &mut self.slots[job as usize];
        match s.state {
            State::Ready => {
                s.state = State::Waiting;
                self.ready -= 1;
            }
            State::Waiting => {}
            State::Dispatched | State::Final => return false,
        }
        self.slots[job as usize].pending += 1;
        true
    }

    /// Undo one [`Scheduler::hold`].
    pub fn release(&mut self, job: JobId) {
        let s = &mut self.slots[job as usize];
        if s.state != State::Waiting || s.pending == 0 {
            return;
        }
        s.pending -= 1;
        if s.pending == 0 {
            self.make_ready(job);
        }
    }

    fn link(&mut self, job: JobId, dep: JobId) {
        let d = self.slots[dep as usize];
        let h = self.slots[job as usize].height + 1;
        if d.height < h {
            self.slots[dep as usize].height = h;
        }
        match (d.state, d.status) {
            (State::Final, s) if is_success(s) => {}
            (State::Final, _) => {
                let root = if d.failed_dependency == NONE {
                    dep
                } else {
                    d.failed_dependency
                };
                self.fail_dependent(job, root);
            }
            _ => {
                self.slots[job as usize].pending += 1;
                self.dependents[dep as usize].push(job);
            }
        }
    }

    fn make_ready(&mut self, id: JobId) {
        let s = &mut self.slots[id as usize];
        s.state = State::Ready;
        let (system, height) = (s.system as usize, s.height);
        if self.queues.len() <= system {
            self.queues.resize_with(system + 1, BinaryHeap::new);
        }
        self.queues[system].push((height, Reverse(id)));
        self.ready += 1;
    }

    /// Recompute every job's critical-path length now that the whole graph is
    /// known, and reorder the ready queues accordingly. O(V+E).
    pub fn finish_graph(&mut self) {
        let n = self.slots.len();
        let mut height = vec![NONE; n];
        let mut stack: Vec<(JobId, usize)> = Vec::new();
        for root in 0..n as JobId {
            if height[root as usize] != NONE {
                continue;
            }
            stack.push((root, 0));
            while let Some(&mut (v, ref mut i)) = stack.last_mut() {
                let deps = &self.dependents[v as usize];
                if *i < deps.len() {
                    let w = deps[*i];
                    *i += 1;
                    if height[w as usize] == NONE {
                        height[w as usize] = NONE - 1; // on the stack
                        stack.push((w, 0));
                    }
                } else {
                    let h = deps
                        .iter()
                        .map(|&w| height[w as usize].wrapping_add(1))
                        .filter(|&h| h < NONE - 1)
                        .max()
                        .unwrap_or(0);
                    height[v as usize] = h;
                    stack.pop();
                }
            }
        }
        for (s, h) in self.slots.iter_mut().zip(height) {
            s.height = h;
        }
        for q in &mut self.queues {
            let mut v = std::mem::take(q).into_vec();
            v.retain(|&(_, Reverse(id))| self.slots[id as usize].state == State::Ready);
            for e in &mut v {
                e.0 = self.slots[e.1.0 as usize].height;
            }
            *q = BinaryHeap::from(v);
        }
    }

    /// Number of ready jobs for `system`.
    pub fn ready_for(&self, system: SystemId) -> usize {
        self.queues.get(system as usize).map_or(0, |q| {
            q.iter()
                .filter(|(_, Reverse(id))| self.slots[*id as usize].state == State::Ready)
                .count()
        })
    }

    /// Systems that have ready jobs.
    pub fn systems_with_ready_jobs(&self) -> impl Iterator<Item = SystemId> + '_ {
        self.queues
            .iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(i, _)| i as SystemId)
    }

    /// Move up to `max` ready jobs of `system` into `out`, longest critical
    /// path first, and mark them dispatched.
    pub fn pop_batch(&mut self, system: SystemId, max: usize, out: &mut Vec<JobId>) {
        let Some(q) = self.queues.get_mut(system as usize) else {
            return;
        };
        let mut taken = 0;
        while taken < max {
            let Some((_, Reverse(id))) = q.pop() else {
                break;
            };
            let s = &mut self.slots[id as usize];
            if s.state != State::Ready {
                continue;
            }
            s.state = State::Dispatched;
            s.status = JobStatus::Running;
            self.ready -= 1;
            out.push(id);
            taken += 1;
        }
    }

    /// Put a dispatched job back in its ready queue (its batch was killed
    /// before it finished, or it will be retried).
    pub fn requeue(&mut self, id: JobId) {
        if self.slots[id as usize].state == State::Dispatched {
            self.slots[id as usize].status = JobStatus::Queued;
            self.make_ready(id);
        }
    }

    /// Record a job's final status. Success releases its dependents (newly
    /// ready ones join their queues); failure marks every transitive
    /// dependent `dependency_failed`; their ids are appended to `failed`.
    pub fn complete(&mut self, id: JobId, status: JobStatus, failed: &mut Vec<JobId>) {
        if self.slots[id as usize].state == State::Final {
            return;
        }
        if self.slots[id as usize].state == State::Ready {
            self.ready -= 1;
        }
        self.finish(id, status);
        let deps = std::mem::take(&mut self.dependents[id as usize]);
        if is_success(status) {
            for &d in &deps {
                let s = &mut self.slots[d as usize];
                if s.state != State::Waiting {
                    continue;
                }
                s.pending -= 1;
                if s.pending == 0 {
                    self.make_ready(d);
                }
            }
        } else {
            self.dependents[id as usize] = deps;
            self.propagate_failure(id, id, failed);
            return;
        }
        self.dependents[id as usize] = deps;
    }

    /// Mark every transitive dependent of `from` that has not started as
    /// `dependency_failed` because of `root`.
    fn propagate_failure(&mut self, from: JobId, root: JobId, failed: &mut Vec<JobId>) {
        let mut stack = std::mem::take(&mut self.dependents[from as usize]);
        while let Some(d) = stack.pop() {
            if self.fail_dependent(d, root) {
                failed.push(d);
                stack.extend(std::mem::take(&mut self.dependents[d as usize]));
            }
        }
    }

    fn fail_dependent(&mut self, job: JobId, root: JobId) -> bool {
        let s = self.slots[job as usize];
        if matches!(s.state, State::Final | State::Dispatched) {
            return false;
        }
        if s.state == State::Ready {
            self.ready -= 1;
        }
        self.slots[job as usize].failed_dependency = root;
        self.finish(job, JobStatus::DependencyFailed);
        true
    }

    fn finish(&mut self, id: JobId, status: JobStatus) {
        let s = &mut self.slots[id as usize];
        if s.state != State::Final {
            self.unfinished -= 1;
        }
        s.state = State::Final;
        s.status = status;
    }

    /// Current status of a job.
    pub fn status(&self, id: JobId) -> JobStatus {
        self.slots[id as usize].status
    }

    /// The job whose failure made `id` `dependency_failed`.
    pub fn failed_dependency(&self, id: JobId) -> Option<JobId> {
        let f = self.slots[id as usize].failed_dependency;
        (f != NONE).then_some(f)
    }

    /// Critical-path length of a job (0 for a job nothing depends on).
    pub fn height(&self, id: JobId) -> u32 {
        self.slots[id as usize].height
    }

    /// Mark every unfinished job `cancelled` and return them.
    pub fn cancel_all(&mut self) -> Vec<JobId> {
        let ids: Vec<JobId> = (0..self.slots.len() as JobId)
            .filter(|&i| self.slots[i as usize].state != State::Final)
            .collect();
        for &i in &ids {
            self.finish(i, JobStatus::Cancelled);
        }
        self.ready = 0;
        self.queues.clear();
        ids
    }

    /// Approximate heap bytes held (for the benchmark).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.dependents.capacity() * std::mem::size_of::<Vec<JobId>>()
            + self
                .dependents
                .iter()
                .map(|d| d.capacity() * 4)
                .sum::<usize>()
            + self.queues.iter().map(|q| q.capacity() * 8).sum::<usize>()
    }
}

fn is_success(s: JobStatus) -> bool {
    matches!(s, JobStatus::Succeeded | JobStatus::Cached)
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
