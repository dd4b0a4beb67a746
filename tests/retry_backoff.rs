//! A row's retry delay is jittered: the statements the relay and
//! memory-sync run when a row fails, run on many rows against the real
//! PostgreSQL 15 the test starts, spread the rows' next attempts between
//! half and all of the backoff (0.5 s doubling, at most 5 min), and
//! memory-sync still never retries before the backend's Retry-After.

mod support;

use std::time::{Duration, SystemTime};

use support::servers::Postgres;
use tokio_postgres::types::ToSql;
use warden::config::types::TableName;
use warden::services::memory::sql::Queue;
use warden::services::outbox::sql::Outbox;

/// Rows failed together in each scenario: enough that a spread over the
/// whole range is certain (the chance that none of 400 uniform draws
/// falls in a given tenth of it is below 1e-18).
const ROWS: i64 = 400;

/// The claim every test row is held under: a whole second, so that
/// PostgreSQL's microseconds hold it exactly.
fn claim() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(pg: &Postgres) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.dsn, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// Puts `ROWS` rows of `table` (emptied first) in `sending` under
/// [`claim`], each having failed `retry_count` times already; runs `retry`
/// on each in one transaction with the parameters `params(id)` gives, and
/// answers each row's delay: `next_attempt_at - now()` in seconds (`now()`
/// is the transaction's start, the `now()` of the statements).
async fn delays(
    client: &mut tokio_postgres::Client,
    table: &str,
    insert_columns: &str,
    retry_count: i32,
    retry: &str,
    params: &dyn Fn(&i64) -> Vec<Box<dyn ToSql + Sync>>,
) -> Vec<f64> {
    client
        .batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    let ids: Vec<i64> = client
        .query(
            &format!(
                "INSERT INTO {table} ({insert_columns}, status, claimed_until, retry_count)
                 SELECT {}, 'sending', $1, $2 FROM generate_series(1, {ROWS}) n RETURNING id",
                if insert_columns.starts_with("topic") {
                    "'t', jsonb_build_object('n', n)"
                } else {
                    "jsonb_build_object('n', n)"
                }
            ),
            &[&claim(), &retry_count],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let tx = client.transaction().await.unwrap();
    let stmt = tx.prepare(retry).await.unwrap();
    for id in &ids {
        let p = params(id);
        let refs: Vec<&(dyn ToSql + Sync)> = p.iter().map(|b| b.as_ref()).collect();
        let row = tx.query_opt(&stmt, &refs).await.unwrap();
        let row = row.expect("the row was still claimed");
        // Whether it failed is the statement's last column.
        let failed: bool = row.get(row.len() - 1);
        assert!(!failed, "row {id} failed instead of being retried");
    }
    let delays = tx
        .query(
            &format!(
                "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float8 FROM {table}
                 WHERE status = 'pending' ORDER BY id"
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect::<Vec<f64>>();
    tx.commit().await.unwrap();
    assert_eq!(delays.len() as i64, ROWS, "every row is pending again");
    delays
}

/// Every delay lies in `[low, high)`, and they spread over it: some in
/// its lowest tenth, some in its highest, and nearly all differ.
fn assert_spread(what: &str, delays: &[f64], low: f64, high: f64) {
    let (min, max) = delays
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &d| (a.min(d), b.max(d)));
    assert!(
        min >= low && max < high,
        "{what}: delays from {min} to {max} s, outside [{low}, {high})"
    );
    let tenth = (high - low) / 10.0;
    assert!(
        min < low + tenth && max >= high - tenth,
        "{what}: delays from {min} to {max} s do not spread over [{low}, {high})"
    );
    let mut sorted = delays.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    // Times are in microseconds: over a quarter of a second, two of 400
    // rows share one about a third of the time. Without jitter all share
    // one.
    assert!(
        sorted.len() * 10 >= delays.len() * 9,
        "{what}: rows that failed together share a retry time ({} distinct of {})",
        sorted.len(),
        delays.len()
    );
}

#[test]
fn refused_outbox_rows_come_back_spread_between_half_and_all_of_the_backoff() {
    let pg = Postgres::start();
    rt().block_on(async {
        let mut client = connect(&pg).await;
        let table = TableName::new("message_outbox").unwrap();
        let outbox = Outbox::new(&table);
        warden::services::data::adopt(
            &client,
            &outbox.leased().table,
            &outbox.create_tx(),
            &outbox.indexes(),
        )
        .await
        .unwrap();
        // The statement the relay runs: a batch's refused rows at once
        // (here one at a time, to read each row's delay).
        let retry = outbox.retry_many();
        let params = |id: &i64| -> Vec<Box<dyn ToSql + Sync>> {
            vec![
                Box::new(vec![*id]),
                Box::new(vec!["WRONGTYPE".to_string()]),
                Box::new(100i32),
                Box::new(claim()),
            ]
        };
        // First failure: 0.5 s; the fourth: 4 s; long after, the 5 min cap.
        for (retry_count, backoff) in [(0, 0.5), (3, 4.0), (20, 300.0), (40, 300.0)] {
            let d = delays(
                &mut client,
                "message_outbox",
                "topic, payload",
                retry_count,
                &retry,
                &params,
            )
            .await;
            assert_spread(
                &format!("outbox, retry_count {retry_count}"),
                &d,
                backoff / 2.0,
                backoff,
            );
        }
    });
}

#[test]
fn memory_rows_are_jittered_and_never_retried_before_retry_after() {
    let pg = Postgres::start();
    rt().block_on(async {
        let mut client = connect(&pg).await;
        let table = TableName::new("memory_write_outbox").unwrap();
        let outbox = TableName::new("message_outbox").unwrap();
        let o = Outbox::new(&outbox);
        warden::services::data::adopt(&client, &o.leased().table, &o.create_tx(), &o.indexes())
            .await
            .unwrap();
        let queue = Queue::new(&table, &outbox);
        warden::services::data::adopt(
            &client,
            &queue.leased().table,
            &queue.create_tx(),
            &queue.indexes(),
        )
        .await
        .unwrap();
        let retry = queue.retry();
        let with_retry_after = |after: f64| {
            move |id: &i64| -> Vec<Box<dyn ToSql + Sync>> {
                vec![
                    Box::new(*id),
                    Box::new("HTTP 503".to_string()),
                    Box::new(100i32),
                    Box::new(claim()),
                    Box::new(after),
                    Box::new(false),
                ]
            }
        };
        // Without Retry-After: the jittered backoff, capped.
        for (retry_count, backoff) in [(0, 0.5), (5, 16.0), (20, 300.0)] {
            let d = delays(
                &mut client,
                "memory_write_outbox",
                "payload",
                retry_count,
                &retry,
                &with_retry_after(0.0),
            )
            .await;
            assert_spread(
                &format!("memory, retry_count {retry_count}"),
                &d,
                backoff / 2.0,
                backoff,
            );
        }
        // A Retry-After above the backoff is the delay.
        let d = delays(
            &mut client,
            "memory_write_outbox",
            "payload",
            0,
            &retry,
            &with_retry_after(120.0),
        )
        .await;
        assert!(d.iter().all(|&s| s == 120.0), "{d:?}");
        // Within the jitter's range, it is a floor: no row comes back
        // before it; the rest keep their spread up to the cap.
        let d = delays(
            &mut client,
            "memory_write_outbox",
            "payload",
            20,
            &retry,
            &with_retry_after(200.0),
        )
        .await;
        let at_floor = d.iter().filter(|&&s| s == 200.0).count();
        let above: Vec<f64> = d.iter().copied().filter(|&s| s > 200.0).collect();
        assert_eq!(at_floor + above.len(), d.len(), "{d:?}");
        assert!(at_floor > 0, "some rows wait exactly Retry-After: {d:?}");
        assert_spread("memory, above Retry-After", &above, 200.0, 300.0);
    });
}
