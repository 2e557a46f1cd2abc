//! `orpoctl whoami`, `orpoctl user add|list|rm` and `orpoctl token create|list|revoke`: who the
//! daemon takes you for, its users and their API tokens. The renderers are pure functions of
//! the views (and the clock), pinned by the tests below.
//!
//! A token is shown once, when it is made: `token create` prints only the token on stdout (so
//! `TOKEN=$(orpoctl token create)` works) and what it is on stderr.

use std::time::SystemTime;

use orpo_api::{CallerView, CreatedToken, NewToken, NewUser, TokenView, UserView};

use crate::cli::Lifetime;
use crate::conn::{ApiResult as _, Conn};
use crate::display::{self, Table};
use crate::Outcome;

pub async fn whoami(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let me = conn.client.me().await.or_explain(conn)?;
    if json {
        return super::print_json(&me);
    }
    println!("{}", render_whoami(&me));
    if me.open {
        match &conn.settings.token {
            None => eprintln!(
                "jobs you submit are owned by {:?} (`owner` in ~/.config/orpoctl/config.toml, \
                 else $USER)",
                conn.settings.owner
            ),
            Some(_) => eprintln!(
                "the daemon has no users, so it does not look at the token from {}",
                conn.settings.token_from
            ),
        }
    }
    Ok(Outcome::Ok)
}

/// `alice (admin)`, `bob`, or `anonymous (open daemon: no users yet, loopback only)`.
pub fn render_whoami(me: &CallerView) -> String {
    let user = display::escape(if me.user.is_empty() {
        "anonymous"
    } else {
        &me.user
    });
    if me.open {
        format!("{user} (open daemon: no users yet, loopback only)")
    } else if me.admin {
        format!("{user} (admin)")
    } else {
        user
    }
}

pub async fn user_add(conn: &Conn, name: String, admin: bool) -> anyhow::Result<Outcome> {
    let user = conn
        .client
        .add_user(&NewUser { name, admin })
        .await
        .or_explain(conn)?;
    let name = display::escape(&user.name);
    println!("added {} {name}", if user.admin { "admin" } else { "user" });
    eprintln!("make their token with `orpoctl token create --user {name}`");
    // Without a token a daemon only answers while it is open: this was its first user, and
    // from now on it wants a token from everyone, this client included.
    if conn.settings.token.is_none() {
        eprintln!(
            "the daemon has users now, so every request needs a token: stop it and make yours \
             with `orpod token create --user NAME` on the server"
        );
    }
    Ok(Outcome::Ok)
}

pub async fn user_rm(conn: &Conn, name: &str) -> anyhow::Result<Outcome> {
    let user = conn.client.remove_user(name).await.or_explain(conn)?;
    println!(
        "removed {} {}; their tokens no longer work",
        if user.admin { "admin" } else { "user" },
        display::escape(&user.name)
    );
    Ok(Outcome::Ok)
}

pub async fn user_list(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let users = conn.client.users().await.or_explain(conn)?;
    if json {
        return super::print_json(&users);
    }
    if users.is_empty() {
        eprintln!(
            "no users: the daemon is open (loopback only); add an admin with \
             `orpoctl user add NAME --admin`"
        );
        return Ok(Outcome::Ok);
    }
    print!("{}", render_users(&users, SystemTime::now()));
    Ok(Outcome::Ok)
}

/// `NAME  ADMIN  CREATED` with `yes`/`no` and `2d ago`.
pub fn render_users(users: &[UserView], now: SystemTime) -> String {
    let mut t = Table::new(&["NAME", "ADMIN", "CREATED"]);
    for u in users {
        t.row(vec![
            u.name.clone(),
            if u.admin { "yes" } else { "no" }.into(),
            display::relative(&u.created_at, now),
        ]);
    }
    t.render()
}

pub async fn token_create(
    conn: &Conn,
    user: Option<String>,
    expires: Lifetime,
    json: bool,
) -> anyhow::Result<Outcome> {
    let created = conn
        .client
        .create_token(&NewToken {
            user,
            expires_in_s: expires.0,
        })
        .await
        .or_explain(conn)?;
    if json {
        super::print_json(&created)?;
    } else {
        // Only the token on stdout: `TOKEN=$(orpoctl token create)`. (The daemon's tokens are
        // `orpod_<hex>_<hex>`, which escaping leaves as they are.)
        println!("{}", display::escape(&created.token));
    }
    eprint!("{}", render_created(&created, SystemTime::now()));
    Ok(Outcome::Ok)
}

