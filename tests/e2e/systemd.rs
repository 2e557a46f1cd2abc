//! The unit file cannot rot silently: its ExecStart names the real binary and flags that
//! `orpod serve` accepts, it keeps the settings the README promises, and `systemd-analyze verify`
//! accepts it. The daemon speaks systemd's notify protocol (`Type=notify`): `READY=1` once it
//! answers, `WATCHDOG=1` while its scheduler makes progress and not once it hangs, `STOPPING=1`
//! on SIGTERM; checked here against a socket the test binds, without systemd. Where a service
//! manager runs (not in a container), the daemon also runs as a transient service.

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{exe, root};

fn unit() -> String {
    std::fs::read_to_string(root().join("systemd/orpod.service")).unwrap()
}

#[test]
fn unit_file_starts_the_real_daemon() {
    let unit = unit();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert!(words.next().unwrap().ends_with("/orpod"));
    assert_eq!(words.next(), Some("serve"));
    let help = std::process::Command::new(exe())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in words.filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(flag),
            "ExecStart flag {flag} is not in `orpod serve --help`"
        );
    }
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=orpod",
        "KillMode=mixed",
        "User=orpod",
        "Group=orpod",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "ProtectSystem=strict",
        "ProtectHome=true",
        "DevicePolicy=closed",
        "DeviceAllow=char-nvidia-frontend rw",
        "DeviceAllow=char-nvidia-uvm rw",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let seconds = |key: &str| -> u64 {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} missing"))
            .parse()
            .unwrap()
    };
    let stop = seconds("TimeoutStopSec=");
    let grace = orpod::config::ServeConfig::default().shutdown_grace_s;
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} must exceed shutdown_grace_s={grace}"
    );
    // The daemon only stops pinging once a round outlasts WatchdogSec; it must leave the loop's
    // idle wait between rounds room.
    let watchdog = seconds("WatchdogSec=");
    assert!(
        Duration::from_secs(watchdog) > orpod::supervisor::ROUND_EVERY * 2,
        "WatchdogSec={watchdog} is too short for the scheduler's rounds"
    );
    let example = std::fs::read_to_string(root().join("systemd/orpod.toml")).unwrap();
    let cfg: orpod::config::ServeConfig = toml::from_str(&example).expect("example config parses");
    assert_eq!(cfg.listen, orpod::config::DEFAULT_LISTEN);
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart is this build's daemon (the
/// installed path does not exist here). The tool exits 0 even for unknown keys or values it
/// ignores, so any line it prints about the unit fails the test; a unit with a bad key shows
/// that such lines are caught.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let unit = unit().replace("/usr/local/bin/orpod", &exe().to_string_lossy());
    let verify = |name: &str, text: &str| -> (bool, Vec<String>, String) {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("orpod.service");
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let said = all
            .lines()
            .filter(|l| l.contains("orpod.service"))
            .map(str::to_string)
            .collect();
        (out.status.success(), said, all)
    };
    let (ok, said, all) = verify("real", &unit);
    if !ok && said.is_empty() {
        eprintln!("SKIPPED: systemd-analyze verify cannot run here: {all}");
        return;
    }
    assert!(ok && said.is_empty(), "systemd-analyze verify: {said:#?}");
    let broken = unit.replace("KillMode=mixed", "KillMode=mixed\nKillModes=mixed");
    let (_, said, _) = verify("broken", &broken);
    assert!(
        said.iter().any(|l| l.contains("KillModes")),
        "a bad key went unnoticed: {said:#?}"
    );
}

/// `dir/orpod.toml`: port 0 and the state in `dir/state`. Returns (state folder, config).
fn write_config(dir: &Path) -> (PathBuf, PathBuf) {
    let state = dir.join("state");
    let config = dir.join("orpod.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n",
            state.to_string_lossy()
        ),
    )
    .unwrap();
    (state, config)
}

/// A real `orpod serve` with `NOTIFY_SOCKET` pointing at a socket this test listens on.
struct Notified {
    child: Option<Child>,
    state: PathBuf,
    socket: UnixDatagram,
    tmp: tempfile::TempDir,
}

