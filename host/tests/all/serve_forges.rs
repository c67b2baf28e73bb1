//! `kiln serve` end to end with the `gitea` and `gerrit` forge plugins: the
//! real binary, a stand-in forge (`tests/servers/gitea.py`,
//! `tests/servers/gerrit.py`) that checks and records what it receives and
//! serves the project's bare repository over git's smart HTTP behind its own
//! authentication (so the plugin's clone credentials are what lets Kiln
//! fetch), and real Nix builds of salted checks.
//!
//! Gitea: signed push and pull-request webhooks → commit statuses (contexts,
//! states, links) on the pushed commit and the pull request's head; a wrong
//! signature is 401 and stores nothing. Gerrit: `patchset-created` webhooks
//! authenticated by the token in the URL path, the change read again over
//! REST and fetched from its `refs/changes/…` ref → a `Verified` review per
//! patchset, -1 listing the failed checks with links, +1 once they pass;
//! `ref-updated` of the branch shares the run of its tree and posts no
//! review; a wrong path token is 401 and stores nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::serve_support::{Fake, Project, forge_config, git, post, stored, wait_for};
use crate::service::Server;

/// How long a run of a few tiny checks may take to reach its final state.
const FINAL_SECS: u64 = 90;

/// The checks every project starts with: one passes, one fails.
const CHECKS: [(&str, &str); 2] = [
    ("ok", "true"),
    ("broken", "echo the frobnicator is broken >&2; exit 1"),
];

// ---------------------------------------------------------------- Gitea

const GITEA_SECRET: &str = "gitea end-to-end webhook secret";
const GITEA_TOKEN: &str = "gitea_e2e_token_7c1f";
const GITEA_REPO: &str = "acme/widget";

/// The latest (state, description, target URL) of each context on `sha`.
type Latest = BTreeMap<String, (String, String, String)>;

/// The fake Gitea's statuses.
impl Fake {
    fn statuses(&self, sha: &str) -> Vec<Value> {
        self.state()["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["sha"] == sha)
            .cloned()
            .collect()
    }

    fn latest(&self, sha: &str) -> Latest {
        self.statuses(sha)
            .into_iter()
            .map(|s| {
                let text = |k: &str| s[k].as_str().unwrap().to_owned();
                (
                    text("context"),
                    (text("state"), text("description"), text("target_url")),
                )
            })
            .collect()
    }

    /// The latest states on `sha` once `kiln/nix-build` is final there.
    fn wait_final(&self, sha: &str, server: &Server) -> Latest {
        wait_for(
            server,
            FINAL_SECS,
            &format!("no final kiln/nix-build on {sha}"),
            || {
                let done = self
                    .latest(sha)
                    .get("kiln/nix-build")
                    .is_some_and(|s| s.0 != "pending");
                done.then_some(())
            },
        );
        // Per-attribute statuses follow the aggregate closely.
        std::thread::sleep(std::time::Duration::from_millis(500));
        self.latest(sha)
    }
}

fn gitea_sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(GITEA_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn gitea_config(project: &Project, gitea: &Fake) -> PathBuf {
    let settings = format!("url = \"{}\"\nprojects = [\"{GITEA_REPO}\"]", gitea.base());
    let secrets = [
        ("gitea-webhook-secret", GITEA_SECRET),
        ("gitea-token", GITEA_TOKEN),
    ];
    forge_config(project, gitea, "gitea", &settings, &secrets, "")
}

/// The fixture's repository as `acme/widget` (private, so only the token
/// fetches it) on the fake Gitea.
fn gitea_repository(gitea: &Fake) -> Value {
    let fixture: Value = serde_json::from_str(include_str!(
        "../../../plugins/gitea/tests/fixtures/push.json"
    ))
    .unwrap();
    let mut r = fixture["repository"].clone();
    r["id"] = json!(77);
    r["name"] = json!("widget");
    r["full_name"] = json!(GITEA_REPO);
    r["owner"]["login"] = json!("acme");
    r["owner"]["username"] = json!("acme");
    r["html_url"] = json!(format!("{}/{GITEA_REPO}", gitea.base()));
    r["clone_url"] = json!(format!("{}/{GITEA_REPO}.git", gitea.base()));
    r["default_branch"] = json!("main");
    r["private"] = json!(true);
    r
}

/// POST a Gitea delivery of `event` signed with `signature`.
fn gitea_deliver(
    server: &Server,
    event: &str,
    delivery: &str,
    body: &str,
    signature: &str,
) -> (u16, Value) {
    post(
        server,
        "/webhooks/gitea",
        &[
            ("X-Gitea-Event", event),
            ("X-Gitea-Event-Type", event),
            ("X-Gitea-Delivery", delivery),
            ("X-Gitea-Signature", signature),
        ],
        body,
    )
}

/// A push of `branch` to `after`, as Gitea delivers it.
fn gitea_push(gitea: &Fake, branch: &str, after: &str, message: &str) -> String {
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/gitea/tests/fixtures/push.json"
    ))
    .unwrap();
    body["ref"] = json!(format!("refs/heads/{branch}"));
    body["before"] = json!("0".repeat(40));
    body["after"] = json!(after);
    body["head_commit"]["id"] = json!(after);
    body["head_commit"]["message"] = json!(message);
    body["repository"] = gitea_repository(gitea);
    body.to_string()
}

