//! The real console binary in a terminal (tmux) against a TestCluster: the
//! screen shows the pair ACTIVE, PRIMARY_FAILED after a kill -9 of the
//! primary, and ACTIVE again once it is back; and each defect an operator
//! reported (issue #17) stays fixed, typed as an operator types it.

use harness::{bin, eventually, Options, TestCluster};
use shared::proto::PairState;
use std::process::Command;

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(session: &str, command: &str) -> Tmux {
        Tmux::start_sized(session, command, 100, 32)
    }

    fn start_sized(session: &str, command: &str, width: u16, height: u16) -> Tmux {
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
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

impl Tmux {
    fn resize(&self, width: u16, height: u16) {
        let status = Command::new("tmux")
            .args(["resize-window", "-t", &self.session, "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .status()
            .expect("tmux resize-window");
        assert!(status.success());
    }

    /// Waits until the screen contains `text`; returns the screen.
    async fn shows(&self, text: &str) -> String {
        eventually(&format!("{text:?} on screen"), async || {
            let screen = self.screen();
            screen.contains(text).then_some(screen)
        })
        .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // The session is gone already when the console quit.
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .stderr(std::process::Stdio::null())
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
    harness::bin_dir();
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

/// The HEARTBEAT column of a server row (`    42ms`).
fn heartbeat_age(row: &str) -> Option<u64> {
    row.split_whitespace()
        .find_map(|w| w.strip_suffix("ms")?.parse().ok())
}

/// The names of the files nm knows.
fn files(cluster: &TestCluster) -> Vec<String> {
    let run = cluster.console("operator", "VIEW -a\n");
    run.get(0)["data"]["files"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue #17's defects, typed into the real console at 80×24 and in a
/// tmux-cluster pane (100×16), one after another on one cluster.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_at_80x24_meets_none_of_the_reported_defects() {
    let options = Options {
        nm_args: vec!["--heartbeat-timeout", "1s"],
        ..Options::default()
    };
    let mut cluster = TestCluster::start_with(&["ss1", "ss1_backup"], options).await;
    cluster.wait_pair("ss1", PairState::Active).await;
    cluster.console("operator", "CREATE a.txt\n").all_ok();
    let session = format!("docs-tui-defects-{}", std::process::id());
    let console = format!(
        "{} --nm {} --user operator",
        bin("console").display(),
        cluster.nm_addr()
    );
    let tmux = Tmux::start_sized(&session, &console, 80, 24);

    // 5. 80×24: every server and pair, the tab bar, the prompt; and the
    // log opens with nm's start-up events (11).
    let screen = tmux.shows("ss1_backup").await;
    assert!(screen.contains("1 Events"), "{screen}");
    assert!(screen.contains("q quit"), "{screen}");
    tmux.shows("SYNCING → ACTIVE").await;

    // 8. The heartbeat column shows the age nm reported (≤ one 100 ms
    // interval plus scheduling), not that age plus the time since the
    // snapshot (which read 55 → 216 → 466 ms and looked like misses).
    let mut ages: Vec<u64> = Vec::new();
    for _ in 0..12 {
        let screen = tmux.screen();
        let row = screen
            .lines()
            .find(|l| l.starts_with("ss1 "))
            .map(str::to_owned);
        if let Some(age) = row.as_deref().and_then(heartbeat_age) {
            ages.push(age);
        }
        // Samples spread over several snapshots (every 500 ms), not a wait for anything.
        tokio::time::sleep(std::time::Duration::from_millis(130)).await;
    }
    ages.sort_unstable();
    assert!(ages.len() >= 10, "{ages:?}");
    assert!(ages[ages.len() / 2] < 250, "median heartbeat age {ages:?}");

    // 1. A bad WRITE header: what is typed next never runs as a command.
    tmux.keys(&[":", "WRITE a.txt", "Enter"]);
    tmux.shows("ERROR E_BAD_REQUEST").await;
    tmux.keys(&["CREATE zz.txt", "Enter", "ETIRW", "Enter"]);
    // A header nm refuses is reported before any edit line is taken.
    tmux.keys(&[":", "WRITE nope.txt 0", "Enter"]);
    tmux.shows("E_NOT_FOUND").await;
    assert!(!files(&cluster).contains(&"zz.txt".to_owned()));

    // 10. Esc in an open WRITE says what it did, and nothing is written.
    tmux.keys(&[":", "WRITE a.txt 0", "Enter"]);
    tmux.shows("lock held").await;
    tmux.keys(&["0 Hello there.", "Enter", "Escape"]);
    tmux.shows("WRITE cancelled").await;
    let read = cluster.console("operator", "READ a.txt\n");
    assert_eq!(read.get(0)["data"]["content"], "", "{}", read.get(0));

    // 2. WATCH never holds the command line; Esc stops it.
    tmux.keys(&[":", "WATCH", "Enter"]);
    tmux.shows("Esc stops").await;
    tmux.keys(&[":", "CREATE w.txt", "Enter"]);
    tmux.shows("File Created Successfully!").await;
    tmux.keys(&["Escape"]);
    tmux.shows("WATCH stopped").await;

    // 6. Line editing: the cursor moves, Home and Ctrl-U work.
    tmux.keys(&[
        ":",
        "junk",
        "C-u",
        "CRATE e.txt",
        "Home",
        "Right",
        "Right",
        "E",
        "Enter",
    ]);
    tmux.shows("Output: CREATE e.txt").await;
    eventually("e.txt created", async || {
        files(&cluster).contains(&"e.txt".to_owned()).then_some(())
    })
    .await;

    // 9. An ambiguous Tab lists the candidates.
    tmux.keys(&[":", "RE", "Tab"]);
    tmux.shows("REMACCESS").await;
    tmux.keys(&["Escape"]);

    // 7. A long output says how much is left.
    tmux.resize(100, 16);
    tmux.keys(&[":", "INFO a.txt", "Enter"]);
    let screen = tmux.shows("more lines: PgDn").await;
    // 5. The tmux-cluster pane keeps its rows too.
    assert!(
        screen.contains("ss1_backup") && screen.contains("1 Events"),
        "{screen}"
    );

    // 12. The mouse wheel over the Events pane scrolls it back (an SGR
    // mouse report, as a terminal sends it).
    tmux.resize(140, 45);
    tmux.shows("┌Events (following)").await;
    let screen = tmux.screen();
    let row = screen
        .lines()
        .position(|l| l.contains("┌Events"))
        .expect("the Events box")
        + 3;
    tmux.keys(&["-l", &format!("\x1b[<64;10;{row}M")]);
    tmux.shows("Events (paused").await;
    tmux.keys(&["End"]);
    tmux.shows("Events (following)").await;
    tmux.resize(100, 16);

    // 4. nm killed: the tables are marked stale, and its return is logged.
    cluster.kill_nm();
    tmux.shows("STALE").await;
    cluster.start_nm().await;
    tmux.keys(&["1", "/", "console:", "Enter"]);
    tmux.shows("back after").await;
    tmux.keys(&["q"]);
}

/// Item 13: `--help` describes every bench workload and says the defaults
/// (the user, `--size`, `--files`).
#[test]
fn help_describes_every_workload_and_its_defaults() {
    harness::bin_dir();
    let help = |args: &[&str]| {
        let out = Command::new(bin("console")).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bench = help(&["bench", "--help"]);
    let workloads: Vec<&str> = bench
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .collect();
    assert!(workloads.len() >= 13, "{bench}");
    for w in workloads {
        let (name, what) = w.split_once(':').unwrap_or((w, ""));
        assert!(what.trim().len() > 20, "{name} has no description: {w:?}");
    }
    assert!(
        bench.contains("(default 1024)") && bench.contains("(default 4)"),
        "{bench}"
    );
    assert!(bench.contains("catch-up (default 1,000)"), "{bench}");
    let console = help(&["--help"]);
    assert!(console.contains("[default: operator]"), "{console}");
}