/// The stderr of `token create`: what the token is, and that it is shown only this once.
pub fn render_created(created: &CreatedToken, now: SystemTime) -> String {
    let t = &created.info;
    let expires = match &t.expires_at {
        Some(at) => format!("expires {at} ({})", display::relative(at, now)),
        None => "never expires".into(),
    };
    format!(
        "token {} for {}, {}\n\
         shown only this once; put it in ~/.config/orpoctl/config.toml as token = \"...\" or \
         ORPOD_TOKEN\n",
        display::escape(&t.id),
        display::escape(&t.user),
        display::escape(&expires)
    )
}

pub async fn token_list(conn: &Conn, json: bool) -> anyhow::Result<Outcome> {
    let tokens = conn.client.tokens().await.or_explain(conn)?;
    if json {
        return super::print_json(&tokens);
    }
    if tokens.is_empty() {
        eprintln!("no tokens; create one with `orpoctl token create`");
        return Ok(Outcome::Ok);
    }
    print!("{}", render_tokens(&tokens, SystemTime::now()));
    Ok(Outcome::Ok)
}

/// `ID  USER  CREATED  EXPIRES` with `2d ago` and `in 88d`, `never` or `expired 1h ago`.
pub fn render_tokens(tokens: &[TokenView], now: SystemTime) -> String {
    let mut t = Table::new(&["ID", "USER", "CREATED", "EXPIRES"]);
    for tok in tokens {
        t.row(vec![
            tok.id.clone(),
            tok.user.clone(),
            display::relative(&tok.created_at, now),
            display::expiry(tok.expires_at.as_deref(), now),
        ]);
    }
    t.render()
}

pub async fn token_revoke(conn: &Conn, id: &str) -> anyhow::Result<Outcome> {
    let tok = conn.client.revoke_token(id).await.or_explain(conn)?;
    println!(
        "revoked token {} of {}",
        display::escape(&tok.id),
        display::escape(&tok.user)
    );
    Ok(Outcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-11-27T12:00:00Z").unwrap()
    }

    fn caller(user: &str, admin: bool, open: bool) -> CallerView {
        CallerView {
            user: user.into(),
            admin,
            open,
        }
    }

    fn token(id: &str, user: &str, expires_at: Option<&str>) -> TokenView {
        TokenView {
            id: id.into(),
            user: user.into(),
            created_at: "2026-11-25T09:00:00Z".into(),
            expires_at: expires_at.map(String::from),
        }
    }

    #[test]
    fn whoami_lines() {
        assert_eq!(
            render_whoami(&caller("alice", true, false)),
            "alice (admin)"
        );
        assert_eq!(render_whoami(&caller("bob", false, false)), "bob");
        assert_eq!(
            render_whoami(&caller("anonymous", true, true)),
            "anonymous (open daemon: no users yet, loopback only)"
        );
        assert_eq!(
            render_whoami(&caller("", true, true)),
            "anonymous (open daemon: no users yet, loopback only)"
        );
    }

    #[test]
    fn users_table() {
        let users = [
            UserView {
                name: "alice".into(),
                admin: true,
                created_at: "2026-11-20T12:00:00Z".into(),
            },
            UserView {
                name: "bob.smith".into(),
                admin: false,
                created_at: "2026-11-27T11:57:00Z".into(),
            },
        ];
        assert_eq!(
            render_users(&users, now()),
            "\
NAME       ADMIN  CREATED
alice      yes    7d ago
bob.smith  no     3m ago
"
        );
    }

    #[test]
    fn tokens_table() {
        let tokens = [
            token("1a2b3c4d", "alice", None),
            token("99ff00aa", "bob", Some("2027-02-25T12:00:00Z")),
            token("0badc0de", "bob", Some("2026-11-27T10:00:00Z")),
        ];
        assert_eq!(
            render_tokens(&tokens, now()),
            "\
ID        USER   CREATED  EXPIRES
1a2b3c4d  alice  2d ago   never
99ff00aa  bob    2d ago   in 90d
0badc0de  bob    2d ago   expired 2h ago
"
        );
    }

    #[test]
    fn a_new_token_is_described_on_stderr() {
        let created = CreatedToken {
            token: "orpod_99ff00aa_secret".into(),
            info: token("99ff00aa", "bob", Some("2027-02-25T12:00:00Z")),
        };
        assert_eq!(
            render_created(&created, now()),
            "token 99ff00aa for bob, expires 2027-02-25T12:00:00Z (in 90d)\n\
             shown only this once; put it in ~/.config/orpoctl/config.toml as token = \"...\" \
             or ORPOD_TOKEN\n"
        );
        let forever = CreatedToken {
            token: "orpod_1a2b3c4d_secret".into(),
            info: token("1a2b3c4d", "alice", None),
        };
        assert!(render_created(&forever, now())
            .starts_with("token 1a2b3c4d for alice, never expires\nshown only this once; "));
    }
}
