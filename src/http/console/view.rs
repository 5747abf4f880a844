//! What the console's templates show: the page frame (navigation, the logout form), the error
//! page, and a turn's events made readable (message chunks joined, each tool call with its
//! status, plans, usage, permissions).

use askama::Template;

use crate::wire::{self, EventBody};

/// The console's sections, in the navigation's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Overview,
    Sessions,
    Runs,
    Apps,
    Tokens,
}

impl Section {
    const ALL: [Section; 5] = [
        Section::Overview,
        Section::Sessions,
        Section::Runs,
        Section::Apps,
        Section::Tokens,
    ];

    fn href(self) -> &'static str {
        match self {
            Section::Overview => "/console",
            Section::Sessions => "/console/sessions",
            Section::Runs => "/console/runs",
            Section::Apps => "/console/apps",
            Section::Tokens => "/console/tokens",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Section::Overview => "Overview",
            Section::Sessions => "Sessions",
            Section::Runs => "Runs",
            Section::Apps => "Apps",
            Section::Tokens => "Tokens",
        }
    }
}

pub(super) struct NavItem {
    pub(super) href: &'static str,
    pub(super) label: &'static str,
    pub(super) current: bool,
}

/// The frame of a page: the navigation, and the CSRF token of the logout form (none before
/// login).
pub(super) struct Chrome {
    pub(super) nav: Vec<NavItem>,
    pub(super) csrf: Option<String>,
}

impl Chrome {
    pub(super) fn for_admin(section: Section, csrf: &str) -> Chrome {
        let nav = Section::ALL
            .into_iter()
            .map(|s| NavItem {
                href: s.href(),
                label: s.label(),
                current: s == section,
            })
            .collect();
        Chrome {
            nav,
            csrf: Some(csrf.to_string()),
        }
    }

    pub(super) fn anonymous() -> Chrome {
        Chrome {
            nav: Vec::new(),
            csrf: None,
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub(super) struct ErrorPage<'a> {
    pub(super) chrome: Chrome,
    pub(super) title: &'a str,
    pub(super) message: &'a str,
}

/// One line of a turn as the page shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct EventView {
    /// The first event's `seq` (message chunks are joined into one line).
    pub(super) seq: u64,
    /// Its time of day, UTC.
    pub(super) at: String,
    /// A CSS class and a word for what it is.
    pub(super) kind: &'static str,
    pub(super) label: &'static str,
    /// A title line, if any.
    pub(super) title: String,
    /// Text shown as written (messages, thoughts).
    pub(super) text: String,
    /// Further facts, one per line.
    pub(super) details: Vec<String>,
}

/// A turn's events made readable: consecutive message (or thought) chunks joined.
pub(super) fn event_views(events: &[wire::Event]) -> Vec<EventView> {
    let mut views: Vec<EventView> = Vec::new();
    for event in events {
        let chunk = match &event.body {
            EventBody::Message { text } => Some(("message", text)),
            EventBody::Thought { text } => Some(("thought", text)),
            _ => None,
        };
        if let (Some((kind, text)), Some(last)) = (chunk, views.last_mut()) {
            if last.kind == kind {
                last.text.push_str(text);
                continue;
            }
        }
        views.push(event_view(event));
    }
    views
}

fn time_of(at: &str) -> String {
    at.split_once('T')
        .map(|(_, time)| time.trim_end_matches('Z').to_string())
        .unwrap_or_else(|| at.to_string())
}

fn or_dash(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("—")
}

fn event_view(event: &wire::Event) -> EventView {
    let mut view = EventView {
        seq: event.seq,
        at: time_of(&event.at),
        kind: event.body.kind(),
        label: "",
        title: String::new(),
        text: String::new(),
        details: Vec::new(),
    };
    match &event.body {
        EventBody::Message { text } => {
            view.label = "Agent";
            view.text = text.clone();
        }
        EventBody::Thought { text } => {
            view.label = "Thought";
            view.text = text.clone();
        }
        EventBody::Notice { text } => {
            view.label = "Notice";
            view.text = text.clone();
        }
        EventBody::Unknown => view.label = "Other event",
        body => describe(body, &mut view),
    }
    view
}

/// The events that are facts rather than text.
fn describe(body: &EventBody, view: &mut EventView) {
    match body {
        EventBody::ToolCall {
            title,
            kind,
            status,
            locations,
            ..
        } => {
            view.label = "Tool call";
            view.title = title.clone();
            view.details.push(format!("kind: {}", or_dash(kind)));
            view.details.push(format!("status: {}", or_dash(status)));
            view.details
                .extend(locations.iter().map(|l| format!("at {l}")));
        }
        EventBody::ToolCallUpdate { title, status, .. } => {
            view.label = "Tool call update";
            view.title = title.clone().unwrap_or_default();
            if let Some(status) = status {
                view.details.push(format!("status: {status}"));
            }
        }
        EventBody::Plan { entries } => {
            view.label = "Plan";
            view.details = entries
                .iter()
                .map(|e| format!("[{}] {}", or_dash(&e.status), e.content))
                .collect();
        }
        EventBody::Usage {
            used,
            size,
            cost_usd,
        } => {
            view.label = "Usage";
            let n = |v: &Option<u64>| v.map_or("—".to_string(), |v| v.to_string());
            view.details
                .push(format!("context: {} of {}", n(used), n(size)));
            let cost = cost_usd.map_or("—".to_string(), |c| format!("{c:.4} USD"));
            view.details.push(format!("cost so far: {cost}"));
        }
        EventBody::Permission {
            title,
            decision,
            by,
            ..
        } => {
            view.label = "Permission";
            view.title = title.clone().unwrap_or_default();
            view.details
                .push(format!("{decision:?} by {by:?}").to_lowercase());
        }
        EventBody::PermissionRequest { title, options, .. } => {
            view.label = "Permission asked";
            view.title = title.clone().unwrap_or_default();
            view.details = options.iter().map(|o| o.name.clone()).collect();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, body: EventBody) -> wire::Event {
        wire::Event {
            session_id: Some("s".into()),
            turn: Some(1),
            run_id: None,
            seq,
            at: "2026-12-08T10:11:12.345Z".into(),
            body,
        }
    }

    #[test]
    fn message_chunks_are_joined_and_tool_calls_kept_apart() {
        let text = |t: &str| EventBody::Message { text: t.into() };
        let views = event_views(&[
            event(1, text("Hel")),
            event(2, text("lo")),
            event(
                3,
                EventBody::ToolCall {
                    tool_call_id: "t1".into(),
                    title: "Read notes.md".into(),
                    kind: Some("read".into()),
                    status: Some("pending".into()),
                    locations: vec!["/w/notes.md".into()],
                },
            ),
            event(4, text("Done")),
        ]);
        assert_eq!(views.len(), 3);
        assert_eq!((views[0].seq, views[0].text.as_str()), (1, "Hello"));
        assert_eq!(views[0].at, "10:11:12.345");
        assert_eq!(views[1].label, "Tool call");
        assert_eq!(views[1].title, "Read notes.md");
        assert_eq!(
            views[1].details,
            ["kind: read", "status: pending", "at /w/notes.md"]
        );
        assert_eq!((views[2].seq, views[2].text.as_str()), (4, "Done"));
    }
}
