//! The TUI's model: everything on screen, updated by [`Action`]s without a
//! terminal, so it is tested directly. Side effects (running a command,
//! killing a daemon) come back as [`Effect`]s for the event loop to carry out.

use crate::script::COMMAND_NAMES;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use shared::proto::{ClusterStatus, Event, EventKind, NmRole};
use std::collections::VecDeque;
use std::time::Instant;

/// Events kept in the log.
pub const EVENT_LOG: usize = 1000;
/// Commands kept in the history.
pub const HISTORY: usize = 200;

/// Something that happened: a key, a cluster event, a command's result, a tick.
#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    ScrollUp,
    ScrollDown,
    Tick,
    Cluster(Event),
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
}

/// What the event loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Run a command (a WRITE block is several lines).
    Run(String),
    Kill(String),
    Restart(String),
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Command,
    /// Collecting a WRITE's edit lines until ETIRW.
    Write {
        header: String,
        lines: Vec<String>,
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

pub struct App {
    pub user: String,
    pub nm: String,
    pub status: Option<ClusterStatus>,
    /// When the snapshot arrived, to run the heartbeat timers between snapshots.
    pub status_at: Option<Instant>,
    pub events: VecDeque<Event>,
    /// Lines scrolled back from the newest event; 0 follows new ones.
    pub events_scroll: usize,
    pub paused: bool,
    pub filter: String,
    pub mode: Mode,
    pub input: String,
    pub history: Vec<String>,
    history_pos: Option<usize>,
    pub output_title: String,
    pub output: String,
    pub output_ok: bool,
    pub output_scroll: u16,
    pub help: bool,
    pub connection: Option<String>,
    pub files: Vec<String>,
    pub daemons: Vec<DaemonView>,
    pub selected: usize,
    pub color: bool,
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
            filter: String::new(),
            mode: Mode::Normal,
            input: String::new(),
            history: Vec::new(),
            history_pos: None,
            output_title: String::new(),
            output: "Type : for a command (? for keys).".to_owned(),
            output_ok: true,
            output_scroll: 0,
            help: false,
            connection: Some("connecting to nm…".to_owned()),
            files: Vec::new(),
            daemons: Vec::new(),
            selected: 0,
            color,
        }
    }

    /// Applies one action; returns what the event loop must do.
    pub fn update(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Key(key) => return self.key(key),
            Action::ScrollUp => self.scroll_events(1),
            Action::ScrollDown => self.scroll_events(-1),
            Action::Tick => {}
            Action::Cluster(event) => self.cluster_event(event),
            Action::Disconnected(why) => self.connection = Some(why),
            Action::Output { title, text, ok } => {
                self.output_title = title;
                self.output = text;
                self.output_ok = ok;
                self.output_scroll = 0;
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
        }
        Vec::new()
    }

    fn cluster_event(&mut self, event: Event) {
        self.connection = None;
        if let EventKind::Snapshot { status } = event.kind {
            // A new leader of the nm group shows in the log as an event.
            let leader = |s: &ClusterStatus| {
                s.nm.iter()
                    .find(|n| n.role == NmRole::Leader && s.nm.len() > 1)
                    .map(|n| n.address.clone())
            };
            let previous = self.status.as_ref().and_then(leader);
            let now = leader(&status);
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
        if self.paused {
            // Keep the view still: the new line pushes the window.
            self.events_scroll += 1;
        }
        self.events.push_back(event);
        if self.events.len() > EVENT_LOG {
            self.events.pop_front();
        }
    }

    fn scroll_events(&mut self, by: isize) {
        let max = self.events.len().saturating_sub(1);
        self.events_scroll = (self.events_scroll as isize + by).clamp(0, max as isize) as usize;
        self.paused = self.events_scroll > 0;
    }

    /// The events the filter lets through, oldest first.
    pub fn visible_events(&self) -> Vec<&Event> {
        let filter = self.filter.to_lowercase();
        self.events
            .iter()
            .filter(|e| filter.is_empty() || describe(e).to_lowercase().contains(&filter))
            .collect()
    }

    fn key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        match self.mode.clone() {
            Mode::Normal => self.normal_key(key),
            Mode::Filter => {
                match key.code {
                    KeyCode::Enter | KeyCode::Esc => self.mode = Mode::Normal,
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) => self.filter.push(c),
                    _ => {}
                }
                Vec::new()
            }
            Mode::Command => self.command_key(key),
            Mode::Write { header, lines } => self.write_key(key, header, lines),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if self.help {
            self.help = false;
            return Vec::new();
        }
        match key.code {
            KeyCode::Char('q') => return vec![Effect::Quit],
            KeyCode::Char(':') => {
                self.mode = Mode::Command;
                self.input.clear();
                self.history_pos = None;
            }
            KeyCode::Char('/') => {
                self.mode = Mode::Filter;
                self.filter.clear();
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                if !self.paused {
                    self.events_scroll = 0;
                }
            }
            KeyCode::Up => self.scroll_events(1),
            KeyCode::Down => self.scroll_events(-1),
            KeyCode::End => {
                self.events_scroll = 0;
                self.paused = false;
            }
            KeyCode::PageUp => self.output_scroll = self.output_scroll.saturating_sub(5),
            KeyCode::PageDown => self.output_scroll = self.output_scroll.saturating_add(5),
            KeyCode::Tab | KeyCode::Right if !self.daemons.is_empty() => {
                self.selected = (self.selected + 1) % self.daemons.len();
            }
            KeyCode::BackTab | KeyCode::Left if !self.daemons.is_empty() => {
                self.selected = (self.selected + self.daemons.len() - 1) % self.daemons.len();
            }
            KeyCode::Char('K') => {
                if let Some(d) = self.daemons.get(self.selected) {
                    return vec![Effect::Kill(d.name.clone())];
                }
            }
            KeyCode::Char('R') => {
                if let Some(d) = self.daemons.get(self.selected) {
                    return vec![Effect::Restart(d.name.clone())];
                }
            }
            _ => {}
        }
        Vec::new()
    }

    fn command_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => self.mode = Mode::Normal,
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Tab => self.complete(),
            KeyCode::Up => self.history_step(-1),
            KeyCode::Down => self.history_step(1),
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input).trim().to_owned();
                self.mode = Mode::Normal;
                if line.is_empty() {
                    return Vec::new();
                }
                self.remember(&line);
                if line
                    .split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case("WRITE"))
                {
                    // A header that does not parse opens no edit prompt: the
                    // lines typed next must never run as commands.
                    if let Err(e) = crate::script::parse_line(&line) {
                        self.output_title = line;
                        self.output = e.message;
                        return Vec::new();
                    }
                    self.mode = Mode::Write {
                        header: line,
                        lines: Vec::new(),
                    };
                    return Vec::new();
                }
                if line.eq_ignore_ascii_case("EXIT") {
                    return vec![Effect::Quit];
                }
                self.output_title = line.clone();
                self.output = String::new();
                return vec![Effect::Run(line)];
            }
            KeyCode::Char(c) => self.input.push(c),
            _ => {}
        }
        Vec::new()
    }

    fn write_key(&mut self, key: KeyEvent, header: String, mut lines: Vec<String>) -> Vec<Effect> {
        match key.code {
            KeyCode::Esc => {
                self.mode = Mode::Normal;
                self.input.clear();
            }
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Enter => {
                let line = std::mem::take(&mut self.input);
                if line.trim().eq_ignore_ascii_case("ETIRW") {
                    self.mode = Mode::Normal;
                    let mut block = header.clone();
                    for l in &lines {
                        block.push('\n');
                        block.push_str(l);
                    }
                    block.push_str("\nETIRW");
                    self.output_title = header;
                    self.output = String::new();
                    return vec![Effect::Run(block)];
                }
                lines.push(line);
                self.mode = Mode::Write { header, lines };
            }
            KeyCode::Char(c) => self.input.push(c),
            _ => {}
        }
        Vec::new()
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
            self.input.clear();
            return;
        }
        let pos = pos.clamp(0, last) as usize;
        self.history_pos = Some(pos);
        self.input = self.history[pos].clone();
    }

    /// Completes the command name (first word) or a file name (later words).
    fn complete(&mut self) {
        let ends_with_space = self.input.ends_with(' ');
        let words: Vec<&str> = self.input.split_whitespace().collect();
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
        let Some(first) = matches.first() else { return };
        // The longest prefix common to every match.
        let mut common = first.to_string();
        for m in &matches[1..] {
            while !m.starts_with(&common) {
                common.pop();
            }
        }
        if common.len() < prefix.len() {
            return;
        }
        self.input.truncate(self.input.len() - prefix.len());
        self.input.push_str(&common);
        if matches.len() == 1 {
            self.input.push(' ');
        }
    }

    /// Milliseconds since server `i`'s last heartbeat and until its timeout, now.
    pub fn timers(&self, i: usize) -> Option<(u64, u64)> {
        let status = self.status.as_ref()?;
        let s = status.servers.get(i)?;
        let elapsed = self
            .status_at
            .map(|at| at.elapsed().as_millis() as u64)
            .unwrap_or(0);
        let until = if s.state == shared::proto::ServerState::Failed {
            0
        } else {
            s.ms_until_timeout.saturating_sub(elapsed)
        };
        Some((s.ms_since_heartbeat + elapsed, until))
    }
}

