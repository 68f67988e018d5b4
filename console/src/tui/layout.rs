//! Where each pane goes, as a pure function of the model and the screen
//! size, so drawing and mouse hits agree and layouts are tested at the
//! sizes operators use (80×24, a tmux pane of 100×16, 140×45, 200×60).
//!
//! - **Full** (room for everything): boxed Servers, nm group and Pairs
//!   tables; Events beside Charts (and the demo's Daemons); Output as tall
//!   as its text, up to half the screen; the prompt.
//! - **Compact** (small terminals): the tables without boxes, then one
//!   tabbed pane (Events, Output, Charts, Daemons; keys 1–4 or a click on
//!   the tab bar), so no pane is ever an empty box.

use ratatui::layout::{Constraint, Direction, Layout, Rect};

/// The panes of the tabbed area (compact layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Events,
    Output,
    Charts,
    Daemons,
}

impl Pane {
    pub fn name(self) -> &'static str {
        match self {
            Pane::Events => "Events",
            Pane::Output => "Output",
            Pane::Charts => "Charts",
            Pane::Daemons => "Daemons",
        }
    }
}

/// What the layout depends on, taken from the model (`App::shape`), so
/// this module does not depend on the model.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub servers: u16,
    pub pairs: u16,
    /// nm and etcd rows of an nm group on etcd (0: none).
    pub group: u16,
    /// (pairs × 3 + servers): the charts' rows.
    pub chart_rows: u16,
    pub output: &'a str,
    /// Rows of an open WRITE block (header and input excluded).
    pub write_rows: Option<u16>,
    pub daemons: usize,
    pub pane: Pane,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Areas {
    pub title: Rect,
    pub servers: Option<Rect>,
    pub group: Option<Rect>,
    pub pairs: Option<Rect>,
    pub events: Option<Rect>,
    pub charts: Option<Rect>,
    /// The demo's daemon list, and the selected daemon's log.
    pub daemons: Option<Rect>,
    pub daemon_log: Option<Rect>,
    pub output: Option<Rect>,
    /// The tab bar of the compact layout.
    pub tabs: Option<Rect>,
    pub prompt: Rect,
    /// Whether panes have boxes (full layout) or not (compact).
    pub boxed: bool,
    /// Rows from a table's top to its first data row.
    pub table_top: u16,
}

/// The panes the tab bar offers, in key order.
pub fn tabs(demo: bool) -> Vec<Pane> {
    let mut panes = vec![Pane::Events, Pane::Output, Pane::Charts];
    if demo {
        panes.push(Pane::Daemons);
    }
    panes
}

/// The tab bar's text: ` 1 Events │ 2 Output │ …`.
pub fn tab_labels(demo: bool) -> Vec<(Pane, String)> {
    tabs(demo)
        .into_iter()
        .enumerate()
        .map(|(i, pane)| (pane, format!(" {} {} ", i + 1, pane.name())))
        .collect()
}

/// The tab under column `x` of the tab bar.
pub fn tab_at(demo: bool, x: u16) -> Option<Pane> {
    let mut start = 0u16;
    for (pane, label) in tab_labels(demo) {
        let end = start + label.chars().count() as u16;
        if x >= start && x < end {
            return Some(pane);
        }
        start = end + 1; // the separator
    }
    None
}

/// Rows `text` takes when wrapped at `width` columns.
pub fn wrapped_height(text: &str, width: u16) -> u16 {
    let width = width.max(1) as usize;
    text.lines()
        .map(|l| l.chars().count().div_ceil(width).max(1))
        .sum::<usize>()
        .min(u16::MAX as usize) as u16
}

fn prompt_height(shape: &Shape, height: u16) -> u16 {
    match shape.write_rows {
        // The header, the lines typed so far, the input line.
        Some(rows) => (rows + 2).min((height / 3).max(3)),
        None => 1,
    }
}

