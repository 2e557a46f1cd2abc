//! What a user sees when something is wrong: a bad job file (exit 2, with line and column),
//! an unknown job, a server that is down, and where the server and token come from.

use std::io::{Read as _, Write as _};

use crate::{orpoctl, run_with, Setup};

#[tokio::test]
async fn bad_job_files_are_refused_here_with_exit_2() {
    let s = Setup::new().await;
    let job = s.job_file("bad", 4, "max_steps = 1");
    let text = std::fs::read_to_string(&job).unwrap();

    std::fs::write(&job, text.replace("batch_size = 2", "batch_sise = 2")).unwrap();
    let out = s.run(&["submit", job.to_str().unwrap()]).expect(2);
    assert!(
        out.stderr.contains("unknown field `batch_sise`"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("line "), "{out:#?}");
    assert!(out.stderr.contains("column "), "{out:#?}");

    std::fs::write(&job, text.replace("batch_size = 2", "batch_size = \"two\"")).unwrap();
    let out = s.run(&["plan", job.to_str().unwrap()]).expect(2);
    assert!(out.stderr.contains("batch_size"), "{out:#?}");

    std::fs::write(&job, text.replace("prefs.jsonl", "missing.jsonl")).unwrap();
    let out = s.run(&["submit", job.to_str().unwrap()]).expect(2);
    assert!(out.stderr.contains("data.train: "), "{out:#?}");
    assert!(
        out.stderr.contains("missing.jsonl does not exist"),
        "{out:#?}"
    );

    let out = s.run(&["submit", "/nonexistent/job.toml"]).expect(2);
    assert!(
        out.stderr
            .contains("cannot read job file /nonexistent/job.toml"),
        "{out:#?}"
    );

    // A bad data row is the server's to find (it checks every row): exit 1, the line named.
    std::fs::write(&job, &text).unwrap();
    std::fs::write(job.with_file_name("prefs.jsonl"), "{\"prompt\": \"p\"}\n").unwrap();
    let out = s.run(&["submit", job.to_str().unwrap()]).expect(1);
    assert!(
        out.stderr.contains("prefs.jsonl:1: missing key \"chosen\""),
        "{out:#?}"
    );
    assert!(out.stderr.contains("uploading data.train"), "{out:#?}");

    // A model the server does not have.
    std::fs::write(
        job.with_file_name("prefs.jsonl"),
        orpo_tests::prefs_jsonl(4),
    )
    .unwrap();
    let missing = s.tmp.path().join("no/such/model.gguf");
    let missing = missing.to_str().unwrap();
    std::fs::write(&job, text.replace(s.model.to_str().unwrap(), missing)).unwrap();
    let out = s.run(&["submit", job.to_str().unwrap()]).expect(1);
    assert!(
        out.stderr
            .contains(&format!("{missing} does not exist on the server")),
        "{out:#?}"
    );
    assert!(out.stderr.contains("(model_not_found)"), "{out:#?}");

    // Usage errors are clap's: exit 2.
    let out = s.run(&["status", "abc"]).expect(2);
    assert!(out.stderr.contains("invalid value 'abc'"), "{out:#?}");
    let out = s.run(&["list", "--state", "sleeping"]).expect(2);
    assert!(out.stderr.contains("unknown job state"), "{out:#?}");
    s.run(&["frobnicate"]).expect(2);
}

#[tokio::test]
async fn unknown_jobs_say_how_to_find_them() {
    let s = Setup::new().await;
    for verb in [
        "status",
        "metrics",
        "logs",
        "watch",
        "cancel",
        "pause",
        "resume",
        "checkpoints",
    ] {
        let out = s.run(&[verb, "42"]).expect(1);
        assert!(out.stderr.contains("(job_not_found)"), "{verb}: {out:#?}");
        assert!(
            out.stderr.contains("`orpoctl list` shows the jobs"),
            "{verb}: {out:#?}"
        );
    }
}

#[test]
fn a_server_that_is_down_gets_a_message_that_says_what_to_check() {
    let home = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["list"][..], &["status", "1"], &["gpus"], &["watch", "1"]] {
        let out = run_with(orpoctl(home.path()).env("ORPOD_URL", &url), args).expect(1);
        assert!(
            out.stderr.starts_with(&format!(
                "error: cannot reach orpod at {url} (from ORPOD_URL): "
            )),
            "{out:#?}"
        );
        assert!(out.stderr.contains("`orpod serve`"), "{out:#?}");
        assert!(
            out.stderr
                .contains("--server, ORPOD_URL or ~/.config/orpoctl/config.toml"),
            "{out:#?}"
        );
    }
    // With nothing set the default address is tried, and said.
    let out = run_with(&mut orpoctl(home.path()), &["--server", &url, "list"]).expect(1);
    assert!(out.stderr.contains("(from --server)"), "{out:#?}");
}

#[tokio::test]
async fn server_and_token_come_from_flags_then_env_then_config_file() {
    let s = Setup::new().await;
    let home = s.tmp.path().join("home");
    let dead = "http://127.0.0.1:9";
    std::fs::create_dir_all(home.join(".config/orpoctl")).unwrap();
    std::fs::write(
        home.join(".config/orpoctl/config.toml"),
        format!("server = {:?}\n", s.d.url),
    )
    .unwrap();
    // The config file alone.
    run_with(&mut orpoctl(&home), &["list"]).expect(0);
    // The environment wins over the file...
    let out = run_with(orpoctl(&home).env("ORPOD_URL", dead), &["list"]).expect(1);
    assert!(out.stderr.contains("(from ORPOD_URL)"), "{out:#?}");
    // ...and the flag over the environment.
    run_with(
        orpoctl(&home).env("ORPOD_URL", dead),
        &["--server", &s.d.url, "list"],
    )
    .expect(0);

    std::fs::write(home.join(".config/orpoctl/config.toml"), "sever = \"x\"\n").unwrap();
    let out = run_with(&mut orpoctl(&home), &["list"]).expect(2);
    assert!(out.stderr.contains("unknown field `sever`"), "{out:#?}");
    assert!(out.stderr.contains("config.toml"), "{out:#?}");

    // The token goes out as a bearer token: a one-shot listener records the request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        let mut requests = Vec::new();
        for _ in 0..2 {
            let (mut sock, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let n = sock.read(&mut buf).unwrap();
            requests.push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
            let body = r#"{"jobs":[],"next_cursor":null}"#;
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        requests
    });
    std::fs::write(
        home.join(".config/orpoctl/config.toml"),
        "token = \"from-file\"\n",
    )
    .unwrap();
    run_with(orpoctl(&home).env("ORPOD_URL", &url), &["list"]).expect(0);
    run_with(
        orpoctl(&home)
            .env("ORPOD_URL", &url)
            .env("ORPOD_TOKEN", "from-env"),
        &["--token", "from-flag", "list"],
    )
    .expect(0);
    let requests = seen.join().unwrap();
    assert!(
        requests[0].contains("authorization: bearer from-file"),
        "{requests:?}"
    );
    assert!(
        requests[1].contains("authorization: bearer from-flag"),
        "{requests:?}"
    );
}
