//! Drawing the [`App`] with ratatui, pane by pane, where [`super::layout`]
//! puts them: servers, the nm group, pairs, the event log, charts, the
//! demo's daemons and their logs, the command output and the prompt.
//! When the event stream from nm is lost every table is drawn grey and
//! titled STALE with the age of its data.

use super::app::{clock, describe, word, App, DaemonView, LogEntry, Mode};
use super::history::{heartbeat_line, sparkline};
use super::layout::{self, Areas, Pane};
use ratatui::layout::{Constraint, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
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

/// A pane's frame: a titled box in the full layout, nothing in the compact
/// one (the tab bar names the pane there).
fn frame_of(areas: &Areas, title: impl Into<Line<'static>>) -> Block<'static> {
    if areas.boxed {
        Block::default().borders(Borders::ALL).title(title)
    } else {
        Block::default()
    }
}

/// A table's frame; its title says STALE (and how old) when it is.
fn table_block(app: &App, areas: &Areas, title: &str) -> Block<'static> {
    let stale = app.stale_for().map(|age| {
        Span::styled(
            format!(" STALE {:.0}s: no data from nm ", age.as_secs_f64()),
            paint(app, Color::Red).add_modifier(Modifier::BOLD),
        )
    });
    if areas.boxed {
        let mut title = vec![Span::raw(title.to_owned())];
        title.extend(stale);
        Block::default()
            .borders(Borders::ALL)
            .title(Line::from(title))
    } else {
        Block::default()
    }
}

/// Rows of a table with old data are drawn grey.
fn row_style(app: &App) -> Style {
    if app.stale_since.is_some() {
        paint(app, Color::DarkGray).add_modifier(Modifier::DIM)
    } else {
        Style::default()
    }
}

/// A cell's colour, unless the data is stale (then everything is grey).
fn live(app: &App, color: Color) -> Style {
    if app.stale_since.is_some() {
        row_style(app)
    } else {
        paint(app, color)
    }
}

/// The smallest screen drawn; below it the console says so.
const MIN_SIZE: (u16, u16) = (60, 12);

pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        frame.render_widget(
            Paragraph::new(format!(
                "{}×{} is too small: the console needs {}×{}",
                area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
            ))
            .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let areas = layout::areas(&app.shape(), area);
    draw_title(frame, app, areas.title);
    if let Some(r) = areas.servers {
        draw_servers(frame, app, &areas, r);
    }
    if let Some(r) = areas.group {
        draw_group(frame, app, &areas, r);
    }
    if let Some(r) = areas.pairs {
        draw_pairs(frame, app, &areas, r);
    }
    if let Some(r) = areas.tabs {
        draw_tabs(frame, app, r);
    }
    if let Some(r) = areas.events {
        draw_events(frame, app, &areas, r);
    }
    if let Some(r) = areas.charts {
        draw_charts(frame, app, &areas, r);
    }
    if let Some(r) = areas.daemons {
        draw_daemons(frame, app, &areas, r, areas.daemon_log);
    }
    if let Some(r) = areas.output {
        draw_output(frame, app, &areas, r);
    }
    draw_prompt(frame, app, areas.prompt, areas.tabs.is_some());
    if app.help {
        draw_help(frame, app, area);
    }
}

fn draw_title(frame: &mut Frame, app: &App, area: Rect) {
    let mut spans = vec![Span::styled("Docs++ ", bold(app))];
    // The state of the connection comes first, so a narrow pane shows it.
    match (&app.connection, app.stale_for()) {
        // The reason is in the Events pane; the title stays short.
        (Some(_), Some(age)) => spans.push(Span::styled(
            format!(
                "STALE {:.0}s: no event stream from nm (see Events) ",
                age.as_secs_f64()
            ),
            paint(app, Color::Red).add_modifier(Modifier::BOLD),
        )),
        (Some(why), None) => spans.push(Span::styled(format!("{why} "), paint(app, Color::Yellow))),
        (None, _) => {}
    }
    spans.push(Span::raw(format!("nm {} as {}", app.nm, app.user)));
    if let Some(status) = &app.status {
        spans.push(Span::raw(format!(
            "  {} replication, queue {}",
            status.replication, status.queue_depth
        )));
    }
    spans.push(Span::raw("  ? keys"));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_servers(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
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
                Cell::from(state).style(live(app, color)),
                Cell::from(s.address.clone()),
                Cell::from(format!("{since:>5}ms")),
                Cell::from(format!("{} {:>4}ms", bar(until as f64 / total, 8), until))
                    .style(live(app, color)),
            ])
            .style(row_style(app))
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
    .block(table_block(app, areas, "Servers"));
    frame.render_widget(table, area);
}

