//! A fresh Postgres database per test, on the throwaway cluster `cargo xtask test` starts
//! (`LONGRUN_TEST_POSTGRES`, a superuser URL). Without it the test says so loudly and skips,
//! except with `CI=true`, where Postgres is required.

/// A URL of a new, empty database, or `None` (after a loud SKIP) when there is no cluster.
pub async fn database(test: &str) -> Option<String> {
    let Ok(admin) = std::env::var("LONGRUN_TEST_POSTGRES") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{test}: LONGRUN_TEST_POSTGRES is not set; with CI=true Postgres is required");
        }
        eprintln!(
            "!!!!!!!! SKIP {test}: LONGRUN_TEST_POSTGRES is not set (cargo xtask test starts a \
             Postgres cluster; or run it under `cargo xtask pg -- cargo test …`) !!!!!!!!"
        );
        return None;
    };
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot connect to {admin}: {e}"));
    let driver = tokio::spawn(conn);
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("{test}: CREATE DATABASE: {e}"));
    drop(client);
    let _ = driver.await;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("LONGRUN_TEST_POSTGRES names a database");
    Some(format!("{base}/{name}"))
}
