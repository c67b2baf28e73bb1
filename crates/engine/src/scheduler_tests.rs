//! Unit tests of the scheduler's state machine.

use super::*;

fn drain(s: &mut Scheduler, system: SystemId) -> Vec<JobId> {
    let mut out = Vec::new();
    s.pop_batch(system, usize::MAX, &mut out);
    out
}

#[test]
fn dependents_wait_for_their_dependencies() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let b = s.add_job(0, &[a]);
    let c = s.add_job(0, &[a, b]);
    assert_eq!(drain(&mut s, 0), [a]);
    let mut failed = vec![];
    s.complete(a, JobStatus::Succeeded, &mut failed);
    assert_eq!(drain(&mut s, 0), [b]);
    s.complete(b, JobStatus::Succeeded, &mut failed);
    assert_eq!(drain(&mut s, 0), [c]);
    s.complete(c, JobStatus::Succeeded, &mut failed);
    assert!(failed.is_empty());
    assert_eq!(s.unfinished(), 0);
}

#[test]
fn failure_propagates_to_all_transitive_dependents_naming_the_root() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let b = s.add_job(0, &[a]);
    let c = s.add_job(0, &[b]);
    let other = s.add_job(0, &[]);
    let mut out = vec![];
    s.pop_batch(0, usize::MAX, &mut out);
    let mut failed = vec![];
    s.complete(a, JobStatus::Failed, &mut failed);
    failed.sort();
    assert_eq!(failed, [b, c]);
    assert_eq!(s.status(c), JobStatus::DependencyFailed);
    assert_eq!(s.failed_dependency(c), Some(a));
    assert_eq!(s.failed_dependency(b), Some(a));
    assert_eq!(s.status(other), JobStatus::Running);
    // A job added later on top of the failed one fails at once too.
    let late = s.add_job(0, &[c]);
    assert_eq!(s.status(late), JobStatus::DependencyFailed);
    assert_eq!(s.failed_dependency(late), Some(a));
}

#[test]
fn critical_path_first_per_system() {
    let mut s = Scheduler::new();
    let lone = s.add_job(0, &[]);
    let root = s.add_job(0, &[]);
    let mid = s.add_job(0, &[root]);
    let _top = s.add_job(0, &[mid]);
    let other_system = s.add_job(1, &[]);
    s.finish_graph();
    assert_eq!(s.height(root), 2);
    let mut out = vec![];
    s.pop_batch(0, 1, &mut out);
    assert_eq!(out, [root]);
    out.clear();
    s.pop_batch(0, 5, &mut out);
    assert_eq!(out, [lone]);
    assert_eq!(drain(&mut s, 1), [other_system]);
}

#[test]
fn late_dependencies_hold_back_ready_jobs() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let b = s.add_job(0, &[]);
    s.add_dependency(a, b, &mut vec![]);
    assert_eq!(drain(&mut s, 0), [b]);
    let mut failed = vec![];
    s.complete(b, JobStatus::Succeeded, &mut failed);
    assert_eq!(drain(&mut s, 0), [a]);
    // Once dispatched, a late edge is ignored.
    let c = s.add_job(0, &[]);
    s.add_dependency(a, c, &mut vec![]);
    assert_eq!(s.status(a), JobStatus::Running);
}

#[test]
fn final_jobs_satisfy_or_fail_dependents() {
    let mut s = Scheduler::new();
    let cached = s.add_final(0, JobStatus::Cached);
    let broken = s.add_final(0, JobStatus::EvalError);
    let ok = s.add_job(0, &[cached]);
    let bad = s.add_job(0, &[broken]);
    assert_eq!(drain(&mut s, 0), [ok]);
    assert_eq!(s.status(bad), JobStatus::DependencyFailed);
    assert_eq!(s.failed_dependency(bad), Some(broken));
}

#[test]
fn requeue_and_cancel() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let b = s.add_job(0, &[a]);
    assert_eq!(drain(&mut s, 0), [a]);
    s.requeue(a);
    assert_eq!(s.ready(), 1);
    assert_eq!(drain(&mut s, 0), [a]);
    let mut cancelled = s.cancel_all();
    cancelled.sort();
    assert_eq!(cancelled, [a, b]);
    assert_eq!(s.status(b), JobStatus::Cancelled);
    assert_eq!(s.unfinished(), 0);
}

#[test]
fn a_late_failed_dependency_fails_the_whole_chain() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let top = s.add_job(0, &[a]);
    let broken = s.add_final(0, JobStatus::Failed);
    let mut failed = vec![];
    s.add_dependency(a, broken, &mut failed);
    assert_eq!(failed, [a, top]);
    assert_eq!(s.failed_dependency(top), Some(broken));
    assert_eq!(s.ready(), 0);
    assert_eq!(s.unfinished(), 0);
}

#[test]
fn held_jobs_wait_for_release_and_for_their_dependencies() {
    let mut s = Scheduler::new();
    let a = s.add_job(0, &[]);
    let b = s.add_job(0, &[]);
    assert!(s.hold(b));
    assert_eq!(drain(&mut s, 0), [a]);
    s.release(b);
    assert_eq!(drain(&mut s, 0), [b]);
    assert!(!s.hold(b), "dispatched jobs cannot be held");
    let c = s.add_job(0, &[a]);
    s.hold(c);
    s.complete(a, JobStatus::Succeeded, &mut vec![]);
    assert_eq!(s.ready(), 0);
    s.release(c);
    assert_eq!(drain(&mut s, 0), [c]);
}
