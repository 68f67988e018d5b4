//! The interactive console: a ratatui TUI on nm's event stream.
//!
//! - [`app`]: the model, updated by actions without a terminal.
//! - [`layout`]: where each pane goes at a given size (drawing and mouse
//!   hits share it).
//! - [`history`]: the series behind the charts.
//! - [`ui`]: drawing the model.
//! - this module: the terminal (raw mode, alternate screen, mouse; always
//!   restored, also after a panic) and the event loop, which merges keys,
//!   cluster events (a WATCH subscription with status snapshots, so no
//!   polling), command results and a tick for the heartbeat timers into
//!   actions, and carries out the effects the model asks for.

pub mod app;
pub mod history;
pub mod layout;
#[cfg(test)]
pub(crate) mod testing;
pub mod ui;

use crate::batch::{self, Format};
use crate::client::Client;
use app::{Action, App, DaemonView, Effect};
use crossterm::event::{DisableMouseCapture, EnableMouseCapture, Event as TermEvent, EventStream};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures::StreamExt;
use harness::local::LocalCluster;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use shared::proto::{NmReply, NmRequest};
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the timers are redrawn (and the demo's logs read).
const TICK: Duration = Duration::from_millis(250);
/// How often nm sends a status snapshot on the subscription.
const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);
/// Events nm sent before the console subscribed that open its log.
const RECENT_EVENTS: u32 = 200;

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(std::io::stdout(), LeaveAlternateScreen, DisableMouseCapture);
}

/// Puts the terminal back however the console ends.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        enable_raw_mode()?;
        execute!(std::io::stdout(), EnterAlternateScreen, EnableMouseCapture)?;
        Ok(TerminalGuard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores the terminal before color-eyre reports a panic.
fn install_panic_hook() {
    let (panic_hook, eyre_hook) = color_eyre::config::HookBuilder::default().into_hooks();
    let _ = eyre_hook.install();
    let panic_hook = panic_hook.into_panic_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        panic_hook(info);
    }));
}

/// Runs the TUI against nm at `nm`; with `demo`, also shows and controls its daemons.
pub async fn run(
    nm: String,
    user: String,
    mut demo: Option<LocalCluster>,
) -> color_eyre::Result<()> {
    install_panic_hook();
    let color = std::env::var_os("NO_COLOR").is_none();
    let mut app = App::new(&nm, &user, color);
    let (actions, mut incoming) = mpsc::unbounded_channel::<Action>();
    spawn_input(actions.clone());
    spawn_watch(nm.clone(), user.clone(), actions.clone());
    let (cancel, cancelled) = mpsc::unbounded_channel::<()>();
    let commands = spawn_commands(nm.clone(), user.clone(), actions.clone(), cancelled);
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;
    let size = terminal.size()?;
    app.update(Action::Resize(size.width, size.height));
    // The open WRITE's edit lines, to the command task running it.
    let mut write: Option<mpsc::UnboundedSender<WriteInput>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        terminal.draw(|frame| ui::draw(frame, &app))?;
        let action = tokio::select! {
            action = incoming.recv() => match action {
                Some(action) => action,
                None => break,
            },
            _ = tick.tick() => {
                if let Some(cluster) = demo.as_mut() {
                    cluster.reap();
                    app.update(Action::Daemons(daemon_views(cluster)));
                }
                Action::Tick
            }
        };
        let mut quit = false;
        for effect in app.update(action) {
            match effect {
                Effect::Quit => quit = true,
                Effect::Run(line) => {
                    let _ = commands.send(Job::Run(line));
                }
                Effect::CancelRunning => {
                    let _ = cancel.send(());
                }
                Effect::WriteBegin { header } => {
                    let (lines, receiver) = mpsc::unbounded_channel();
                    write = Some(lines);
                    let _ = commands.send(Job::Write { header, receiver });
                }
                Effect::WriteLine(line) => {
                    if let Some(w) = &write {
                        let _ = w.send(WriteInput::Edit(line));
                    }
                }
                Effect::WriteCommit => {
                    if let Some(w) = write.take() {
                        let _ = w.send(WriteInput::Commit);
                    }
                }
                Effect::WriteCancel => {
                    // Dropping the sender ends the session: the task aborts it.
                    write = None;
                }
                Effect::Kill(name) => {
                    if let Some(cluster) = demo.as_mut() {
                        cluster.kill(&name);
                    }
                }
                Effect::Restart(name) => {
                    if let Some(cluster) = demo.as_mut() {
                        let started = cluster.restart(&name);
                        if let Err(e) = started {
                            app.update(Action::Output {
                                title: format!("restart {name}"),
                                text: e.to_string(),
                                ok: false,
                            });
                        }
                    }
                }
            }
        }
        if quit {
            break;
        }
    }
    Ok(())
}

