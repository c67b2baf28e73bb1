//! The pages against a real service built by [`crate::serve::start`] on a
//! SQLite database seeded with a finished run, driven through `oneshot`
//! (the browser test, `host/tests/all/ui_browser.rs`, drives a real
//! socket).

use std::path::Path;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use kiln_engine::job::JobStatus;
use kiln_engine::report::JobReport;
use serde_json::json;
use tower::ServiceExt as _;

use kiln_runtime::bindings::authz_types::Subject;

use crate::serve::db::Database;
use crate::serve::pipeline::store::{self, Attach, JobWrite};
use crate::serve::session::store::create as store_session;

struct Seeded {
    run: i64,
    failed_job: i64,
    private_project: i64,
}

fn report(attr: &str, status: JobStatus, log: Option<&Path>) -> JobReport {
    JobReport {
        attr: format!("x86_64-linux.{attr}"),
        system: "x86_64-linux".into(),
        drv_path: Some(format!(
            "/nix/store/00000000000000000000000000000000-{attr}.drv"
        )),
        outputs: [(
            "out".to_owned(),
            format!("/nix/store/00000000000000000000000000000000-{attr}"),
        )]
        .into(),
        status,
        error: (status == JobStatus::Failed).then(|| "builder failed with exit code 1".into()),
        failed_dependency: None,
        attempts: 1,
        duration_ms: 1500,
        log_path: log.map(|p| p.display().to_string()),
        post_build: Vec::new(),
    }
}

/// A public project with a failed run of three jobs (`lib`, `app` on
/// `lib`, failed `broken` with a log) and a private project with a run.
async fn seed(data: &Path) -> Seeded {
    let db = Database::open(None, &data.join("kiln.sqlite3"))
        .await
        .unwrap();
    let mut runs = Vec::new();
    for (name, private) in [("acme/widget", false), ("acme/secret", true)] {
        let (owner, repo) = name.split_once('/').unwrap();
        let project = store::upsert_project(
            &db,
            "github",
            &json!({"full_name": name, "owner": owner, "name": repo,
                    "clone_url": "file:///nonexistent.git", "default_branch": "main",
                    "private": private}),
            "configured",
        )
        .await
        .unwrap();
        let attached = store::attach(
            &db,
            &Attach {
                project: project.id,
                event: None,
                kind: "push",
                branch: Some("main".into()),
                pull_request: None,
                head_rev: "a".repeat(40),
                eval_rev: "a".repeat(40),
                tree: format!("{:0>40}", project.id),
                message: Some("Add the frobnicator".into()),
                trusted: true,
                error: None,
            },
        )
        .await
        .unwrap();
        let row = store::claim_run(&db, attached.run).await.unwrap().unwrap();
        runs.push((project.id, row.id, row.attempts));
    }
    let (_, run, attempt) = runs[0];
    let log = data.join("broken.log");
    std::fs::write(&log, "compiling\nerror: the frobnicator is <broken>\n").unwrap();
    let jobs = [
        report("lib", JobStatus::Succeeded, None),
        report("app", JobStatus::Succeeded, None),
        report("broken", JobStatus::Failed, Some(&log)),
    ];
    let writes: Vec<JobWrite> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| JobWrite {
            idx: i as u32,
            job: j.clone(),
            started_at: Some(1_700_000_000_000),
            finished_at: Some(1_700_000_001_500),
        })
        .collect();
    store::write_jobs(&db, run, &writes).await.unwrap();
    store::write_edges(&db, run, &[("x86_64-linux.app", "x86_64-linux.lib")])
        .await
        .unwrap();
    let summary = serde_json::to_string(&kiln_engine::report::Summary::of(&jobs)).unwrap();
    assert!(
        store::finish_run(&db, run, attempt, "failed", None, Some(&summary))
            .await
            .unwrap()
    );
    let (private_project, private_run, private_attempt) = runs[1];
    store::finish_run(&db, private_run, private_attempt, "succeeded", None, None)
        .await
        .unwrap();
    let failed_job: i64 = crate::serve::db::with_pool!(&db, pool => {
        sqlx::query_scalar("SELECT id FROM jobs WHERE run_id = $1 AND status = 'failed'")
            .bind(run)
            .fetch_one(pool)
            .await
    })
    .unwrap();
    Seeded {
        run,
        failed_job,
        private_project,
    }
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    call_as(app, "", method, uri, body).await
}

