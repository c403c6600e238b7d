//! The control socket: one JSON request per connection, one JSON response.
//!
//! `{"command":"status"}`, `{"command":"promote","group":"web"}`,
//! `{"command":"demote","group":"web","forward_to":"02:..."}`. A malformed request gets
//! an error response and changes nothing. Only root or the agent's own user may change
//! state; anyone who can open the socket (0600 by default) may read status.
//!
//! Whoever may connect (root, the agent's user, `node.control_group`) must still not be
//! able to hold on to the agent (see `exhaustion`): at most [`Limits::max_connections`]
//! at a time (more wait in the backlog), none on a descriptor in the top sixteenth of
//! the limit (the metrics endpoint keeps off a quarter, so the socket an operator
//! diagnoses with is the last server to run short), a spare descriptor for one
//! connection when the table is full anyway (`vip status` still answers), a pause
//! after accept errors, a request that must arrive within [`Limits::request_timeout`]
//! and a connection that ends after [`Limits::lifetime`] whatever it does.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::{exhaustion::Gate, mac::Mac, status::Status};

/// A request larger than this is refused without being parsed.
pub const MAX_REQUEST: usize = 64 * 1024;

/// How much of the agent one client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections handled at once (each is one request; the CLI opens one at a time).
    pub max_connections: usize,
    /// From the connection's start until its request line is complete: the CLI sends
    /// it at once, so a client that sends nothing gives its slot back this soon.
    pub request_timeout: Duration,
    /// The longest a connection lasts, the agent's answer included.
    pub lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            request_timeout: Duration::from_secs(2),
            lifetime: Duration::from_secs(5),
        }
    }
}

/// The control socket keeps off the top sixteenth of the descriptor limit.
const RESERVE_SHARE: u64 = 16;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Promote {
        group: String,
    },
    Demote {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forward_to: Option<Mac>,
    },
    /// Undo promote/demote pins: back to the election.
    Resume {
        group: String,
    },
    /// Re-read the config file and apply the difference (all-or-nothing validation).
    Reload,
    /// Exit leaving the pinned data plane serving; peers hold for `hold_ms`.
    Restart {
        #[serde(default = "default_hold_ms")]
        hold_ms: u32,
    },
    /// keepalived's notify arguments: TYPE NAME STATE [PRIORITY].
    Notify {
        kind: String,
        name: String,
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        priority: Option<u8>,
    },
}

fn default_hold_ms() -> u32 {
    5000
}

