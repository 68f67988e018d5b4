//! Human text for command results: what `console --batch` prints without `--json`.

use shared::proto::{
    AccessRequest, CheckpointInfo, ClusterStatus, ExecOutput, FileInfo, FileRow, FolderEntry,
};
use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

/// A Unix-milliseconds time as an RFC 3339 string, or "never".
pub fn time(ms: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub fn view(rows: &[FileRow], long: bool) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        return "(no files)".to_owned();
    }
    if !long {
        for row in rows {
            let _ = writeln!(out, "--> {}", row.name);
        }
        return out;
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(8).max(8);
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>6}  {:<20}  Owner",
        "Filename", "Words", "Chars", "Last Access"
    );
    let _ = writeln!(out, "{}", "-".repeat(width + 46));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>6}  {:<20}  {}",
            r.name,
            r.words,
            r.chars,
            time(r.accessed_ms),
            r.owner
        );
    }
    out
}

pub fn info(info: &FileInfo) -> String {
    let access = std::iter::once(format!("{} (RW)", info.owner))
        .chain(
            info.acl
                .iter()
                .map(|(user, access)| format!("{user} ({})", access.label())),
        )
        .collect::<Vec<_>>()
        .join(", ");
    let s = &info.stats;
    let accessed = match &s.accessed_by {
        Some(user) => format!("{} by {user}", time(s.accessed_ms)),
        None => "never".to_owned(),
    };
    let in_sync = match info.backup_in_sync {
        Some(true) => "yes",
        Some(false) => "no (it may lack changes: down, or not caught up yet)",
        None => "no backup",
    };
    format!(
        "--> File: {}\n--> Owner: {}\n--> Created: {}\n--> Last Modified: {}\n--> Size: {} bytes\n--> Words: {}\n--> Chars: {}\n--> Access: {}\n--> Last Accessed: {}\n--> Version: {} (epoch {})\n--> Servers: {}\n--> Backup in sync: {}{}",
        info.name,
        info.owner,
        time(s.created_ms),
        time(s.modified_ms),
        s.size,
        s.words,
        s.chars,
        access,
        accessed,
        s.version,
        s.epoch,
        info.servers.join(", "),
        in_sync,
        if info.conflict_copies.is_empty() {
            String::new()
        } else {
            format!("\n--> Conflict copies: {}", info.conflict_copies.join(", "))
        },
    )
}

pub fn list(users: &[String]) -> String {
    users.iter().map(|u| format!("--> {u}\n")).collect()
}

pub fn status(status: &ClusterStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:<7} {:<22} {:>10} {:>7}",
        "SERVER", "ROLE", "STATE", "ADDRESS", "HEARTBEAT", "FILES"
    );
    for s in &status.servers {
        let _ = writeln!(
            out,
            "{:<16} {:<8} {:<7} {:<22} {:>8}ms {:>7}",
            s.name,
            // As the TUI names it: a backup that serves was promoted.
            match (s.role, s.serving) {
                (shared::proto::ServerRole::Backup, true) => "PROMOTED".to_owned(),
                (role, _) => format!("{role:?}").to_uppercase(),
            },
            format!("{:?}", s.state).to_uppercase(),
            s.address,
            s.ms_since_heartbeat,
            s.files
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<15} {:>5} {:>8} {:>8}",
        "PRIMARY", "BACKUP", "STATE", "EPOCH", "PENDING", "LAG"
    );
    for p in &status.pairs {
        let state = serde_json::to_value(p.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<15} {:>5} {:>8} {:>6}ms",
            p.primary,
            p.backup.as_deref().unwrap_or("-"),
            state,
            p.epoch,
            p.pending_jobs,
            p.lag_ms
        );
        if let Some(reason) = &p.reason {
            let _ = writeln!(out, "  why: {reason}");
        }
        if let Some(s) = &p.stream {
            let _ = writeln!(
                out,
                "  stream: {}, sent {}, settled {}, {} unacknowledged (oldest {} ms)",
                if s.open { "open" } else { "closed" },
                s.sent,
                s.acknowledged,
                s.unacknowledged,
                s.oldest_ms
            );
        }
    }
    let _ = write!(out, "replication queue depth: {}", status.queue_depth);
    out
}

pub fn requests(requests: &[AccessRequest]) -> String {
    if requests.is_empty() {
        return "(no pending requests)".to_owned();
    }
    requests
        .iter()
        .map(|r| {
            format!(
                "[{}] {} asks for {} on {} ({})\n",
                r.id,
                r.user,
                r.access.label(),
                r.file,
                time(r.requested_ms)
            )
        })
        .collect()
}

pub fn folder(entries: &[FolderEntry]) -> String {
    if entries.is_empty() {
        return "(empty folder)".to_owned();
    }
    entries
        .iter()
        .map(|e| format!("--> {}{}\n", e.name, if e.is_folder { "/" } else { "" }))
        .collect()
}

pub fn checkpoints(checkpoints: &[CheckpointInfo]) -> String {
    if checkpoints.is_empty() {
        return "(no checkpoints)".to_owned();
    }
    let mut out = format!("{:<20}  {:<20}  {:>10}\n", "Tag", "Created", "Size");
    for c in checkpoints {
        let _ = writeln!(
            out,
            "{:<20}  {:<20}  {:>10}",
            c.tag,
            time(c.created_ms),
            c.size
        );
    }
    out
}

pub fn exec(output: &ExecOutput) -> String {
    let mut out = output.stdout.clone();
    out.push_str(&output.stderr);
    match output.status {
        Some(0) => {}
        Some(code) => {
            let _ = write!(out, "(exit status {code})");
        }
        None => out.push_str("(killed by a signal)"),
    }
    out
}