/// Pull request `number` from `branch` at `head` into `main`, opened by
/// the repository's owner from the repository itself.
fn gitea_pull_request(gitea: &Fake, number: u64, branch: &str, head: &str, base: &str) -> String {
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/gitea/tests/fixtures/pull_request_opened.json"
    ))
    .unwrap();
    let repository = gitea_repository(gitea);
    body["action"] = json!("opened");
    body["number"] = json!(number);
    body["repository"] = repository.clone();
    let pr = &mut body["pull_request"];
    pr["number"] = json!(number);
    pr["user"]["login"] = json!("acme");
    pr["user"]["username"] = json!("acme");
    pr["html_url"] = json!(format!("{}/{GITEA_REPO}/pulls/{number}", gitea.base()));
    pr["head"]["ref"] = json!(branch);
    pr["head"]["label"] = json!(branch);
    pr["head"]["sha"] = json!(head);
    pr["head"]["repo"] = repository.clone();
    pr["head"]["repo_id"] = json!(77);
    pr["base"]["ref"] = json!("main");
    pr["base"]["label"] = json!("main");
    pr["base"]["sha"] = json!(base);
    pr["base"]["repo"] = repository;
    pr["base"]["repo_id"] = json!(77);
    body.to_string()
}

#[test]
fn gitea_pushes_and_pull_requests_get_commit_statuses_on_their_heads() {
    let project = Project::new(GITEA_REPO, &CHECKS);
    let gitea = Fake::start("gitea.py", &project, &["--token", GITEA_TOKEN]);
    let server = project.serve(&gitea_config(&project, &gitea));
    let main = project.head();

    // A wrong signature: 401, nothing stored.
    let body = gitea_push(&gitea, "main", &main, "Add checks");
    let forged = gitea_sign(&format!("{body} "));
    let (status, answer) = gitea_deliver(&server, "push", "forged-1", &body, &forged);
    assert_eq!(status, 401, "{answer}");
    assert_eq!(stored(&project), (0, 0), "a forged delivery was stored");

    let (status, answer) = gitea_deliver(&server, "push", "push-1", &body, &gitea_sign(&body));
    assert_eq!(status, 202, "{answer}: {}", server.stderr());
    let latest = gitea.wait_final(&main, &server);
    let eval = &latest["kiln/nix-eval"];
    assert_eq!(
        (eval.0.as_str(), eval.1.as_str()),
        ("success", "2 jobs evaluated")
    );
    let build = &latest["kiln/nix-build"];
    assert_eq!(build.0, "failure", "{latest:?}");
    assert!(
        build.1.starts_with("1 of 2 failed: x86_64-linux.broken"),
        "{latest:?}"
    );
    for context in ["kiln/nix-eval", "kiln/nix-build"] {
        let url = &latest[context].2;
        assert!(
            url.starts_with("http://kiln.test/api/v1/runs/"),
            "{context}: {url}"
        );
    }
    let broken = &latest["kiln/nix-build/x86_64-linux.broken"];
    assert_eq!(broken.0, "failure", "{latest:?}");
    assert!(broken.1.contains("Build failed"), "{broken:?}");
    assert!(
        broken.2.starts_with("http://kiln.test/api/v1/jobs/") && broken.2.ends_with("/log"),
        "{broken:?}"
    );
    assert!(
        !latest.contains_key("kiln/nix-build/x86_64-linux.ok"),
        "a passing check gets no status of its own: {latest:?}"
    );
    // While the run went on, its statuses were pending first.
    let first = gitea.statuses(&main);
    assert!(
        first
            .iter()
            .any(|s| s["context"] == "kiln/nix-build" && s["state"] == "pending"),
        "{first:?}"
    );

    // A pull request that fixes the broken check, from a branch.
    git(&project.work(), &["checkout", "-q", "-b", "fix"]);
    project.write_flake(&[("ok", "true"), ("broken", "true")]);
    let head = project.commit_and_push("refs/heads/fix", "Fix the frobnicator");
    let body = gitea_pull_request(&gitea, 3, "fix", &head, &main);
    let (status, answer) =
        gitea_deliver(&server, "pull_request", "pr-3", &body, &gitea_sign(&body));
    assert_eq!(status, 202, "{answer}");
    let latest = gitea.wait_final(&head, &server);
    assert_eq!(latest["kiln/nix-eval"].0, "success", "{latest:?}");
    assert_eq!(
        (
            latest["kiln/nix-build"].0.as_str(),
            latest["kiln/nix-build"].1.as_str()
        ),
        ("success", "1 built, 1 cached"),
        "{latest:?}"
    );
    // Statuses go on the pushed commit and the head, never on the merge
    // commit that was evaluated.
    let state = gitea.state();
    let shas: std::collections::BTreeSet<&str> = state["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sha"].as_str().unwrap())
        .collect();
    assert_eq!(shas, [main.as_str(), head.as_str()].into_iter().collect());
    assert!(
        state["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["repository"] == GITEA_REPO),
        "{state}"
    );
    assert_eq!(state["refused"], json!([]), "every status was accepted");
    let runs: Vec<(String, Option<i64>, i64)> =
        project.query("SELECT rev, pull_request, trusted FROM runs ORDER BY id");
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[1].1, Some(3));
    assert_eq!(runs[1].2, 1, "the owner's pull request is trusted");
    assert_ne!(runs[1].0, head, "the merge was evaluated");
    let mirror = project.path().join("data/mirrors/gitea/acme/widget.git");
    let parents = git(&mirror, &["log", "-1", "--format=%P", &runs[1].0]);
    assert_eq!(parents, format!("{main} {head}"));

    // Kiln fetched the private repository with the plugin's credentials:
    // user `kiln` and the token, and nothing was fetched without them.
    let fetches = state["git"].as_array().unwrap();
    let served: Vec<&Value> = fetches.iter().filter(|g| g["status"] == 200).collect();
    assert!(
        served
            .iter()
            .any(|g| g["path"] == "/acme/widget.git/git-upload-pack"),
        "{fetches:?}"
    );
    assert!(served.iter().all(|g| g["user"] == "kiln"), "{fetches:?}");
    assert!(
        fetches
            .iter()
            .all(|g| g["status"] == 200 || g["status"] == 401),
        "{fetches:?}"
    );

    // A forged pull request after all that still stores nothing.
    let before = stored(&project);
    let (status, _) = gitea_deliver(
        &server,
        "pull_request",
        "pr-3-forged",
        &body,
        &"0".repeat(64),
    );
    assert_eq!(status, 401);
    assert_eq!(stored(&project), before);
}