fn draw_pairs(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
    let header = Row::new([
        "PAIR",
        "STATE",
        "EPOCH",
        "PENDING",
        "LAG",
        "FULL SYNC",
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
                Cell::from(word(&p.state)).style(live(app, pair_color(p.state))),
                Cell::from(p.epoch.to_string()),
                // Jobs queued, plus changes sent on the stream and not
                // acknowledged yet.
                Cell::from(match p.stream.as_ref().filter(|s| s.unacknowledged > 0) {
                    Some(s) => format!("{}+{}", p.pending_jobs, s.unacknowledged),
                    None => p.pending_jobs.to_string(),
                }),
                Cell::from(format!("{}ms", p.lag_ms)),
                Cell::from(last_sync),
                Cell::from(p.conflict_copies.to_string()),
            ])
            .style(row_style(app))
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
    .block(pairs_block(app, areas));
    frame.render_widget(table, area);
}

/// The Pairs box; its bottom edge says why a pair serves no one, or what
/// needs the operator (STATUS `reason`), for the first pair that has one.
fn pairs_block(app: &App, areas: &Areas) -> Block<'static> {
    let block = table_block(app, areas, "Pairs");
    let why = app
        .status
        .iter()
        .flat_map(|s| s.pairs.iter())
        .find_map(|p| Some(format!(" {}: {} ", p.primary, p.reason.as_deref()?)));
    match why {
        Some(why) if areas.boxed => {
            block.title_bottom(Line::from(why).style(paint(app, Color::Red)))
        }
        _ => block,
    }
}

