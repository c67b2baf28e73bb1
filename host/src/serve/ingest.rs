//! Group commit of webhook deliveries: one writer task takes deliveries
//! from a channel, stores everything waiting (up to [`MAX_BATCH`]) in one
//! transaction, commits once, and only then answers each waiting request.
//! An answered delivery is therefore as durable as with one transaction
//! per request, but one fsync covers a whole batch.
//!
//! When a batch transaction fails, its deliveries are stored again one
//! transaction each, so one bad delivery does not fail the others.

use tokio::sync::{mpsc, oneshot};

use super::db::{Database, NewDelivery, Stored};

/// Most deliveries written in one transaction.
pub const MAX_BATCH: usize = 512;

/// Environment switch for the largest batch (`1` = one transaction per
/// request, the baseline `kiln bench ingest` compares against).
pub const BATCH_ENV: &str = "KILN_INGEST_BATCH";

type Answer = oneshot::Sender<Result<Stored, sqlx::Error>>;

/// The handle request handlers send deliveries to.
#[derive(Debug, Clone)]
pub struct Ingest {
    tx: mpsc::Sender<(NewDelivery, Answer)>,
}

impl Ingest {
    /// Start the writer task on `db`; batches hold at most `max_batch`
    /// deliveries (`KILN_INGEST_BATCH` overrides [`MAX_BATCH`] when None).
    pub fn start(db: Database, max_batch: Option<usize>) -> Self {
        let max_batch = max_batch
            .or_else(|| std::env::var(BATCH_ENV).ok()?.parse().ok())
            .unwrap_or(MAX_BATCH)
            .clamp(1, MAX_BATCH);
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(writer(db, rx, max_batch));
        Ingest { tx }
    }

    /// Store a delivery; returns once the transaction holding it committed.
    pub async fn store(&self, d: NewDelivery) -> Result<Stored, sqlx::Error> {
        let (answer, wait) = oneshot::channel();
        self.tx
            .send((d, answer))
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        wait.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn writer(db: Database, mut rx: mpsc::Receiver<(NewDelivery, Answer)>, max_batch: usize) {
    let mut waiting = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut waiting, max_batch).await > 0 {
        let (batch, answers): (Vec<NewDelivery>, Vec<Answer>) = waiting.drain(..).unzip();
        match db.store_batch(&batch).await {
            Ok(stored) => {
                for (answer, s) in answers.into_iter().zip(stored) {
                    let _ = answer.send(Ok(s));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(answer) = answers.into_iter().next() {
                    let _ = answer.send(Err(e));
                }
            }
            Err(e) => {
                tracing::warn!(
                    deliveries = batch.len(),
                    error = %e,
                    "a batch of webhook deliveries failed; storing them one by one"
                );
                for (d, answer) in batch.iter().zip(answers) {
                    let _ = answer.send(db.store(d).await);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: &str) -> NewDelivery {
        NewDelivery {
            forge: "gh".into(),
            delivery: id.into(),
            received_at: 1,
            headers: "[]".into(),
            path: "/".into(),
            body: b"{}".to_vec(),
            status: "received",
            error: None,
            retry_at: None,
            events: vec![],
        }
    }

    /// Concurrent stores with repeated ids: each id is new exactly once.
    #[tokio::test]
    async fn duplicates_are_exact_within_and_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(None, &dir.path().join("k.sqlite3"))
            .await
            .unwrap();
        let ingest = Ingest::start(db.clone(), Some(64));
        let mut tasks = Vec::new();
        for i in 0..600 {
            let ingest = ingest.clone();
            tasks.push(tokio::spawn(async move {
                ingest
                    .store(delivery(&format!("d{}", i % 200)))
                    .await
                    .unwrap()
            }));
        }
        let mut new = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Stored::New(_)) {
                new += 1;
            }
        }
        assert_eq!(new, 200);
        assert_eq!(db.count_deliveries().await.unwrap(), 200);
    }

    /// A delivery the database refuses fails its batch; the others of that
    /// batch are then stored one by one, and only it gets the error.
    #[tokio::test]
    async fn one_refused_delivery_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(None, &dir.path().join("k.sqlite3"))
            .await
            .unwrap();
        let ingest = Ingest::start(db.clone(), Some(64));
        // All sent before the writer runs again (one thread): one batch.
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let ingest = ingest.clone();
                let mut d = delivery(&format!("b{i}"));
                if i == 4 {
                    // Not a status the table's CHECK allows.
                    d.status = "bogus";
                }
                tokio::spawn(async move { ingest.store(d).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        for (i, r) in results.iter().enumerate() {
            if i == 4 {
                assert!(r.is_err(), "the refused delivery: {r:?}");
            } else {
                assert!(matches!(r, Ok(Stored::New(_))), "delivery {i}: {r:?}");
            }
        }
        assert_eq!(db.count_deliveries().await.unwrap(), 9);
    }
}
