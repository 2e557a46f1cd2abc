//! The unit file cannot rot silently: its ExecStart names the real binary and flags that
//! `orpod serve` accepts, and it keeps the settings the README promises.

use crate::{exe, root};

#[test]
fn unit_file_starts_the_real_daemon() {
    let unit = std::fs::read_to_string(root().join("systemd/orpod.service")).unwrap();
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
        "Restart=on-failure",
        "StateDirectory=orpod",
        "KillMode=mixed",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing");
    }
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .unwrap();
    let grace = orpod::config::ServeConfig::default().shutdown_grace_s;
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} must exceed shutdown_grace_s={grace}"
    );
    let example = std::fs::read_to_string(root().join("systemd/orpod.toml")).unwrap();
    let cfg: orpod::config::ServeConfig = toml::from_str(&example).expect("example config parses");
    assert_eq!(cfg.listen, orpod::config::DEFAULT_LISTEN);
}
