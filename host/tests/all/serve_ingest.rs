//! Group commit under concurrency: ~300 signed webhooks, some delivery ids
//! sent twice at once, each answer checked (202 new, 200 duplicate), then
//! `kill -9` right after the last answer and the SQLite file read without
//! a restart: every distinct delivery exactly once, none lost.

use std::collections::BTreeSet;

use crate::serve::{Setup, push_body, rows, sign};

#[test]
fn concurrent_webhooks_are_each_stored_once_and_survive_kill_9() {
    let setup = Setup::new("");
    let server = setup.start();
    const DISTINCT: usize = 200;
    const SENT: usize = 300;
    let body = push_body('b');
    let signature = sign(&body);
    // Request i carries delivery id i % DISTINCT: ids 0..100 go twice.
    let answers: Vec<(String, u16, serde_json::Value)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..16)
            .map(|c| {
                let (server, body, signature) = (&server, &body, &signature);
                scope.spawn(move || {
                    (c..SENT)
                        .step_by(16)
                        .map(|i| {
                            let id = format!("ingest-{}", i % DISTINCT);
                            let (status, json) =
                                server.webhook("github", "push", &id, body, signature);
                            (id, status, json)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    server.kill();

    assert_eq!(answers.len(), SENT);
    let mut new = BTreeSet::new();
    let mut duplicates = 0;
    for (id, status, json) in &answers {
        match status {
            202 => {
                assert_eq!(json["delivery"], id.as_str(), "{json}");
                assert!(json["id"].as_i64().is_some(), "{json}");
                assert!(new.insert(id.clone()), "{id} was answered 202 twice");
            }
            200 => {
                assert_eq!(json["duplicate"], true, "{json}");
                duplicates += 1;
            }
            other => panic!("{id}: status {other}: {json}"),
        }
    }
    assert_eq!(new.len(), DISTINCT, "every distinct delivery is new once");
    assert_eq!(duplicates, SENT - DISTINCT);

    let db = setup.data_dir().join("kiln.sqlite3");
    let (deliveries, events) = rows(&format!("sqlite://{}", db.display()));
    let stored: BTreeSet<String> = deliveries.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(deliveries.len(), DISTINCT, "no delivery stored twice");
    assert_eq!(stored, new, "exactly the deliveries answered 202");
    assert_eq!(events.len(), DISTINCT, "one push event per delivery");
}
