//! `--junit FILE`: the report as JUnit XML for CI systems that read it. One
//! test suite per system, one test case per job; failures, timeouts,
//! dependency failures and eval errors are `<failure>`s, unsupported systems
//! and cancelled jobs are `<skipped>`.
//!
//! It must not add information that is not in the report.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report as Junit, TestCase, TestCaseStatus, TestSuite};

use crate::job::JobStatus;
use crate::report::Report;

/// Render the report as JUnit XML.
pub fn to_xml(report: &Report) -> String {
    let mut junit = Junit::new(format!("kiln run {}#{}", report.flake, report.attribute));
    let mut systems: Vec<&str> = report.jobs.iter().map(|j| j.system.as_str()).collect();
    systems.sort();
    systems.dedup();
    for system in systems {
        let name = if system.is_empty() {
            "(not evaluated)"
        } else {
            system
        };
        let mut suite = TestSuite::new(name);
        for j in report.jobs.iter().filter(|j| j.system == system) {
            let status = match j.status {
                JobStatus::Succeeded | JobStatus::Cached => TestCaseStatus::success(),
                JobStatus::UnsupportedSystem | JobStatus::Cancelled => {
                    let mut s = TestCaseStatus::skipped();
                    if let Some(e) = &j.error {
                        s.set_message(e.as_str());
                    }
                    s
                }
                s => {
                    let kind = if s == JobStatus::EvalError {
                        NonSuccessKind::Error
                    } else {
                        NonSuccessKind::Failure
                    };
                    let mut st = TestCaseStatus::non_success(kind);
                    st.set_type(format!("{s:?}"));
                    if let Some(e) = &j.error {
                        st.set_message(e.lines().next().unwrap_or(""));
                        st.set_description(e.as_str());
                    }
                    st
                }
            };
            let mut case = TestCase::new(j.attr.as_str(), status);
            case.set_classname(report.attribute.as_str());
            case.set_time(Duration::from_millis(j.duration_ms));
            if let Some(p) = &j.log_path {
                case.set_system_out(format!("log: {p}"));
            }
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
    }
    junit
        .to_string()
        .unwrap_or_else(|e| format!("<!-- cannot render JUnit: {e} -->\n"))
}

/// Write the JUnit XML to `path`.
pub fn write(report: &Report, path: &Path) -> std::io::Result<()> {
    std::fs::write(path, to_xml(report))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::report::JobReport;

    #[test]
    fn failures_are_failures_and_foreign_systems_are_skipped() {
        let job = |attr: &str, system: &str, status| JobReport {
            attr: attr.into(),
            system: system.into(),
            drv_path: None,
            outputs: BTreeMap::new(),
            status,
            error: Some("why <it> failed".into()),
            failed_dependency: None,
            attempts: 1,
            duration_ms: 1500,
            log_path: None,
            post_build: vec![],
        };
        let r = Report::new(
            ".".into(),
            None,
            "checks".into(),
            vec![
                job("x86_64-linux.ok", "x86_64-linux", JobStatus::Succeeded),
                job("x86_64-linux.bad", "x86_64-linux", JobStatus::Failed),
                job(
                    "aarch64-darwin.x",
                    "aarch64-darwin",
                    JobStatus::UnsupportedSystem,
                ),
            ],
        );
        let xml = to_xml(&r);
        assert!(
            xml.contains(r#"<testsuite name="x86_64-linux" tests="2""#),
            "{xml}"
        );
        assert!(xml.contains("failures=\"1\""), "{xml}");
        assert!(xml.contains("<skipped"), "{xml}");
        assert!(xml.contains("why &lt;it&gt; failed"), "{xml}");
    }
}