fn draw_tabs(frame: &mut Frame, app: &App, area: Rect) {
    let shown = if layout::tabs(!app.daemons.is_empty()).contains(&app.pane) {
        app.pane
    } else {
        Pane::Events
    };
    let mut spans = Vec::new();
    for (i, (pane, label)) in layout::tab_labels(!app.daemons.is_empty())
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            spans.push(Span::raw("│"));
        }
        let style = if pane == shown {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        spans.push(Span::styled(label, style));
    }
    let detail = match shown {
        Pane::Events => events_title(app),
        Pane::Output => output_title(app),
        _ => String::new(),
    };
    spans.push(Span::styled(
        format!(" {detail}"),
        paint(app, Color::DarkGray),
    ));
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn event_color(entry: &LogEntry) -> Color {
    let kind = match entry {
        LogEntry::Console { bad: true, .. } => return Color::Red,
        LogEntry::Console { .. } => return Color::Green,
        LogEntry::Cluster(e) => &e.kind,
    };
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

fn events_title(app: &App) -> String {
    let mut title = match (&app.watching, app.paused) {
        (Some(w), _) => format!("Events (WATCH: {} new, Esc stops)", w.events),
        (None, true) if app.unseen > 0 => {
            format!("Events (paused, {} new: End follows)", app.unseen)
        }
        (None, true) => "Events (paused: End follows)".to_owned(),
        (None, false) => "Events (following)".to_owned(),
    };
    if !app.filter().is_empty() || app.mode == Mode::Filter {
        title.push_str(&format!(" /{}", app.filter()));
    }
    title
}

/// Cuts `text` into lines of at most `width` characters; the lines after
/// the first are indented by `indent`.
fn wrap(text: &str, width: usize, indent: usize) -> Vec<String> {
    let width = width.max(indent + 8);
    let mut lines = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    let mut first = true;
    while !rest.is_empty() {
        let room = if first { width } else { width - indent };
        let mut take = rest.len().min(room);
        if take < rest.len() {
            // Break after the last space that fits, if there is one.
            if let Some(space) = rest[..take].iter().rposition(|c| *c == ' ') {
                if space > 0 {
                    take = space + 1;
                }
            }
        }
        let chunk: String = rest.drain(..take).collect();
        lines.push(if first {
            chunk
        } else {
            format!("{}{chunk}", " ".repeat(indent))
        });
        first = false;
    }
    lines
}

fn draw_events(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
    let block = frame_of(areas, events_title(app));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let visible = app.visible_events();
    if visible.is_empty() {
        let text = if app.filter().is_empty() {
            "No events yet: replication jobs, pair and server changes appear here.".to_owned()
        } else {
            format!(
                "No event matches /{} (Esc clears the filter).",
                app.filter()
            )
        };
        frame.render_widget(
            Paragraph::new(text)
                .style(paint(app, Color::DarkGray))
                .wrap(Wrap { trim: false }),
            inner,
        );
        return;
    }
    // Whole entries, wrapped, newest at the bottom; scrolled back by entries.
    let end = visible.len().saturating_sub(app.events_scroll);
    let mut lines: Vec<Line> = Vec::new();
    for entry in visible[..end].iter().rev() {
        let text = format!("{} {}", clock(entry.at_ms()), describe(entry));
        let style = paint(app, event_color(entry));
        let wrapped: Vec<Line> = wrap(&text, inner.width as usize, 9)
            .into_iter()
            .map(|l| Line::styled(l, style))
            .collect();
        for line in wrapped.into_iter().rev() {
            lines.push(line);
        }
        if lines.len() >= inner.height as usize {
            break;
        }
    }
    lines.truncate(inner.height as usize);
    lines.reverse();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_charts(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
    // The span the series cover so far (one sample per snapshot, 0.5 s).
    let samples = app
        .charts
        .heartbeats
        .values()
        .map(|s| s.len())
        .max()
        .unwrap_or(0)
        .min(crate::tui::history::SAMPLES);
    let block = frame_of(
        areas,
        format!(
            "Charts (last {:.0} s, a sample per 0.5 s; bars scaled to the max shown)",
            samples as f64 / 2.0
        ),
    );
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let Some(status) = &app.status else {
        frame.render_widget(Paragraph::new("No data from nm yet."), inner);
        return;
    };
    let pair_rows = status.pairs.len() * 3;
    let rows_needed = pair_rows + status.servers.len();
    // Short of rows: a pair's three series share one row, and so do two servers.
    let tight = rows_needed > inner.height as usize;
    let mut lines: Vec<Line> = Vec::new();
    let series_line = |label: String, parts: Vec<(String, String, Color)>| {
        let mut spans = vec![Span::raw(label)];
        for (name, chart, color) in parts {
            spans.push(Span::raw(format!(" {name} ")));
            spans.push(Span::styled(chart, paint(app, color)));
        }
        Line::from(spans)
    };
    for p in &status.pairs {
        let Some(h) = app.charts.pairs.get(&p.primary) else {
            continue;
        };
        let last = |s: &std::collections::VecDeque<f64>| s.back().copied().unwrap_or(0.0);
        let max = |s: &std::collections::VecDeque<f64>| s.iter().copied().fold(0.0, f64::max);
        let series = [
            (
                "ops/s",
                &h.ops_per_sec,
                format!(
                    "{:.0} (max {:.0})",
                    last(&h.ops_per_sec),
                    max(&h.ops_per_sec)
                ),
                Color::Cyan,
            ),
            (
                "lag",
                &h.lag_ms,
                format!("{:.0}ms (max {:.0})", last(&h.lag_ms), max(&h.lag_ms)),
                Color::Yellow,
            ),
            (
                "pending",
                &h.pending,
                format!("{:.0} (max {:.0})", last(&h.pending), max(&h.pending)),
                Color::Magenta,
            ),
        ];
        if tight {
            let each = (inner.width as usize).saturating_sub(11) / 3;
            let chart_w = each.saturating_sub(9).max(1);
            let parts = series
                .iter()
                .map(|(name, s, _, color)| (name.to_string(), sparkline(s, chart_w, 1.0), *color))
                .collect();
            lines.push(series_line(
                format!("{:<10}", truncate(&p.primary, 10)),
                parts,
            ));
        } else {
            let label_w = 36usize;
            let width = (inner.width as usize).saturating_sub(label_w + 1).max(1);
            for (name, s, now, color) in series {
                let label = format!("{:<10} {name:<7} {now}", truncate(&p.primary, 10));
                lines.push(Line::from(vec![
                    Span::raw(format!("{label:<label_w$} ")),
                    Span::styled(sparkline(s, width, 1.0), paint(app, color)),
                ]));
            }
        }
    }
    let beats: Vec<(String, Line)> = status
        .servers
        .iter()
        .filter_map(|s| {
            let samples = app.charts.heartbeats.get(&s.name)?;
            let color = match s.state {
                ServerState::Alive => Color::Green,
                ServerState::Failed => Color::Red,
            };
            Some((s.name.clone(), samples, color))
        })
        .map(|(name, samples, color)| {
            let (label_w, width) = if tight {
                (11, ((inner.width as usize) / 2).saturating_sub(12).max(1))
            } else {
                (36, (inner.width as usize).saturating_sub(37).max(1))
            };
            let label = if tight {
                truncate(&name, 10)
            } else {
                format!("{:<10} heartbeat (× FAILED)", truncate(&name, 10))
            };
            (
                name,
                Line::from(vec![
                    Span::raw(format!("{label:<label_w$} ")),
                    Span::styled(heartbeat_line(samples, width), paint(app, color)),
                ]),
            )
        })
        .collect();
    if tight {
        for pair in beats.chunks(2) {
            let mut spans = Vec::new();
            for (_, line) in pair {
                spans.extend(line.spans.clone());
                spans.push(Span::raw(" "));
            }
            lines.push(Line::from(spans));
        }
    } else {
        lines.extend(beats.into_iter().map(|(_, l)| l));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
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

/// The nm group: each nm with its role and the leader's lease, and the etcd members.
fn draw_group(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
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
            } else if !n.warm {
                // Loading its copy of the namespace: it cannot take over yet.
                "loading".to_owned()
            } else {
                String::new()
            };
            Row::new(vec![
                Cell::from("nm"),
                Cell::from(word(&n.role)).style(live(app, color)),
                Cell::from(n.address.clone()),
                Cell::from(lease),
            ])
            .style(row_style(app))
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
            Cell::from(state).style(live(app, color)),
            Cell::from(e.address.clone()),
            Cell::from(""),
        ])
        .style(row_style(app))
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
    .block(table_block(app, areas, "nm group (etcd)"));
    frame.render_widget(table, area);
}

fn draw_daemons(frame: &mut Frame, app: &App, areas: &Areas, list: Rect, log: Option<Rect>) {
    let lines: Vec<Line> = app
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
            Line::from(spans)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(frame_of(areas, "Daemons (Tab, K kill, R restart)")),
        list,
    );
    let Some(log_area) = log else { return };
    if let Some(d) = app.daemons.get(app.selected) {
        let block = if areas.boxed {
            Block::default()
                .borders(Borders::ALL)
                .title(format!("{} log", d.name))
        } else {
            Block::default()
                .borders(Borders::LEFT)
                .title(format!("{} log", d.name))
        };
        let inner = block.inner(log_area);
        let start = d.log.len().saturating_sub(inner.height as usize);
        frame.render_widget(
            Paragraph::new(d.log[start..].join("\n")).block(block),
            log_area,
        );
    }
}

