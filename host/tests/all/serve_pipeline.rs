//! `kiln serve` end to end: the real binary with the first-party `github`
//! plugin, a stand-in GitHub (`tests/servers/github.py`) that checks and
//! records the statuses it receives, a bare git repository as the remote,
//! and real Nix builds of salted checks. Signed push and pull-request
//! webhooks go in; statuses (contexts, states, links, the failure list) come
//! out on the right commits. Also: superseding pushes, `[skip ci]`, a
//! project not configured, a push missed while Kiln was down, and `kill -9`
//! while a job runs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{python_server, salt, sh};
use crate::service::Server;

const SECRET: &str = "pipeline webhook secret";
const TOKEN: &str = "ghp_pipeline_test_token";
const REPO: &str = "acme/widget";

fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn git(dir: &Path, args: &[&str]) -> String {
    sh(Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args))
    .trim()
    .to_owned()
}

/// The stand-in GitHub.
struct FakeGitHub {
    child: Child,
    port: u16,
}

impl FakeGitHub {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let mut args: Vec<&OsStr> = vec!["--token".as_ref(), TOKEN.as_ref()];
        args.extend(extra.iter().map(OsStr::new));
        let (child, port) = python_server("github.py", &args, Some(&dir.join("github.log")));
        FakeGitHub { child, port }
    }

    fn state(&self) -> Value {
        let mut r = ureq::get(format!("http://127.0.0.1:{}/_test/state", self.port))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// Every status posted on `sha`, in order: (context, state, description, target_url).
    fn statuses(&self, sha: &str) -> Vec<(String, String, String, Option<String>)> {
        self.state()["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["sha"] == sha)
            .map(|s| {
                (
                    s["context"].as_str().unwrap().to_owned(),
                    s["state"].as_str().unwrap().to_owned(),
                    s["description"].as_str().unwrap().to_owned(),
                    s["target_url"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    /// The last state of each context on `sha`.
    fn latest(&self, sha: &str) -> std::collections::BTreeMap<String, (String, String)> {
        self.statuses(sha)
            .into_iter()
            .map(|(c, s, d, _)| (c, (s, d)))
            .collect()
    }

    /// Wait until `kiln/nix-build` on `sha` is final; returns the latest
    /// state of every context.
    fn wait_final(
        &self,
        sha: &str,
        server: &Server,
    ) -> std::collections::BTreeMap<String, (String, String)> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let latest = self.latest(sha);
            if latest
                .get("kiln/nix-build")
                .is_some_and(|(s, _)| s != "pending")
            {
                // Per-attribute statuses follow the aggregate closely.
                std::thread::sleep(Duration::from_millis(500));
                return self.latest(sha);
            }
            assert!(
                Instant::now() < deadline,
                "no final kiln/nix-build on {sha}: {:#?}\n{}\nkiln stderr:\n{}",
                self.statuses(sha),
                self.state(),
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A project: a work tree, its bare remote, and Kiln's configuration.
struct Project {
    dir: tempfile::TempDir,
    salt: String,
}

impl Project {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = Project { dir, salt: salt() };
        std::fs::create_dir(p.work()).unwrap();
        git(&p.work(), &["init", "-q", "-b", "main"]);
        p.write_flake(&[
            ("ok", "true"),
            ("broken", "echo the frobnicator is broken >&2; exit 1"),
        ]);
        git(&p.work(), &["add", "-A"]);
        git(&p.work(), &["commit", "-q", "-m", "Add checks"]);
        sh(Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(p.work())
            .arg(p.remote()));
        git(
            &p.work(),
            &["remote", "add", "origin", p.remote().to_str().unwrap()],
        );
        p
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn remote(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    fn clone_url(&self) -> String {
        format!("file://{}", self.remote().display())
    }

    /// A flake whose checks run `script`s (salted, so each test builds).
    fn write_flake(&self, checks: &[(&str, &str)]) {
        let mut body = String::new();
        for (name, script) in checks {
            body.push_str(&format!(
                "      {name} = derivation {{ name = \"{name}\"; system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"{} && echo {name}-{} > $out\" ]; }};\n",
                script.replace('"', "\\\""),
                self.salt
            ));
        }
        std::fs::write(
            self.work().join("flake.nix"),
            format!(
                "{{\n  outputs = {{ self }}: {{\n    checks.x86_64-linux = {{\n{body}    }};\n  }};\n}}\n"
            ),
        )
        .unwrap();
    }

    /// Commit everything with `message` and push `branch`; returns the commit.
    fn commit_and_push(&self, branch: &str, message: &str) -> String {
        git(&self.work(), &["add", "-A"]);
        git(
            &self.work(),
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(
            &self.work(),
            &[
                "push",
                "-q",
                "-f",
                "origin",
                &format!("HEAD:refs/heads/{branch}"),
            ],
        );
        git(&self.work(), &["rev-parse", "HEAD"])
    }

    fn config(&self, github: &FakeGitHub, extra: &str) -> PathBuf {
        std::fs::write(self.dir.path().join("webhook-secret"), SECRET).unwrap();
        std::fs::write(self.dir.path().join("token"), TOKEN).unwrap();
        let config = format!(
            r#"[serve]
url = "http://kiln.test"
systems = ["x86_64-linux"]
max_jobs = 2
poll_interval_secs = 0
{extra}

[forges.github]
plugin = "github"
api = "http://127.0.0.1:{port}"
projects = ["{REPO}"]
discover = false

[grants.github]
secrets = ["github-webhook-secret", "github-token"]
hosts = ["127.0.0.1:{port}"]

[secrets.github-webhook-secret]
file = "{secret}"

[secrets.github-token]
file = "{token}"
"#,
            port = github.port,
            secret = self.dir.path().join("webhook-secret").display(),
            token = self.dir.path().join("token").display(),
        );
        let path = self.dir.path().join("kiln.toml");
        std::fs::write(&path, config).unwrap();
        path
    }

    fn serve(&self, config: &Path) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env_remove("KILN_DATABASE_URL")
            .env("KILN_LOG", "info")
            .stdin(Stdio::null());
        Server::start(cmd, self.dir.path())
    }

    /// The fixture's repository, made `acme/widget` at the bare remote.
    fn repository(&self) -> Value {
        let fixture: Value = serde_json::from_str(include_str!(
            "../../../plugins/github/tests/fixtures/push.json"
        ))
        .unwrap();
        let mut r = fixture["repository"].clone();
        r["name"] = json!("widget");
        r["full_name"] = json!(REPO);
        r["owner"]["login"] = json!("acme");
        r["clone_url"] = json!(self.clone_url());
        r["default_branch"] = json!("main");
        r["private"] = json!(false);
        r
    }

    /// A signed push webhook for `branch` at `after`.
    fn push(
        &self,
        server: &Server,
        delivery: &str,
        branch: &str,
        after: &str,
        message: &str,
    ) -> u16 {
        let mut body: Value = serde_json::from_str(include_str!(
            "../../../plugins/github/tests/fixtures/push.json"
        ))
        .unwrap();
        body["ref"] = json!(format!("refs/heads/{branch}"));
        body["after"] = json!(after);
        body["repository"] = self.repository();
        body["head_commit"]["id"] = json!(after);
        body["head_commit"]["message"] = json!(message);
        let body = body.to_string();
        let (status, answer) = server.webhook("github", "push", delivery, &body, &sign(&body));
        assert!(
            status == 202 || status == 200,
            "{status} {answer}: {}",
            server.stderr()
        );
        status
    }

    /// A signed `pull_request` webhook (`opened`) for `head` on `branch`
    /// into `main`, from the same repository.
    fn pull_request(&self, server: &Server, number: u64, branch: &str, head: &str) {
        let mut body: Value = serde_json::from_str(include_str!(
            "../../../plugins/github/tests/fixtures/pull_request_opened.json"
        ))
        .unwrap();
        body["number"] = json!(number);
        body["repository"] = self.repository();
        body["pull_request"] = self.pull_request_object(number, branch, head);
        let body = body.to_string();
        let (status, answer) = server.webhook(
            "github",
            "pull_request",
            &format!("pr-{number}-{head}"),
            &body,
            &sign(&body),
        );
        assert_eq!(status, 202, "{answer}: {}", server.stderr());
    }

    /// The pull request as GitHub's API shows it: `head` on `branch` into
    /// `main`, from the same repository, by a member.
    fn pull_request_object(&self, number: u64, branch: &str, head: &str) -> Value {
        let body: Value = serde_json::from_str(include_str!(
            "../../../plugins/github/tests/fixtures/pull_request_opened.json"
        ))
        .unwrap();
        let mut pr = body["pull_request"].clone();
        pr["number"] = json!(number);
        pr["head"]["sha"] = json!(head);
        pr["head"]["ref"] = json!(branch);
        pr["head"]["repo"] = self.repository();
        pr["base"]["ref"] = json!("main");
        pr["base"]["repo"] = self.repository();
        pr["author_association"] = json!("MEMBER");
        pr
    }

    fn sqlite(&self) -> String {
        format!(
            "sqlite://{}",
            self.dir.path().join("data/kiln.sqlite3").display()
        )
    }
}

fn query<T>(url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        })
}

#[test]
fn pushes_and_pull_requests_are_built_and_reported_on_their_head_commits() {
    let project = Project::new();
    let github = FakeGitHub::start(project.dir.path(), &["--rate-limit", "2"]);
    let config = project.config(&github, "");
    let server = project.serve(&config);
    let main = git(&project.work(), &["rev-parse", "HEAD"]);

    project.push(&server, "push-1", "main", &main, "Add checks");
    let latest = github.wait_final(&main, &server);
    assert_eq!(latest["kiln/nix-eval"].0, "success", "{latest:?}");
    assert_eq!(latest["kiln/nix-eval"].1, "2 jobs evaluated");
    assert_eq!(latest["kiln/nix-build"].0, "failure", "{latest:?}");
    assert!(
        latest["kiln/nix-build"]
            .1
            .starts_with("1 of 2 failed: x86_64-linux.broken"),
        "{latest:?}"
    );
    let broken = &latest["kiln/nix-build/x86_64-linux.broken"];
    assert_eq!(broken.0, "failure");
    assert!(broken.1.contains("Build failed"), "{broken:?}");
    // Links: the run for aggregates, the job's log for a failure.
    let all = github.statuses(&main);
    let (_, _, _, url) = all
        .iter()
        .find(|s| s.0 == "kiln/nix-build/x86_64-linux.broken")
        .unwrap();
    let url = url.as_deref().unwrap();
    assert!(
        url.starts_with("http://kiln.test/api/v1/jobs/") && url.ends_with("/log"),
        "{url}"
    );
    // Updates coalesce: while the rate limit holds, only the latest state
    // of a context is posted, and no context flaps.
    for context in ["kiln/nix-eval", "kiln/nix-build"] {
        let posts = all.iter().filter(|s| s.0 == context).count();
        assert!(
            (1..=3).contains(&posts),
            "{context} posted {posts} times: {all:?}"
        );
    }
    assert!(all.iter().filter(|s| s.0 == "kiln/nix-eval").all(|s| {
        s.3.as_deref()
            .is_some_and(|u| u.starts_with("http://kiln.test/api/v1/runs/"))
    }));
    // The rate limit on the first posts was waited out, not lost.
    assert_eq!(github.state()["refused"].as_array().unwrap().len(), 0);

    // A pull request that fixes the broken check.
    git(&project.work(), &["checkout", "-q", "-b", "fix"]);
    project.write_flake(&[("ok", "true"), ("broken", "true")]);
    let head = project.commit_and_push("fix", "Fix the frobnicator");
    project.pull_request(&server, 7, "fix", &head);
    let latest = github.wait_final(&head, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    assert_eq!(latest["kiln/nix-build"].1, "1 built, 1 cached");
    // Statuses go on the head commit, never on the local merge commit.
    let shas: std::collections::BTreeSet<String> = github.state()["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sha"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shas, [main.clone(), head.clone()].into_iter().collect());
    // The run evaluated the merge of main into the head.
    let runs: Vec<(String, Option<i64>, String)> = query(
        &project.sqlite(),
        "SELECT rev, pull_request, state FROM runs ORDER BY id",
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].1, Some(7));
    assert_ne!(runs[1].0, head, "a merge commit was evaluated");
    let parents = git(
        &project
            .dir
            .path()
            .join("data/mirrors/github/acme/widget.git"),
        &["log", "-1", "--format=%P", &runs[1].0],
    );
    assert_eq!(parents, format!("{main} {head}"), "base first, head second");

    // The same tree pushed to a merge-queue branch shares the pull
    // request's run: reported to both, built once.
    let before = github
        .statuses(&head)
        .iter()
        .filter(|s| s.0 == "kiln/nix-build" && s.1 == "success")
        .count();
    project.push(
        &server,
        "push-staging",
        "staging",
        &head,
        "Fix the frobnicator",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while github
        .statuses(&head)
        .iter()
        .filter(|s| s.0 == "kiln/nix-build" && s.1 == "success")
        .count()
        == before
    {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let count: Vec<(i64, i64)> = query(
        &project.sqlite(),
        "SELECT (SELECT COUNT(*) FROM runs), (SELECT COUNT(*) FROM targets)",
    );
    assert_eq!(count[0], (2, 3), "one run for a tree reached twice");

    let metrics = server.get("/metrics");
    for line in [
        "kiln_runs{state=\"failed\"} 1\n",
        "kiln_runs{state=\"succeeded\"} 1\n",
        "kiln_job_results_total{status=\"failed\"} 1\n",
        "kiln_job_duration_seconds_count{status=\"succeeded\"} 2\n",
        "kiln_dispatches_total{job_type=\"build\",builder_name=\"localhost\"} 3\n",
        "kiln_dispatches_total{job_type=\"evaluation\",builder_name=\"localhost\"} 2\n",
        "kiln_statuses_posted_total{forge=\"github\",outcome=\"rate_limited\"} 2\n",
        "kiln_eval_duration_seconds_count 2\n",
        "kiln_jobs_running 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing from\n{metrics}");
    }
}

/// Wait until `sql` (one BIGINT column) returns a row with a positive value.
fn wait_for_row(project: &Project, sql: &str, server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows: Vec<(i64,)> = query(&project.sqlite(), sql);
        if rows.first().is_some_and(|r| r.0 > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_newer_push_cancels_the_older_run_which_gets_no_final_status() {
    let project = Project::new();
    project.write_flake(&[("slow", "sleep 60")]);
    let first = project.commit_and_push("main", "Slow check");
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let server = project.serve(&project.config(&github, ""));
    project.push(&server, "slow", "main", &first, "Slow check");
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM jobs WHERE status = 'running'",
        &server,
        "the slow job never ran",
    );
    project.write_flake(&[("quick", "true")]);
    let second = project.commit_and_push("main", "Quick check");
    project.push(&server, "quick", "main", &second, "Quick check");
    let latest = github.wait_final(&second, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    // Nothing after the push that superseded it: the build status stays
    // pending, and no cancellation is posted.
    let old = github.statuses(&first);
    assert!(
        old.iter()
            .all(|s| s.1 == "pending" || (s.0 == "kiln/nix-eval" && s.1 == "success")),
        "a superseded run posts nothing final: {old:?}"
    );
    let runs: Vec<(String, Option<String>)> = query(
        &project.sqlite(),
        "SELECT state, error FROM runs ORDER BY id",
    );
    assert_eq!(runs[0].0, "cancelled", "{runs:?}");
    assert_eq!(runs[0].1.as_deref(), Some("superseded by a newer commit"));
    assert_eq!(runs[1].0, "succeeded");
}

#[test]
fn skip_ci_other_branches_and_unknown_projects_are_ignored_with_a_reason() {
    let project = Project::new();
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let server = project.serve(&project.config(&github, ""));
    let skipped = project.commit_and_push("main", "Update the docs [skip ci]");
    project.push(
        &server,
        "skip",
        "main",
        &skipped,
        "Update the docs [skip ci]",
    );
    let feature = project.commit_and_push("feature", "Work in progress");
    project.push(&server, "feature", "feature", &feature, "Work in progress");
    // Another repository, not configured for this forge instance.
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/github/tests/fixtures/push.json"
    ))
    .unwrap();
    body["after"] = json!(feature);
    let body = body.to_string();
    let (status, _) = server.webhook("github", "push", "other", &body, &sign(&body));
    assert_eq!(status, 202);
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM events WHERE state = 'ignored' HAVING COUNT(*) = 3",
        &server,
        "three events ignored",
    );
    let notes: Vec<(String,)> = query(&project.sqlite(), "SELECT note FROM events ORDER BY id");
    assert!(notes[0].0.contains("asks to skip CI"), "{notes:?}");
    assert!(
        notes[1].0.contains("branch `feature` is not built"),
        "{notes:?}"
    );
    assert!(
        notes[2].0.contains("is not configured for forge `github`"),
        "{notes:?}"
    );
    let runs: Vec<(i64,)> = query(&project.sqlite(), "SELECT COUNT(*) FROM runs");
    assert_eq!(runs[0].0, 0);
    assert!(github.state()["statuses"].as_array().unwrap().is_empty());
}

#[test]
fn a_push_missed_while_kiln_was_down_is_built_when_it_starts() {
    let project = Project::new();
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, "");
    let server = project.serve(&config);
    let first = git(&project.work(), &["rev-parse", "HEAD"]);
    project.push(&server, "first", "main", &first, "Add checks");
    github.wait_final(&first, &server);
    server.kill();
    // Pushed while Kiln is down: no webhook ever arrives.
    project.write_flake(&[("ok", "true")]);
    let missed = project.commit_and_push("main", "Drop the broken check");
    let server = project.serve(&config);
    let latest = github.wait_final(&missed, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    let targets: Vec<(Option<i64>,)> = query(
        &project.sqlite(),
        "SELECT event_id FROM targets ORDER BY id",
    );
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[1].0, None, "found by reconciliation, not an event");
}

/// A pull request opened while Kiln was down: the plugin lists it as open
/// at start, and its head is built and reported though no webhook came.
#[test]
fn a_pull_request_opened_while_kiln_was_down_is_built_when_it_starts() {
    let project = Project::new();
    let pulls = project.dir.path().join("pulls.json");
    let github = FakeGitHub::start(
        project.dir.path(),
        &["--pulls-file", pulls.to_str().unwrap()],
    );
    let config = project.config(&github, "");
    let server = project.serve(&config);
    let main = git(&project.work(), &["rev-parse", "HEAD"]);
    project.push(&server, "main", "main", &main, "Add checks");
    github.wait_final(&main, &server);
    server.kill();
    // Opened while Kiln is down: no webhook ever arrives.
    project.write_flake(&[("ok", "true")]);
    let head = project.commit_and_push("fix", "Drop the broken check");
    let pr = project.pull_request_object(7, "fix", &head);
    std::fs::write(&pulls, json!([pr]).to_string()).unwrap();
    let server = project.serve(&config);
    let latest = github.wait_final(&head, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    let targets: Vec<(String, Option<i64>, Option<i64>, String)> = query(
        &project.sqlite(),
        "SELECT kind, pull_request, event_id, rev FROM targets ORDER BY id",
    );
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert_eq!(
        targets[1],
        ("pull_request".to_owned(), Some(7), None, head.clone()),
        "found by reconciliation, not an event"
    );
    // A second start finds it built and starts nothing more.
    server.kill();
    let server = project.serve(&config);
    github.wait_final(&main, &server);
    std::thread::sleep(Duration::from_secs(2));
    let runs: Vec<(i64,)> = query(&project.sqlite(), "SELECT COUNT(*) FROM targets");
    assert_eq!(runs, [(2,)]);
}

#[test]
fn kill_9_while_a_job_runs_then_a_restart_reaches_final_statuses() {
    let project = Project::new();
    project.write_flake(&[("ok", "true"), ("slow", "sleep 4"), ("broken", "exit 3")]);
    let rev = project.commit_and_push("main", "Slow and broken");
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, "");
    let server = project.serve(&config);
    project.push(&server, "slow", "main", &rev, "Slow and broken");
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM jobs WHERE status = 'running' AND attr LIKE '%slow'",
        &server,
        "the slow job never ran",
    );
    server.kill();
    let runs: Vec<(String,)> = query(&project.sqlite(), "SELECT state FROM runs");
    assert_eq!(runs, [("running".to_owned(),)]);
    let server = project.serve(&config);
    let latest = github.wait_final(&rev, &server);
    assert_eq!(latest["kiln/nix-build"].0, "failure", "{latest:?}");
    assert!(latest["kiln/nix-build"].1.contains("x86_64-linux.broken"));
    assert_eq!(latest["kiln/nix-eval"].0, "success");
    assert_eq!(latest["kiln/nix-build/x86_64-linux.broken"].0, "failure");
    let runs: Vec<(String, i64)> = query(&project.sqlite(), "SELECT state, attempts FROM runs");
    assert_eq!(
        runs,
        [("failed".to_owned(), 2)],
        "re-run once, to a final state"
    );
    let jobs: Vec<(String, String)> = query(
        &project.sqlite(),
        "SELECT attr, status FROM jobs ORDER BY idx",
    );
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    assert!(
        jobs.iter().all(|j| j.1 != "running" && j.1 != "queued"),
        "{jobs:?}"
    );
    // Every context converged: the last post of each is final.
    assert!(latest.values().all(|(s, _)| s != "pending"), "{latest:?}");
}

/// `kiln token create` against the project's database; returns the token.
fn token(project: &Project, config: &Path, subject: &str, org: &str) -> String {
    let out = sh(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "token",
            "create",
            "--subject",
            subject,
            "--org",
            org,
            "--config",
        ])
        .arg(config)
        .arg("--data-dir")
        .arg(project.dir.path().join("data"))
        .env_remove("KILN_DATABASE_URL"));
    let token = out.trim().to_owned();
    assert!(token.starts_with("kiln_"), "{out}");
    token
}

/// POST `path` with an optional Bearer token; (status, JSON body).
fn post(server: &Server, path: &str, token: Option<&str>) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(server.url(path));
    if let Some(t) = token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    let mut response = request.send_empty().unwrap();
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn a_fork_pull_request_runs_no_secret_step_until_a_member_approves_it() {
    let project = Project::new();
    let key = project.dir.path().join("signing-key");
    let secret = sh(Command::new("nix")
        .args(["--extra-experimental-features", "nix-command"])
        .args([
            "key",
            "generate-secret",
            "--key-name",
            "kiln-approval-test-1",
        ]));
    std::fs::write(&key, secret.trim()).unwrap();
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let extra = format!(
        r#"
[[post_build]]
plugin = "sign"

[grants.sign]
secrets = ["signing-key"]
store = ["path-info"]

[secrets.signing-key]
file = "{}"
"#,
        key.display()
    );
    let config = project.config(&github, "");
    append(&config, &extra);
    let server = project.serve(&config);

    // A pull request from someone else's fork.
    git(&project.work(), &["checkout", "-q", "-b", "from-fork"]);
    project.write_flake(&[("ok", "true"), ("extra", "true")]);
    let head = project.commit_and_push("from-fork", "Add a check");
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/github/tests/fixtures/pull_request_opened.json"
    ))
    .unwrap();
    let mut fork = project.repository();
    fork["id"] = json!(424242);
    fork["full_name"] = json!("mallory/widget");
    fork["owner"]["login"] = json!("mallory");
    body["number"] = json!(9);
    body["repository"] = project.repository();
    let pr = &mut body["pull_request"];
    pr["number"] = json!(9);
    pr["head"]["sha"] = json!(head);
    pr["head"]["ref"] = json!("from-fork");
    pr["head"]["repo"] = fork;
    pr["base"]["ref"] = json!("main");
    pr["base"]["repo"] = project.repository();
    pr["author_association"] = json!("NONE");
    let body = body.to_string();
    let (status, answer) = server.webhook("github", "pull_request", "fork-9", &body, &sign(&body));
    assert_eq!(status, 202, "{answer}");

    let latest = github.wait_final(&head, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    assert_eq!(latest["kiln/approval"].0, "pending", "{latest:?}");
    let steps: Vec<(String,)> = query(
        &project.sqlite(),
        "SELECT post_build FROM jobs WHERE post_build IS NOT NULL ORDER BY idx",
    );
    assert_eq!(steps.len(), 2, "{steps:?}");
    for (s,) in &steps {
        assert!(s.contains(r#""status":"skipped""#), "{s}");
    }

    // The run as the API shows it, to anyone: the project is public.
    let runs: Vec<(i64,)> = query(&project.sqlite(), "SELECT id FROM runs");
    let run = runs[0].0;
    let detail: Value = serde_json::from_str(&server.get(&format!("/api/v1/runs/{run}"))).unwrap();
    assert_eq!(detail["run"]["state"], "succeeded", "{detail}");
    assert_eq!(detail["job_counts"]["succeeded"], 2, "{detail}");
    assert_eq!(detail["jobs_url"], format!("/api/v1/runs/{run}/jobs"));
    assert_eq!(detail["project"]["name"], REPO);
    let jobs: Value =
        serde_json::from_str(&server.get(&format!("/api/v1/runs/{run}/jobs"))).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2, "{jobs}");

    // Approving needs a token of a member of acme.
    let approve = format!("/api/v1/runs/{run}/approve");
    let (status, answer) = post(&server, &approve, None);
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = post(&server, &approve, Some("kiln_not-a-token"));
    assert_eq!(status, 401, "{answer}");
    let outsider = token(&project, &config, "mallory", "mallory");
    let (status, answer) = post(&server, &approve, Some(&outsider));
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer.to_string().contains("not a member of acme"),
        "{answer}"
    );
    let member = token(&project, &config, "alice", "acme");
    let (status, answer) = post(&server, &approve, Some(&member));
    assert_eq!(status, 202, "{answer}");

    // Run again with secrets: the steps sign this time.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let latest = github.latest(&head);
        if latest
            .get("kiln/approval")
            .is_some_and(|s| s.0 == "success")
        {
            assert_eq!(latest["kiln/approval"].1, "Approved by alice (token)");
            break;
        }
        assert!(Instant::now() < deadline, "{latest:?}\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM runs WHERE state = 'succeeded' AND approved_by = 'alice (token)' AND attempts = 2",
        &server,
        "the approved run finished again",
    );
    let steps: Vec<(String,)> = query(
        &project.sqlite(),
        "SELECT post_build FROM jobs WHERE post_build IS NOT NULL ORDER BY idx",
    );
    for (s,) in &steps {
        assert!(s.contains(r#""step":"sign","status":"succeeded""#), "{s}");
    }
    // Approving twice is a conflict, not a second run.
    let (status, _) = post(&server, &approve, Some(&member));
    assert_eq!(status, 409);
}

/// Append tables to a `kiln.toml` (after `[serve]`'s keys, which `extra` of
/// [`Project::config`] is for).
fn append(config: &Path, tables: &str) {
    let text = std::fs::read_to_string(config).unwrap() + tables;
    std::fs::write(config, text).unwrap();
}

/// The latest states once `kiln/nix-build` on `rev` is final after a
/// restart, with the run re-run (or run) exactly once more.
fn restart_to_final(
    project: &Project,
    github: &FakeGitHub,
    config: &Path,
    rev: &str,
) -> std::collections::BTreeMap<String, (String, String)> {
    let server = project.serve(config);
    let latest = github.wait_final(rev, &server);
    assert!(latest.values().all(|(s, _)| s != "pending"), "{latest:?}");
    latest
}

#[test]
fn kill_9_right_after_a_webhook_is_stored_loses_nothing() {
    let project = Project::new();
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, "");
    let server = project.serve(&config);
    let rev = git(&project.work(), &["rev-parse", "HEAD"]);
    project.push(&server, "stored", "main", &rev, "Add checks");
    server.kill();
    let latest = restart_to_final(&project, &github, &config, &rev);
    assert_eq!(latest["kiln/nix-build"].0, "failure", "{latest:?}");
    let rows: Vec<(String, i64)> = query(
        &project.sqlite(),
        "SELECT e.state, (SELECT COUNT(*) FROM runs) FROM events e",
    );
    assert_eq!(rows, [("started".to_owned(), 1)]);
}

#[test]
fn kill_9_during_evaluation_then_a_restart_evaluates_again() {
    let project = Project::new();
    // An attribute that takes a few seconds to evaluate.
    std::fs::write(
        project.work().join("flake.nix"),
        format!(
            r#"{{
  outputs = {{ self }}: let
    slow = builtins.foldl' (a: b: a + b) 0 (builtins.genList (x: x) 6000000);
  in {{
    checks.x86_64-linux.slow = derivation {{
      name = "slow-eval"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${{toString slow}} {} > $out" ];
    }};
  }};
}}
"#,
            project.salt
        ),
    )
    .unwrap();
    let rev = project.commit_and_push("main", "Slow to evaluate");
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, "");
    let server = project.serve(&config);
    project.push(&server, "eval", "main", &rev, "Slow to evaluate");
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM runs WHERE state = 'running' AND evaluated_at IS NULL",
        &server,
        "the run never started evaluating",
    );
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let jobs: Vec<(i64,)> = query(&project.sqlite(), "SELECT COUNT(*) FROM jobs");
    assert_eq!(jobs[0].0, 0, "killed before the evaluation produced a job");
    let latest = restart_to_final(&project, &github, &config, &rev);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    assert_eq!(latest["kiln/nix-eval"].1, "1 job evaluated");
    let runs: Vec<(String, i64)> = query(&project.sqlite(), "SELECT state, attempts FROM runs");
    assert_eq!(runs, [("succeeded".to_owned(), 2)]);
}

