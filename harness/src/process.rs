//! What every cluster of this crate does with its child processes: a log
//! file per daemon in the cluster's folder, kill -9 and reap, signals, and
//! free ports for children to bind.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// etcd's flags for logging warnings only, to stderr (the daemon's log file).
pub const ETCD_QUIET_LOG: [&str; 6] = [
    "--logger",
    "zap",
    "--log-outputs",
    "stderr",
    "--log-level",
    "warn",
];

/// `<dir>/<name>.log`, appended to, as a child's stderr.
pub fn log_file(dir: &Path, name: &str) -> std::io::Result<Stdio> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Ok(Stdio::from(file))
}

/// kill -9, then reaps it (a killed child is gone once this returns).
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `signal` to a child (SIGSTOP, SIGCONT, SIGTERM ...).
pub fn signal(child: &Child, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    match unsafe { libc::kill(child.id() as i32, signal) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The child is killed when the thread that started it dies, even by
/// SIGKILL (Linux): for long-lived launchers (`console demo`), whose
/// daemons must not outlive them.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free port on 127.0.0.1 for a child to bind soon after, taken below the
/// kernel's ephemeral range (32768 and up): a port the kernel hands out
/// meanwhile (a `bind` to port 0, an outgoing connection) cannot be it.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..200 {
        let step = NEXT.fetch_add(7_919, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(step) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