fn output_title(app: &App) -> String {
    let mut title = if app.output_title.is_empty() {
        "Output".to_owned()
    } else {
        format!(
            "Output: {}",
            app.output_title.lines().next().unwrap_or_default()
        )
    };
    match app.running.len() {
        0 => {}
        1 => title.push_str(" (running…)"),
        n => title.push_str(&format!(" (running…, {} queued)", n - 1)),
    }
    title
}

fn draw_output(frame: &mut Frame, app: &App, areas: &Areas, area: Rect) {
    let style = if app.output_ok {
        Style::default()
    } else {
        paint(app, Color::Red)
    };
    let overflow = app.output_overflow();
    let mut block = frame_of(areas, output_title(app));
    if overflow > 0 && areas.boxed {
        let hint = if app.output_scroll >= overflow {
            " end (PgUp scrolls back) ".to_owned()
        } else {
            format!(" {} more lines: PgDn ", overflow - app.output_scroll)
        };
        block = block.title_bottom(Line::from(hint).style(paint(app, Color::Yellow)));
    }
    let text = if app.output.is_empty() && app.running.is_empty() && !app.output_title.is_empty() {
        "(nothing to show: the command printed nothing)".to_owned()
    } else {
        app.output.clone()
    };
    let inner = block.inner(area);
    frame.render_widget(block, area);
    frame.render_widget(
        Paragraph::new(text)
            .style(style)
            .wrap(Wrap { trim: false })
            .scroll((app.output_scroll, 0)),
        inner,
    );
    if overflow > 0 && !areas.boxed && inner.height > 0 {
        // No box to put the hint on: the last row carries it.
        let last = Rect {
            y: inner.y + inner.height - 1,
            height: 1,
            ..inner
        };
        // The hint covers a line of its own.
        let hint = format!(
            "── {} more lines: PgDn ──",
            overflow.saturating_sub(app.output_scroll) + 1
        );
        if app.output_scroll < overflow {
            frame.render_widget(Clear, last);
            frame.render_widget(Paragraph::new(hint).style(paint(app, Color::Yellow)), last);
        }
    }
}