// ---------------------------------------------------------------- Gerrit

const GERRIT_TOKEN: &str = "gerrit-e2e-path-token-5d0b9c";
const GERRIT_USER: &str = "kiln-bot";
const GERRIT_PASSWORD: &str = "gerrit e2e http password";
const GERRIT_PROJECT: &str = "infra/widget";
const GERRIT_GROUP: &str = "nix-maintainers";

fn gerrit_config(project: &Project, gerrit: &Fake) -> PathBuf {
    let settings = format!(
        "url = \"{base}\"\ngit_url = \"{base}/a\"\nprojects = [\"{GERRIT_PROJECT}\"]\ntrusted_group = \"{GERRIT_GROUP}\"",
        base = gerrit.base()
    );
    let secrets = [
        ("gerrit-webhook-token", GERRIT_TOKEN),
        ("gerrit-username", GERRIT_USER),
        ("gerrit-password", GERRIT_PASSWORD),
    ];
    forge_config(
        project,
        gerrit,
        "gerrit",
        &settings,
        &secrets,
        "kv = true\n",
    )
}

/// `refs/changes/NN/NUMBER/PATCHSET`.
fn change_ref(number: u64, patchset: u64) -> String {
    format!("refs/changes/{:02}/{number}/{patchset}", number % 100)
}