async fn call_as(
    app: &Router,
    cookie: &str,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("cookie", cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_show_the_seeded_run_and_refuse_what_they_must() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let seeded = seed(&data).await;
    let (_listener, app) = crate::serve::start(crate::serve::ServeArgs {
        config: None,
        listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(data.clone()),
    })
    .await
    .unwrap();
    let run = seeded.run;

    let (status, page) = call(&app, "GET", &format!("/runs/{run}"), "").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("id=\"run-state\""), "{page}");
    assert!(page.contains(">failed</span>"), "{page}");
    assert_eq!(page.matches("<a class=\"node status-").count(), 3, "{page}");
    assert_eq!(page.matches("<path class=\"edge").count(), 1, "{page}");
    assert_eq!(page.matches("<tr class=\"job status-").count(), 3, "{page}");
    assert!(page.contains("data-attr=\"x86_64-linux.broken\""), "{page}");
    assert!(page.contains("Add the frobnicator"), "{page}");
    // Signed out: a form with no CSRF token, and a sign-in link.
    assert!(
        page.contains(&format!("action=\"/runs/{run}/rebuild\"")),
        "{page}"
    );
    assert!(!page.contains("name=\"csrf\""), "{page}");
    assert!(page.contains("id=\"sign-in\""), "{page}");

    let (_, filtered) = call(&app, "GET", &format!("/runs/{run}?status=failed"), "").await;
    assert_eq!(filtered.matches("<tr class=\"job status-").count(), 1);
    assert!(
        filtered.contains("<tr class=\"job status-failed\">"),
        "{filtered}"
    );

    let (status, job) = call(&app, "GET", &format!("/jobs/{}", seeded.failed_job), "").await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert!(job.contains("id=\"job-status\""), "{job}");
    assert!(job.contains("<span class=\"line\" id=\"L1\">"), "{job}");
    assert!(
        job.contains("<span class=\"line error\" id=\"L2\">"),
        "{job}"
    );
    assert!(job.contains("the frobnicator is &lt;broken&gt;"), "{job}");
    assert!(
        !job.contains("data-live"),
        "a final job is not followed: {job}"
    );

    // The private project is hidden from an anonymous reader everywhere.
    let (_, index) = call(&app, "GET", "/", "").await;
    assert!(index.contains("acme/widget"), "{index}");
    assert!(!index.contains("acme/secret"), "{index}");
    let (status, _) = call(
        &app,
        "GET",
        &format!("/projects/{}", seeded.private_project),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, "GET", "/badge/acme/secret.svg", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, badge) = call(&app, "GET", "/badge/acme/widget.svg", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(badge.contains(">failed</text>"), "{badge}");

    // Control forms: refused signed out, with the reason; nothing changes.
    for path in [
        format!("/runs/{run}/rebuild"),
        format!("/runs/{run}/cancel"),
        format!("/jobs/{}/rebuild", seeded.failed_job),
    ] {
        let (status, page) = call(&app, "POST", &path, "csrf=forged").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {page}");
        assert!(page.contains("<p class=\"denied\">Sign in to"), "{page}");
    }
    let (status, _) = call(&app, "POST", &format!("/runs/{run}/explode"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, page) = call(&app, "GET", &format!("/runs/{run}"), "").await;
    assert!(page.contains(">failed</span>"), "still failed: {page}");

    // Signed in: a stranger is refused by the policy, with its reason; a
    // stale form is refused; a member of the owning organisation rebuilds.
    let db = Database::open(None, &data.join("kiln.sqlite3"))
        .await
        .unwrap();
    let cookie = |token: String| format!("{}={token}", crate::serve::session::SESSION_COOKIE);
    let subject = |name: &str, orgs: &[&str]| Subject {
        id: name.into(),
        name: name.into(),
        provider: "gh".into(),
        admin: false,
        organisations: orgs.iter().map(|o| (*o).to_owned()).collect(),
        teams: Vec::new(),
    };
    let stranger = cookie(
        store_session(&db, &subject("mallory", &["other"]))
            .await
            .unwrap(),
    );
    let member = cookie(
        store_session(&db, &subject("octocat", &["acme"]))
            .await
            .unwrap(),
    );
    let csrf_of = |page: &str| {
        page.split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a csrf field for a signed-in viewer")
            .to_owned()
    };
    let (_, page) = call_as(&app, &stranger, "GET", &format!("/runs/{run}"), "").await;
    assert!(page.contains("<span id=\"user\">mallory</span>"), "{page}");
    let csrf = csrf_of(&page);
    let rebuild = format!("/runs/{run}/rebuild");
    let (status, page) = call_as(&app, &stranger, "POST", &rebuild, &format!("csrf={csrf}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    let reason = page
        .split("<p class=\"denied\">")
        .nth(1)
        .unwrap_or_default();
    assert!(
        !reason.starts_with("Sign in") && !reason.contains("CSRF") && reason.len() > 10,
        "the policy's reason: {page}"
    );
    let (_, page) = call_as(&app, &member, "GET", &format!("/runs/{run}"), "").await;
    let csrf = csrf_of(&page);
    let (status, page) = call_as(&app, &member, "POST", &rebuild, "csrf=stale").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("CSRF"), "{page}");
    let (status, page) = call_as(&app, &member, "POST", &rebuild, &format!("csrf={csrf}")).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    let detail = crate::serve::api::runs::by_id(&db, run)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(detail.state, "failed", "queued again: {detail:?}");

    let (status, page) = call(&app, "GET", "/runs/999999", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("no run 999999"), "{page}");
    let (_, workers) = call(&app, "GET", "/workers", "").await;
    assert!(workers.contains("build slots in use"), "{workers}");
    let (_, plugins) = call(&app, "GET", "/plugins", "").await;
    assert!(plugins.contains("authz-default"), "{plugins}");
}

/// `[serve] authz` swaps the policy: a plugin from the plugin directory
/// decides (the plugins page marks it), and a name that is no authz plugin
/// stops the start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_swaps_in_their_own_policy_plugin() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        Path::new(crate::builtin::WASM_DIR).join("kiln_test_authz.wasm"),
        plugins.join("kiln_test_authz.wasm"),
    )
    .unwrap();
    let start = |authz: &str, name: &str| {
        let config = tmp.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[plugins]\ndirectory = \"{}\"\n[serve]\nauthz = \"{authz}\"\npoll_interval_secs = 0\n",
                plugins.display()
            ),
        )
        .unwrap();
        crate::serve::start(crate::serve::ServeArgs {
            config: Some(config),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(tmp.path().join(name)),
        })
    };
    let (_listener, app) = start("kiln-test-authz", "swapped").await.unwrap();
    let (_, page) = call(&app, "GET", "/plugins", "").await;
    let policy = page
        .split("<tr class=\"plugin\">")
        .filter(|row| row.contains("(policy)"))
        .collect::<Vec<_>>();
    assert_eq!(policy.len(), 1, "{page}");
    assert!(policy[0].contains("kiln-test-authz"), "{page}");

    for (authz, why) in [
        ("github", "is a forge plugin, not an authz plugin"),
        ("no-such-policy", "no such plugin is installed"),
    ] {
        let err = start(authz, authz).await.expect_err("refused");
        assert!(format!("{err:#}").contains(why), "{err:#}");
    }
}
