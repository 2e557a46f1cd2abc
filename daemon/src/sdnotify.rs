//! systemd's notify protocol (`sd_notify(3)`) without libsystemd: one datagram of `KEY=value`
//! lines to `$NOTIFY_SOCKET`, a path or `@name` for an abstract socket. `orpod serve` sends
//! `READY=1` once the store is open and the port is bound, `WATCHDOG=1` while the scheduler loop
//! ends its rounds, and `STOPPING=1` when it starts to shut down. Without `$NOTIFY_SOCKET` (not
//! under systemd, or not `Type=notify`) nothing is sent.
//!
//! Workers never talk to systemd: `supervisor::spawn` removes these variables from their
//! environment (and systemd only listens to the main process, `NotifyAccess=main`).

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The variables systemd hands a `Type=notify` service; children must not inherit them.
pub const ENV_VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Where notifications go; `None` sends nothing.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<SocketAddr>,
}

impl Notifier {
    /// `$NOTIFY_SOCKET`, read once. A value that is not a path or `@name` (systemd's `vsock:`
    /// form, say) is logged and ignored.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Notifier::none();
        };
        match socket_addr(&value) {
            Ok(addr) => Notifier { target: Some(addr) },
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={value:?}: {e}; not notifying systemd");
                Notifier::none()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn none() -> Notifier {
        Notifier { target: None }
    }

    /// A notifier that sends to `addr` (tests).
    pub fn to(addr: SocketAddr) -> Notifier {
        Notifier { target: Some(addr) }
    }

    /// Sends `state`, newline-separated `KEY=value` lines. `Ok(false)` when there is nowhere
    /// to send it.
    pub fn notify(&self, state: &str) -> io::Result<bool> {
        let Some(addr) = &self.target else {
            return Ok(false);
        };
        let socket = UnixDatagram::unbound()?;
        let sent = socket.send_to_addr(state.as_bytes(), addr)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was cut short",
            ));
        }
        Ok(true)
    }

    /// [`Notifier::notify`], logging a failure instead of returning it.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!("telling systemd {state:?}: {e}");
        }
    }
}

/// `$NOTIFY_SOCKET`'s value as an address: `/path` or `@abstract-name`.
fn socket_addr(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value),
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(&bytes[1..])
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a socket path or @abstract name",
        )),
    }
}

/// systemd's watchdog timeout (`WatchdogSec=`, passed as `$WATCHDOG_USEC`) when it expects
/// pings from this process: `$WATCHDOG_PID`, when set, must be our pid.
pub fn watchdog_timeout() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    parse_watchdog(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings systemd's watchdog every half `timeout` while `alive()` holds. When it stops holding
/// the pings stop too, and systemd restarts the service `timeout` after the last one
/// (`WatchdogSec=`). Runs until dropped.
pub async fn watchdog(notifier: Notifier, timeout: Duration, alive: impl Fn() -> bool) {
    let mut tick = tokio::time::interval(timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pinging = true;
    loop {
        tick.tick().await;
        let ok = alive();
        if ok != pinging {
            if ok {
                tracing::info!(
                    "the scheduler is making progress again; pinging systemd's watchdog"
                );
            } else {
                tracing::error!(
                    "the scheduler has not finished a round lately; no longer pinging systemd's \
                     watchdog, which restarts the daemon if this lasts"
                );
            }
            pinging = ok;
        }
        if ok {
            if let Err(e) = notifier.notify("WATCHDOG=1") {
                tracing::debug!("pinging systemd's watchdog: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn recv(socket: &UnixDatagram) -> Option<String> {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let addr = socket_addr(path.as_os_str()).unwrap();
        assert!(Notifier::to(addr).notify("READY=1\nSTATUS=up").unwrap());
        assert_eq!(recv(&listener).as_deref(), Some("READY=1\nSTATUS=up"));

        let name = format!("orpod-test-{}", std::process::id());
        let abstract_addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&abstract_addr).unwrap();
        let addr = socket_addr(OsStr::new(&format!("@{name}"))).unwrap();
        assert!(Notifier::to(addr).notify("STOPPING=1").unwrap());
        assert_eq!(recv(&listener).as_deref(), Some("STOPPING=1"));

        assert!(!Notifier::none().notify("READY=1").unwrap());
        assert!(socket_addr(OsStr::new("vsock:2:1234")).is_err());
        assert!(socket_addr(OsStr::new("relative.sock")).is_err());
    }

    #[test]
    fn watchdog_timeout_is_for_this_process_only() {
        let me = 4242;
        assert_eq!(
            parse_watchdog(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("1"), me), None);
        assert_eq!(parse_watchdog(Some("0"), None, me), None);
        assert_eq!(parse_watchdog(Some("soon"), None, me), None);
        assert_eq!(parse_watchdog(None, None, me), None);
    }

    /// Pings while `alive` holds, none while it does not, and again once it holds again.
    #[tokio::test]
    async fn watchdog_pings_only_while_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let task = tokio::spawn(watchdog(
            Notifier::to(socket_addr(path.as_os_str()).unwrap()),
            Duration::from_millis(100),
            move || flag.load(Ordering::SeqCst),
        ));
        let drain = |l: &UnixDatagram| std::iter::from_fn(|| recv(l)).collect::<Vec<_>>();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pings = drain(&listener);
        assert!(pings.len() >= 3, "{pings:?}");
        assert!(pings.iter().all(|p| p == "WATCHDOG=1"), "{pings:?}");
        alive.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        drain(&listener);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(drain(&listener), Vec::<String>::new());
        alive.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!drain(&listener).is_empty());
        task.abort();
    }
}
