//! Which XDP mode the data plane runs in: `node.xdp_mode = "auto"` (the default)
//! decides at start, from what the kernel reports about the interfaces.
//!
//! # The rule
//!
//! Native (driver) mode is chosen only where the frames the program *transmits*
//! (ARP/NS answers and forwarded frames with XDP_TX, redirected ones with
//! XDP_REDIRECT) are really delivered; everywhere else generic (skb) mode, which
//! delivers them on any interface:
//!
//! * a physical NIC (no link kind): native. If its driver turns native XDP down when
//!   the program is attached, auto falls back to generic (see
//!   [`crate::dataplane::Dataplane::attach_chosen`]);
//! * a veth whose peer has a **native** XDP program (which gives the peer NAPI, e.g.
//!   the lab's `vip xdp-pass` helper): native. Without it the kernel drops XDP_TX
//!   and XDP_REDIRECT frames into the veth silently (a generic program on the peer
//!   does not help), so a veth whose peer has none, or whose peer we cannot inspect,
//!   gets generic;
//! * any other virtual device (bridge, VLAN, macvlan, bond, ...): generic. They have
//!   no native XDP, or none that transmits;
//! * the same test applies to every interface the program transmits into: redirect
//!   targets (`redirect_to`) and a gateway's elastic-IP interfaces. One of them that
//!   would drop native frames makes the whole data plane generic (one program, one
//!   mode).
//!
//! The veth peer is read with RTM_GETLINK of its ifindex (IFLA_LINK) in its own
//! namespace (IFLA_TARGET_NETNSID = the veth's IFLA_LINK_NETNSID); its IFLA_XDP says
//! whether a native program is attached. In a container the peer is in the host's
//! namespace, which the container usually may not query (EPERM): generic then, since
//! a peer we cannot see is almost always one without XDP.
//!
//! # Checksums
//!
//! A veth hands its peer partial checksums (TX checksum offload, on by default), and a
//! frame that native XDP forwards loses the "checksum still to be done" state: it
//! arrives with a wrong checksum. Generic mode keeps the skb's state, so this is one
//! more reason for generic on veths. Auto does *not* look at checksum offload to pick
//! native on a veth: the frames at risk are the ones some *other* host on the same
//! machine sent with offload on, which this node cannot see. A peer with a native XDP
//! program is a deliberate setup (a benchmark, the test lab), and such a setup must
//! give the hosts full checksums, as the lab does (`ethtool -K eth0 tx off` on every
//! host, like a real wire). A physical NIC always receives full checksums.
//!
//! The mode is decided once, at start; a reload that changes `node.xdp_mode` needs a
//! restart, as before.

use crate::{
    config::{Config, XdpMode},
    netlink::Netlink,
};

/// What decides the mode about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// No link kind: a NIC driver.
    Physical,
    /// A veth, and what we know of its peer's XDP program.
    Veth(PeerXdp),
    /// Another virtual device, by kind ("bridge", "vlan", ...).
    Virtual(String),
    /// The interface could not be read (the error).
    Unreadable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerXdp {
    /// The peer has a native (driver) XDP program: it has NAPI.
    Native,
    /// The peer has no native XDP program.
    None,
    /// The peer could not be inspected (why).
    Unknown(String),
}

/// The mode the data plane runs in and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// What the configuration asked for (auto, native or skb).
    pub requested: XdpMode,
    /// Native or skb: what the program is attached in.
    pub mode: XdpMode,
    /// One sentence for `vip status` and the log.
    pub reason: String,
    /// For an explicit mode that will lose frames.
    pub warning: Option<String>,
    /// The interface is a veth.
    pub veth: bool,
}

impl Choice {
    /// The mode and its reason, for the start-up log.
    pub fn describe(&self) -> String {
        format!("{} mode: {}", self.mode.as_str(), self.reason)
    }

    /// Whether the kernel has classified a frame's skb before the program runs (a
    /// veth in native mode hands XDP the skb its peer sent): a frame whose destination
    /// the program rewrote to our MAC is then still another host's to the IP stack
    /// (see `Dataplane::readdress_by_cpu`). Generic mode and a NIC's driver classify
    /// after the program.
    pub fn classifies_before_xdp(&self) -> bool {
        self.veth && self.mode == XdpMode::Native
    }
}

