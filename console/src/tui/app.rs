//! The TUI's model: everything on screen, updated by [`Action`]s without a
//! terminal, so it is tested directly. Side effects (running a command,
//! feeding a WRITE, killing a daemon) come back as [`Effect`]s for the
//! event loop to carry out.
//!
//! Rules an operator relies on:
//! - a WRITE's edit lines are never run as commands: a header that does not
//!   parse opens no edit block, and one nm or the server refuses (no such
//!   file, no access, a locked sentence) closes it at once;
//! - nothing blocks the command line: WATCH streams into the Events pane
//!   and Esc stops it; commands queue behind a running one and say so;
//! - when the event stream from nm is lost, every table is marked stale
//!   with the age of its data, and the loss and the return are events;
//! - every key either acts or says why it does not.

use super::history::{Charts, HeartbeatSample};
use super::layout::{self, Areas, Pane, Shape};
use crate::script::{parse_line, Command, Line, COMMAND_NAMES};
use crossterm::event::{
    Event as TermEvent, KeyCode, KeyEvent, KeyModifiers, MouseButton, MouseEvent, MouseEventKind,
};
use shared::proto::{ClusterStatus, Event, EventKind, JobStep, NmRole};
use std::collections::VecDeque;
use std::time::{Duration, Instant};
use tui_input::backend::crossterm::EventHandler;
use tui_input::Input;

/// Entries kept in the event log.
pub const EVENT_LOG: usize = 1000;
/// Commands kept in the history.
pub const HISTORY: usize = 200;
/// How long a notice (a key that did nothing, say why) stays on the prompt line.
pub const NOTICE_FOR: Duration = Duration::from_secs(6);

/// Something that happened: a key, a mouse event, a cluster event, a
/// command's result, a tick.
#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    Mouse(MouseEvent),
    /// The terminal's size (sent at start and on every resize).
    Resize(u16, u16),
    Tick,
    Cluster(Event),
    /// The event stream from nm was lost, and why.
    Disconnected(String),
    /// A command finished: its first line, its human output, whether it succeeded.
    Output {
        title: String,
        text: String,
        ok: bool,
    },
    /// A word of a STREAM in progress.
    StreamWord(String),
    /// File names for completion.
    Files(Vec<String>),
    /// The demo's daemons: (name, running, last log lines).
    Daemons(Vec<DaemonView>),
    /// The open WRITE's lock: taken, or refused with this message.
    WriteOpened(Result<(), String>),
    /// An edit line of the open WRITE was refused.
    WriteLineRefused {
        line: usize,
        message: String,
    },
}

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Run one command line.
    Run(String),
    /// Open a WRITE: take the sentence lock now, edit lines follow.
    WriteBegin {
        header: String,
    },
    /// An edit line of the open WRITE.
    WriteLine(String),
    /// ETIRW: commit the open WRITE.
    WriteCommit,
    /// Esc: abandon the open WRITE (nothing is written, the lock is released).
    WriteCancel,
    /// Esc with a command running: give up waiting for it.
    CancelRunning,
    Kill(String),
    Restart(String),
    Quit,
}

/// A key that tears something down, waiting for `y`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub question: String,
    pub effect: Effect,
}

/// A line typed into an open WRITE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditLine {
    pub text: String,
    /// Why the server refused it.
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Command,
    /// Collecting a WRITE's edit lines until ETIRW; `open` once the
    /// sentence lock is held.
    Write {
        header: String,
        lines: Vec<EditLine>,
        open: bool,
    },
    Filter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonView {
    pub name: String,
    pub running: bool,
    pub log: Vec<String>,
    /// For an nm of a group: its address (STATUS names the leader by it).
    pub address: Option<String>,
}

/// An entry of the event log: a cluster event, or something the console
/// itself saw (the event stream lost or back).
#[derive(Debug, Clone, PartialEq)]
pub enum LogEntry {
    Cluster(Event),
    Console { at_ms: u64, text: String, bad: bool },
}

impl LogEntry {
    pub fn at_ms(&self) -> u64 {
        match self {
            LogEntry::Cluster(e) => e.at_ms,
            LogEntry::Console { at_ms, .. } => *at_ms,
        }
    }
}

/// A WATCH typed in the TUI: events stream into the Events pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watching {
    pub started: Instant,
    pub until: Option<Instant>,
    pub events: usize,
}

pub struct App {
    pub user: String,
    pub nm: String,
    pub status: Option<ClusterStatus>,
    /// When the snapshot arrived.
    pub status_at: Option<Instant>,
    pub events: VecDeque<LogEntry>,
    /// Lines scrolled back from the newest event; 0 follows new ones.
    pub events_scroll: usize,
    pub paused: bool,
    /// Events that arrived while paused.
    pub unseen: usize,
    /// The event filter, edited in `/` mode (see [`App::filter`]).
    pub filter_input: Input,
    pub mode: Mode,
    /// K, R or quitting the demo, waiting for `y`.
    pub confirm: Option<Confirm>,
    pub input: Input,
    pub history: Vec<String>,
    history_pos: Option<usize>,
    pub output_title: String,
    pub output: String,
    pub output_ok: bool,
    pub output_scroll: u16,
    /// Commands sent and not answered yet, oldest first.
    pub running: VecDeque<String>,
    pub help: bool,
    /// Why there is no event stream from nm (None: connected).
    pub connection: Option<String>,
    /// Since when the tables show old data (the event stream was lost).
    pub stale_since: Option<Instant>,
    pub files: Vec<String>,
    pub daemons: Vec<DaemonView>,
    pub selected: usize,
    pub color: bool,
    pub watching: Option<Watching>,
    /// A line for the prompt row: what a key did not do, and why.
    pub notice: Option<(String, Instant)>,
    /// The pane shown in the small layout's tabbed area.
    pub pane: Pane,
    pub size: (u16, u16),
    pub charts: Charts,
    /// The (seq, time) of the newest cluster event logged.
    last_event: Option<(u64, u64)>,
}

