//! The harness against real PostgreSQL binaries.

use std::net::TcpStream;

use super::*;

#[test]
fn shared_server_is_started_once() {
    let first = PgServer::shared().unwrap();
    let second = PgServer::shared().unwrap();
    assert!(std::ptr::eq(first, second));
    assert_eq!(first.port(), second.port());
    assert!(first.bin_dir().join("pgbench").is_file());
    assert!(matches!(
        first.stop(),
        Err(PgHarnessError::SharedServerStop)
    ));
}

#[test]
fn each_database_is_fresh_and_accepts_connections() {
    let server = PgServer::shared().unwrap();
    let one = server.create_database().unwrap();
    let two = server.create_database().unwrap();
    assert_ne!(one.name, two.name);
    for database in [&one, &two] {
        assert_eq!(
            server
                .psql(&database.name, "select current_database()")
                .unwrap(),
            database.name
        );
        assert_eq!(database.url, server.url(&database.name));
    }
    server
        .psql(&one.name, "create table only_in_one (id int)")
        .unwrap();
    assert_eq!(
        server
            .psql(
                &two.name,
                "select count(*) from pg_tables where tablename = 'only_in_one'"
            )
            .unwrap(),
        "0"
    );
}

#[test]
fn databases_can_be_created_from_many_threads_at_once() {
    let server = PgServer::shared().unwrap();
    let names: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| server.create_database().unwrap().name))
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .collect()
    });
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
}

#[test]
fn stopped_server_refuses_connections_and_resumes_with_its_data() {
    let server = PgServer::start().unwrap();
    let port = server.port();
    let database = server.create_database().unwrap();
    server
        .psql(
            &database.name,
            "create table kept (v text); insert into kept values ('still here')",
        )
        .unwrap();

    server.stop().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(matches!(
        server.psql(&database.name, "select 1"),
        Err(PgHarnessError::CommandFailed { .. })
    ));
    server.stop().unwrap();

    server.resume().unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(
        server.psql(&database.name, "select v from kept").unwrap(),
        "still here"
    );
    server.resume().unwrap();
}

#[test]
fn sql_errors_are_errors() {
    let server = PgServer::shared().unwrap();
    let database = server.create_database().unwrap();
    let error = server
        .psql(&database.name, "select * from no_such_table")
        .unwrap_err();
    assert!(error.to_string().contains("no_such_table"), "{error}");
}

/// The parent-death signal is tied to the forking thread: a server started from a test
/// thread must survive that thread.
#[test]
fn owned_server_outlives_the_thread_that_started_it_and_drop_removes_it() {
    let server = std::thread::spawn(|| PgServer::start().unwrap())
        .join()
        .unwrap();
    let database = server.create_database().unwrap();
    assert_eq!(server.psql(&database.name, "select 1").unwrap(), "1");
    let run_dir = server.run_dir.clone();
    let port = server.port();
    drop(server);
    assert!(!run_dir.exists());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