/// Whether native frames transmitted into this interface are delivered; if not, why.
fn native_blocker(name: &str, link: &Link) -> Option<String> {
    match link {
        Link::Physical | Link::Veth(PeerXdp::Native) => None,
        Link::Veth(PeerXdp::None) => Some(format!(
            "{name} is a veth whose peer has no XDP program: native XDP_TX/XDP_REDIRECT \
             frames would be dropped silently"
        )),
        Link::Veth(PeerXdp::Unknown(why)) => Some(format!(
            "{name} is a veth whose peer cannot be inspected ({why}): assuming the peer has \
             no XDP program, native XDP_TX/XDP_REDIRECT frames would be dropped silently"
        )),
        Link::Virtual(kind) => Some(format!(
            "{name} is a {kind} device: it has no native XDP that transmits"
        )),
        Link::Unreadable(why) => Some(format!("{name} could not be inspected ({why})")),
    }
}

/// The decision: `requested` mode, the interface the program runs on, and the other
/// interfaces it transmits into (redirect targets, elastic-IP interfaces).
pub fn decide(requested: XdpMode, iface: (&str, &Link), targets: &[(String, Link)]) -> Choice {
    let (name, link) = iface;
    let veth = matches!(link, Link::Veth(_));
    match requested {
        XdpMode::Skb => Choice {
            requested,
            mode: XdpMode::Skb,
            reason: "configured (node.xdp_mode or --xdp-mode)".into(),
            warning: None,
            veth,
        },
        XdpMode::Native => Choice {
            requested,
            mode: XdpMode::Native,
            reason: "configured (node.xdp_mode or --xdp-mode)".into(),
            warning: match link {
                Link::Veth(PeerXdp::Native) => None,
                Link::Veth(_) => Some(format!(
                    "{name} is a veth: ARP/NS answers and forwarded frames (XDP_TX) reach its \
                     peer only if the peer has NAPI, i.e. an XDP program on it (`vip xdp-pass \
                     PEER`); otherwise the kernel drops them silently. Leave node.xdp_mode \
                     unset (auto) to run in skb mode here"
                )),
                _ => None,
            },
            veth,
        },
        XdpMode::Auto => {
            let blocker = native_blocker(name, link).or_else(|| {
                targets
                    .iter()
                    .filter(|(t, _)| t != name)
                    .find_map(|(t, l)| native_blocker(t, l))
            });
            let (mode, reason) = match blocker {
                Some(why) => (XdpMode::Skb, format!("auto: {why}")),
                None => (
                    XdpMode::Native,
                    match link {
                        Link::Veth(_) => format!(
                            "auto: {name} is a veth whose peer has a native XDP program, so \
                             frames sent with XDP_TX reach it"
                        ),
                        _ => format!("auto: {name} is a NIC with a driver (native XDP)"),
                    },
                ),
            };
            Choice {
                requested,
                mode,
                reason,
                warning: None,
                veth,
            }
        }
    }
}

/// Reads what [`decide`] needs about the interface `ifindex`.
pub fn probe(nl: &Netlink, ifindex: u32) -> Link {
    let link = match nl.link(ifindex, None) {
        Ok(l) => l,
        Err(e) => return Link::Unreadable(e.to_string()),
    };
    match link.kind.as_deref() {
        None => Link::Physical,
        Some("veth") => Link::Veth(match link.link {
            None => PeerXdp::Unknown("the kernel names no peer".into()),
            Some(peer) => match nl.link(peer, link.link_netnsid) {
                Ok(p) if p.xdp_native => PeerXdp::Native,
                Ok(_) => PeerXdp::None,
                Err(e) => PeerXdp::Unknown(format!(
                    "peer ifindex {peer}{}: {e}",
                    link.link_netnsid
                        .map(|n| format!(" in netns id {n}"))
                        .unwrap_or_default()
                )),
            },
        }),
        Some(k) => Link::Virtual(k.to_string()),
    }
}