impl App {
    pub fn new(nm: &str, user: &str, color: bool) -> Self {
        App {
            user: user.to_owned(),
            nm: nm.to_owned(),
            status: None,
            status_at: None,
            events: VecDeque::new(),
            events_scroll: 0,
            paused: false,
            unseen: 0,
            filter_input: Input::default(),
            mode: Mode::Normal,
            confirm: None,
            input: Input::default(),
            history: Vec::new(),
            history_pos: None,
            output_title: String::new(),
            output: "Type : for a command (? for keys).".to_owned(),
            output_ok: true,
            output_scroll: 0,
            running: VecDeque::new(),
            help: false,
            connection: Some("connecting to nm…".to_owned()),
            stale_since: None,
            files: Vec::new(),
            daemons: Vec::new(),
            selected: 0,
            color,
            watching: None,
            notice: None,
            pane: Pane::Events,
            size: (80, 24),
            charts: Charts::default(),
            last_event: None,
        }
    }

    /// The screen's panes for the current size.
    pub fn areas(&self) -> Areas {
        layout::areas(
            &self.shape(),
            ratatui::layout::Rect::new(0, 0, self.size.0, self.size.1),
        )
    }

    /// What the layout depends on.
    pub fn shape(&self) -> Shape<'_> {
        let status = self.status.as_ref();
        let count = |f: fn(&ClusterStatus) -> usize| status.map_or(0, f) as u16;
        Shape {
            servers: count(|s| s.servers.len()),
            pairs: count(|s| s.pairs.len()),
            group: count(|s| {
                if s.etcd.is_empty() {
                    0
                } else {
                    s.nm.len() + s.etcd.len()
                }
            }),
            chart_rows: count(|s| s.pairs.len() * 3 + s.servers.len()),
            output: &self.output,
            // A refused line takes a second row for its reason.
            write_rows: match &self.mode {
                Mode::Write { lines, .. } => Some(
                    (lines.len() + lines.iter().filter(|l| l.refused.is_some()).count()) as u16,
                ),
                _ => None,
            },
            daemons: self.daemons.len(),
            pane: self.pane,
        }
    }

    /// Applies one action; returns what the event loop must do.
    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Key(key) => return self.key(key),
            Action::Mouse(mouse) => self.mouse(mouse),
            Action::Resize(w, h) => {
                self.size = (w, h);
                self.output_scroll = self.output_scroll.min(self.output_overflow());
            }
            Action::Tick => self.tick(),
            Action::Cluster(event) => self.cluster_event(event),
            Action::Disconnected(why) => self.disconnected(why),
            Action::Output { title, text, ok } => {
                if let Some(i) = self.running.iter().position(|r| *r == title) {
                    self.running.remove(i);
                }
                self.output_title = title;
                self.output = text;
                self.output_ok = ok;
                self.output_scroll = 0;
                self.pane = Pane::Output;
            }
            Action::StreamWord(word) => {
                if !self.output.is_empty() {
                    self.output.push(' ');
                }
                self.output.push_str(&word);
            }
            Action::Files(files) => self.files = files,
            Action::Daemons(daemons) => {
                self.selected = self.selected.min(daemons.len().saturating_sub(1));
                self.daemons = daemons;
            }
            Action::WriteOpened(result) => return self.write_opened(result),
            Action::WriteLineRefused { line, message } => {
                if let Mode::Write { lines, .. } = &mut self.mode {
                    if let Some(l) = lines.get_mut(line) {
                        l.refused = Some(message);
                    }
                }
            }
        }
        Vec::new()
    }

    fn say(&mut self, text: impl Into<String>) {
        self.notice = Some((text.into(), Instant::now()));
    }

    /// The notice to show, if it is still fresh.
    pub fn notice(&self) -> Option<&str> {
        self.notice
            .as_ref()
            .filter(|(_, at)| at.elapsed() < NOTICE_FOR)
            .map(|(text, _)| text.as_str())
    }

    fn tick(&mut self) {
        if let Some(w) = &self.watching {
            if w.until.is_some_and(|until| Instant::now() >= until) {
                let (secs, n) = (w.started.elapsed().as_secs_f64(), w.events);
                self.watching = None;
                self.show(
                    "WATCH",
                    format!("WATCH ended after {secs:.0} s: {n} event(s), in the Events pane."),
                    true,
                );
            }
        }
    }

    /// Puts a result in the Output pane and brings it forward.
    fn show(&mut self, title: &str, text: String, ok: bool) {
        self.output_title = title.to_owned();
        self.output = text;
        self.output_ok = ok;
        self.output_scroll = 0;
        self.pane = Pane::Output;
    }

    fn log(&mut self, entry: LogEntry) {
        if self.paused {
            // Keep the view still: the new line pushes the window.
            self.events_scroll += 1;
            self.unseen += 1;
        }
        if let Some(w) = &mut self.watching {
            w.events += 1;
        }
        // In time order: events a reconnection replays (nm's recent ones)
        // may be older than the console's own line about the reconnection.
        let at = entry.at_ms();
        let place = self
            .events
            .iter()
            .rposition(|e| e.at_ms() <= at)
            .map_or(0, |i| i + 1);
        self.events.insert(place, entry);
        if self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
    }

    fn disconnected(&mut self, why: String) {
        if self.stale_since.is_none() {
            self.stale_since = Some(Instant::now());
            self.log(LogEntry::Console {
                at_ms: shared::now_ms(),
                text: format!("console: lost the event stream from nm: {why}"),
                bad: true,
            });
        }
        self.connection = Some(why);
    }

    fn cluster_event(&mut self, event: Event) {
        self.connection = None;
        // After a reconnection to the same nm, the events it replays were
        // seen already (a restarted nm numbers from 1 again, but later).
        if !matches!(event.kind, EventKind::Snapshot { .. }) {
            if let Some((seq, at_ms)) = self.last_event {
                if event.seq <= seq && event.at_ms <= at_ms {
                    return;
                }
            }
            self.last_event = Some((event.seq, event.at_ms));
        }
        if let Some(since) = self.stale_since.take() {
            self.log(LogEntry::Console {
                at_ms: shared::now_ms(),
                text: format!(
                    "console: event stream from nm back after {:.1} s",
                    since.elapsed().as_secs_f64()
                ),
                bad: false,
            });
        }
        if let EventKind::Snapshot { status } = event.kind {
            // A new leader of the nm group shows in the log as an event.
            let leader = |s: &ClusterStatus| {
                s.nm.iter()
                    .find(|n| n.role == NmRole::Leader && s.nm.len() > 1)
                    .map(|n| n.address.clone())
            };
            let previous = self.status.as_ref().and_then(leader);
            let now = leader(&status);
            self.charts.record(&status, Instant::now());
            self.status = Some(status);
            self.status_at = Some(Instant::now());
            if let Some(address) = now.filter(|now| Some(now) != previous.as_ref()) {
                self.cluster_event(Event {
                    seq: event.seq,
                    at_ms: event.at_ms,
                    kind: EventKind::NmLeader { address, previous },
                });
            }
            return;
        }
        // The rows change the moment the event says so, not at the next snapshot.
        if let Some(status) = self.status.as_mut() {
            match &event.kind {
                EventKind::Server { name, state, .. } => {
                    if let Some(s) = status.servers.iter_mut().find(|s| &s.name == name) {
                        s.state = *state;
                        if *state == shared::proto::ServerState::Failed {
                            s.serving = false;
                            s.ms_until_timeout = 0;
                            self.charts.heartbeat(name, HeartbeatSample::Failed);
                        }
                    }
                }
                EventKind::Pair {
                    primary, to, epoch, ..
                } => {
                    if let Some(p) = status.pairs.iter_mut().find(|p| &p.primary == primary) {
                        p.state = *to;
                        p.epoch = *epoch;
                    }
                }
                _ => {}
            }
        }
        self.log(LogEntry::Cluster(event));
    }

    fn scroll_events(&mut self, by: isize) {
        let max = self.events.len().saturating_sub(1);
        self.events_scroll = (self.events_scroll as isize + by).clamp(0, max as isize) as usize;
        self.paused = self.events_scroll > 0;
        if !self.paused {
            self.unseen = 0;
        }
    }

    /// Lines the output can scroll by in its pane (0 when it fits).
    pub fn output_overflow(&self) -> u16 {
        let areas = self.areas();
        let Some(area) = areas.output else {
            return 0;
        };
        let border = if areas.boxed { 2 } else { 0 };
        let inner = area.height.saturating_sub(border);
        layout::wrapped_height(&self.output, area.width.saturating_sub(border))
            .saturating_sub(inner)
    }

    fn scroll_output(&mut self, by: i32) {
        let max = self.output_overflow() as i32;
        self.output_scroll = (self.output_scroll as i32 + by).clamp(0, max) as u16;
    }

    /// The event filter as typed.
    pub fn filter(&self) -> &str {
        self.filter_input.value()
    }

    /// The entries the filter lets through, oldest first.
    pub fn visible_events(&self) -> Vec<&LogEntry> {
        let filter = self.filter().to_lowercase();
        self.events
            .iter()
            .filter(|e| {
                filter.is_empty()
                    || format!("{} {}", clock(e.at_ms()), describe(e))
                        .to_lowercase()
                        .contains(&filter)
            })
            .collect()
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            // Twice quits the demo too.
            if self
                .confirm
                .as_ref()
                .is_some_and(|c| c.effect == Effect::Quit)
            {
                return vec![Effect::Quit];
            }
            self.mode = Mode::Normal;
            return self.quit();
        }
        match self.mode.clone() {
            Mode::Normal => self.normal_key(key),
            Mode::Filter => {
                match key.code {
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Esc => {
                        self.filter_input.reset();
                        self.mode = Mode::Normal;
                    }
                    _ => {
                        self.filter_input.handle_event(&TermEvent::Key(key));
                    }
                }
                Vec::new()
            }
            Mode::Command => self.command_key(key),
            Mode::Write { .. } => self.write_key(key),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if self.help {
            self.help = false;
            return Vec::new();
        }
        if let Some(confirm) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                self.notice = None;
                return vec![confirm.effect];
            }
            self.say("not done: only y confirms");
            return Vec::new();
        }
        let demo = !self.daemons.is_empty();
        match key.code {
            KeyCode::Char('q') => return self.quit(),
            KeyCode::Char(':') => {
                self.mode = Mode::Command;
                self.input.reset();
                self.history_pos = None;
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Filter;
                self.filter_input.reset();
            }
            KeyCode::Esc => {
                // The most recent thing first: a filter, a WATCH, a command.
                if !self.filter().is_empty() {
                    self.filter_input.reset();
                    self.say("filter cleared");
                } else if let Some(w) = self.watching.take() {
                    self.show(
                        "WATCH",
                        format!(
                            "WATCH stopped after {:.0} s: {} event(s), in the Events pane.",
                            w.started.elapsed().as_secs_f64(),
                            w.events
                        ),
                        true,
                    );
                } else if let Some(running) = self.running.front().cloned() {
                    self.say(format!("{running}: cancelled (Esc); the queue goes on"));
                    return vec![Effect::CancelRunning];
                }
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.events_scroll = 0;
                    self.unseen = 0;
                }
            }
            KeyCode::Up => self.scroll_events(1),
            KeyCode::Down => self.scroll_events(-1),
            KeyCode::End => {
                self.events_scroll = 0;
                self.paused = false;
                self.unseen = 0;
            }
            KeyCode::PageUp => self.scroll_output(-5),
            KeyCode::PageDown => self.scroll_output(5),
            KeyCode::Char(c @ '1'..='4') => {
                let panes = layout::tabs(!self.daemons.is_empty());
                match panes.get((c as u8 - b'1') as usize) {
                    Some(pane) => self.pane = *pane,
                    None => self.say(format!("no pane {c} here")),
                }
            }
            KeyCode::Tab | KeyCode::Right if demo => {
                self.selected = (self.selected + 1) % self.daemons.len();
            }
            KeyCode::BackTab | KeyCode::Left if demo => {
                self.selected = (self.selected + self.daemons.len() - 1) % self.daemons.len();
            }
            KeyCode::Char('K') if demo => {
                if let Some(d) = self.daemons.get(self.selected) {
                    if !d.running {
                        let text = format!("{} is not running: R starts it", d.name);
                        self.say(text);
                        return Vec::new();
                    }
                    let (name, effect) = (d.name.clone(), Effect::Kill(d.name.clone()));
                    self.ask(
                        format!("kill {name} (SIGKILL)? y: yes, any other key: no"),
                        effect,
                    );
                }
            }
            KeyCode::Char('R') if demo => {
                if let Some(d) = self.daemons.get(self.selected) {
                    if d.running {
                        let text = format!("{} is running: K kills it, then R restarts it", d.name);
                        self.say(text);
                        return Vec::new();
                    }
                    let (name, effect) = (d.name.clone(), Effect::Restart(d.name.clone()));
                    self.ask(format!("restart {name}? y: yes, any other key: no"), effect);
                }
            }
            KeyCode::Tab
            | KeyCode::BackTab
            | KeyCode::Left
            | KeyCode::Right
            | KeyCode::Char('K')
            | KeyCode::Char('R') => {
                self.say("Tab, K and R act on the daemons of `console demo`; here the daemons run elsewhere");
            }
            _ => {}
        }
        Vec::new()
    }

    /// Asks before `effect`; `y` confirms (the prompt row shows the question).
    fn ask(&mut self, question: String, effect: Effect) {
        self.notice = None;
        self.confirm = Some(Confirm { question, effect });
    }

    /// q, Ctrl-C and EXIT: the demo asks first (quitting stops its cluster).
    fn quit(&mut self) -> Vec<Effect> {
        if self.daemons.is_empty() {
            return vec![Effect::Quit];
        }
        self.ask(
            "quit and stop the demo's cluster? y: yes, any other key: no".to_owned(),
            Effect::Quit,
        );
        Vec::new()
    }

    fn command_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.input.reset();
            }
            KeyCode::Tab => self.complete(),
            KeyCode::Up => self.history_step(-1),
            KeyCode::Down => self.history_step(1),
            KeyCode::Enter => {
                let line = self.input.value().trim().to_owned();
                self.input.reset();
                self.mode = Mode::Normal;
                if line.is_empty() {
                    return Vec::new();
                }
                self.remember(&line);
                return self.command(line);
            }
            _ => {
                self.input.handle_event(&TermEvent::Key(key));
                self.notice = None;
            }
        }
        Vec::new()
    }

    /// A command line entered with `:`.
    fn command(&mut self, line: String) -> Vec<Effect> {
        let parsed = match parse_line(&line) {
            Ok(Line::Nothing) => return Vec::new(),
            Ok(Line::Command(command)) => command,
            Err(e) => {
                // A WRITE header that does not parse opens no edit block:
                // the lines typed next must never run as commands.
                self.show(
                    &line,
                    format!("ERROR {}: {}", e.code.as_str(), e.message),
                    false,
                );
                return Vec::new();
            }
        };
        match parsed {
            Command::Exit => self.quit(),
            Command::Write { .. } => {
                self.mode = Mode::Write {
                    header: line.clone(),
                    lines: Vec::new(),
                    open: false,
                };
                self.input.reset();
                vec![Effect::WriteBegin { header: line }]
            }
            Command::Watch { millis } => {
                let now = Instant::now();
                self.watching = Some(Watching {
                    started: now,
                    until: millis.map(|ms| now + Duration::from_millis(ms)),
                    events: 0,
                });
                self.paused = false;
                self.events_scroll = 0;
                self.unseen = 0;
                self.filter_input.reset();
                let how_long = match millis {
                    Some(ms) => format!("for {:.0} s", ms as f64 / 1000.0),
                    None => "until Esc".to_owned(),
                };
                self.show(
                    &line,
                    format!("WATCH: cluster events stream into the Events pane {how_long}; the command line stays free."),
                    true,
                );
                self.pane = Pane::Events;
                Vec::new()
            }
            _ => {
                if !self.running.is_empty() {
                    self.say(format!(
                        "{line}: queued, {} command(s) ahead (Esc cancels the running one)",
                        self.running.len()
                    ));
                } else {
                    self.show(&line, String::new(), true);
                }
                self.running.push_back(line.clone());
                vec![Effect::Run(line)]
            }
        }
    }

    fn write_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let Mode::Write { header, lines, .. } = &mut self.mode else {
            return Vec::new();
        };
        match key.code {
            KeyCode::Esc => {
                let (header, n) = (header.clone(), lines.len());
                self.mode = Mode::Normal;
                self.input.reset();
                self.show(
                    &header,
                    format!("WRITE cancelled (Esc): {n} edit line(s) dropped, nothing was written, the sentence lock is released."),
                    true,
                );
                vec![Effect::WriteCancel]
            }
            KeyCode::Enter => {
                let line = self.input.value().to_owned();
                self.input.reset();
                if crate::script::is_etirw(&line) {
                    let header = header.clone();
                    self.mode = Mode::Normal;
                    self.show(&header, String::new(), true);
                    self.running.push_back(header);
                    return vec![Effect::WriteCommit];
                }
                if line.trim().is_empty() {
                    self.say("a blank edit line does nothing: type `INDEX WORDS…`, or ETIRW");
                    return Vec::new();
                }
                lines.push(EditLine {
                    text: line.clone(),
                    refused: None,
                });
                vec![Effect::WriteLine(line)]
            }
            _ => {
                self.input.handle_event(&TermEvent::Key(key));
                Vec::new()
            }
        }
    }

    fn write_opened(&mut self, result: Result<(), String>) -> Vec<Effect> {
        let Mode::Write {
            header,
            lines,
            open,
        } = &mut self.mode
        else {
            return Vec::new();
        };
        match result {
            Ok(()) => *open = true,
            Err(message) => {
                let (header, n) = (header.clone(), lines.len());
                let dropped = if n == 0 {
                    String::new()
                } else {
                    format!(" ({n} edit line(s) typed meanwhile were dropped)")
                };
                self.mode = Mode::Normal;
                self.input.reset();
                self.show(&header, format!("{message}{dropped}"), false);
            }
        }
        Vec::new()
    }

    fn mouse(&mut self, mouse: MouseEvent) {
        let areas = self.areas();
        let inside = |r: Option<ratatui::layout::Rect>| {
            r.is_some_and(|r| {
                mouse.column >= r.x
                    && mouse.column < r.x + r.width
                    && mouse.row >= r.y
                    && mouse.row < r.y + r.height
            })
        };
        let up = match mouse.kind {
            MouseEventKind::ScrollUp => true,
            MouseEventKind::ScrollDown => false,
            MouseEventKind::Down(MouseButton::Left) => {
                if let Some(tabs) = areas.tabs {
                    if mouse.row == tabs.y {
                        let demo = !self.daemons.is_empty();
                        if let Some(pane) = layout::tab_at(demo, mouse.column - tabs.x) {
                            self.pane = pane;
                        }
                        return;
                    }
                }
                let border = u16::from(areas.boxed);
                if let Some(list) = areas.daemons.filter(|_| inside(areas.daemons)) {
                    let row = mouse.row.saturating_sub(list.y + border) as usize;
                    if row < self.daemons.len() && mouse.row >= list.y + border {
                        self.selected = row;
                    }
                    return;
                }
                if let Some(servers) = areas.servers.filter(|_| inside(areas.servers)) {
                    // A server's row selects its daemon in the demo.
                    let row = (mouse.row.saturating_sub(servers.y + areas.table_top)) as usize;
                    let name = self
                        .status
                        .as_ref()
                        .and_then(|s| s.servers.get(row))
                        .map(|s| s.name.clone());
                    if let Some(i) =
                        name.and_then(|n| self.daemons.iter().position(|d| d.name == n))
                    {
                        self.selected = i;
                    }
                }
                return;
            }
            _ => return,
        };
        if inside(areas.output) {
            self.scroll_output(if up { -3 } else { 3 });
        } else if inside(areas.events) {
            self.scroll_events(if up { 3 } else { -3 });
        }
    }

    fn remember(&mut self, line: &str) {
        if self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_owned());
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
        self.history_pos = None;
    }

    fn history_step(&mut self, by: isize) {
        if self.history.is_empty() {
            return;
        }
        let last = self.history.len() as isize - 1;
        let pos = match self.history_pos {
            None if by < 0 => last,
            None => return,
            Some(p) => p as isize + by,
        };
        if pos > last {
            self.history_pos = None;
            self.input.reset();
            return;
        }
        let pos = pos.clamp(0, last) as usize;
        self.history_pos = Some(pos);
        self.input = Input::new(self.history[pos].clone());
    }

    /// Completes the command name (first word) or a file name (later
    /// words) up to the prefix every match shares; when that adds nothing,
    /// the candidates are listed on the prompt row.
    fn complete(&mut self) {
        let value = self.input.value().to_owned();
        let ends_with_space = value.ends_with(' ');
        let words: Vec<&str> = value.split_whitespace().collect();
        let (prefix, candidates): (&str, Vec<String>) = match words.as_slice() {
            [] => ("", COMMAND_NAMES.iter().map(|c| c.to_string()).collect()),
            [first] if !ends_with_space => (
                *first,
                COMMAND_NAMES.iter().map(|c| c.to_string()).collect(),
            ),
            _ if ends_with_space => ("", self.files.clone()),
            [.., last] => (*last, self.files.clone()),
        };
        let upper = prefix.to_uppercase();
        let matches: Vec<&String> = candidates
            .iter()
            .filter(|c| c.starts_with(prefix) || (words.len() <= 1 && c.starts_with(&upper)))
            .collect();
        let Some(first) = matches.first() else {
            self.say(format!("nothing starts with {prefix:?}"));
            return;
        };
        // The longest prefix common to every match.
        let mut common = first.to_string();
        for m in &matches[1..] {
            while !m.starts_with(&common) {
                common.pop();
            }
        }
        let mut completed = value[..value.len() - prefix.len()].to_owned();
        completed.push_str(&common);
        if matches.len() == 1 {
            completed.push(' ');
        } else if common.len() <= prefix.len() {
            let list: Vec<&str> = matches.iter().map(|m| m.as_str()).collect();
            self.say(list.join("  "));
        }
        self.input = Input::new(completed);
    }

    /// Milliseconds since server `i`'s last heartbeat and until its
    /// timeout, as of the latest snapshot (not extrapolated: between
    /// snapshots the figures would only be guesses).
    pub fn timers(&self, i: usize) -> Option<(u64, u64)> {
        let s = self.status.as_ref()?.servers.get(i)?;
        let until = if s.state == shared::proto::ServerState::Failed {
            0
        } else {
            s.ms_until_timeout
        };
        Some((s.ms_since_heartbeat, until))
    }

    /// The tables' data age when it is stale (the event stream is lost).
    pub fn stale_for(&self) -> Option<Duration> {
        self.stale_since?;
        Some(self.status_at.map_or(Duration::ZERO, |at| at.elapsed()))
    }
}

