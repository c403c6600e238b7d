//! A network lab in namespaces: hosts on a bridge, processes tracked by PID, raw
//! captures, and the `vip` agent started with a config. Every namespace, link and
//! process is torn down in `Drop`, also when a test fails.

mod capture;
mod netns;
mod probe;
mod process;
mod topology;

pub use capture::Capture;
pub use netns::{veth, Bpffs, Netns};
pub use probe::{outage, Outage, Probe, Prober, Responder};
pub use process::{vip_bin, Agent, Proc};
pub use topology::{Host, Lan};

/// Whether privileged tests should run. CI runs as root, so they run there and a
/// failed setup fails the test. Only an explicit `VIP_SKIP_PRIVILEGED=1` skips them,
/// and that is said on stderr.
pub fn privileged() -> bool {
    if std::env::var("VIP_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("NOT RUN: VIP_SKIP_PRIVILEGED=1 asked to leave out privileged tests");
        return false;
    }
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test needs root (namespaces, XDP); run it as root or set VIP_SKIP_PRIVILEGED=1 to leave it out"
    );
    true
}

/// Polls `f` every 10 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