pub fn areas(shape: &Shape, area: Rect) -> Areas {
    let (servers, pairs, group) = (shape.servers.max(1), shape.pairs.max(1), shape.group);
    let prompt_h = prompt_height(shape, area.height);
    let output_h = (wrapped_height(shape.output, area.width.saturating_sub(2)) + 2)
        .clamp(3, (area.height / 2).max(3));
    let boxed_tables = servers + 3 + pairs + 3 + if group > 0 { group + 3 } else { 0 };
    let middle = area
        .height
        .saturating_sub(1 + boxed_tables + output_h + prompt_h);
    if middle >= 8 && area.width >= 100 {
        full(
            shape,
            area,
            [servers + 3, group.max(1) + 3, pairs + 3],
            group > 0,
            output_h,
            prompt_h,
        )
    } else {
        compact(
            shape,
            area,
            [servers + 1, group + 1, pairs + 1],
            group > 0,
            prompt_h,
        )
    }
}

fn full(
    shape: &Shape,
    area: Rect,
    tables: [u16; 3],
    group: bool,
    output_h: u16,
    prompt_h: u16,
) -> Areas {
    let rows = stack(area, tables, group, &[output_h, prompt_h]);
    let middle = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(58), Constraint::Percentage(42)])
        .split(rows[4]);
    let (charts, daemons, daemon_log) = if shape.daemons == 0 {
        (Some(middle[1]), None, None)
    } else {
        // The daemon list whole, then the charts, then the selected
        // daemon's log with what is left (none if under 3 rows).
        let chart_rows = shape.chart_rows + 2;
        let column = middle[1];
        let list_h = (shape.daemons as u16 + 2).min(column.height);
        let rest = column.height - list_h;
        let log_h = match rest - chart_rows.max(4).min(rest) {
            left @ 3.. => left,
            _ => 0,
        };
        let charts_h = rest - log_h;
        let at = |y: u16, height: u16| Rect {
            y: column.y + y,
            height,
            ..column
        };
        (
            Some(at(0, charts_h)),
            Some(at(charts_h, list_h)),
            (log_h > 0).then(|| at(charts_h + list_h, log_h)),
        )
    };
    Areas {
        title: rows[0],
        servers: Some(rows[1]),
        group: group.then_some(rows[2]),
        pairs: Some(rows[3]),
        events: Some(middle[0]),
        charts,
        daemons,
        daemon_log,
        output: Some(rows[5]),
        tabs: None,
        prompt: rows[6],
        boxed: true,
        table_top: 2,
    }
}

/// The rows every layout shares: the title, the servers, the nm group (0
/// rows without one), the pairs, the rest (`Fill`), then `bottom`.
fn stack(area: Rect, tables: [u16; 3], group: bool, bottom: &[u16]) -> std::rc::Rc<[Rect]> {
    let group_h = if group { tables[1] } else { 0 };
    let top = [1, tables[0], group_h, tables[2]].map(Constraint::Length);
    let constraints = top
        .into_iter()
        .chain([Constraint::Fill(1)])
        .chain(bottom.iter().map(|h| Constraint::Length(*h)));
    Layout::default()
        .direction(Direction::Vertical)
        .constraints(constraints)
        .split(area)
}

fn compact(shape: &Shape, area: Rect, tables: [u16; 3], group: bool, prompt_h: u16) -> Areas {
    let rows = stack(area, tables, group, &[prompt_h]);
    let mut areas = Areas {
        title: rows[0],
        servers: Some(rows[1]),
        group: group.then_some(rows[2]),
        pairs: Some(rows[3]),
        prompt: rows[5],
        boxed: false,
        table_top: 1,
        ..Areas::default()
    };
    let pane = rows[4];
    if pane.height >= 2 {
        areas.tabs = Some(Rect { height: 1, ..pane });
        let body = Rect {
            y: pane.y + 1,
            height: pane.height - 1,
            ..pane
        };
        let shown = if tabs(shape.daemons > 0).contains(&shape.pane) {
            shape.pane
        } else {
            Pane::Events
        };
        match shown {
            Pane::Events => areas.events = Some(body),
            Pane::Output => areas.output = Some(body),
            Pane::Charts => areas.charts = Some(body),
            Pane::Daemons => {
                let split = Layout::default()
                    .direction(Direction::Horizontal)
                    .constraints([Constraint::Length(24), Constraint::Fill(1)])
                    .split(body);
                areas.daemons = Some(split[0]);
                areas.daemon_log = Some(split[1]);
            }
        }
    }
    areas
}
