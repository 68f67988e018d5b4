//! The real console binary in a terminal (tmux) against a TestCluster: the
//! screen shows the pair ACTIVE, PRIMARY_FAILED after a kill -9 of the
//! primary, and ACTIVE again once it is back.

use shared::proto::PairState;
use std::process::Command;
use tests::{bin, eventually, Options, TestCluster};

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(session: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "100",
                "-y",
                "32",
                command,
            ])
            .status()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(status.success(), "tmux new-session");
        Tmux {
            session: session.to_owned(),
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

/// The pair row of `primary` as it is on screen.
fn pair_row(screen: &str, primary: &str) -> Option<String> {
    screen
        .lines()
        .find(|l| l.contains(&format!("{primary} → ")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_failover_and_recovery_live() {
    let options = Options {
        nm_args: vec!["--heartbeat-timeout", "1s"],
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    let session = format!("docs-tui-{}", std::process::id());
    let console = format!(
        "{} --nm {} --user operator",
        bin("console").display(),
        cluster.nm_addr()
    );
    let tmux = Tmux::start(&session, &console);
    eventually("ACTIVE on screen", async || {
        pair_row(&tmux.screen(), "ss1").filter(|row| row.contains("ACTIVE"))
    })
    .await;

    cluster.kill_ss("ss1");
    // PRIMARY_FAILED, and epoch 1 once the backup is promoted.
    eventually("PRIMARY_FAILED on screen", async || {
        pair_row(&tmux.screen(), "ss1").filter(|row| row.contains("PRIMARY_FAILED 1 "))
    })
    .await;
    let screen = tmux.screen();
    assert!(
        screen
            .lines()
            .any(|l| l.contains("ss1 ") && l.contains("FAILED")),
        "{screen}"
    );

    // A command typed into the console while the backup serves.
    tmux.keys(&[":", "CREATE during.txt", "Enter"]);
    eventually("the command's output", async || {
        tmux.screen()
            .contains("File Created Successfully!")
            .then_some(())
    })
    .await;

    cluster.start_ss("ss1").await;
    eventually("ACTIVE again on screen", async || {
        pair_row(&tmux.screen(), "ss1").filter(|row| row.contains("ACTIVE"))
    })
    .await;
    tmux.keys(&["q"]);
}

/// Without a terminal the console says so and exits 2, for the screen and
/// for `console demo` alike (it used to panic with a backtrace).
#[test]
fn without_a_terminal_the_console_says_use_batch() {
    tests::bin_dir();
    for args in [&["--nm", "127.0.0.1:1"][..], &["demo"][..]] {
        let output = Command::new(bin("console"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("console runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("not a terminal"), "{stderr}");
        assert!(stderr.contains("--batch"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