fn draw_prompt(frame: &mut Frame, app: &App, area: Rect, tabs: bool) {
    let width = area.width.saturating_sub(1) as usize;
    match &app.mode {
        Mode::Normal => {
            let line = match (&app.confirm, app.notice()) {
                (Some(confirm), _) => Line::from(Span::styled(
                    confirm.question.clone(),
                    paint(app, Color::Yellow).add_modifier(Modifier::BOLD),
                )),
                (None, notice) => match notice {
                    Some(notice) => {
                        Line::from(Span::styled(notice.to_owned(), paint(app, Color::Yellow)))
                    }
                    None => Line::from(Span::styled(
                        key_hints(width, tabs),
                        paint(app, Color::DarkGray),
                    )),
                },
            };
            frame.render_widget(Paragraph::new(line), area);
        }
        Mode::Filter => {
            let row = Rect { height: 1, ..area };
            draw_input(frame, &app.filter_input, "/", row, width);
        }
        Mode::Command => {
            let row = Rect { height: 1, ..area };
            let prompt_row = if let Some(notice) = app.notice() {
                // Tab's candidates, above nothing: on the same row after the input.
                format!("   {notice}")
            } else {
                String::new()
            };
            draw_input(frame, &app.input, ":", row, width);
            if !prompt_row.is_empty() {
                let used = app.input.value().chars().count() as u16 + 1;
                if used + 4 < area.width {
                    let rest = Rect {
                        x: area.x + used,
                        width: area.width - used,
                        ..row
                    };
                    frame.render_widget(
                        Paragraph::new(prompt_row).style(paint(app, Color::Yellow)),
                        rest,
                    );
                }
            }
        }
        Mode::Write {
            header,
            lines,
            open,
        } => {
            let state = if *open {
                "lock held"
            } else {
                "taking the lock…"
            };
            let n = lines.len();
            let mut rows: Vec<Line> = vec![Line::from(vec![
                Span::styled(header.clone(), bold(app)),
                Span::styled(
                    format!(
                        "  {state}; {n} line{} · ETIRW commits · Esc cancels",
                        if n == 1 { "" } else { "s" }
                    ),
                    paint(app, Color::DarkGray),
                ),
            ])];
            // Each line, and under a refused one its reason, wrapped; the
            // newest kept when they do not all fit, the rest counted.
            let room = area.height.saturating_sub(2) as usize;
            let mut body: Vec<Line> = Vec::new();
            for l in lines {
                body.push(Line::from(format!("  {}", l.text)));
                if let Some(why) = &l.refused {
                    for part in wrap(&format!("✗ {why}"), width.saturating_sub(4), 2) {
                        body.push(Line::styled(format!("    {part}"), paint(app, Color::Red)));
                    }
                }
            }
            if body.len() > room && room > 0 {
                let hidden = body.len() - room + 1;
                body.drain(..hidden);
                body.insert(
                    0,
                    Line::styled(
                        format!("  ({hidden} earlier row(s) above)"),
                        paint(app, Color::DarkGray),
                    ),
                );
            }
            rows.extend(body);
            frame.render_widget(Paragraph::new(rows), area);
            let input_row = Rect {
                y: area.y + area.height.saturating_sub(1),
                height: 1,
                ..area
            };
            draw_input(frame, &app.input, "> ", input_row, width);
        }
    }
}

/// The keys worth knowing, as many as fit in `width` (the least needed
/// go first); `? keys` and `q quit` always fit. `1-4 panes` only where
/// there are tabs.
fn key_hints(width: usize, tabs: bool) -> String {
    let mut optional = vec![": command", "/ filter"];
    if tabs {
        optional.push("1-4 panes");
    }
    optional.extend(["p pause", "↑↓ scroll", "PgUp/PgDn output"]);
    let always = "? keys  q quit";
    let mut shown = optional;
    loop {
        let mut line = shown.join("  ");
        if !line.is_empty() {
            line.push_str("  ");
        }
        line.push_str(always);
        if line.chars().count() <= width || shown.is_empty() {
            return line;
        }
        // The least needed goes first: panes, then output, …
        shown.pop();
    }
}

