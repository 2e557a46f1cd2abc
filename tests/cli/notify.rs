//! `orpoctl notify add | list | test | rm` on an open daemon: refused while the operator allows
//! nothing, then an endpoint for the submitting user's name, a test delivery to a local
//! receiver, and its removal.

use orpo_tests::webhook::Receiver;

use crate::Setup;

#[tokio::test]
async fn notify_add_list_test_and_rm() {
    let mut s = Setup::new().await;
    let out = s.run(&["notify", "add", "https://ntfy.sh/lab"]).expect(1);
    assert!(
        out.stderr
            .contains("this server allows no notification endpoints")
            && out.stderr.contains("notify_allow")
            && out.stderr.contains("(forbidden)"),
        "{out:#?}"
    );
    let out = s
        .run(&["notify", "add", "http://x/", "--on", "finished"])
        .expect(2);
    assert!(
        out.stderr.contains("\"finished\" is not an event"),
        "{out:#?}"
    );

    let hooks = Receiver::start(|_, _| "200 OK");
    let port = hooks.port;
    s.d.stop();
    let config = s.d.state_dir.with_extension("toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text += &format!("notify_allow = [\"http://127.0.0.1:{port}/\"]\n");
    std::fs::write(&config, text).unwrap();
    s.d.restart().await;

    let url = format!("http://127.0.0.1:{port}/orpod");
    let out = s
        .run(&["notify", "add", &url, "--on", "succeeded,cancelled"])
        .expect(0);
    // On an open daemon the endpoint is for the name jobs are submitted under.
    let id = out
        .stdout
        .strip_prefix("added endpoint ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{out:#?}"))
        .to_string();
    assert_eq!(
        out.stdout,
        format!("added endpoint {id} (json) for tester: succeeded,cancelled\n")
    );
    let out = s.run(&["notify", "list"]).expect(0);
    let row = out.stdout.lines().nth(1).unwrap_or_default().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // ID USER FORMAT ON CREATED (`3s ago`) URL.
    assert_eq!(
        (&cells[..4], cells.last()),
        (
            &[id.as_str(), "tester", "json", "succeeded,cancelled"][..],
            Some(&url.as_str())
        ),
        "{out:#?}"
    );
    let out = s.run(&["notify", "test", &id]).expect(0);
    assert_eq!(out.stdout, "delivered: the endpoint answered 200\n");
    let got = hooks.at("/orpod");
    assert!(
        got.len() == 1 && got[0].body.contains("\"event\":\"test\""),
        "{got:#?}"
    );
    let out = s.run(&["notify", "rm", &id]).expect(0);
    assert_eq!(out.stdout, format!("removed endpoint {id} of tester\n"));
    let out = s.run(&["notify", "test", &id]).expect(1);
    assert!(out.stderr.contains("(not_found)"), "{out:#?}");
    let out = s.run(&["notify", "list"]).expect(0);
    assert_eq!(out.stdout, "");
}