impl Request {
    /// Whether the request changes state (and so needs a permitted peer).
    pub fn mutates(&self) -> bool {
        !matches!(self, Request::Status)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Self {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
    pub fn error(e: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

/// A request on its way to the agent, with the slot for its answer.
pub type Envelope = (Request, oneshot::Sender<Response>);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another agent is already listening there")]
    InUse { path: String },
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path}: {source} (is `vip agent` running? use --socket to name another socket)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("permission denied opening the control socket {path}: it is for root, the agent's user and members of node.control_group")]
    Denied { path: String },
    #[error("the agent sent an unreadable answer: {0}")]
    BadResponse(String),
}

/// The control socket and the group (besides root and the agent's user) allowed on it.
pub struct Listener {
    inner: UnixListener,
    group: Option<u32>,
}

/// Creates the listening socket (mode 0600, or 0660 owned by `group`), replacing a
/// stale file but never a live agent's.
pub fn bind(path: &Path, group: Option<&str>) -> Result<Listener, ControlError> {
    let p = path.display().to_string();
    let gid = match group {
        None => None,
        Some(name) => match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Some(g.gid),
            _ => {
                return Err(ControlError::Io {
                    path: p,
                    source: std::io::Error::other(format!(
                        "node.control_group: no group named `{name}` on this host"
                    )),
                })
            }
        },
    };
    let io = |source| ControlError::Io {
        path: p.clone(),
        source,
    };
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse { path: p });
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Bind under a restrictive umask so the socket is never briefly world-accessible.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener.map_err(io)?;
    let mode = match gid {
        Some(g) => {
            nix::unistd::chown(path, None, Some(g)).map_err(|e| io(e.into()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    Ok(Listener {
        inner: listener,
        group: gid.map(|g| g.as_raw()),
    })
}

/// Accepts connections until aborted.
pub async fn serve(listener: Listener, agent: mpsc::Sender<Envelope>) {
    serve_with(listener, agent, Limits::default()).await
}

/// Accepts connections under `limits` until aborted.
pub async fn serve_with(listener: Listener, agent: mpsc::Sender<Envelope>, limits: Limits) {
    let own_uid = nix::unistd::geteuid().as_raw();
    let group = listener.group;
    let mut gate = Gate::new("control socket", limits.max_connections, RESERVE_SHARE).with_spare();
    loop {
        let (stream, slot) = gate.accept(|| listener.inner.accept()).await;
        let agent = agent.clone();
        tokio::spawn(async move {
            let handled = handle(stream, agent, own_uid, group, limits.request_timeout);
            if let Err(e) = tokio::time::timeout(limits.lifetime, handled).await {
                log::debug!("control connection: {e}");
            }
            drop(slot);
        });
    }
}

/// What came in on a connection.
enum Incoming {
    /// Up to the first newline, or everything until the client shut its side.
    Request(Vec<u8>),
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLarge,
    /// Nothing complete within the request timeout.
    TimedOut,
    /// A read failed.
    Failed,
}

async fn read_request(stream: &mut UnixStream, timeout: Duration) -> Incoming {
    let read = async {
        let mut buf = Vec::new();
        let mut limited = stream.take(MAX_REQUEST as u64 + 1);
        let mut chunk = [0u8; 4096];
        loop {
            match limited.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') {
                        break;
                    }
                }
                Err(_) => return Incoming::Failed,
            }
        }
        if buf.len() > MAX_REQUEST {
            Incoming::TooLarge
        } else {
            Incoming::Request(buf)
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Incoming::TimedOut)
}

async fn handle(
    mut stream: UnixStream,
    agent: mpsc::Sender<Envelope>,
    own_uid: u32,
    group: Option<u32>,
    request_timeout: Duration,
) {
    let cred = stream.peer_cred().ok();
    let peer_uid = cred.map(|c| c.uid());
    let in_group = match (group, cred) {
        (Some(g), Some(c)) => {
            c.gid() == g
                || c.pid()
                    .is_some_and(|pid| supplementary_groups(pid).contains(&g))
        }
        _ => false,
    };
    let incoming = read_request(&mut stream, request_timeout).await;
    let silent = matches!(incoming, Incoming::TimedOut);
    let response = match incoming {
        Incoming::Failed => return,
        Incoming::TimedOut => Response::error(format!(
            "no complete request within {} ms",
            request_timeout.as_millis()
        )),
        Incoming::TooLarge => Response::error(format!("request larger than {MAX_REQUEST} bytes")),
        Incoming::Request(buf) => {
            let line = buf.split(|b| *b == b'\n').next().unwrap_or(&[]);
            match serde_json::from_slice::<Request>(line) {
                Err(e) => Response::error(format!("malformed request: {e}")),
                Ok(req) if req.mutates() && !(permitted(peer_uid, own_uid) || in_group) => {
                    Response::error(format!(
                "permission denied: uid {} may not change state (only root, uid {own_uid}{})",
                peer_uid.map(|u| u.to_string()).unwrap_or_else(|| "unknown".into()),
                group.map(|g| format!(" or members of gid {g}")).unwrap_or_default()
            ))
                }
                Ok(req) => {
                    let (tx, rx) = oneshot::channel();
                    if agent.send((req, tx)).await.is_err() {
                        Response::error("the agent is shutting down")
                    } else {
                        rx.await
                            .unwrap_or_else(|_| Response::error("the agent dropped the request"))
                    }
                }
            }
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
    if silent {
        // It sent nothing in time: its slot is given back now, not at the lifetime.
        return;
    }
    // Read what the client still has in flight (an oversized request's rest), so
    // closing does not reset the connection before the client has read our answer
    // (bounded: 1 MiB, and the connection's lifetime).
    let mut sink = (&mut stream).take(1 << 20);
    let _ = tokio::io::copy(&mut sink, &mut tokio::io::sink()).await;
}

/// The supplementary groups of a process, from /proc.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn permitted(peer: Option<u32>, own: u32) -> bool {
    matches!(peer, Some(0)) || peer == Some(own)
}

/// Sends one request and waits for the answer (the CLI's side).
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let p = path.display().to_string();
    let mut stream = StdUnixStream::connect(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ControlError::Denied { path: p.clone() }
        } else {
            ControlError::Connect {
                path: p.clone(),
                source,
            }
        }
    })?;
    let io = |source| ControlError::Io {
        path: p.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::BadResponse(format!("{e}: {answer:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(
            r#"{"command":"demote","group":"web","forward_to":"02:00:00:00:00:0b"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Demote {
                group: "web".into(),
                forward_to: Some("02:00:00:00:00:0b".parse().unwrap())
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"promote"}"#).is_err());
        assert!(
            serde_json::from_str::<Request>(r#"{"command":"promote","group":"a","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(
            r#"{"command":"demote","group":"a","forward_to":"zz"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>("\u{0}\u{1}").is_err());
    }

    #[test]
    fn only_root_or_owner_mutate() {
        assert!(permitted(Some(0), 1000));
        assert!(permitted(Some(1000), 1000));
        assert!(!permitted(Some(1001), 1000));
        assert!(!permitted(None, 0));
    }

    /// A control server in a fresh directory under `limits`, whose agent answers
    /// every request with "ok".
    async fn server(limits: Limits) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!(
            "vip-control-test-{}-{}",
            std::process::id(),
            limits.max_connections
        ));
        let path = dir.join("vip.sock");
        let listener = bind(&path, None).unwrap();
        let (tx, mut rx) = mpsc::channel::<Envelope>(8);
        let task = tokio::spawn(async move {
            let agent = tokio::spawn(async move {
                while let Some((_, reply)) = rx.recv().await {
                    let _ = reply.send(Response::ok("ok"));
                }
            });
            serve_with(listener, tx, limits).await;
            agent.abort();
        });
        (path, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_client_gives_its_slot_back() {
        let limits = Limits {
            max_connections: 1,
            request_timeout: Duration::from_millis(200),
            lifetime: Duration::from_secs(30),
        };
        let (path, task) = server(limits).await;
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let silent = StdUnixStream::connect(&p).unwrap();
            // The only slot is taken: this request waits for it.
            let r = request(&p, &Request::Status).unwrap();
            assert!(r.ok, "{r:?}");
            let took = t0.elapsed();
            assert!(
                took >= Duration::from_millis(150) && took < Duration::from_secs(3),
                "{took:?}"
            );
            let mut answer = String::new();
            BufReader::new(silent).read_line(&mut answer).unwrap();
            assert!(
                answer.contains("no complete request within 200 ms"),
                "{answer}"
            );
        })
        .await
        .unwrap();
        task.abort();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Mutated requests (bytes overwritten, half of them truncated): each is either
    /// refused with a message the client can read (the agent answers "malformed
    /// request: ..."), or a well-formed request that reads back as itself; the
    /// requests they came from parse to what they say; both outcomes occur (in this
    /// seed's 50,000: 412 parse).
    #[test]
    fn request_parser_survives_mutations() {
        let valid = [
            (r#"{"command":"status"}"#, Request::Status),
            (
                r#"{"command":"demote","group":"web","forward_to":"02:00:00:00:00:0b"}"#,
                Request::Demote {
                    group: "web".into(),
                    forward_to: Some(Mac([2, 0, 0, 0, 0, 0x0b])),
                },
            ),
            (
                r#"{"command":"notify","kind":"INSTANCE","name":"VI_1","state":"MASTER","priority":150}"#,
                Request::Notify {
                    kind: "INSTANCE".into(),
                    name: "VI_1".into(),
                    state: "MASTER".into(),
                    priority: Some(150),
                },
            ),
            (
                r#"{"command":"restart","hold_ms":3000}"#,
                Request::Restart { hold_ms: 3000 },
            ),
        ];
        for (line, want) in &valid {
            assert_eq!(&serde_json::from_str::<Request>(line).unwrap(), want);
        }
        let mut rng = vip_common::rng::XorShift64::new(0xdead_beef_cafe);
        let mut rnd = || rng.next_u64() as usize;
        let (mut refused, mut parsed) = (0, 0);
        for i in 0..50_000 {
            let mut b = valid[i % valid.len()].0.as_bytes().to_vec();
            for _ in 0..1 + rnd() % 3 {
                let k = rnd() % b.len();
                b[k] = rnd() as u8;
            }
            // Half of them cut short too (a truncated request is the common case).
            if i % 2 == 1 {
                b.truncate(rnd() % (b.len() + 1));
            }
            match serde_json::from_slice::<Request>(&b) {
                Err(e) => {
                    refused += 1;
                    assert!(
                        !e.to_string().is_empty(),
                        "{:?}",
                        String::from_utf8_lossy(&b)
                    );
                }
                Ok(r) => {
                    parsed += 1;
                    let again = serde_json::to_vec(&r).unwrap();
                    assert_eq!(
                        serde_json::from_slice::<Request>(&again).unwrap(),
                        r,
                        "{:?} parsed to {r:?}, which does not read back",
                        String::from_utf8_lossy(&b)
                    );
                }
            }
        }
        assert!(
            refused > 0 && parsed > 0,
            "refused {refused}, parsed {parsed}"
        );
    }
}