#[test]
fn kill_9_during_an_upload_then_a_restart_stores_every_object_once() {
    let project = Project::new();
    project.write_flake(&[("one", "true"), ("two", "true")]);
    let rev = project.commit_and_push("main", "Two checks");
    let cache = tempfile::tempdir().unwrap();
    let (mut store, port) = python_server(
        "http_store.py",
        &[
            cache.path().as_os_str(),
            OsStr::new("--delay-nar-head"),
            OsStr::new("2"),
        ],
        Some(&project.dir.path().join("store.log")),
    );
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, "");
    append(
        &config,
        &format!(
            "\n[[post_build]]\nplugin = \"binary-cache\"\nurl = \"http://127.0.0.1:{port}\"\n\n\
             [grants.binary-cache]\nhosts = [\"127.0.0.1:{port}\"]\nstore = [\"path-info\", \"nar-stream\"]\n"
        ),
    );
    let state = || -> Value {
        let mut r = ureq::get(format!("http://127.0.0.1:{port}/_test/state"))
            .call()
            .unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    };
    let server = project.serve(&config);
    project.push(&server, "upload", "main", &rev, "Two checks");
    let deadline = Instant::now() + Duration::from_secs(120);
    while state()["requests"].as_u64().unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "no upload began: {}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    let before = state();
    let latest = restart_to_final(&project, &github, &config, &rev);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
    let after = state();
    let puts: std::collections::BTreeMap<String, u64> =
        serde_json::from_value(after["puts"].clone()).unwrap();
    // Every store object (NAR, narinfo) once. `nix-cache-info` is the
    // cache's descriptor, not an object: the two jobs' steps may start
    // together, both find it missing and both write the same bytes.
    assert!(
        puts.iter()
            .filter(|(k, _)| k.as_str() != "nix-cache-info")
            .all(|(_, &n)| n == 1),
        "an object stored twice: {puts:?}"
    );
    assert!(
        (1..=2).contains(&puts.get("nix-cache-info").copied().unwrap_or(0)),
        "{puts:?}"
    );
    let narinfos = puts.keys().filter(|k| k.ends_with(".narinfo")).count();
    assert_eq!(
        narinfos, 2,
        "both outputs uploaded: {puts:?} (before the kill: {before})"
    );
    let steps: Vec<(String,)> = query(
        &project.sqlite(),
        "SELECT post_build FROM jobs ORDER BY idx",
    );
    for (s,) in &steps {
        assert!(
            s.contains(r#""step":"binary-cache","status":"succeeded""#),
            "{s}"
        );
    }
    let _ = store.kill();
    let _ = store.wait();
}

