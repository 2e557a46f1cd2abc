//! `orpoctl notify add | list | rm | test`: where the daemon tells you that a job ended or
//! waits long. The renderer is a pure function of the views (and the clock), pinned by the
//! test below.

use std::time::SystemTime;

use orpo_api::{NewNotify, NotifyFormat, NotifyOn, NotifyView};

use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

pub async fn add(
    conn: &Conn,
    url: String,
    format: Option<NotifyFormat>,
    on: Option<Vec<NotifyOn>>,
    user: Option<String>,
) -> anyhow::Result<Outcome> {
    // On an open daemon (no token) the endpoint is for the name jobs are submitted under, as
    // `submit` sends it; with a token the daemon knows who asks.
    let user = user.or_else(|| {
        conn.settings
            .token
            .is_none()
            .then(|| conn.settings.owner.clone())
    });
    let view = conn
        .client
        .add_notify(&NewNotify {
            user,
            url,
            format,
            on,
        })
        .await
        .or_explain(conn)?;
    println!(
        "added endpoint {} ({}) for {}: {}",
        display::escape(&view.id),
        view.format.as_str(),
        display::escape(&view.user),
        events(&view.on)
    );
    eprintln!(
        "`orpoctl notify test {}` sends a test notification now",
        display::escape(&view.id)
    );
    Ok(Outcome::Ok)
}

pub async fn list(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let targets = conn.client.notify_targets().await.or_explain(conn)?;
    if json {
        return super::print_json(&targets);
    }
    if targets.is_empty() {
        eprintln!("no notification endpoints; add one with `orpoctl notify add URL`");
        return Ok(Outcome::Ok);
    }
    print!("{}", render(&targets, SystemTime::now()));
    Ok(Outcome::Ok)
}

/// `ID  USER  FORMAT  ON  CREATED  URL`, the URL last because it is the longest.
pub fn render(targets: &[NotifyView], now: SystemTime) -> String {
    let mut t = Table::new(&["ID", "USER", "FORMAT", "ON", "CREATED", "URL"]);
    for n in targets {
        t.row(vec![
            n.id.clone(),
            n.user.clone(),
            n.format.as_str().into(),
            events(&n.on),
            display::relative(&n.created_at, now),
            n.url.clone(),
        ]);
    }
    t.render()
}

fn events(on: &[NotifyOn]) -> String {
    on.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(",")
}

pub async fn remove(conn: &Conn, id: &str) -> anyhow::Result<Outcome> {
    let view = conn.client.remove_notify(id).await.or_explain(conn)?;
    println!(
        "removed endpoint {} of {}",
        display::escape(&view.id),
        display::escape(&view.user)
    );
    Ok(Outcome::Ok)
}

pub async fn test(conn: &Conn, id: &str) -> anyhow::Result<Outcome> {
    let result = conn.client.test_notify(id).await.or_explain(conn)?;
    if result.delivered {
        println!("{}", display::escape(&result.message));
        Ok(Outcome::Ok)
    } else {
        eprintln!("not delivered: {}", display::escape(&result.message));
        Ok(Outcome::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_render_as_a_table() {
        let now = humantime::parse_rfc3339("2026-12-01T12:00:00Z").unwrap();
        let targets = [NotifyView {
            id: "0a1b2c3d".into(),
            user: "ada".into(),
            url: "https://ntfy.sh/lab-runs".into(),
            format: NotifyFormat::Ntfy,
            on: NotifyOn::DEFAULT.to_vec(),
            created_at: "2026-12-01T10:00:00Z".into(),
        }];
        assert_eq!(
            render(&targets, now),
            "ID        USER  FORMAT  ON                        CREATED  URL\n\
             0a1b2c3d  ada   ntfy    succeeded,failed,waiting  2h ago   https://ntfy.sh/lab-runs\n"
        );
    }
}
