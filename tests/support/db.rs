//! Talking to the test's PostgreSQL and Redis directly (what an
//! application would do next to warden), and waiting for what warden does.
#![allow(dead_code)]

use std::time::{Duration, Instant};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one SQL statement and returns its rows; panics with the statement.
pub fn sql(dsn: &str, q: &str) -> Vec<tokio_postgres::Row> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client
            .query(q, &[])
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
    })
}

/// Runs one SQL statement and returns its rows, or its error.
pub fn sql_rows(dsn: &str, q: &str) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client.query(q, &[]).await
    })
}

/// Runs one SQL statement and returns its error, if any.
pub fn sql_result(dsn: &str, q: &str) -> Result<u64, tokio_postgres::Error> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client.execute(q, &[]).await
    })
}

/// Runs one SQL statement, connecting too: its error, or the server's
/// refusal to connect (it may be restarting), never a panic.
pub fn try_sql(dsn: &str, q: &str) -> Result<u64, tokio_postgres::Error> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.execute(q, &[]).await
    })
}

/// Runs one SQL statement and returns its rows, connecting too: never a
/// panic (see [`try_sql`]).
pub fn try_rows(dsn: &str, q: &str) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.query(q, &[]).await
    })
}

/// Runs one Redis command.
pub fn redis_cmd(url: &str, args: &[&str]) -> redis::Value {
    rt().block_on(async {
        let c = redis::Client::open(url).unwrap();
        let mut conn = c.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap()
    })
}

/// The entries of a stream, each as its field map.
pub fn stream(url: &str, key: &str) -> Vec<std::collections::HashMap<String, String>> {
    let v = redis_cmd(url, &["XRANGE", key, "-", "+"]);
    let entries: Vec<(String, std::collections::HashMap<String, String>)> =
        redis::FromRedisValue::from_redis_value(v).unwrap();
    entries.into_iter().map(|(_, f)| f).collect()
}

/// Polls `f` every 20 ms until it holds; fails naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