#[test]
fn postgres_runs_the_same_pipeline_and_resumes_after_kill_9() {
    let Some(pg) = crate::service::Postgres::start() else {
        eprintln!(
            "SKIPPED: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)"
        );
        return;
    };
    let project = Project::new();
    project.write_flake(&[("ok", "true"), ("slow", "sleep 3"), ("broken", "exit 3")]);
    let rev = project.commit_and_push("main", "Slow and broken");
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let config = project.config(&github, &format!("database_url = \"{}\"", pg.url()));
    let server = project.serve(&config);
    assert!(
        server.stdout.contains("database postgres://"),
        "{}",
        server.stdout
    );
    project.push(&server, "pg", "main", &rev, "Slow and broken");
    // Kill while the run is in progress, per the API.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let runs: Value = serde_json::from_str(&server.get("/api/v1/runs")).unwrap();
        let running = runs["items"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["state"] == "running"));
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "{runs}\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let latest = restart_to_final(&project, &github, &config, &rev);
    assert_eq!(latest["kiln/nix-build"].0, "failure", "{latest:?}");
    assert_eq!(latest["kiln/nix-build/x86_64-linux.broken"].0, "failure");
    assert!(
        !project.dir.path().join("data/kiln.sqlite3").exists(),
        "nothing went to SQLite"
    );

    // A pull request on the same backend.
    git(&project.work(), &["checkout", "-q", "-b", "fix"]);
    project.write_flake(&[("ok", "true"), ("slow", "sleep 3"), ("broken", "true")]);
    let head = project.commit_and_push("fix", "Fix it");
    let server = project.serve(&config);
    project.pull_request(&server, 3, "fix", &head);
    let latest = github.wait_final(&head, &server);
    assert_eq!(latest["kiln/nix-build"].0, "success", "{latest:?}");
}

