//! EXEC: runs a file's content as a shell script on nm's machine.
//!
//! This is remote code execution by design, so it is off unless nm runs with
//! `--allow-exec`, needs read access to the file, and is bounded: the script
//! runs in its own process group, which is killed when `--exec-timeout`
//! passes or its output (stdout or stderr) passes `--exec-max-output` bytes.

use crate::commands::Need;
use crate::state::Nm;
use shared::proto::{ExecOutput, NmReply, Op, SsCommand};
use shared::{now_ms, ErrorCode, WireError};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

impl Nm {
    pub(crate) async fn exec(&self, user: &str, file: &str) -> Result<NmReply, WireError> {
        if !self.config.allow_exec {
            return Err(WireError::new(
                ErrorCode::Disabled,
                "EXEC is disabled; nm must be started with --allow-exec",
            ));
        }
        // The ticket carries the pair's epoch: the serving server refuses
        // one older than its own (after a promotion, epoch 0 would be).
        let (client, epoch) = self.serving_for(user, file, Need::Read)?;
        let expires_ms = now_ms() + self.config.ticket_ttl.as_millis() as u64;
        let ticket = self
            .ticket_key
            .issue("nm", file, Op::Read, epoch, expires_ms);
        let request = SsCommand::Read {
            file: file.to_owned(),
            ticket,
        };
        let script = client
            .read_all(request, self.config.exec_max_output)
            .await?;
        tracing::info!(
            event = "nm_exec",
            user,
            file,
            bytes = script.len(),
            "running a file as a script"
        );
        let output = run_script(
            &script,
            self.config.exec_timeout,
            self.config.exec_max_output,
        )
        .await?;
        Ok(NmReply::Exec { output })
    }
}

/// Runs `script` with `sh -c`, bounded in time and output.
pub async fn run_script(
    script: &[u8],
    timeout: Duration,
    max_output: usize,
) -> Result<ExecOutput, WireError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(OsStr::from_bytes(script))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| WireError::internal(format!("cannot start sh: {e}")))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let run = async {
        let (stdout, stderr) = tokio::try_join!(
            read_capped(stdout, max_output),
            read_capped(stderr, max_output)
        )?;
        let status = child
            .wait()
            .await
            .map_err(|e| WireError::internal(format!("waiting for the script: {e}")))?;
        Ok::<_, WireError>(ExecOutput {
            stdout,
            stderr,
            status: status.code(),
        })
    };
    let result = match tokio::time::timeout(timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(WireError::new(
            ErrorCode::Timeout,
            format!(
                "the script ran past the {} limit and was killed",
                humantime::format_duration(timeout)
            ),
        )),
    };
    if result.is_err() {
        kill_group(pid);
    }
    result
}

async fn read_capped(reader: impl AsyncRead + Unpin, max: usize) -> Result<String, WireError> {
    let mut bytes = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| WireError::internal(format!("reading the script's output: {e}")))?;
    if bytes.len() > max {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!("the script's output passed the {max}-byte limit; it was killed"),
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is touched.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_status_and_limits() {
        let out = run_script(
            b"echo hi; echo oops >&2; exit 3",
            Duration::from_secs(5),
            1024,
        )
        .await
        .unwrap();
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str(), out.status),
            ("hi\n", "oops\n", Some(3))
        );
        let slow = run_script(b"sleep 5", Duration::from_millis(100), 1024).await;
        assert_eq!(slow.unwrap_err().code, ErrorCode::Timeout);
        let loud = run_script(b"yes", Duration::from_secs(5), 1000).await;
        assert_eq!(loud.unwrap_err().code, ErrorCode::TooLarge);
    }
}
