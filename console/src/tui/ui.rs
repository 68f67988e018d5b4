//! Drawing the [`App`] with ratatui: servers, pairs, the event log, the
//! command output, the command line, and in the demo the daemons and their logs.

use super::app::{describe, App, DaemonView, Mode};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, List, ListItem, Paragraph, Row, Table, Wrap};
use ratatui::Frame;
use shared::proto::{EventKind, JobStep, NmRole, PairState, ServerRole, ServerState};

fn paint(app: &App, color: Color) -> Style {
    if app.color {
        Style::default().fg(color)
    } else {
        Style::default()
    }
}

fn bold(app: &App) -> Style {
    if app.color {
        Style::default().add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    }
}

/// The upper-case name of a state, as STATUS prints it.
/// A value as it is named on the wire and in STATUS (UPPER_SNAKE for states).
pub(crate) fn word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn pair_color(state: PairState) -> Color {
    match state {
        PairState::Active => Color::Green,
        PairState::Syncing | PairState::Recovering => Color::Yellow,
        PairState::PrimaryFailed | PairState::BackupFailed => Color::Magenta,
        PairState::Offline => Color::Red,
        PairState::Unpaired => Color::Gray,
    }
}

/// A text gauge: `width` cells, `filled` of them solid.
fn bar(ratio: f64, width: usize) -> String {
    let filled = ((ratio.clamp(0.0, 1.0)) * width as f64).round() as usize;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    let servers = app.status.as_ref().map_or(0, |s| s.servers.len()) as u16;
    let pairs = app.status.as_ref().map_or(0, |s| s.pairs.len()) as u16;
    // Small terminals keep the servers and pairs whole and give up output
    // and event lines first.
    let servers_h = servers.max(1) + 3;
    let pairs_h = pairs.max(1) + 3;
    let group_h = match &app.status {
        Some(s) if has_group(app) => (s.nm.len() + s.etcd.len()) as u16 + 3,
        _ => 0,
    };
    let left = area
        .height
        .saturating_sub(2 + servers_h + pairs_h + group_h);
    let output_h = match left {
        13.. => 7,
        8.. => 5,
        _ => left.min(3),
    };
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(1),
            Constraint::Length(servers_h),
            Constraint::Length(group_h),
            Constraint::Length(pairs_h),
            Constraint::Fill(1),
            Constraint::Length(output_h),
            Constraint::Length(1),
        ])
        .split(area);
    draw_title(frame, app, rows[0]);
    draw_servers(frame, app, rows[1]);
    if group_h > 0 {
        draw_group(frame, app, rows[2]);
    }
    draw_pairs(frame, app, rows[3]);
    if app.daemons.is_empty() {
        draw_events(frame, app, rows[4]);
    } else {
        let middle = Layout::default()
            .direction(Direction::Horizontal)
            .constraints([Constraint::Percentage(60), Constraint::Percentage(40)])
            .split(rows[4]);
        draw_events(frame, app, middle[0]);
        draw_daemons(frame, app, middle[1]);
    }
    draw_output(frame, app, rows[5]);
    draw_prompt(frame, app, rows[6]);
    if app.help {
        draw_help(frame, app, area);
    }
}

