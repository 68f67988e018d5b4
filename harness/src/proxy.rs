//! A TCP proxy that injects network faults between a storage server and nm:
//! cutting every connection at once, or silently dropping all traffic while
//! keeping the connections open (a blackhole).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct FaultProxy {
    pub addr: String,
    blackhole: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let blackhole = Arc::new(AtomicBool::new(false));
        let (cuts, _) = watch::channel(0u64);
        let target = target.to_owned();
        let (hole, cut_rx) = (blackhole.clone(), cuts.subscribe());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, hole.clone(), cut_rx.clone()));
                tokio::spawn(pump(ro, wi, hole.clone(), cut_rx.clone()));
            }
        });
        FaultProxy {
            addr,
            blackhole,
            cuts,
        }
    }

    /// Closes every connection through the proxy now.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Drops (or again forwards) all traffic, keeping connections open.
    pub fn set_blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::Relaxed);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
    mut cuts: watch::Receiver<u64>,
) {
    let start = *cuts.borrow_and_update();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if blackhole.load(Ordering::Relaxed) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = cuts.changed() => {
                if changed.is_err() || *cuts.borrow() != start {
                    return; // dropping both halves closes both sides
                }
            }
        }
    }
}