/// The mode for this configuration on `iface` (`ifindex`), from the kernel's facts.
pub fn choose(cfg: &Config, iface: &str, ifindex: u32) -> Choice {
    let mode = cfg.node.xdp_mode;
    let nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            let link = Link::Unreadable(format!("netlink: {e}"));
            return decide(mode, (iface, &link), &[]);
        }
    };
    let link = probe(&nl, ifindex);
    let mut names: Vec<&str> = cfg
        .groups
        .iter()
        .filter_map(|g| g.redirect.as_ref().map(|r| r.interface.as_str()))
        .chain(
            cfg.eips
                .iter()
                .flat_map(|e| [e.external_interface.as_str(), e.internal_interface.as_str()]),
        )
        .chain(
            cfg.routes6
                .iter()
                .flat_map(|r| [r.external_interface.as_str(), r.internal_interface.as_str()]),
        )
        .filter(|n| *n != iface)
        .collect();
    names.sort_unstable();
    names.dedup();
    let targets: Vec<(String, Link)> = if mode == XdpMode::Auto {
        names
            .into_iter()
            .map(|n| {
                let l = match nix::net::if_::if_nametoindex(n) {
                    Ok(i) => probe(&nl, i),
                    Err(e) => Link::Unreadable(e.to_string()),
                };
                (n.to_string(), l)
            })
            .collect()
    } else {
        Vec::new()
    };
    decide(mode, (iface, &link), &targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(link: Link) -> Choice {
        decide(XdpMode::Auto, ("eth0", &link), &[])
    }

    #[test]
    fn auto_is_native_only_where_native_frames_are_delivered() {
        let c = auto(Link::Physical);
        assert_eq!(c.mode, XdpMode::Native);
        assert!(c.reason.contains("NIC"), "{}", c.reason);

        let c = auto(Link::Veth(PeerXdp::Native));
        assert_eq!(c.mode, XdpMode::Native);
        assert!(c.reason.contains("peer has a native XDP"), "{}", c.reason);

        let c = auto(Link::Veth(PeerXdp::None));
        assert_eq!(c.mode, XdpMode::Skb);
        assert!(
            c.reason.contains("veth whose peer has no XDP program"),
            "{}",
            c.reason
        );
        assert_eq!(c.warning, None);

        let c = auto(Link::Veth(PeerXdp::Unknown("EPERM".into())));
        assert_eq!(c.mode, XdpMode::Skb);
        assert!(
            c.reason
                .contains("veth whose peer cannot be inspected (EPERM)"),
            "{}",
            c.reason
        );

        for kind in ["bridge", "vlan", "macvlan", "bond"] {
            let c = auto(Link::Virtual(kind.into()));
            assert_eq!(c.mode, XdpMode::Skb, "{kind}");
            assert!(c.reason.contains(kind), "{}", c.reason);
        }
        assert_eq!(auto(Link::Unreadable("x".into())).mode, XdpMode::Skb);
        assert_eq!(auto(Link::Physical).requested, XdpMode::Auto);
    }

    /// Only a veth in native mode hands XDP an skb it has already classified (a
    /// virtual MAC's frames are then readdressed through the cpumap).
    #[test]
    fn only_a_native_veth_classifies_before_xdp() {
        assert!(auto(Link::Veth(PeerXdp::Native)).classifies_before_xdp());
        assert!(!auto(Link::Veth(PeerXdp::None)).classifies_before_xdp());
        assert!(!auto(Link::Physical).classifies_before_xdp());
        let veth = Link::Veth(PeerXdp::None);
        assert!(decide(XdpMode::Native, ("eth0", &veth), &[]).classifies_before_xdp());
        assert!(!decide(XdpMode::Skb, ("eth0", &veth), &[]).classifies_before_xdp());
    }

    #[test]
    fn a_target_that_would_drop_makes_auto_generic() {
        let svc = ("svc".to_string(), Link::Veth(PeerXdp::None));
        let c = decide(XdpMode::Auto, ("eth0", &Link::Physical), &[svc]);
        assert_eq!(c.mode, XdpMode::Skb);
        assert!(c.reason.contains("svc is a veth"), "{}", c.reason);

        let ok = ("svc".to_string(), Link::Veth(PeerXdp::Native));
        let nic = ("eth1".to_string(), Link::Physical);
        let c = decide(XdpMode::Auto, ("eth0", &Link::Physical), &[ok, nic]);
        assert_eq!(c.mode, XdpMode::Native);
    }

    #[test]
    fn explicit_modes_are_kept_and_native_on_a_bare_veth_warns() {
        for link in [
            Link::Physical,
            Link::Veth(PeerXdp::None),
            Link::Virtual("bridge".into()),
        ] {
            let c = decide(XdpMode::Skb, ("eth0", &link), &[]);
            assert_eq!((c.mode, c.warning.is_none()), (XdpMode::Skb, true));
            assert!(c.reason.contains("configured"));
            let c = decide(XdpMode::Native, ("eth0", &link), &[]);
            assert_eq!(c.mode, XdpMode::Native);
            assert!(c.reason.contains("configured"));
            assert_eq!(
                c.warning.is_some(),
                matches!(link, Link::Veth(_)),
                "{link:?}"
            );
        }
        let c = decide(XdpMode::Native, ("eth0", &Link::Veth(PeerXdp::Native)), &[]);
        assert_eq!(c.warning, None);
        let c = decide(
            XdpMode::Native,
            ("eth0", &Link::Veth(PeerXdp::Unknown("EPERM".into()))),
            &[],
        );
        assert!(c.warning.unwrap().contains("is a veth"));
    }
}
