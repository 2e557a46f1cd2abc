//! A daemon with users: `whoami`, the messages of a missing or refused token, an admin adding a
//! user and making (and revoking) their token with `orpoctl`, what a non-admin is refused, and
//! jobs that belong to their owners.
//!
//! Each test starts the daemon open (no users), stops it, adds its first users and their tokens
//! with the real `orpod user add` / `orpod token create` on the state folder, and starts it
//! again: from then on every request needs a token.

use std::path::Path;
use std::time::Duration;

use orpo_api::client::Client;
use orpo_api::{CallerView, CreatedToken, JobState, JobView, TokenView, UserView};

use crate::{orpoctl, run_with, Out, Setup, ORPOD};

/// Stops the daemon of `s`, adds `users` (name, admin) to its state folder with a token each,
/// and starts it again; the harness's own client then uses the first user's token. Returns the
/// tokens in the order of `users`.
async fn add_users(s: &mut Setup, users: &[(&str, bool)]) -> Vec<String> {
    s.d.stop();
    let exe = Path::new(ORPOD);
    let mut tokens = Vec::new();
    for &(name, admin) in users {
        orpo_tests::orpod_user_add(exe, &s.d.state_dir, name, admin);
        tokens.push(orpo_tests::orpod_token_create(exe, &s.d.state_dir, name));
    }
    s.d.restart().await;
    s.d.client = Client::with_token(&s.d.url, Some(&tokens[0]), Duration::from_secs(5)).unwrap();
    tokens
}

/// `orpoctl ARGS` with `token` in ORPOD_TOKEN.
fn run_as(s: &Setup, token: &str, args: &[&str]) -> Out {
    run_with(
        orpoctl(&s.tmp.path().join("home"))
            .env("ORPOD_URL", &s.d.url)
            .env("ORPOD_TOKEN", token),
        args,
    )
}

/// The advice every 401 ends with.
#[track_caller]
fn assert_token_hint(out: &Out) {
    for part in [
        "--token, ORPOD_TOKEN or `token = \"...\"` in ~/.config/orpoctl/config.toml",
        "`orpoctl token create --user NAME`",
        "`orpod token create --user NAME` on the server",
    ] {
        assert!(out.stderr.contains(part), "{part:?}: {out:#?}");
    }
}

#[tokio::test]
async fn whoami_open_then_with_tokens_and_what_a_missing_or_wrong_token_says() {
    let mut s = Setup::new().await;
    let out = s.run(&["whoami"]).expect(0);
    assert_eq!(
        out.stdout,
        "anonymous (open daemon: no users yet, loopback only)\n"
    );
    assert!(
        out.stderr
            .contains("jobs you submit are owned by \"tester\""),
        "{out:#?}"
    );
    let me: CallerView = serde_json::from_str(&s.run(&["whoami", "--json"]).expect(0).stdout)
        .expect("whoami --json");
    assert!(me.open && me.admin, "{me:?}");

    let tokens = add_users(&mut s, &[("root", true), ("bob", false)]).await;
    let (root, bob) = (&tokens[0], &tokens[1]);

    // No token: exit 1, the daemon needs one, and where one goes.
    for args in [&["whoami"][..], &["list"], &["status", "1"], &["gpus"]] {
        let out = s.run(args).expect(1);
        assert!(
            out.stderr.starts_with(&format!(
                "error: orpod at {} needs a token and none is set (unauthorized)\n",
                s.d.url
            )),
            "{args:?}: {out:#?}"
        );
        assert_token_hint(&out);
    }

    // A wrong token: exit 1, the daemon's reason, where the token came from, the same hint.
    let out = run_as(&s, "orpod_00000000_0123456789abcdef", &["whoami"]).expect(1);
    assert!(
        out.stderr.starts_with(&format!(
            "error: orpod at {} refused the token from ORPOD_TOKEN: ",
            s.d.url
        )),
        "{out:#?}"
    );
    assert!(out.stderr.contains("(unauthorized)\n"), "{out:#?}");
    assert_token_hint(&out);
    let out = s.run(&["--token", "nonsense", "list"]).expect(1);
    assert!(
        out.stderr.contains("refused the token from --token: "),
        "{out:#?}"
    );

    // The right ones.
    assert_eq!(
        run_as(&s, root, &["whoami"]).expect(0).stdout,
        "root (admin)\n"
    );
    assert_eq!(run_as(&s, bob, &["whoami"]).expect(0).stdout, "bob\n");
    let me: CallerView =
        serde_json::from_str(&run_as(&s, bob, &["whoami", "--json"]).expect(0).stdout).unwrap();
    assert_eq!(
        me,
        CallerView {
            user: "bob".into(),
            admin: false,
            open: false
        }
    );

    // From the config file, as `token = "..."`.
    let config = s.tmp.path().join("home/.config/orpoctl");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("config.toml"), format!("token = {bob:?}\n")).unwrap();
    assert_eq!(s.run(&["whoami"]).expect(0).stdout, "bob\n");
    std::fs::write(config.join("config.toml"), "token = \"orpod_0_0\"\n").unwrap();
    let out = s.run(&["whoami"]).expect(1);
    assert!(
        out.stderr
            .contains("refused the token from ~/.config/orpoctl/config.toml: "),
        "{out:#?}"
    );
}