#[test]
fn a_running_jobs_log_streams_live_and_ends_with_its_status() {
    let project = Project::new();
    project.write_flake(&[("talk", "echo first line; sleep 3; echo second line")]);
    let rev = project.commit_and_push("main", "A talkative check");
    let github = FakeGitHub::start(project.dir.path(), &[]);
    let server = project.serve(&project.config(&github, ""));
    project.push(&server, "talk", "main", &rev, "A talkative check");
    wait_for_row(
        &project,
        "SELECT COUNT(*) FROM jobs WHERE status = 'running'",
        &server,
        "the job never ran",
    );
    let jobs: Vec<(i64,)> = query(&project.sqlite(), "SELECT id FROM jobs");
    let job = jobs[0].0;
    let mut response = ureq::get(server.url(&format!("/api/v1/jobs/{job}/log/stream")))
        .call()
        .unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reader = std::io::BufReader::new(response.body_mut().as_reader());
    let mut data = Vec::new();
    let mut end = None;
    let mut last_event = String::new();
    for line in std::io::BufRead::lines(reader) {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event:") {
            last_event = e.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            if last_event == "end" {
                end = Some(d.trim().to_owned());
                break;
            }
            data.push(d.trim().to_owned());
        }
    }
    let text = data.join("\n");
    let first = text.find("first line").expect(&text);
    let second = text.find("second line").expect(&text);
    assert!(first < second, "{text}");
    let end: Value = serde_json::from_str(&end.expect("an end event")).unwrap();
    assert_eq!(end["status"], "succeeded", "{end}");
    // The whole log downloads too.
    let log = server.get(&format!("/api/v1/jobs/{job}/log"));
    assert!(
        log.contains("first line") && log.contains("second line"),
        "{log}"
    );
}