/// The input line with its cursor; it scrolls sideways past the edge.
fn draw_input(frame: &mut Frame, input: &tui_input::Input, prefix: &str, row: Rect, width: usize) {
    let room = width.saturating_sub(prefix.chars().count()).max(1);
    let scroll = input.visual_scroll(room);
    let mut shown: String = input.value().chars().skip(scroll).take(room).collect();
    if scroll > 0 {
        // Text scrolled off to the left is marked.
        shown = format!("…{}", shown.chars().skip(1).collect::<String>());
    }
    frame.render_widget(Clear, row);
    frame.render_widget(Paragraph::new(format!("{prefix}{shown}")), row);
    let cursor = (input.visual_cursor().saturating_sub(scroll)) as u16;
    frame.set_cursor_position(Position::new(
        row.x + prefix.chars().count() as u16 + cursor,
        row.y,
    ));
}

fn draw_help(frame: &mut Frame, app: &App, area: Rect) {
    let keys = [
        (
            ":",
            "command line; Tab completes, ↑↓ history, ←→ Home End, Ctrl-A/E/U/W/K",
        ),
        (
            "",
            "WRITE f n takes its lock at once; edit lines follow; ETIRW commits",
        ),
        ("", "WATCH streams into the Events pane; Esc stops it"),
        ("/", "filter the event log (Esc clears)"),
        ("p, space", "pause or follow the event log"),
        ("↑ ↓ End", "scroll the event log; End follows again"),
        (
            "PgUp PgDn",
            "scroll the command output; mouse wheel scrolls a pane",
        ),
        ("1 2 3 4", "small screens: Events, Output, Charts, Daemons"),
        ("Tab ← →", "select a daemon (demo); or click its row"),
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
                Span::styled(format!("{k:<10} "), bold(app)),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = area.width.min(86);
    let height = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title("Keys")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::app::tests::{event, status, typed};
    use crate::tui::app::Action;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use shared::proto::{ClusterStatus, JobKind, PairStatus, ServerStatus};

    /// The screen as text, one line per row.
    fn render(app: &mut App, width: u16, height: u16) -> String {
        app.size = (width, height);
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
        app.update(Action::Cluster(event(
            0,
            EventKind::Snapshot {
                status: status(pair),
            },
        )));
        app
    }

    /// Two pairs, as `console demo` and `scripts/tmux-cluster.sh` run them.
    fn two_pairs() -> ClusterStatus {
        let mut s = status(PairState::Active);
        let server = |name: &str, role, port| ServerStatus {
            name: name.into(),
            role,
            state: ServerState::Alive,
            address: format!("127.0.0.1:{port}"),
            ms_since_heartbeat: 40,
            ms_until_timeout: 960,
            serving: role == ServerRole::Primary,
            files: 3,
        };
        s.servers.push(server("ss2", ServerRole::Primary, 4003));
        s.servers
            .push(server("ss2_backup", ServerRole::Backup, 4004));
        s.pairs.push(PairStatus {
            primary: "ss2".into(),
            backup: Some("ss2_backup".into()),
            ..s.pairs[0].clone()
        });
        s
    }

    fn demo_app() -> App {
        let mut app = App::new("127.0.0.1:5000", "operator", false);
        let mut s = two_pairs();
        for i in 0..6u64 {
            s.pairs[0].operations = i * 40;
            s.pairs[0].lag_ms = i % 3;
            app.charts.record(
                &s,
                std::time::Instant::now() + std::time::Duration::from_millis(500 * i),
            );
        }
        app.update(Action::Cluster(event(0, EventKind::Snapshot { status: s })));
        for i in 0..30u64 {
            app.update(Action::Cluster(event(
                i + 1,
                job_event(i, JobStep::Applied),
            )));
        }
        app.update(Action::Daemons(
            ["nm", "ss1", "ss1_backup", "ss2", "ss2_backup"]
                .iter()
                .map(|n| DaemonView {
                    name: (*n).into(),
                    running: true,
                    log: vec![format!("05:00:00 {n}_listening")],
                    address: None,
                })
                .collect(),
        ));
        app.update(Action::Output {
            title: "INFO notes.txt".into(),
            text: (1..=12)
                .map(|i| format!("line {i} of INFO"))
                .collect::<Vec<_>>()
                .join("\n"),
            ok: true,
        });
        app
    }

    fn job_event(i: u64, step: JobStep) -> EventKind {
        EventKind::Job {
            job: i,
            kind: JobKind::Update,
            step,
            file: Some(format!("notes-{i}.txt")),
            primary: "ss1".into(),
            replica: "ss1_backup".into(),
            version: Some(3),
            duration_ms: 2,
            detail: None,
        }
    }

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
                render(&mut app, 120, 30)
            );
        }
    }

    /// PENDING counts the jobs and, while the stream has any, the changes
    /// sent on it and not acknowledged yet.
    #[test]
    fn pending_adds_the_streams_unacknowledged_changes() {
        let mut app = app_with(PairState::Active);
        let pair = &mut app.status.as_mut().unwrap().pairs[0];
        pair.pending_jobs = 2;
        pair.stream = Some(shared::proto::StreamPosition {
            epoch: 0,
            sent: 40,
            acknowledged: 35,
            unacknowledged: 5,
            oldest_ms: 3,
            open: true,
            at_ms: 0,
        });
        let screen = render(&mut app, 120, 30);
        let row = screen
            .lines()
            .find(|l| l.contains("ss1 → ss1_backup"))
            .unwrap();
        assert!(row.contains(" 2+5 "), "{row}");
        // Nothing unacknowledged: the jobs alone.
        app.status.as_mut().unwrap().pairs[0]
            .stream
            .as_mut()
            .unwrap()
            .unacknowledged = 0;
        let screen = render(&mut app, 120, 30);
        let row = screen
            .lines()
            .find(|l| l.contains("ss1 → ss1_backup"))
            .unwrap();
        assert!(row.contains(" 2 ") && !row.contains("2+"), "{row}");
    }

    #[test]
    fn a_failed_servers_timer_is_empty() {
        let mut app = app_with(PairState::PrimaryFailed);
        app.update(Action::Cluster(event(
            1,
            EventKind::Server {
                name: "ss1".into(),
                state: ServerState::Failed,
                reason: "no heartbeat for 1s".into(),
            },
        )));
        let screen = render(&mut app, 120, 30);
        let row = screen.lines().find(|l| l.contains("ss1 ")).unwrap();
        assert!(
            row.contains("FAILED") && row.contains("░░░░░░░░") && row.contains(" 0ms"),
            "{row}"
        );
        insta::assert_snapshot!("failed_server_timer", screen);
    }

    /// Every size an operator uses keeps every server, every pair, a
    /// prompt and a non-empty pane; the big ones show everything at once.
    #[test]
    fn layouts_that_fit_at_every_size() {
        for (w, h) in [(80, 24), (100, 16), (140, 45), (200, 60)] {
            let mut app = demo_app();
            let screen = render(&mut app, w, h);
            for name in ["ss1_backup", "ss2_backup", "ss2 → ss2_backup"] {
                assert!(screen.contains(name), "{w}×{h} lacks {name}:\n{screen}");
            }
            assert!(screen.contains("q quit"), "{w}×{h}: no prompt\n{screen}");
            if h >= 45 {
                for pane in [
                    "Events",
                    "Charts",
                    "Daemons",
                    "Output: INFO",
                    "line 12 of INFO",
                ] {
                    assert!(screen.contains(pane), "{w}×{h} lacks {pane}:\n{screen}");
                }
            } else {
                assert!(screen.contains("1 Events"), "{w}×{h}: no tabs\n{screen}");
            }
            if h == 16 {
                assert!(
                    screen.contains("more lines: PgDn"),
                    "{w}×{h}: a cut output says so\n{screen}"
                );
            }
            insta::assert_snapshot!(format!("layout_{w}x{h}"), screen);
        }
        // The small layout's panes, one at a time.
        let mut app = demo_app();
        for (key, shows) in [
            ('1', "notes-29.txt"),
            ('3', "heartbeat"),
            ('4', "ss2_backup_listening"),
        ] {
            app.update(crate::tui::app::tests::key(
                crossterm::event::KeyCode::Char(key),
            ));
            if key == '4' {
                app.selected = 4;
            }
            let screen = render(&mut app, 80, 24);
            assert!(screen.contains(shows), "pane {key}:\n{screen}");
        }
    }

    #[test]
    fn output_scrolls_to_its_end_and_no_further() {
        let mut app = demo_app();
        render(&mut app, 80, 24);
        for _ in 0..10 {
            app.update(crate::tui::app::tests::key(
                crossterm::event::KeyCode::PageDown,
            ));
        }
        let screen = render(&mut app, 80, 24);
        assert!(screen.contains("line 12 of INFO"), "{screen}");
        assert!(!screen.contains("more lines"), "{screen}");
    }

    #[test]
    fn a_lost_event_stream_greys_the_tables_and_says_how_old() {
        let mut app = App::new("127.0.0.1:5000", "operator", false);
        app.update(Action::Cluster(event(
            0,
            EventKind::Snapshot {
                status: two_pairs(),
            },
        )));
        app.update(Action::Disconnected(
            "nm at 127.0.0.1:5000 refused the connection".into(),
        ));
        let screen = render(&mut app, 140, 45);
        assert!(screen.contains("STALE 0s: no data from nm"), "{screen}");
        assert!(
            screen.contains("STALE 0s: no event stream from nm"),
            "{screen}"
        );
        assert!(screen.contains("lost the event stream"), "{screen}");
    }

    #[test]
    fn a_write_block_shows_its_lines_and_the_refused_one() {
        let mut app = app_with(PairState::Active);
        typed(&mut app, ":WRITE notes.txt 0\n0 Hello there.\n9 far\n");
        app.update(Action::WriteOpened(Ok(())));
        app.update(Action::WriteLineRefused {
            line: 1,
            message: "E_BAD_REQUEST: word index 9 out of range".into(),
        });
        typed(&mut app, "1 big");
        let screen = render(&mut app, 100, 30);
        assert!(
            screen.contains("WRITE notes.txt 0  lock held; 2 lines"),
            "{screen}"
        );
        assert!(screen.contains("0 Hello there."), "{screen}");
        assert!(screen.contains("✗ E_BAD_REQUEST"), "{screen}");
        assert!(screen.contains("> 1 big"), "{screen}");
        insta::assert_snapshot!("write_block", screen);
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
            app.update(Action::Cluster(event(i as u64, job_event(7, step))));
        }
        app.update(Action::Output {
            title: "READ notes.txt".into(),
            text: "Im just a mouse. I dont like PNS".into(),
            ok: true,
        });
        insta::assert_snapshot!("events_and_output", render(&mut app, 120, 30));
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
        insta::assert_snapshot!("demo_panes", render(&mut app, 120, 36));
        app.help = true;
        let help = render(&mut app, 80, 24);
        assert!(
            help.contains("q, Ctrl-C"),
            "the help's last line shows at 80×24:\n{help}"
        );
        insta::assert_snapshot!("help", help);
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
                warm: true,
            },
            shared::proto::NmStatus {
                address: "127.0.0.1:5001".into(),
                role: NmRole::Standby,
                lease_ms_left: 0,
                warm: true,
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
        let screen = render(&mut app, 120, 40);
        assert!(screen.contains("nm group"), "{screen}");
        assert!(screen.contains("nm2         running LEADER"), "{screen}");
        insta::assert_snapshot!("nm_group", screen);
    }

    #[test]
    fn clicks_select_and_the_wheel_scrolls_the_pane_under_it() {
        use crossterm::event::{KeyModifiers, MouseButton, MouseEvent, MouseEventKind};
        let mut app = demo_app();
        app.size = (140, 45);
        let areas = app.areas();
        let list = areas.daemons.unwrap();
        let at = |kind, column, row| {
            Action::Mouse(MouseEvent {
                kind,
                column,
                row,
                modifiers: KeyModifiers::NONE,
            })
        };
        app.update(at(
            MouseEventKind::Down(MouseButton::Left),
            list.x + 3,
            list.y + 3,
        ));
        assert_eq!(app.selected, 2, "the third daemon's row");
        let events = areas.events.unwrap();
        app.update(at(MouseEventKind::ScrollUp, events.x + 2, events.y + 2));
        assert!(app.paused && app.events_scroll == 3);
        // In the small layout a click on the tab bar switches panes.
        app.size = (80, 24);
        let tabs = app.areas().tabs.unwrap();
        app.update(at(
            MouseEventKind::Down(MouseButton::Left),
            tabs.x + 25,
            tabs.y,
        ));
        assert_eq!(app.pane, Pane::Charts);
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = demo_app();
        for (w, h) in [(1, 1), (20, 5), (80, 24), (200, 60)] {
            render(&mut app, w, h);
        }
        typed(&mut app, ":WRITE a.txt 0\n0 a\n1 b\n2 c\n3 d\n4 e\n");
        for (w, h) in [(1, 1), (20, 5), (80, 24)] {
            render(&mut app, w, h);
        }
    }
}