#[tokio::test]
async fn an_admin_adds_a_user_and_makes_and_revokes_their_token() {
    let mut s = Setup::new().await;
    let root = add_users(&mut s, &[("root", true)]).await.remove(0);

    let out = run_as(&s, &root, &["user", "add", "carol"]).expect(0);
    assert_eq!(out.stdout, "added user carol\n");
    assert!(
        out.stderr
            .contains("make their token with `orpoctl token create --user carol`"),
        "{out:#?}"
    );
    let out = run_as(&s, &root, &["user", "add", "carol"]).expect(1);
    assert!(out.stderr.contains("carol"), "{out:#?}");
    // Names are checked here: a usage error, nothing sent.
    let out = run_as(&s, &root, &["user", "add", "no such"]).expect(2);
    assert!(out.stderr.contains("is not valid"), "{out:#?}");

    let out = run_as(&s, &root, &["user", "list"]).expect(0);
    assert!(
        out.stdout.starts_with("NAME   ADMIN  CREATED\n"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("\ncarol  no     "), "{out:#?}");
    assert!(out.stdout.contains("\nroot   yes    "), "{out:#?}");
    let users: Vec<UserView> = serde_json::from_str(
        &run_as(&s, &root, &["user", "list", "--json"])
            .expect(0)
            .stdout,
    )
    .unwrap();
    let mut names: Vec<(&str, bool)> = users.iter().map(|u| (&*u.name, u.admin)).collect();
    names.sort();
    assert_eq!(names, [("carol", false), ("root", true)]);

    // A bad lifetime is a usage error here, and no token is made.
    let out = run_as(
        &s,
        &root,
        &["token", "create", "--user", "carol", "--expires", "1y"],
    )
    .expect(2);
    assert!(out.stderr.contains("is not a lifetime"), "{out:#?}");

    // The token alone on stdout, what it is on stderr.
    let out = run_as(
        &s,
        &root,
        &["token", "create", "--user", "carol", "--expires", "30d"],
    )
    .expect(0);
    let carol = out.stdout.trim_end_matches('\n').to_string();
    assert_eq!(out.stdout, format!("{carol}\n"), "one line: {out:#?}");
    assert!(
        !carol.is_empty() && !carol.contains(char::is_whitespace),
        "{out:#?}"
    );
    assert!(out.stderr.starts_with("token "), "{out:#?}");
    assert!(out.stderr.contains(" for carol, expires "), "{out:#?}");
    assert!(
        out.stderr.contains(
            "shown only this once; put it in ~/.config/orpoctl/config.toml as token = \"...\" \
             or ORPOD_TOKEN"
        ),
        "{out:#?}"
    );
    let id = out.stderr["token ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    // Carol's token works; carol sees her tokens, root everyone's.
    assert_eq!(run_as(&s, &carol, &["whoami"]).expect(0).stdout, "carol\n");
    run_as(&s, &carol, &["list"]).expect(0);
    let theirs: Vec<TokenView> = serde_json::from_str(
        &run_as(&s, &carol, &["token", "list", "--json"])
            .expect(0)
            .stdout,
    )
    .unwrap();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!((&*theirs[0].id, &*theirs[0].user), (&*id, "carol"));
    assert!(theirs[0].expires_at.is_some(), "{theirs:?}");
    let out = run_as(&s, &root, &["token", "list"]).expect(0);
    assert!(
        out.stdout.starts_with("ID  ")
            && out.stdout.contains("USER")
            && out.stdout.contains("EXPIRES"),
        "{out:#?}"
    );
    assert!(out.stdout.contains(&format!("\n{id}  carol  ")), "{out:#?}");
    assert!(out.stdout.contains("  root  "), "{out:#?}");
    assert!(
        out.stdout.contains(" never\n"),
        "root's token never expires: {out:#?}"
    );
    assert!(
        out.stdout.contains(" in "),
        "carol's expires in 30 days: {out:#?}"
    );

    // What only an admin may do: the daemon's 403, exit 1.
    let out = run_as(&s, &carol, &["user", "add", "mallory"]).expect(1);
    assert!(out.stderr.starts_with("error: "), "{out:#?}");
    assert!(out.stderr.contains("only an admin may"), "{out:#?}");
    assert!(out.stderr.contains("(forbidden)"), "{out:#?}");
    let out = run_as(&s, &carol, &["user", "list"]).expect(1);
    assert!(out.stderr.contains("(forbidden)"), "{out:#?}");
    let out = run_as(&s, &carol, &["token", "create", "--user", "root"]).expect(1);
    assert!(out.stderr.contains("(forbidden)"), "{out:#?}");

    // An admin's own token as JSON (what a script keeps): the token and its view.
    let made: CreatedToken = serde_json::from_str(
        &run_as(&s, &root, &["token", "create", "--json"])
            .expect(0)
            .stdout,
    )
    .unwrap();
    assert_eq!(made.info.user, "root");
    assert_eq!(made.info.expires_at, None);

    // Revoked: carol's token stops working at once.
    let out = run_as(&s, &root, &["token", "revoke", &id]).expect(0);
    assert_eq!(out.stdout, format!("revoked token {id} of carol\n"));
    let out = run_as(&s, &carol, &["list"]).expect(1);
    assert!(
        out.stderr.contains("refused the token from ORPOD_TOKEN: "),
        "{out:#?}"
    );
    assert!(out.stderr.contains("(unauthorized)"), "{out:#?}");
    assert_token_hint(&out);
    run_as(&s, &root, &["token", "revoke", &id]).expect(1);

    // Removing users: admins only; carol's other token dies with her.
    let out = run_as(&s, &carol, &["user", "rm", "carol"]).expect(1);
    assert!(out.stderr.contains("(unauthorized)"), "{out:#?}");
    let out = run_as(&s, &root, &["user", "rm", "root"]).expect(1);
    assert!(
        out.stderr.contains("root is the last admin") && out.stderr.contains("(conflict)"),
        "{out:#?}"
    );
    let out = run_as(&s, &root, &["user", "rm", "carol"]).expect(0);
    assert_eq!(
        out.stdout,
        "removed user carol; their tokens no longer work\n"
    );
    let out = run_as(&s, &root, &["user", "rm", "carol"]).expect(1);
    assert!(out.stderr.contains("(unknown_user)"), "{out:#?}");

    // `orpod user rm` on the stopped daemon's state folder: the last user may go, and the
    // daemon is open again.
    s.d.stop();
    let orpod = |args: &[&str]| {
        let out = std::process::Command::new(ORPOD)
            .args(args)
            .arg("--state-dir")
            .arg(&s.d.state_dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = orpod(&["user", "rm", "nobody"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no user nobody"), "{err}");
    let (code, err) = orpod(&["user", "rm", "root"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("removed admin root: 2 token(s) revoked")
            && err.contains("the daemon runs open again, on loopback only"),
        "{err}"
    );
}

#[tokio::test]
async fn jobs_belong_to_their_owners() {
    let mut s = Setup::new().await;
    let tokens = add_users(&mut s, &[("root", true), ("alice", false), ("bob", false)]).await;
    let (root, alice, bob) = (&tokens[0], &tokens[1], &tokens[2]);

    // With a token orpoctl names no owner: the job is the token user's (not $USER's, "tester").
    let job = s.job_file("long", 8, "max_steps = 400");
    let out = run_as(&s, alice, &["submit", job.to_str().unwrap()]).expect(0);
    assert!(
        out.stdout.starts_with("submitted job 1 (long), "),
        "{out:#?}"
    );
    s.d.wait_for(1, Duration::from_secs(60), "training", |j| {
        j.state == JobState::Running && j.progress.step >= 1
    })
    .await;

    // Bob may not stop it, pause it or read what it does: exit 1 with the daemon's 403.
    for verb in ["cancel", "pause", "metrics", "checkpoints", "logs"] {
        let out = run_as(&s, bob, &[verb, "1"]).expect(1);
        assert!(out.stderr.contains("(forbidden)"), "{verb}: {out:#?}");
        assert!(out.stderr.contains("belongs to alice"), "{verb}: {out:#?}");
    }
    let after = s.d.client.job(1).await.unwrap();
    assert_eq!(after.state, JobState::Running, "untouched: {after:#?}");
    assert!(after.error.is_none(), "{after:#?}");

    // He sees it in the queue, without what it does.
    let out = run_as(&s, bob, &["status", "1"]).expect(0);
    assert!(out.stdout.contains("\nowner       alice\n"), "{out:#?}");
    assert!(
        out.stdout
            .contains("\nspec        visible only to its owner and admins"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("\nmodel "), "{out:#?}");
    let out = run_as(&s, alice, &["status", "1"]).expect(0);
    assert!(out.stdout.contains("\nmodel       "), "{out:#?}");

    // Bob's own job; everyone's list shows both with their owners.
    let job = s.job_file("bobs", 4, "max_steps = 1");
    let out = run_as(&s, bob, &["submit", job.to_str().unwrap()]).expect(0);
    assert!(
        out.stdout.starts_with("submitted job 2 (bobs), "),
        "{out:#?}"
    );
    for token in [alice, bob, root] {
        let out = run_as(&s, token, &["list"]).expect(0);
        let rows: Vec<Vec<&str>> = out
            .stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().take(3).collect())
            .collect();
        assert_eq!(
            rows,
            [["2", "bobs", "bob"], ["1", "long", "alice"]],
            "{out:#?}"
        );
    }
    let jobs: Vec<JobView> =
        serde_json::from_str(&run_as(&s, bob, &["list", "--json"]).expect(0).stdout).unwrap();
    let seen: Vec<(u64, &str, bool)> = jobs
        .iter()
        .map(|j| (j.id, &*j.owner, j.spec.is_some()))
        .collect();
    assert_eq!(seen, [(2, "bob", true), (1, "alice", false)]);

    // Its owner cancels it; an admin may cancel anyone's.
    run_as(&s, alice, &["cancel", "1"]).expect(0);
    s.d.wait_state(1, JobState::Cancelled, Duration::from_secs(30))
        .await;
    let out = run_as(&s, root, &["cancel", "2"]);
    assert!(
        out.code == 0 || out.stderr.contains("(conflict)"),
        "cancelled, or already finished: {out:#?}"
    );
}