impl Notified {
    fn start(watchdog: Duration, env: &[(&str, &Path)]) -> Notified {
        let tmp = tempfile::tempdir().unwrap();
        let (state, config) = write_config(tmp.path());
        let socket_path = tmp.path().join("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        let log = std::fs::File::create(tmp.path().join("orpod.log")).unwrap();
        let mut cmd = Command::new(exe());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("starting orpod serve");
        Notified {
            child: Some(child),
            state,
            socket,
            tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("orpod.log")).unwrap_or_default()
    }

    /// The next notification within `timeout`, or `None`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }

    /// Waits for `READY=1` (the first notification) and returns the daemon's address, which
    /// must already answer.
    fn ready(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let first = loop {
            if let Some(m) = self.recv(Duration::from_millis(200)) {
                break m;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("orpod serve exited at start ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "no READY=1: {}", self.log());
        };
        assert!(
            first.lines().any(|l| l == "READY=1"),
            "the first notification is not READY=1: {first:?}"
        );
        let addr = std::fs::read_to_string(self.state.join("orpod.addr"))
            .expect("orpod.addr is written before READY=1");
        let (status, body) = get(&addr, "/healthz");
        assert_eq!(status, 200, "GET /healthz at READY=1: {body}");
        assert!(body.contains("\"ok\""), "{body}");
        addr
    }

    /// The `WATCHDOG=1` pings received within `window`; anything else fails.
    fn pings(&self, window: Duration) -> Vec<Instant> {
        let end = Instant::now() + window;
        let mut at = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv(left.max(Duration::from_millis(1))) {
                Some(m) if m == "WATCHDOG=1" => at.push(Instant::now()),
                Some(m) => panic!("unexpected notification {m:?}"),
                None => {}
            }
        }
        at
    }

    /// SIGTERM: `STOPPING=1` arrives (after any pings already sent) and the daemon exits 0.
    fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no STOPPING=1: {}", self.log());
            match self.recv(Duration::from_millis(200)) {
                Some(m) if m == "WATCHDOG=1" => continue,
                Some(m) => {
                    assert!(m.lines().any(|l| l == "STOPPING=1"), "{m:?}");
                    break;
                }
                None => {}
            }
        }
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "orpod serve exited with {status}: {}",
            self.log()
        );
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` over plain HTTP/1.1: the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// Readiness once the store is open and the port answers, watchdog pings at half
/// `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM.
#[test]
fn notify_ready_then_watchdog_then_stopping() {
    let mut d = Notified::start(Duration::from_secs(1), &[]);
    d.ready();
    let pings = d.pings(Duration::from_secs(3));
    // Every 0.5 s: about six; a loaded machine may delay some.
    assert!(
        pings.len() >= 3,
        "{} pings in 3 s: {}",
        pings.len(),
        d.log()
    );
    d.stop();
}

/// A scheduling round that never ends (the test hook) stops the pings: systemd would restart
/// the daemon. HTTP goes on answering, and SIGTERM still stops the daemon cleanly.
#[test]
fn watchdog_pings_stop_when_the_scheduler_hangs() {
    let tmp = tempfile::tempdir().unwrap();
    let hang = tmp.path().join("hang");
    let mut d = Notified::start(
        Duration::from_secs(1),
        &[(orpod::supervisor::HANG_HOOK_ENV, &hang)],
    );
    let addr = d.ready();
    let before = d.pings(Duration::from_secs(2));
    assert!(
        before.len() >= 2,
        "{} pings in 2 s: {}",
        before.len(),
        d.log()
    );
    std::fs::write(&hang, "").unwrap();
    let since = Instant::now();
    // The next round starts within 2 s (ROUND_EVERY) and hangs; pings stop once the last round
    // ended more than max(WatchdogSec, 3 s) ago. Wait for 4 s without one (systemd, at 1 s,
    // would have acted long before).
    let quiet = Duration::from_secs(4);
    let mut last = Instant::now();
    loop {
        let elapsed = since.elapsed();
        assert!(
            elapsed < Duration::from_secs(30),
            "the pings went on for {elapsed:?} with the scheduler hung: {}",
            d.log()
        );
        if last.elapsed() >= quiet {
            break;
        }
        if let Some(at) = d.pings(Duration::from_millis(500)).last() {
            last = *at;
        }
    }
    assert!(
        last.duration_since(since) < Duration::from_secs(8),
        "pings went on for {:?} after the hang",
        last.duration_since(since)
    );
    assert!(
        d.log().contains("no longer pinging systemd's watchdog"),
        "{}",
        d.log()
    );
    // `/healthz` calls the scheduler stuck only after a minute.
    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    d.stop();
}

/// `orpod serve` as a transient `Type=notify` service with a watchdog, where a service manager
/// runs (a container without systemd as PID 1 has none): active once ready, answers, and stops
/// cleanly.
#[test]
fn runs_as_a_transient_systemd_service() {
    if !Path::new("/run/systemd/system").exists() {
        eprintln!("SKIPPED: systemd is not the service manager here (no /run/systemd/system)");
        return;
    }
    // SAFETY: geteuid(2) has no preconditions.
    let scope: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &[]
    } else {
        &["--user"]
    };
    let systemctl = |args: &[&str]| -> (bool, String) {
        let out = Command::new("systemctl")
            .args(scope)
            .args(args)
            .output()
            .expect("systemctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let (_, manager) = systemctl(&["is-system-running"]);
    if !matches!(manager.as_str(), "running" | "degraded") {
        eprintln!("SKIPPED: the service manager is {manager:?}, not running");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (state, config) = write_config(tmp.path());
    let log = tmp.path().join("orpod.log");
    let name = format!("orpod-e2e-{}.service", std::process::id());
    struct Cleanup<'a>(&'a dyn Fn(&[&str]) -> (bool, String), &'a str);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            (self.0)(&["stop", self.1]);
            (self.0)(&["reset-failed", self.1]);
        }
    }
    let _cleanup = Cleanup(&systemctl, &name);
    // systemd-run returns once the start job is done: for Type=notify, at READY=1.
    let out = Command::new("systemd-run")
        .args(scope)
        .args(["--unit", &name, "--collect"])
        .args([
            "-p",
            "Type=notify",
            "-p",
            "WatchdogSec=4",
            "-p",
            "KillMode=mixed",
        ])
        .args(["-p", "TimeoutStopSec=30"])
        .arg("-p")
        .arg(format!("StandardError=file:{}", log.display()))
        .arg(exe())
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("systemd-run");
    assert!(
        out.status.success(),
        "systemd-run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let show = |prop: &str| systemctl(&["show", "--value", "-p", prop, &name]).1;
    assert_eq!(show("ActiveState"), "active");
    assert_eq!(show("SubState"), "running");
    let addr = std::fs::read_to_string(state.join("orpod.addr")).expect("orpod.addr");
    assert_eq!(get(&addr, "/healthz").0, 200);
    // Over two watchdog periods: still running, never restarted.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(show("ActiveState"), "active");
    assert_eq!(show("NRestarts"), "0");
    let (stopped, _) = systemctl(&["stop", &name]);
    assert!(stopped, "systemctl stop {name}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("stopped"), "{text}");
}
