//! The data kinds' pool of sessions and the statistics read on it,
//! against a real PostgreSQL 15 that the test starts:
//! - a pool outlives a restart of PostgreSQL (fast or immediate): the
//!   first statement after it succeeds, on a new session;
//! - the backlog counts the pending rows, and the lag is the age of the
//!   oldest one.

mod support;

use support::servers::Postgres;
use warden::config::secret::Dsn;
use warden::config::types::{PgTarget, PostgresDsn, TableName};
use warden::services::data::Leased;
use warden::services::outbox::sql::Outbox;

fn target(pg: &Postgres) -> PgTarget {
    PgTarget::new(PostgresDsn(Dsn::new(pg.dsn.clone())), None)
}

/// A runtime on the test's thread: nothing runs between `block_on`s, so
/// a session that the server closed is not yet known to be closed when
/// it is next taken (as on a busy worker).
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn backend_pid(pool: &warden::conn::postgres::Pool) -> i32 {
    let c = pool.get().await.expect("a session of the pool");
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("a statement on a pooled session")
        .get(0)
}

#[test]
fn a_pool_outlives_a_restart_of_postgresql() {
    let mut pg = Postgres::start();
    let rt = rt();
    let pool = rt
        .block_on(warden::conn::postgres::pool(&target(&pg), 2))
        .expect("a pool");
    for mode in ["fast", "immediate"] {
        let before = rt.block_on(backend_pid(&pool));
        pg.restart(mode);
        // The session kept in the pool died with the server: taking it
        // checks it, drops it, and makes a new one.
        let after = rt.block_on(backend_pid(&pool));
        assert_ne!(before, after, "{mode}: a new session after the restart");
        assert_eq!(
            pool.status().size,
            1,
            "{mode}: the dead session was dropped"
        );
    }
}

fn sql(pg: &Postgres, q: &str) {
    support::db::sql(&pg.dsn, q);
}

/// (backlog, lag seconds) as the statistics timer reads them.
fn stats(pg: &Postgres, l: &Leased) -> (i64, f64) {
    let r = &support::db::sql(&pg.dsn, &l.stats())[0];
    (r.get(0), r.get(1))
}

#[test]
fn the_backlog_counts_rows_not_delivered_and_the_lag_is_the_oldest_ones_age() {
    let pg = Postgres::start();
    let t = Outbox::new(&TableName::new("message_outbox").unwrap());
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&pg.dsn, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        warden::services::data::adopt(&client, &t.leased().table, &t.create_tx(), &t.indexes())
            .await
            .expect("the outbox table");
    });
    assert_eq!(stats(&pg, t.leased()), (0, 0.0), "an empty table");
    // Rows in every state; the oldest pending one ten minutes old, older
    // rows sent or failed.
    sql(
        &pg,
        "INSERT INTO message_outbox (topic, payload, status, created_at)
         SELECT 't', '{}', (ARRAY['pending', 'sent', 'failed', 'pending'])[i % 4 + 1],
                now() - interval '10 minutes' + i * interval '1 millisecond'
         FROM generate_series(0, 39999) i",
    );
    sql(
        &pg,
        "UPDATE message_outbox SET status = 'sending', claimed_until = now() + interval '1 minute' WHERE id % 1000 = 1",
    );
    // Not delivered yet: pending and sending rows.
    let exact: i64 = support::db::sql(
        &pg.dsn,
        "SELECT count(*) FROM message_outbox WHERE status IN ('pending', 'sending')",
    )[0]
    .get(0);
    assert_eq!(exact, 20_000 - 40 + 40, "the test's own arithmetic");
    let (backlog, lag) = stats(&pg, t.leased());
    assert_eq!(backlog, exact);
    // The first row (id 1) is sending, ten minutes old: the oldest row not
    // delivered.
    assert!((599.5..=600.5).contains(&lag), "lag {lag}");
}
