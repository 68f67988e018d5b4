//! Prometheus metrics: each daemon registers its metrics in a
//! [`prometheus_client`] registry and serves them in the text format on
//! `--metrics-addr` (plain HTTP, any path), from a thread of its own.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Label sets are plain (name, value) pairs.
pub type Labels = Vec<(String, String)>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Counters and latency histograms of requests, by operation and outcome.
#[derive(Clone)]
pub struct RequestMetrics {
    pub requests: Family<Labels, Counter>,
    pub seconds: Family<Labels, Histogram, fn() -> Histogram>,
}

impl RequestMetrics {
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let metrics = RequestMetrics {
            requests: Family::default(),
            seconds: Family::new_with_constructor(latency_histogram),
        };
        registry.register(
            format!("{prefix}_requests"),
            "Requests served, by operation and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            format!("{prefix}_request_seconds"),
            "Time to serve a request, by operation",
            metrics.seconds.clone(),
        );
        metrics
    }

    pub fn observe(&self, operation: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&labels(&[("operation", operation), ("outcome", outcome)]))
            .inc();
        self.seconds
            .get_or_create(&labels(&[("operation", operation)]))
            .observe(seconds);
    }
}

/// A histogram in seconds with the latency buckets.
pub fn seconds_histogram() -> Histogram {
    latency_histogram()
}

/// Serves `registry` (after `refresh` updates the gauges computed at scrape
/// time) on `addr`; returns the bound address.
pub fn serve(
    addr: &str,
    registry: Arc<Mutex<Registry>>,
    refresh: impl Fn() + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("metrics address is not an IP address"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                refresh();
                let mut body = String::new();
                let encoded = encode(
                    &mut body,
                    &registry.lock().unwrap_or_else(|p| p.into_inner()),
                );
                let response = match encoded {
                    Ok(()) => tiny_http::Response::from_string(body).with_header(
                        "Content-Type: text/plain; version=0.0.4"
                            .parse::<tiny_http::Header>()
                            .expect("a valid header"),
                    ),
                    Err(e) => tiny_http::Response::from_string(e.to_string()).with_status_code(500),
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}
