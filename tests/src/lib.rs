//! A network lab in namespaces: hosts on a bridge, processes tracked by PID, raw
//! captures, the `vip` agent started with a config, the frames the tests send
//! ([`frames`]), a recorder of who answers for the VIPs on the switch ([`wire`]) and
//! the chaos run built on it ([`chaos`]), a BGP router (FRR) and BGP speakers (BIRD)
//! for routed VIPs ([`Frr`], [`Bird`]). Every namespace, link and process is torn
//! down in `Drop`, also when a test fails.

pub mod anycast;
mod capture;
pub mod chaos;
mod flood;
pub mod frames;
pub mod http;
mod netns;
mod probe;
mod process;
pub mod routed;
mod router;
mod topology;
pub mod wire;

pub use capture::Capture;
pub use flood::PacketFlood;
pub use netns::{veth, Bpffs, Netns};
pub use probe::{outage, unanswered, Outage, Probe, Prober, Responder};
pub use process::{libfaketime, stop_together, vip_bin, Agent, Proc};
pub use router::{
    bird_node_config, next_hops, Bird, Frr, FrrOptions, Neighbor, VIP_PROTO, VIP_TABLE,
};
pub use topology::{Host, Lan};

/// The root assertion at the top of every privileged test (namespaces, XDP).
///
/// Every privileged test is marked `#[ignore = "privileged: ..."]` and calls this
/// first: a plain `cargo test` reports them as ignored, and `cargo xtask test` runs
/// them with `--include-ignored` unless `VIP_SKIP_PRIVILEGED=1`, so a skipped test is
/// shown as ignored, never as passed. Once a privileged test runs it must run for
/// real: without root this panics loudly. It never returns false; the `bool` only
/// keeps `if !privileged() { return; }` compiling, a form no test uses any more (it
/// reads as a silent pass).
#[track_caller]
pub fn privileged() -> bool {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this privileged test needs root (namespaces, XDP): run `cargo xtask test` as root, \
         or leave it out with VIP_SKIP_PRIVILEGED=1 (it is then reported as ignored)"
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

/// Sets a stop flag when dropped: a scope whose body panics (a failed assertion, a
/// tool that errs) still stops the threads that loop on the flag, so the test fails
/// with its message instead of hanging in `std::thread::scope`, which waits for every
/// thread it spawned before it lets the panic out.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
