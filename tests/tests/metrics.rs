//! The Prometheus endpoints of nm and ss, scraped over HTTP.

use harness::{eventually, Options, TestCluster};
use shared::proto::PairState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A free loopback port (released again for the daemon to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// The value of the sample whose line starts with `series`.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn nm_and_ss_serve_their_metrics() {
    let nm_metrics = format!("127.0.0.1:{}", free_port());
    let ss_metrics = format!("127.0.0.1:{}", free_port());
    let nm_flag: &'static str = Box::leak(nm_metrics.clone().into_boxed_str());
    let options = Options {
        nm_args: vec!["--metrics-addr", nm_flag],
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&[], options).await;
    cluster.spawn_ss_with("ss1", &["--metrics-addr", &ss_metrics]);
    cluster.wait_alive("ss1").await;
    cluster.start_ss("ss1_backup").await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster
        .console(
            "alice",
            "CREATE m.txt\nWRITE m.txt 0\n0 Counted.\nETIRW\nREAD m.txt\nREAD nope.txt\n",
        )
        .outcomes
        .len();
    cluster.wait_replicated().await;

    // The CREATE and the WRITE reach the backup on the stream or through a
    // job (the stream opens as the pair forms): either way their lag is observed.
    let body = eventually("nm's metrics with both changes replicated", async || {
        let body = scrape(&nm_metrics).await?;
        (sample(&body, "docs_replication_lag_seconds_count").unwrap_or(0.0) >= 2.0).then_some(body)
    })
    .await;
    assert_eq!(
        sample(
            &body,
            "docs_nm_requests_total{operation=\"CREATE\",outcome=\"ok\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "docs_nm_requests_total{operation=\"LOCATE\",outcome=\"E_NOT_FOUND\"}"
        )
        .is_some(),
        "{body}"
    );
    assert_eq!(sample(&body, "docs_server_up{server=\"ss1\"}"), Some(1.0));
    assert!(sample(
        &body,
        "docs_server_heartbeat_age_seconds{server=\"ss1_backup\"}"
    )
    .is_some());
    assert_eq!(
        sample(&body, "docs_pair_state{pair=\"ss1\",state=\"ACTIVE\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&body, "docs_pair_epoch{pair=\"ss1\"}"), Some(0.0));
    assert!(
        sample(
            &body,
            "docs_replication_jobs_total{kind=\"SYNC_PAIR\",step=\"APPLIED\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );
    assert!(sample(&body, "docs_replication_bytes_total").is_some());
    assert!(body.contains("docs_nm_request_seconds_bucket"));

    let ss = eventually("ss1's metrics", async || scrape(&ss_metrics).await).await;
    assert_eq!(sample(&ss, "docs_ss_files"), Some(1.0), "{ss}");
    // The script's WRITE block went whole (WRITE_BLOCK) or line by line
    // (ending in ETIRW), as its lines reached the console.
    let commits: f64 = ["ETIRW", "WRITE_BLOCK"]
        .iter()
        .filter_map(|op| {
            sample(
                &ss,
                &format!("docs_ss_requests_total{{operation=\"{op}\",outcome=\"ok\"}}"),
            )
        })
        .sum();
    assert_eq!(commits, 1.0, "{ss}");
    // The changes' notices went to nm unanswered (streamed, quiet): the
    // answers to the heartbeats after them settle them.
    eventually("ss1's change notices settled", async || {
        let ss = scrape(&ss_metrics).await?;
        (sample(&ss, "docs_ss_nm_notices_unsettled") == Some(0.0)).then_some(())
    })
    .await;

    // A failover shows in the counters and the pair's state.
    cluster.kill_ss("ss1");
    cluster.wait_pair("ss1", PairState::PrimaryFailed).await;
    let body = eventually("the failover in nm's metrics", async || {
        let body = scrape(&nm_metrics).await?;
        (sample(&body, "docs_failovers_total") == Some(1.0)).then_some(body)
    })
    .await;
    assert_eq!(sample(&body, "docs_server_up{server=\"ss1\"}"), Some(0.0));
    assert_eq!(
        sample(
            &body,
            "docs_pair_state{pair=\"ss1\",state=\"PRIMARY_FAILED\"}"
        ),
        Some(1.0)
    );
}