/// A value as it is named on the wire and in STATUS (UPPER_SNAKE for states).
pub fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `HH:MM:SS` (UTC) of a Unix time in ms.
pub fn clock(at_ms: u64) -> String {
    let secs = (at_ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// One line describing an entry of the log (states named as STATUS names them).
pub fn describe(entry: &LogEntry) -> String {
    let event = match entry {
        LogEntry::Console { text, .. } => return text.clone(),
        LogEntry::Cluster(event) => event,
    };
    match &event.kind {
        EventKind::Job {
            job,
            kind,
            step,
            file,
            primary,
            replica,
            version,
            duration_ms,
            detail,
        } => {
            let what = file.as_deref().unwrap_or("(whole pair)");
            let mut line = if *step == JobStep::Dropped {
                // A dropped change may never have had a job of its own.
                let id = if *job == 0 {
                    String::new()
                } else {
                    format!(" (job {job})")
                };
                format!("pair {primary}: {what} not copied to {replica}{id}")
            } else {
                format!(
                    "job {job} {} {} {what} → {replica} (pair {primary})",
                    word(kind),
                    word(step)
                )
            };
            if let Some(v) = version {
                line.push_str(&format!(" v{v}"));
            }
            if *step != JobStep::Dropped {
                line.push_str(&format!(" {duration_ms}ms"));
            }
            if let Some(d) = detail {
                line.push_str(&format!(": {d}"));
            }
            line
        }
        EventKind::Pair {
            primary,
            backup,
            from,
            to,
            epoch,
            reason,
        } => format!(
            "pair {primary}/{} {} → {} (epoch {epoch}): {reason}",
            backup.as_deref().unwrap_or("-"),
            word(from),
            word(to)
        ),
        EventKind::Server {
            name,
            state,
            reason,
        } => format!("server {name} {}: {reason}", word(state)),
        EventKind::Snapshot { .. } => "snapshot".to_owned(),
        EventKind::NmLeader { address, previous } => match previous {
            Some(previous) => format!("nm LEADER is now {address} (was {previous})"),
            None => format!("nm LEADER is {address}"),
        },
        EventKind::Streamed {
            primary,
            replica,
            files,
            max_micros,
        } => {
            let named = match files.as_slice() {
                [one] => one.clone(),
                [first, ..] => format!("{first} and {} more", files.len() - 1),
                [] => "nothing".to_owned(),
            };
            format!(
                "stream {primary} → {replica}: {named} durable on the backup (slowest {:.2} ms)",
                *max_micros as f64 / 1000.0
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shared::proto::{JobKind, PairState, ServerState};

    pub fn key(code: KeyCode) -> Action {
        Action::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl(c: char) -> Action {
        Action::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    pub fn typed(app: &mut App, text: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        for c in text.chars() {
            let code = if c == '\n' {
                KeyCode::Enter
            } else {
                KeyCode::Char(c)
            };
            effects.extend(app.update(key(code)));
        }
        effects
    }

    pub use crate::tui::testing::{event, status};

    fn snapshot(app: &mut App, status: ClusterStatus) {
        app.update(Action::Cluster(event(0, EventKind::Snapshot { status })));
    }

    #[test]
    fn a_new_nm_leader_shows_in_the_event_log() {
        let with_leader = |leader: &str| {
            let mut status = status(PairState::Active);
            status.nm = ["127.0.0.2:5000", "127.0.0.3:5000"]
                .iter()
                .map(|a| shared::proto::NmStatus {
                    address: (*a).into(),
                    role: if *a == leader {
                        NmRole::Leader
                    } else {
                        NmRole::Standby
                    },
                    lease_ms_left: 0,
                    warm: true,
                })
                .collect();
            EventKind::Snapshot { status }
        };
        let mut app = App::new("nm", "op", true);
        app.update(Action::Cluster(event(1, with_leader("127.0.0.2:5000"))));
        app.update(Action::Cluster(event(2, with_leader("127.0.0.2:5000"))));
        app.update(Action::Cluster(event(3, with_leader("127.0.0.3:5000"))));
        let lines: Vec<String> = app.events.iter().map(describe).collect();
        assert_eq!(
            lines,
            vec![
                "nm LEADER is 127.0.0.2:5000",
                "nm LEADER is now 127.0.0.3:5000 (was 127.0.0.2:5000)"
            ]
        );
    }

    #[test]
    fn snapshots_and_events_update_the_rows_at_once() {
        let mut app = App::new("nm", "op", true);
        snapshot(&mut app, status(PairState::Active));
        assert!(app.connection.is_none());
        app.update(Action::Cluster(event(
            2,
            EventKind::Server {
                name: "ss1".into(),
                state: ServerState::Failed,
                reason: "closed".into(),
            },
        )));
        let s = &app.status.as_ref().unwrap().servers[0];
        assert_eq!((s.state, s.ms_until_timeout), (ServerState::Failed, 0));
        app.update(Action::Cluster(event(
            3,
            EventKind::Pair {
                primary: "ss1".into(),
                backup: Some("ss1_backup".into()),
                from: PairState::Active,
                to: PairState::PrimaryFailed,
                epoch: 1,
                reason: "promoted".into(),
            },
        )));
        let p = &app.status.as_ref().unwrap().pairs[0];
        assert_eq!((p.state, p.epoch), (PairState::PrimaryFailed, 1));
        assert_eq!(app.events.len(), 2, "snapshots are not logged");
    }

    fn job(i: u64, step: JobStep) -> EventKind {
        EventKind::Job {
            job: i,
            kind: JobKind::Update,
            step,
            file: Some(format!("f{i}")),
            primary: "ss1".into(),
            replica: "ss1_backup".into(),
            version: Some(1),
            duration_ms: 1,
            detail: None,
        }
    }

    #[test]
    fn the_log_pauses_scrolls_filters_and_counts_what_came_meanwhile() {
        let mut app = App::new("nm", "op", true);
        for i in 0..5 {
            let step = if i == 3 {
                JobStep::Failed
            } else {
                JobStep::Applied
            };
            app.update(Action::Cluster(event(i, job(i, step))));
        }
        app.update(key(KeyCode::Up));
        assert!(app.paused && app.events_scroll == 1);
        app.update(Action::Cluster(event(9, job(9, JobStep::Applied))));
        assert_eq!(app.events_scroll, 2, "a paused log does not move");
        assert_eq!(app.unseen, 1, "and counts what arrived");
        app.update(key(KeyCode::End));
        assert!(!app.paused && app.events_scroll == 0 && app.unseen == 0);
        typed(&mut app, "/failed\n");
        assert_eq!(app.visible_events().len(), 1);
        assert_eq!(app.mode, Mode::Normal);
        app.update(key(KeyCode::Esc));
        assert!(app.filter().is_empty(), "Esc clears the filter");
        assert_eq!(app.visible_events().len(), 6);
        typed(&mut app, "/zz");
        app.update(key(KeyCode::Esc));
        assert!(app.filter().is_empty() && app.mode == Mode::Normal);
    }

    #[test]
    fn commands_history_completion_and_line_editing() {
        let mut app = App::new("nm", "op", true);
        app.update(Action::Files(vec![
            "notes.txt".into(),
            "notebook.txt".into(),
        ]));
        typed(&mut app, ":cre");
        app.update(key(KeyCode::Tab));
        assert_eq!(
            app.input.value(),
            "CREATE",
            "CREATE and CREATEFOLDER share it"
        );
        app.update(key(KeyCode::Tab));
        assert_eq!(
            app.notice(),
            Some("CREATE  CREATEFOLDER"),
            "an ambiguous Tab lists the candidates"
        );
        app.update(key(KeyCode::Esc));
        typed(&mut app, ":CREATE no");
        app.update(key(KeyCode::Tab));
        assert_eq!(app.input.value(), "CREATE note", "the common prefix");
        let effects = typed(&mut app, "s.txt\n");
        assert_eq!(effects, [Effect::Run("CREATE notes.txt".into())]);
        typed(&mut app, ":");
        app.update(key(KeyCode::Up));
        assert_eq!(app.input.value(), "CREATE notes.txt");
        app.update(key(KeyCode::Esc));
        // Cursor keys and the usual control keys edit the line.
        typed(&mut app, ":CRATE x");
        for _ in 0..5 {
            app.update(key(KeyCode::Left));
        }
        typed(&mut app, "E");
        assert_eq!(app.input.value(), "CREATE x");
        app.update(ctrl('a'));
        assert_eq!(app.input.cursor(), 0);
        app.update(ctrl('e'));
        app.update(ctrl('w'));
        assert_eq!(app.input.value(), "CREATE ");
        app.update(ctrl('u'));
        assert_eq!(app.input.value(), "");
        app.update(key(KeyCode::Esc));
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn a_write_block_takes_its_lock_first_and_sends_lines_as_typed() {
        let mut app = App::new("nm", "op", true);
        let effects = typed(&mut app, ":WRITE notes.txt 0\n");
        assert_eq!(
            effects,
            [Effect::WriteBegin {
                header: "WRITE notes.txt 0".into()
            }]
        );
        assert_eq!(
            typed(&mut app, "0 Hello there.\n"),
            [Effect::WriteLine("0 Hello there.".into())]
        );
        app.update(Action::WriteOpened(Ok(())));
        app.update(Action::WriteLineRefused {
            line: 0,
            message: "E_BAD_REQUEST: word index 9 is past the end".into(),
        });
        let Mode::Write { lines, open, .. } = &app.mode else {
            panic!("{:?}", app.mode)
        };
        assert!(*open && lines[0].refused.is_some());
        assert_eq!(typed(&mut app, "ETIRW\n"), [Effect::WriteCommit]);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn a_refused_or_bad_write_header_closes_the_block_and_nothing_runs() {
        let mut app = App::new("nm", "op", false);
        for header in [":WRITE a.txt\n", ":WRITE a.txt x\n"] {
            assert!(typed(&mut app, header).is_empty());
            assert_eq!(app.mode, Mode::Normal, "{header}");
            assert!(app.output.contains("WRITE"), "{}", app.output);
        }
        // What is typed next is a command line again, not an edit line.
        let effects = typed(&mut app, ":CREATE zz.txt\n");
        assert_eq!(effects, [Effect::Run("CREATE zz.txt".into())]);
        // A header nm refuses (no such file) closes the block at once; the
        // lines typed meanwhile went to the WRITE, never to the command line.
        typed(&mut app, ":WRITE nope.txt 0\n");
        assert_eq!(
            typed(&mut app, "CREATE yy.txt\n"),
            [Effect::WriteLine("CREATE yy.txt".into())]
        );
        app.update(Action::WriteOpened(Err(
            "ERROR E_NOT_FOUND: no file nope.txt".into(),
        )));
        assert_eq!(app.mode, Mode::Normal);
        assert!(app.output.contains("E_NOT_FOUND") && app.output.contains("1 edit line"));
        // Esc in an open block says what it did.
        typed(&mut app, ":WRITE a.txt 0\n0 x\n");
        assert_eq!(app.update(key(KeyCode::Esc)), [Effect::WriteCancel]);
        assert!(app.output.contains("cancelled"), "{}", app.output);
    }

    #[test]
    fn watch_streams_into_the_events_and_never_holds_the_command_line() {
        let mut app = App::new("nm", "op", true);
        assert!(typed(&mut app, ":WATCH\n").is_empty());
        assert!(app.watching.is_some());
        app.update(Action::Cluster(event(1, job(1, JobStep::Applied))));
        assert_eq!(
            typed(&mut app, ":CREATE w.txt\n"),
            [Effect::Run("CREATE w.txt".into())],
            "commands run while watching"
        );
        app.update(key(KeyCode::Esc));
        assert!(app.watching.is_none());
        assert!(app.output.contains("1 event"), "{}", app.output);
        // A timed WATCH ends by itself.
        typed(&mut app, ":WATCH 0\n");
        app.update(Action::Tick);
        assert!(app.watching.is_none());
        assert!(app.output.contains("ended"), "{}", app.output);
    }

    #[test]
    fn queued_commands_say_that_they_wait() {
        let mut app = App::new("nm", "op", true);
        typed(&mut app, ":LIST\n");
        typed(&mut app, ":VIEW -a\n");
        assert_eq!(app.running.len(), 2);
        assert!(
            app.notice().unwrap().contains("queued"),
            "{:?}",
            app.notice()
        );
        app.update(Action::Output {
            title: "LIST".into(),
            text: "alice".into(),
            ok: true,
        });
        assert_eq!(app.running.len(), 1);
    }

    #[test]
    fn a_lost_event_stream_marks_the_data_stale_and_logs_loss_and_return() {
        let mut app = App::new("nm", "op", true);
        snapshot(&mut app, status(PairState::Active));
        assert!(app.stale_for().is_none());
        app.update(Action::Disconnected("connection refused".into()));
        app.update(Action::Disconnected("connection refused".into()));
        assert!(app.stale_for().is_some());
        snapshot(&mut app, status(PairState::Active));
        assert!(app.stale_for().is_none());
        let lines: Vec<String> = app.events.iter().map(describe).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("lost the event stream"), "{lines:?}");
        assert!(lines[1].contains("back after"), "{lines:?}");
    }

    #[test]
    fn keys_quit_help_and_drive_the_demo_daemons() {
        let mut app = App::new("nm", "op", true);
        assert_eq!(app.update(key(KeyCode::Char('q'))), [Effect::Quit]);
        typed(&mut app, ":");
        assert_eq!(
            app.update(ctrl('c')),
            [Effect::Quit],
            "Ctrl-C quits from any mode"
        );
        app.update(key(KeyCode::Esc));
        app.update(key(KeyCode::Char('K')));
        assert!(
            app.notice().unwrap().contains("console demo"),
            "K outside the demo says why"
        );
        app.update(key(KeyCode::Char('?')));
        assert!(app.help);
        app.update(key(KeyCode::Char('x')));
        assert!(!app.help);
        let daemon = |name: &str, running: bool| DaemonView {
            name: name.into(),
            running,
            log: vec![],
            address: None,
        };
        app.update(Action::Daemons(vec![
            daemon("nm", true),
            daemon("ss1", true),
        ]));
        app.update(key(KeyCode::Tab));
        assert!(app.update(key(KeyCode::Char('R'))).is_empty());
        assert!(app.notice().unwrap().contains("is running"));
        // K and R ask first: only y goes ahead.
        assert!(app.update(key(KeyCode::Char('K'))).is_empty());
        assert!(app.confirm.as_ref().unwrap().question.contains("kill ss1"));
        assert!(
            app.update(key(KeyCode::Char('R'))).is_empty(),
            "a stray key cancels"
        );
        assert!(app.confirm.is_none());
        app.update(key(KeyCode::Char('K')));
        assert_eq!(
            app.update(key(KeyCode::Char('y'))),
            [Effect::Kill("ss1".into())]
        );
        app.update(Action::Daemons(vec![
            daemon("nm", true),
            daemon("ss1", false),
        ]));
        app.update(key(KeyCode::Char('R')));
        assert_eq!(
            app.update(key(KeyCode::Char('y'))),
            [Effect::Restart("ss1".into())]
        );
        // Quitting the demo stops its cluster: q asks, Ctrl-C twice quits.
        assert!(app.update(key(KeyCode::Char('q'))).is_empty());
        assert_eq!(app.update(ctrl('c')), [Effect::Quit]);
    }

    #[test]
    fn esc_cancels_the_running_command_and_the_filter_line_edits() {
        let mut app = App::new("nm", "op", true);
        typed(&mut app, ":STREAM long.txt\n");
        assert_eq!(app.update(key(KeyCode::Esc)), [Effect::CancelRunning]);
        typed(&mut app, "/junk");
        app.update(ctrl('u'));
        typed(&mut app, "job");
        app.update(key(KeyCode::Home));
        typed(&mut app, "x");
        assert_eq!(app.filter(), "xjob", "Ctrl-U and Home edit the filter");
        app.update(key(KeyCode::Enter));
        // With a filter set, Esc clears it before anything else.
        assert!(app.update(key(KeyCode::Esc)).is_empty());
        assert!(app.filter().is_empty());
        // A blank edit line is not sent.
        typed(&mut app, ":WRITE a.txt 0\n");
        assert!(typed(&mut app, "  \n").is_empty());
        let Mode::Write { lines, .. } = &app.mode else {
            panic!()
        };
        assert!(lines.is_empty());
    }

    /// Item 8: the heartbeat column showed the snapshot's age plus the time
    /// since the snapshot (55 → 216 → 466 ms with 100 ms heartbeats), which
    /// looked like missed heartbeats. It shows what nm reported.
    #[test]
    fn heartbeat_timers_are_what_nm_reported_not_extrapolated() {
        let mut app = App::new("nm", "op", true);
        snapshot(&mut app, status(PairState::Active));
        let before = app.timers(0);
        app.status_at = Some(Instant::now() - Duration::from_millis(450));
        app.update(Action::Tick);
        assert_eq!(app.timers(0), before);
        assert_eq!(before, Some((40, 960)));
    }

    #[test]
    fn dropped_changes_and_job_steps_read_plainly() {
        let line = describe(&LogEntry::Cluster(event(
            1,
            EventKind::Job {
                job: 0,
                kind: JobKind::Update,
                step: JobStep::Dropped,
                file: Some("a.txt".into()),
                primary: "ss1".into(),
                replica: "ss1".into(),
                version: Some(4),
                duration_ms: 0,
                detail: Some("a server of the pair is down".into()),
            },
        )));
        assert_eq!(
            line,
            "pair ss1: a.txt not copied to ss1 v4: a server of the pair is down"
        );
        let line = describe(&LogEntry::Cluster(event(2, job(7, JobStep::Applied))));
        assert_eq!(
            line,
            "job 7 UPDATE APPLIED f7 → ss1_backup (pair ss1) v1 1ms"
        );
    }
}