/// `patchset-created` for patchset `patchset` (at `rev`) of change
/// `number`, as Gerrit's webhooks plugin posts it.
fn patchset_created(number: u64, patchset: u64, rev: &str, parent: &str) -> String {
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/gerrit/tests/fixtures/patchset-created.json"
    ))
    .unwrap();
    body["project"] = json!(GERRIT_PROJECT);
    body["change"]["project"] = json!(GERRIT_PROJECT);
    body["change"]["number"] = json!(number);
    body["change"]["branch"] = json!("main");
    body["change"]["url"] = json!(format!("http://gerrit.test/c/{GERRIT_PROJECT}/+/{number}"));
    body["patchSet"]["number"] = json!(patchset);
    body["patchSet"]["revision"] = json!(rev);
    body["patchSet"]["parents"] = json!([parent]);
    body["patchSet"]["ref"] = json!(change_ref(number, patchset));
    body.to_string()
}

/// The reviews the fake Gerrit recorded on `patchset` of change `number`.
fn reviews(gerrit: &Fake, number: u64, patchset: u64) -> Vec<Value> {
    gerrit.state()["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["change"] == number && r["patchset"] == patchset)
        .cloned()
        .collect()
}

/// The one voting review of `patchset`, once it arrives.
fn wait_vote(gerrit: &Fake, server: &Server, number: u64, patchset: u64) -> Value {
    wait_for(
        server,
        FINAL_SECS,
        &format!("no vote on patchset {patchset} of change {number}"),
        || {
            reviews(gerrit, number, patchset)
                .into_iter()
                .find(|r| r["labels"].get("Verified").is_some())
        },
    )
}

#[test]
fn gerrit_patchsets_are_fetched_from_their_change_refs_and_voted_on() {
    let project = Project::new(GERRIT_PROJECT, &CHECKS);
    let gerrit = Fake::start(
        "gerrit.py",
        &project,
        &[
            "--username",
            GERRIT_USER,
            "--password",
            GERRIT_PASSWORD,
            "--group",
            GERRIT_GROUP,
        ],
    );
    let server = project.serve(&gerrit_config(&project, &gerrit));
    let main = project.head();

    // Patchset 1 of change 1234 adds a check and keeps the broken one. It
    // exists only under its change ref, as Gerrit keeps it.
    git(&project.work(), &["checkout", "-q", "--detach"]);
    project.write_flake(&[CHECKS[0], CHECKS[1], ("extra", "true")]);
    let first = project.commit_and_push(&change_ref(1234, 1), "Add a check");
    let body = patchset_created(1234, 1, &first, &main);

    // The token in the path is the only proof: a wrong one, or none, is
    // 401 and nothing is stored.
    for path in ["/webhooks/gerrit/not-the-token", "/webhooks/gerrit"] {
        let (status, answer) = post(&server, path, &[], &body);
        assert_eq!(status, 401, "{path}: {answer}");
    }
    assert_eq!(
        stored(&project),
        (0, 0),
        "an unauthenticated event was stored"
    );

    let path = format!("/webhooks/gerrit/{GERRIT_TOKEN}");
    let (status, answer) = post(&server, &path, &[], &body);
    assert_eq!(status, 202, "{answer}: {}", server.stderr());
    let vote = wait_vote(&gerrit, &server, 1234, 1);
    assert_eq!(vote["labels"], json!({"Verified": -1}), "{vote}");
    assert_eq!(vote["revision"], first.as_str());
    assert_eq!(vote["tag"], "autogenerated:kiln");
    assert_eq!(vote["notify"], "OWNER");
    let message = vote["message"].as_str().unwrap();
    assert!(
        message.starts_with("Kiln built this patchset: some checks failed.\n1 of 3 failed"),
        "{message}"
    );
    let listed: Vec<&str> = message
        .lines()
        .skip_while(|l| *l != "Failed checks:")
        .skip(1)
        .take_while(|l| l.starts_with("* "))
        .collect();
    assert_eq!(listed.len(), 1, "{message}");
    let (attr, link) = listed[0][2..].split_once(": ").unwrap();
    assert_eq!(attr, "x86_64-linux.broken", "{message}");
    assert!(
        link.starts_with("http://kiln.test/api/v1/jobs/") && link.ends_with("/log"),
        "{message}"
    );
    assert!(
        message.contains("\nDetails: http://kiln.test/api/v1/runs/"),
        "{message}"
    );

    // Patchset 2 fixes it: a vote of +1 on the new revision.
    project.write_flake(&[("ok", "true"), ("broken", "true"), ("extra", "true")]);
    git(&project.work(), &["add", "-A"]);
    git(
        &project.work(),
        &[
            "commit",
            "-q",
            "--amend",
            "-m",
            "Add a check, fix the frobnicator",
        ],
    );
    git(
        &project.work(),
        &[
            "push",
            "-q",
            "origin",
            &format!("HEAD:{}", change_ref(1234, 2)),
        ],
    );
    let second = project.head();
    let body = patchset_created(1234, 2, &second, &main);
    let (status, answer) = post(&server, &path, &[], &body);
    assert_eq!(status, 202, "{answer}");
    let vote = wait_vote(&gerrit, &server, 1234, 2);
    assert_eq!(vote["labels"], json!({"Verified": 1}), "{vote}");
    assert_eq!(vote["revision"], second.as_str());
    let message = vote["message"].as_str().unwrap();
    assert!(
        message.starts_with("Kiln built this patchset: all checks passed.\n"),
        "{message}"
    );
    assert!(!message.contains("Failed checks"), "{message}");

    // One vote per patchset: per-attribute and pending states post nothing.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(reviews(&gerrit, 1234, 1).len(), 1, "{}", gerrit.state());
    assert_eq!(reviews(&gerrit, 1234, 2).len(), 1, "{}", gerrit.state());

    // Both patchsets were built as the change merged into main, with the
    // change's ref as the line and the owner trusted through the group.
    let targets: Vec<(String, Option<String>, Option<i64>, String)> =
        project.query("SELECT kind, branch, pull_request, rev FROM targets ORDER BY id");
    assert_eq!(
        targets,
        [
            (
                "pull_request".into(),
                Some(change_ref(1234, 1)),
                Some(1234),
                first.clone()
            ),
            (
                "pull_request".into(),
                Some(change_ref(1234, 2)),
                Some(1234),
                second.clone()
            ),
        ]
    );
    let runs: Vec<(String, i64)> = project.query("SELECT rev, trusted FROM runs ORDER BY id");
    let mirror = project.path().join("data/mirrors/gerrit/infra/widget.git");
    for ((rev, trusted), head) in runs.iter().zip([&first, &second]) {
        assert_eq!(*trusted, 1, "ada is in {GERRIT_GROUP}");
        let parents = git(&mirror, &["log", "-1", "--format=%P", rev]);
        assert_eq!(parents, format!("{main} {head}"));
    }

    // Submitted: main moves to patchset 2. The branch shares the run of the
    // same tree, and a branch gets no review.
    git(
        &project.work(),
        &["push", "-q", "origin", "HEAD:refs/heads/main"],
    );
    let mut body: Value = serde_json::from_str(include_str!(
        "../../../plugins/gerrit/tests/fixtures/ref-updated.json"
    ))
    .unwrap();
    body["refUpdate"] = json!({
        "oldRev": main, "newRev": second, "refName": "refs/heads/main", "project": GERRIT_PROJECT,
    });
    let (status, answer) = post(&server, &path, &[], &body.to_string());
    assert_eq!(status, 202, "{answer}");
    wait_for(&server, FINAL_SECS, "the push became no target", || {
        (project.count("SELECT COUNT(*) FROM targets") == 3).then_some(())
    });
    let push: Vec<(String, Option<String>, String, i64)> = project.query(
        "SELECT kind, branch, rev, (SELECT COUNT(*) FROM runs) FROM targets ORDER BY id DESC LIMIT 1",
    );
    assert_eq!(
        push,
        [("push".into(), Some("main".into()), second.clone(), 2)]
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(gerrit.state()["reviews"].as_array().unwrap().len(), 2);

    // Each change was read again over REST before it was built, the pushed
    // commit for its message, and the repository was fetched with the
    // account's password.
    let state = gerrit.state();
    let commit_read = format!("/a/projects/infra%2Fwidget/commits/{second}");
    assert!(
        state["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["target"] == commit_read.as_str()),
        "{state}"
    );
    let reads = state["requests"].as_array().unwrap();
    let change_reads = reads
        .iter()
        .filter(|r| {
            r["target"]
                .as_str()
                .unwrap()
                .starts_with("/a/changes/infra%2Fwidget~1234?")
        })
        .count();
    assert_eq!(change_reads, 2, "{reads:?}");
    let fetched = state["git"].as_array().unwrap();
    assert!(
        fetched
            .iter()
            .any(|g| g["path"] == "/a/infra/widget/git-upload-pack" && g["status"] == 200),
        "{fetched:?}"
    );
}
