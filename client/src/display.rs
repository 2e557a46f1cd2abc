//! Output helpers: plain aligned tables (no box drawing, so they paste into chat and grep
//! well, like `cargo tree` or `pueue status --color never`), human sizes, durations, ages and
//! the loss sparkline.
//!
//! Text from the daemon (job names, owners, paths, messages, log lines) is whatever some user
//! typed: it goes through [`escape`] or [`escape_lines`] before it reaches the terminal, so an
//! escape sequence in a job name cannot clear the screen or rewrite earlier lines.

use std::time::SystemTime;

/// A table with a header row; columns are as wide as their widest cell, two spaces apart.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, every cell passed through [`escape`].
    pub fn render(&self) -> String {
        let escaped = |r: &Vec<String>| r.iter().map(|c| escape(c)).collect::<Vec<_>>();
        let header = escaped(&self.header);
        let rows: Vec<Vec<String>> = self.rows.iter().map(escaped).collect();
        let cols = header.len();
        let mut width = vec![0; cols];
        for r in std::iter::once(&header).chain(&rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&header).chain(&rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(cols) {
                line.push_str(c);
                if i + 1 < cols {
                    let pad = width[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `s` safe to print on a terminal: control characters (C0, DEL, C1, which start escape
/// sequences or move the cursor) and bidirectional overrides (which reorder what is shown)
/// become visible escapes: `\e`, `\r`, `\n`, `\t`, else `\u{9b}`. Other text is unchanged.
pub fn escape(s: &str) -> String {
    escape_but(s, |_| false)
}

/// [`escape`] that keeps line breaks, for messages of several lines.
pub fn escape_lines(s: &str) -> String {
    escape_but(s, |c| c == '\n')
}

fn escape_but(s: &str, keep: impl Fn(char) -> bool) -> String {
    let unsafe_char = |c: char| {
        !keep(c)
            && (c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    };
    if !s.contains(unsafe_char) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&c.escape_unicode().to_string()),
        }
    }
    out
}

/// `s` cut to `max` characters, the last one an ellipsis, for table cells that a user can make
/// absurdly long (job names, owners).
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// 1.5 GiB, 340.0 MiB, 12.0 KiB, 512 B (binary units, as nvidia-smi and the daemon use).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// 42s, 3m05s, 1h02m, 2d03h.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long ago an RFC 3339 time was, coarsely (`5s`, `3m`, `2h`, `4d`), for tables.
pub fn age(rfc3339: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    coarse(now.duration_since(t).map(|d| d.as_secs()).unwrap_or(0))
}

/// An RFC 3339 time relative to `now`, as coarsely as [`age`]: `3m ago`, `in 89d`.
pub fn relative(rfc3339: &str, now: SystemTime) -> String {
    let Ok(t) = humantime::parse_rfc3339_weak(rfc3339) else {
        return "?".into();
    };
    match t.duration_since(now) {
        Ok(ahead) if ahead.as_secs() > 0 => format!("in {}", coarse_nearest(ahead.as_secs())),
        _ => format!("{} ago", age(rfc3339, now)),
    }
}

/// When a token stops working: `never`, `in 89d`, `expired 2h ago`.
pub fn expiry(expires_at: Option<&str>, now: SystemTime) -> String {
    match expires_at {
        None => "never".into(),
        Some(t) => {
            let rel = relative(t, now);
            if rel.ends_with(" ago") {
                format!("expired {rel}")
            } else {
                rel
            }
        }
    }
}

/// [`coarse`], rounded to the nearest unit rather than down: a token made to live 90 days
/// shows `in 90d` a second later, not `in 89d`.
fn coarse_nearest(s: u64) -> String {
    let (unit, suffix, next) = match s {
        0..60 => (1, "s", "1m"),
        60..3600 => (60, "m", "1h"),
        3600..86400 => (3600, "h", "1d"),
        _ => (86400, "d", ""),
    };
    let n = (s + unit / 2) / unit;
    match (suffix, n) {
        ("s" | "m", 60) | ("h", 24) => next.to_string(),
        _ => format!("{n}{suffix}"),
    }
}

/// `5s`, `3m`, `2h`, `4d`.
fn coarse(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `3/6 (50%)`; `-` before the step count is known.
pub fn progress(p: &orpo_api::Progress) -> String {
    if p.total_steps == 0 {
        return "-".into();
    }
    format!(
        "{}/{} ({}%)",
        p.step,
        p.total_steps,
        p.step * 100 / p.total_steps
    )
}

/// A metric value: 4 significant-ish decimals, or `-`.
pub fn metric(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) => {
            format!("{v:.3e}")
        }
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

/// The last `width` values as block characters scaled between their min and max.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let vals: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let vals = &vals[vals.len().saturating_sub(width)..];
    let (lo, hi) = vals
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    vals.iter()
        .map(|&v| {
            let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
            BARS[((t * 7.0).round() as usize).min(7)]
        })
        .collect()
}

pub fn or_dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_sparklines() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes(1536 << 10), "1.5 MiB");
        assert_eq!(duration(42.4), "42s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
        assert_eq!(sparkline(&[3.0, 2.0, 1.0], 10), "█▅▁");
        assert_eq!(sparkline(&[1.0, 1.0], 10), "▅▅");
        assert_eq!(sparkline(&[1.0, 2.0, 3.0], 2), "▁█");
    }

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        let name = "ok\x1b[2J\rgone\u{9b}31m\u{202e}txt.exe\x07";
        let shown = escape(name);
        assert_eq!(shown, "ok\\e[2J\\rgone\\u{9b}31m\\u{202e}txt.exe\\u{7}");
        assert!(!shown.chars().any(|c| c.is_control()));
        assert_eq!(escape("plain café ✓ name-1"), "plain café ✓ name-1");
        assert_eq!(escape_lines("a\nb\x1b[K\r"), "a\nb\\e[K\\r");
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "x\x1b[2J\ry".into()]);
        assert_eq!(t.render(), "ID  NAME\n1   x\\e[2J\\ry\n");
    }

    #[test]
    fn times_relative_to_now() {
        let now = humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap();
        assert_eq!(age("2026-11-25T09:00:00Z", now), "2d");
        assert_eq!(relative("2026-11-27T11:57:00Z", now), "3m ago");
        assert_eq!(relative("2027-02-25T12:00:00Z", now), "in 90d");
        assert_eq!(relative("2027-02-25T11:59:59Z", now), "in 90d");
        assert_eq!(relative("2027-02-24T20:00:00Z", now), "in 89d");
        assert_eq!(relative("2026-11-27T12:59:50Z", now), "in 1h");
        assert_eq!(relative("2026-11-28T11:40:00Z", now), "in 1d");
        assert_eq!(relative("2026-11-27T12:00:00Z", now), "0s ago");
        assert_eq!(relative("yesterday", now), "?");
        assert_eq!(expiry(None, now), "never");
        assert_eq!(expiry(Some("2026-11-27T18:00:00Z"), now), "in 6h");
        assert_eq!(expiry(Some("2026-11-27T10:00:00Z"), now), "expired 2h ago");
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 8), "short");
        assert_eq!(truncate("exactly8", 8), "exactly8");
        assert_eq!(truncate("much-too-long", 8), "much-to…");
        assert_eq!(truncate(&"é".repeat(100), 4), "ééé…");
    }

    #[test]
    fn tables_align_and_trim() {
        let mut t = Table::new(&["ID", "NAME"]);
        t.row(vec!["1".into(), "a".into()]);
        t.row(vec!["10".into(), "".into()]);
        assert_eq!(t.render(), "ID  NAME\n1   a\n10\n");
    }
}