fn spawn_input(actions: mpsc::UnboundedSender<Action>) {
    tokio::spawn(async move {
        let mut events = EventStream::new();
        while let Some(Ok(event)) = events.next().await {
            let action = match event {
                TermEvent::Key(key) if key.kind == crossterm::event::KeyEventKind::Press => {
                    Action::Key(key)
                }
                TermEvent::Mouse(mouse) => Action::Mouse(mouse),
                TermEvent::Resize(w, h) => Action::Resize(w, h),
                _ => continue,
            };
            if actions.send(action).is_err() {
                break;
            }
        }
    });
}

/// Follows nm's event stream, reconnecting when nm goes away.
fn spawn_watch(nm: String, user: String, actions: mpsc::UnboundedSender<Action>) {
    tokio::spawn(async move {
        loop {
            let result = match Client::connect(&nm, &user).await {
                Ok(client) => {
                    let sink = actions.clone();
                    client
                        .watch(None, Some(SNAPSHOT_EVERY), RECENT_EVENTS, |event| {
                            let _ = sink.send(Action::Cluster(event));
                        })
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let why = match result {
                Ok(()) => "nm closed the event stream; reconnecting…".to_owned(),
                Err(e) => format!("no event stream from nm ({e}); retrying…"),
            };
            if actions.send(Action::Disconnected(why)).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
}

/// Work for the command task, in the order it was typed.
enum Job {
    Run(String),
    /// A WRITE: its lock is taken at once, edit lines arrive on `receiver`.
    Write {
        header: String,
        receiver: mpsc::UnboundedReceiver<WriteInput>,
    },
}

/// What the TUI sends to an open WRITE. The channel closing cancels it.
enum WriteInput {
    Edit(String),
    Commit,
}

/// Runs commands one after another on a client of its own, and refreshes
/// the file names used for completion after each.
fn spawn_commands(
    nm: String,
    user: String,
    actions: mpsc::UnboundedSender<Action>,
    mut cancelled: mpsc::UnboundedReceiver<()>,
) -> mpsc::UnboundedSender<Job> {
    let (commands, mut queue) = mpsc::unbounded_channel::<Job>();
    tokio::spawn(async move {
        let mut client = Client::connect(&nm, &user).await.ok();
        refresh_files(client.as_mut(), &actions).await;
        while let Some(job) = queue.recv().await {
            if client.is_none() {
                client = Client::connect(&nm, &user).await.ok();
            }
            let Some(c) = client.as_mut() else {
                let text = format!("ERROR E_UNAVAILABLE: cannot reach nm at {nm}");
                // A WRITE's block closes with the error; either way it is the output.
                let title = match job {
                    Job::Write { header, .. } => {
                        let _ = actions.send(Action::WriteOpened(Err(text.clone())));
                        header
                    }
                    Job::Run(line) => line,
                };
                let _ = actions.send(Action::Output {
                    title,
                    text,
                    ok: false,
                });
                continue;
            };
            match job {
                Job::Run(line) => {
                    // A cancel sent while nothing ran is not for this one.
                    while cancelled.try_recv().is_ok() {}
                    let outcome = tokio::select! {
                        outcome = run_block(c, &line, &actions) => Some(outcome),
                        _ = cancelled.recv() => None,
                    };
                    let (text, ok) = outcome.unwrap_or_else(|| {
                        // The connection may be mid-request: start afresh.
                        client = None;
                        ("cancelled (Esc): the console stopped waiting; a change nm had already \
                          begun may still complete"
                            .to_owned(), false)
                    });
                    let _ = actions.send(Action::Output {
                        title: line,
                        text,
                        ok,
                    });
                }
                Job::Write { header, receiver } => {
                    write_session(c, header, receiver, &actions).await;
                }
            }
            refresh_files(client.as_mut(), &actions).await;
        }
    });
    commands
}

/// An interactive WRITE: the sentence lock is taken before any edit line,
/// each line is applied as it is typed (a refused one is marked at once),
/// ETIRW commits, and the channel closing (Esc) abandons it.
async fn write_session(
    client: &mut Client,
    header: String,
    mut lines: mpsc::UnboundedReceiver<WriteInput>,
    actions: &mpsc::UnboundedSender<Action>,
) {
    use crate::script::{parse_edit, parse_line, Command, Line};
    let output = |text: String, ok: bool| Action::Output {
        title: header.clone(),
        text,
        ok,
    };
    let error = |e: &shared::WireError| format!("ERROR {}: {}", e.code.as_str(), e.message);
    let Ok(Line::Command(Command::Write { file, sentence })) = parse_line(&header) else {
        let _ = actions.send(Action::WriteOpened(Err("not a WRITE header".into())));
        return;
    };
    if let Err(e) = client.write_begin(&file, sentence).await {
        let _ = actions.send(Action::WriteOpened(Err(error(&e))));
        let _ = actions.send(output(error(&e), false));
        return;
    }
    let _ = actions.send(Action::WriteOpened(Ok(())));
    let (mut index, mut refused) = (0usize, 0usize);
    loop {
        match lines.recv().await {
            Some(WriteInput::Edit(line)) => {
                let this = index;
                index += 1;
                if matches!(parse_line(&line), Ok(Line::Nothing)) {
                    continue;
                }
                let result = match parse_edit(&line) {
                    Ok((word, content)) => client.write_edit(word, &content).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(()) => {}
                    Err(e) if e.code == shared::ErrorCode::Unavailable => {
                        let text =
                            format!("ERROR E_UNAVAILABLE: the WRITE was lost: {}", e.message);
                        let _ = actions.send(Action::WriteOpened(Err(text.clone())));
                        let _ = actions.send(output(text, false));
                        return;
                    }
                    Err(e) => {
                        refused += 1;
                        let _ = actions.send(Action::WriteLineRefused {
                            line: this,
                            message: error(&e),
                        });
                    }
                }
            }
            Some(WriteInput::Commit) => {
                let action = match client.write_commit().await {
                    Ok(_) if refused > 0 => output(
                        format!("Write Successful! ({refused} edit line(s) were refused and not applied)"),
                        false,
                    ),
                    Ok(_) => output("Write Successful!".into(), true),
                    Err(e) => output(error(&e), false),
                };
                let _ = actions.send(action);
                return;
            }
            None => {
                client.write_abort().await;
                return;
            }
        }
    }
}

async fn refresh_files(client: Option<&mut Client>, actions: &mpsc::UnboundedSender<Action>) {
    let Some(client) = client else { return };
    if let Ok(NmReply::Files { rows }) = client
        .nm(NmRequest::View {
            all: true,
            long: false,
        })
        .await
    {
        let _ = actions.send(Action::Files(rows.into_iter().map(|r| r.name).collect()));
    }
}

/// Runs one command block; STREAM words are sent as they arrive.
async fn run_block(
    client: &mut Client,
    block: &str,
    actions: &mpsc::UnboundedSender<Action>,
) -> (String, bool) {
    let mut words = block.split_whitespace();
    if words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case("STREAM"))
    {
        if let Some(file) = words.next() {
            let sink = actions.clone();
            return match client
                .stream(file, |word| {
                    let _ = sink.send(Action::StreamWord(word.to_owned()));
                })
                .await
            {
                Ok(words) => (words.join(" "), true),
                Err(e) => (format!("ERROR {}: {}", e.code, e.message), false),
            };
        }
    }
    let mut out = Vec::new();
    match batch::run(client, block.as_bytes(), Format::Human, &mut out).await {
        Ok(ok) => (String::from_utf8_lossy(&out).trim_end().to_owned(), ok),
        Err(e) => (e.to_string(), false),
    }
}

/// The demo's daemons with the tails of their logs.
fn daemon_views(cluster: &LocalCluster) -> Vec<DaemonView> {
    cluster
        .daemons()
        .into_iter()
        .map(|(name, running)| DaemonView {
            log: tail(&cluster.dir().join(format!("{name}.log")), 40),
            address: cluster.group_nm_addr(&name).map(str::to_owned),
            name,
            running,
        })
        .collect()
}

/// The last `lines` lines of a JSON log, made short.
fn tail(path: &std::path::Path, lines: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let all: Vec<String> = text.lines().filter_map(short_log_line).collect();
    all[all.len().saturating_sub(lines)..].to_vec()
}

fn short_log_line(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    // Our daemons log `timestamp` and `event`; etcd (zap) logs `ts` and `msg`.
    let time = value["timestamp"]
        .as_str()
        .or(value["ts"].as_str())
        .and_then(|t| t.get(11..19))
        .unwrap_or("");
    let what = value["event"]
        .as_str()
        .or(value["msg"].as_str())
        .unwrap_or("-");
    let mut out = format!("{time} {what}");
    for key in [
        "operation",
        "outcome",
        "server",
        "file",
        "step",
        "to",
        "reason",
        "leader",
        "address",
    ] {
        if let Some(v) = value.get(key).and_then(|v| v.as_str()) {
            out.push(' ');
            out.push_str(v);
        }
    }
    Some(out)
}