/// One line describing an event.
pub fn describe(event: &Event) -> String {
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
            let mut line = format!(
                "job {job} {kind:?} {step:?} {} [{primary}] → {replica}",
                file.as_deref().unwrap_or("(whole pair)")
            );
            if let Some(v) = version {
                line.push_str(&format!(" v{v}"));
            }
            line.push_str(&format!(" {duration_ms}ms"));
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
            super::ui::word(from),
            super::ui::word(to)
        ),
        EventKind::Server {
            name,
            state,
            reason,
        } => format!("server {name} {}: {reason}", super::ui::word(state)),
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
    use crossterm::event::KeyEventKind;
    use shared::proto::{
        JobKind, JobStep, PairState, PairStatus, ServerRole, ServerState, ServerStatus,
    };

    pub fn key(code: KeyCode) -> Action {
        Action::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn typed(app: &mut App, text: &str) -> Vec<Effect> {
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

    pub fn status(pair: PairState) -> ClusterStatus {
        ClusterStatus {
            servers: vec![
                ServerStatus {
                    name: "ss1".into(),
                    role: ServerRole::Primary,
                    state: ServerState::Alive,
                    address: "127.0.0.1:4001".into(),
                    ms_since_heartbeat: 40,
                    ms_until_timeout: 960,
                    serving: true,
                    files: 3,
                },
                ServerStatus {
                    name: "ss1_backup".into(),
                    role: ServerRole::Backup,
                    state: ServerState::Alive,
                    address: "127.0.0.1:4002".into(),
                    ms_since_heartbeat: 70,
                    ms_until_timeout: 930,
                    serving: false,
                    files: 3,
                },
            ],
            pairs: vec![PairStatus {
                primary: "ss1".into(),
                backup: Some("ss1_backup".into()),
                state: pair,
                epoch: 0,
                pending_jobs: 0,
                lag_ms: 0,
                last_sync_ms: 0,
                conflict_copies: 0,
                standby_in_sync: false,
                reason: None,
            }],
            queue_depth: 0,
            replication: "ASYNC".into(),
            nm: Vec::new(),
            etcd: Vec::new(),
        }
    }

    fn event(seq: u64, kind: EventKind) -> Event {
        Event {
            seq,
            at_ms: 0,
            kind,
        }
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
        app.update(Action::Cluster(event(
            1,
            EventKind::Snapshot {
                status: status(PairState::Active),
            },
        )));
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

    #[test]
    fn the_log_pauses_scrolls_and_filters() {
        let mut app = App::new("nm", "op", true);
        for i in 0..5 {
            app.update(Action::Cluster(event(
                i,
                EventKind::Job {
                    job: i,
                    kind: JobKind::Update,
                    step: if i == 3 {
                        JobStep::Failed
                    } else {
                        JobStep::Applied
                    },
                    file: Some(format!("f{i}")),
                    primary: "ss1".into(),
                    replica: "ss1_backup".into(),
                    version: Some(1),
                    duration_ms: 1,
                    detail: None,
                },
            )));
        }
        app.update(key(KeyCode::Up));
        assert!(app.paused && app.events_scroll == 1);
        app.update(Action::Cluster(event(
            9,
            EventKind::Server {
                name: "x".into(),
                state: ServerState::Alive,
                reason: "r".into(),
            },
        )));
        assert_eq!(app.events_scroll, 2, "a paused log does not move");
        app.update(key(KeyCode::End));
        assert!(!app.paused && app.events_scroll == 0);
        typed(&mut app, "/failed\n");
        assert_eq!(app.visible_events().len(), 1);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn commands_history_completion_and_write_blocks() {
        let mut app = App::new("nm", "op", true);
        app.update(Action::Files(vec![
            "notes.txt".into(),
            "notebook.txt".into(),
        ]));
        typed(&mut app, ":cre");
        app.update(key(KeyCode::Tab));
        assert_eq!(app.input, "CREATE", "CREATE and CREATEFOLDER share it");
        typed(&mut app, ":");
        app.update(key(KeyCode::Esc));
        typed(&mut app, ":lis");
        app.update(key(KeyCode::Tab));
        assert_eq!(app.input, "LIST", "LIST and LISTCHECKPOINTS share it");
        app.update(key(KeyCode::Esc));
        typed(&mut app, ":CREATE no");
        app.update(key(KeyCode::Tab));
        assert_eq!(app.input, "CREATE note", "the common prefix of the matches");
        let effects = typed(&mut app, "s.txt\n");
        assert_eq!(effects, [Effect::Run("CREATE notes.txt".into())]);
        typed(&mut app, ":");
        app.update(key(KeyCode::Up));
        assert_eq!(app.input, "CREATE notes.txt");
        app.update(key(KeyCode::Esc));
        let effects = typed(
            &mut app,
            ":WRITE notes.txt 0\n0 Hello there.\n1 big\nETIRW\n",
        );
        assert_eq!(
            effects,
            [Effect::Run(
                "WRITE notes.txt 0\n0 Hello there.\n1 big\nETIRW".into()
            )]
        );
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn a_bad_write_header_opens_no_edit_prompt() {
        let mut app = App::new("nm", "op", false);
        for header in [
            ":WRITE a.txt
",
            ":WRITE a.txt x
",
        ] {
            assert!(typed(&mut app, header).is_empty());
            assert_eq!(app.mode, Mode::Normal, "{header}");
            assert!(app.output.contains("WRITE"), "{}", app.output);
        }
        // What is typed next is a command line again, not an edit line.
        let effects = typed(
            &mut app,
            ":CREATE zz.txt
",
        );
        assert_eq!(effects, [Effect::Run("CREATE zz.txt".into())]);
    }

    #[test]
    fn keys_quit_help_and_drive_the_demo_daemons() {
        let mut app = App::new("nm", "op", true);
        assert_eq!(app.update(key(KeyCode::Char('q'))), [Effect::Quit]);
        let ctrl_c = Action::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        typed(&mut app, ":");
        assert_eq!(
            app.update(ctrl_c),
            [Effect::Quit],
            "Ctrl-C quits from any mode"
        );
        app.update(key(KeyCode::Esc));
        app.update(key(KeyCode::Char('?')));
        assert!(app.help);
        app.update(key(KeyCode::Char('x')));
        assert!(!app.help);
        app.update(Action::Daemons(vec![
            DaemonView {
                name: "nm".into(),
                running: true,
                log: vec![],
                address: None,
            },
            DaemonView {
                name: "ss1".into(),
                running: true,
                log: vec![],
                address: None,
            },
        ]));
        app.update(key(KeyCode::Tab));
        assert_eq!(
            app.update(key(KeyCode::Char('K'))),
            [Effect::Kill("ss1".into())]
        );
        assert_eq!(
            app.update(key(KeyCode::Char('R'))),
            [Effect::Restart("ss1".into())]
        );
        let _ = KeyEventKind::Press;
    }
}