fn draw_title(frame: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![
        Span::styled("Docs++ ", bold(app)),
        Span::raw(format!("nm {} as {}", app.nm, app.user)),
    ];
    if let Some(status) = &app.status {
        spans.push(Span::raw(format!(
            "  {} replication, queue {}",
            status.replication, status.queue_depth
        )));
    }
    match &app.connection {
        Some(why) => spans.push(Span::styled(format!("  {why}"), paint(app, Color::Red))),
        None => spans.push(Span::raw("  ? keys")),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_servers(frame: &mut Frame, app: &App, area: Rect) {
    let header =
        Row::new(["SERVER", "ROLE", "STATE", "ADDRESS", "HEARTBEAT", "TIMEOUT"]).style(bold(app));
    let rows: Vec<Row> = app
        .status
        .iter()
        .flat_map(|s| s.servers.iter().enumerate())
        .map(|(i, s)| {
            let (since, until) = app.timers(i).unwrap_or((0, 0));
            let total = (s.ms_since_heartbeat + s.ms_until_timeout).max(1) as f64;
            let role = match (s.role, s.serving) {
                (ServerRole::Backup, true) => "PROMOTED".to_owned(),
                (role, _) => word(&role),
            };
            let (state, color) = match s.state {
                ServerState::Alive => ("ALIVE", Color::Green),
                ServerState::Failed => ("FAILED", Color::Red),
            };
            Row::new(vec![
                Cell::from(s.name.clone()),
                Cell::from(role),
                Cell::from(state).style(paint(app, color)),
                Cell::from(s.address.clone()),
                Cell::from(format!("{since:>5}ms")),
                Cell::from(format!("{} {:>4}ms", bar(until as f64 / total, 8), until))
                    .style(paint(app, color)),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Min(15),
        ],
    )
    .header(header)
    .block(Block::default().borders(Borders::ALL).title("Servers"));
    frame.render_widget(table, area);
}

fn draw_pairs(frame: &mut Frame, app: &App, area: Rect) {
    let header = Row::new([
        "PAIR",
        "STATE",
        "EPOCH",
        "PENDING",
        "LAG",
        "LAST SYNC",
        "CONFLICTS",
    ])
    .style(bold(app));
    let now = shared::now_ms();
    let rows: Vec<Row> = app
        .status
        .iter()
        .flat_map(|s| s.pairs.iter())
        .map(|p| {
            let last_sync = if p.last_sync_ms == 0 {
                "never".to_owned()
            } else {
                format!("{}s ago", now.saturating_sub(p.last_sync_ms) / 1000)
            };
            Row::new(vec![
                Cell::from(format!(
                    "{} → {}",
                    p.primary,
                    p.backup.as_deref().unwrap_or("-")
                )),
                Cell::from(word(&p.state)).style(paint(app, pair_color(p.state))),
                Cell::from(p.epoch.to_string()),
                Cell::from(p.pending_jobs.to_string()),
                Cell::from(format!("{}ms", p.lag_ms)),
                Cell::from(last_sync),
                Cell::from(p.conflict_copies.to_string()),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(19),
            Constraint::Length(14),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Min(9),
        ],
    )
    .header(header)
    .block(pairs_block(app));
    frame.render_widget(table, area);
}

/// The Pairs box; its bottom edge says why a pair serves no one, or what
/// needs the operator (STATUS `reason`), for the first pair that has one.
fn pairs_block(app: &App) -> Block<'static> {
    let block = Block::default().borders(Borders::ALL).title("Pairs");
    let why = app
        .status
        .iter()
        .flat_map(|s| s.pairs.iter())
        .find_map(|p| Some(format!(" {}: {} ", p.primary, p.reason.as_deref()?)));
    match why {
        Some(why) => block.title_bottom(Line::from(why).style(paint(app, Color::Red))),
        None => block,
    }
}

fn event_color(kind: &EventKind) -> Color {
    match kind {
        EventKind::Job { step, .. } => match step {
            JobStep::Failed => Color::Red,
            JobStep::Dropped | JobStep::Retried => Color::Yellow,
            JobStep::Applied => Color::Green,
            _ => Color::Gray,
        },
        EventKind::Pair { to, .. } => pair_color(*to),
        EventKind::Server { state, .. } => match state {
            ServerState::Alive => Color::Green,
            ServerState::Failed => Color::Red,
        },
        EventKind::Snapshot { .. } => Color::Gray,
        EventKind::NmLeader { .. } => Color::Yellow,
        EventKind::Streamed { .. } => Color::Green,
    }
}

fn draw_events(frame: &mut Frame, app: &App, area: Rect) {
    let visible = app.visible_events();
    let height = area.height.saturating_sub(2) as usize;
    let end = visible.len().saturating_sub(app.events_scroll);
    let start = end.saturating_sub(height);
    let items: Vec<ListItem> = visible[start..end]
        .iter()
        .map(|e| ListItem::new(describe(e)).style(paint(app, event_color(&e.kind))))
        .collect();
    let mut title = format!(
        "Events ({})",
        if app.paused { "paused" } else { "following" }
    );
    if !app.filter.is_empty() || app.mode == Mode::Filter {
        title.push_str(&format!(" /{}", app.filter));
    }
    frame.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// The role STATUS gives the nm a demo daemon is (none for other daemons).
fn nm_role(app: &App, daemon: &DaemonView) -> Option<NmRole> {
    let address = daemon.address.as_ref()?;
    let status = app.status.as_ref()?;
    status
        .nm
        .iter()
        .find(|n| &n.address == address)
        .map(|n| n.role)
}

/// Whether STATUS shows an nm group on etcd (`nm --etcd`).
fn has_group(app: &App) -> bool {
    app.status.as_ref().is_some_and(|s| !s.etcd.is_empty())
}

/// The nm group: each nm with its role and the leader's lease, and the etcd members.
fn draw_group(frame: &mut Frame, app: &App, area: Rect) {
    let header = Row::new(["NM / ETCD", "ROLE", "ADDRESS", "LEASE"]).style(bold(app));
    let Some(status) = &app.status else { return };
    let mut rows: Vec<Row> = status
        .nm
        .iter()
        .map(|n| {
            let color = match n.role {
                NmRole::Leader => Color::Yellow,
                NmRole::Standby => Color::Gray,
            };
            let lease = if n.role == NmRole::Leader {
                format!("{:>5}ms", n.lease_ms_left)
            } else {
                String::new()
            };
            Row::new(vec![
                Cell::from("nm"),
                Cell::from(word(&n.role)).style(paint(app, color)),
                Cell::from(n.address.clone()),
                Cell::from(lease),
            ])
        })
        .collect();
    rows.extend(status.etcd.iter().map(|e| {
        let (state, color) = if e.healthy {
            ("HEALTHY", Color::Green)
        } else {
            ("UNREACHABLE", Color::Red)
        };
        let name = if e.name.is_empty() {
            "etcd".to_owned()
        } else {
            format!("etcd {}", e.name)
        };
        Row::new(vec![
            Cell::from(name),
            Cell::from(state).style(paint(app, color)),
            Cell::from(e.address.clone()),
            Cell::from(""),
        ])
    }));
    let table = Table::new(
        rows,
        [
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(24),
            Constraint::Min(8),
        ],
    )
    .header(header)
    .block(
        Block::default()
            .borders(Borders::ALL)
            .title("nm group (etcd)"),
    );
    frame.render_widget(table, area);
}

fn draw_daemons(frame: &mut Frame, app: &App, area: Rect) {
    let parts = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(app.daemons.len() as u16 + 2),
            Constraint::Min(3),
        ])
        .split(area);
    let items: Vec<ListItem> = app
        .daemons
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let marker = if i == app.selected { "▶ " } else { "  " };
            let (state, color) = if d.running {
                ("running", Color::Green)
            } else {
                ("killed", Color::Red)
            };
            let mut spans = vec![
                Span::raw(format!("{marker}{:<12}", d.name)),
                Span::styled(state, paint(app, color)),
            ];
            if let Some(role) = nm_role(app, d) {
                let color = match role {
                    NmRole::Leader => Color::Yellow,
                    NmRole::Standby => Color::Gray,
                };
                spans.push(Span::styled(format!(" {}", word(&role)), paint(app, color)));
            }
            ListItem::new(Line::from(spans))
        })
        .collect();
    frame.render_widget(
        List::new(items).block(
            Block::default()
                .borders(Borders::ALL)
                .title("Daemons (Tab, K kill, R restart)"),
        ),
        parts[0],
    );
    let log = app.daemons.get(app.selected).map(|d| {
        let height = parts[1].height.saturating_sub(2) as usize;
        let start = d.log.len().saturating_sub(height);
        (d.name.clone(), d.log[start..].join("\n"))
    });
    if let Some((name, text)) = log {
        frame.render_widget(
            Paragraph::new(text).block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(format!("{name} log")),
            ),
            parts[1],
        );
    }
}

fn draw_output(frame: &mut Frame, app: &App, area: Rect) {
    let title = if app.output_title.is_empty() {
        "Output".to_owned()
    } else {
        format!(
            "Output: {}",
            app.output_title.lines().next().unwrap_or_default()
        )
    };
    let style = if app.output_ok {
        Style::default()
    } else {
        paint(app, Color::Red)
    };
    frame.render_widget(
        Paragraph::new(app.output.clone())
            .style(style)
            .wrap(Wrap { trim: false })
            .scroll((app.output_scroll, 0))
            .block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

fn draw_prompt(frame: &mut Frame, app: &App, area: Rect) {
    let line = match &app.mode {
        Mode::Normal => Line::from(Span::styled(
            ": command  / filter  p pause  ↑↓ scroll  PgUp/PgDn output  ? keys  q quit",
            paint(app, Color::DarkGray),
        )),
        Mode::Command => Line::from(format!(":{}", app.input)),
        Mode::Filter => Line::from(format!("/{}", app.filter)),
        Mode::Write { header, lines } => Line::from(format!(
            "{header} [{} lines; ETIRW ends, Esc cancels] > {}",
            lines.len(),
            app.input
        )),
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let keys = [
        (
            ":",
            "command line (Tab completes, ↑↓ history; WRITE takes edit lines until ETIRW)",
        ),
        ("/", "filter the event log"),
        ("p, space", "pause or follow the event log"),
        ("↑ ↓ End", "scroll the event log, back to following"),
        ("PgUp PgDn", "scroll the command output"),
        ("Tab ← →", "select a daemon (demo)"),
        (
            "K / R",
            "kill (SIGKILL) / restart the selected daemon (demo)",
        ),
        ("?", "this help; any key closes it"),
        ("q, Ctrl-C", "quit"),
    ];
    let lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<11}"), bold(app)),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = area.width.min(90);
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title("Keys")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::tests::status;
    use crate::tui::app::Action;
    use ratatui::backend::TestBackend;
    use shared::proto::{Event, JobKind};

    /// The screen as text, one line per row.
    fn render(app: &App, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn app_with(pair: PairState) -> App {
        let mut app = App::new("127.0.0.1:5000", "operator", false);
        app.connection = None;
        app.status = Some(status(pair));
        app
    }

    use ratatui::Terminal;

    #[test]
    fn each_pair_state() {
        for state in [
            PairState::Active,
            PairState::Syncing,
            PairState::PrimaryFailed,
            PairState::Recovering,
            PairState::Offline,
        ] {
            let mut app = app_with(state);
            if state == PairState::Offline {
                app.status.as_mut().unwrap().pairs[0].reason = Some(
                    "ss1 (serving) is down and ss1_backup is not in sync: waiting for ss1 to return"
                        .into(),
                );
            }
            if state == PairState::PrimaryFailed {
                let s = &mut app.status.as_mut().unwrap().servers;
                s[0].state = ServerState::Failed;
                s[0].ms_until_timeout = 0;
                s[1].serving = true;
            }
            insta::assert_snapshot!(
                format!("pair_{}", word(&state).to_lowercase()),
                render(&app, 80, 24)
            );
        }
    }

    #[test]
    fn a_failed_servers_timer_is_empty() {
        let mut app = app_with(PairState::PrimaryFailed);
        app.update(Action::Cluster(Event {
            seq: 1,
            at_ms: 0,
            kind: EventKind::Server {
                name: "ss1".into(),
                state: ServerState::Failed,
                reason: "no heartbeat for 1s".into(),
            },
        }));
        let screen = render(&app, 80, 24);
        let row = screen.lines().find(|l| l.contains("ss1 ")).unwrap();
        assert!(
            row.contains("FAILED") && row.contains("░░░░░░░░") && row.contains(" 0ms"),
            "{row}"
        );
        insta::assert_snapshot!("failed_server_timer", screen);
    }

    #[test]
    fn events_output_help_and_demo_panes() {
        let mut app = app_with(PairState::Active);
        for (i, step) in [
            JobStep::Queued,
            JobStep::Started,
            JobStep::Applied,
            JobStep::Failed,
        ]
        .into_iter()
        .enumerate()
        {
            app.update(Action::Cluster(Event {
                seq: i as u64,
                at_ms: 0,
                kind: EventKind::Job {
                    job: 7,
                    kind: JobKind::Update,
                    step,
                    file: Some("notes.txt".into()),
                    primary: "ss1".into(),
                    replica: "ss1_backup".into(),
                    version: Some(3),
                    duration_ms: 2,
                    detail: None,
                },
            }));
        }
        app.update(Action::Output {
            title: "READ notes.txt".into(),
            text: "Im just a mouse. I dont like PNS".into(),
            ok: true,
        });
        insta::assert_snapshot!("events_and_output", render(&app, 80, 24));
        app.update(Action::Daemons(vec![
            DaemonView {
                name: "nm".into(),
                running: true,
                log: vec!["05:00:00 nm_listening".into()],
                address: None,
            },
            DaemonView {
                name: "ss1".into(),
                running: false,
                log: vec![],
                address: None,
            },
        ]));
        insta::assert_snapshot!("demo_panes", render(&app, 100, 30));
        app.help = true;
        insta::assert_snapshot!("help", render(&app, 80, 24));
    }

    /// `console demo --ha`: the nm group box, and the leader marked in the daemons.
    #[test]
    fn the_nm_group_on_etcd() {
        let mut app = app_with(PairState::Active);
        let mut status = app.status.clone().expect("status");
        status.nm = vec![
            shared::proto::NmStatus {
                address: "127.0.0.1:5002".into(),
                role: NmRole::Leader,
                lease_ms_left: 1320,
            },
            shared::proto::NmStatus {
                address: "127.0.0.1:5001".into(),
                role: NmRole::Standby,
                lease_ms_left: 0,
            },
        ];
        status.etcd = vec![shared::proto::EtcdMemberStatus {
            name: "etcd0".into(),
            address: "http://127.0.0.1:2379".into(),
            healthy: true,
        }];
        app.status = Some(status);
        let nm = |i: usize, running: bool| DaemonView {
            name: format!("nm{i}"),
            running,
            log: vec![],
            address: Some(format!("127.0.0.1:500{i}")),
        };
        app.update(Action::Daemons(vec![
            DaemonView {
                name: "etcd".into(),
                running: true,
                log: vec![],
                address: None,
            },
            nm(0, false),
            nm(1, true),
            nm(2, true),
        ]));
        let screen = render(&app, 100, 34);
        assert!(screen.contains("nm group"), "{screen}");
        assert!(screen.contains("nm2         running LEADER"), "{screen}");
        insta::assert_snapshot!("nm_group", screen);
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let app = app_with(PairState::Active);
        for (w, h) in [(1, 1), (20, 5), (80, 24), (200, 60)] {
            render(&app, w, h);
        }
        // A small pane (a tmux split) still shows every server and pair.
        let screen = render(&app, 66, 16);
        assert!(
            screen.contains("ss1_backup  BACKUP") || screen.contains("ss1_backup BACKUP"),
            "{screen}"
        );
        assert!(screen.contains("ACTIVE"), "{screen}");
    }
}
