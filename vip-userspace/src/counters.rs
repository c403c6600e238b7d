//! Every counter vip reports, declared once: one table per stats record (a VIP's, an
//! elastic IP's, a routed IPv6 VIP's, a balanced group's member's, the election's, the advertisements'
//! rejections, the echo's), each entry saying the counter's status key, its
//! Prometheus family, its help text, its kind and where it is in the record.
//!
//! The snapshot copies each record whole into the status, and everything that shows
//! counters walks these tables: the status JSON (a record's counters are serialized
//! as [`Counts`], in table order), `vip status`'s VIP columns, the metrics renderer
//! (one family per entry, in table order) and the dashboard test. So a new counter of
//! one of these records is one line here, besides the code that counts it (and, for
//! the data plane's, its field in `vip-common`).
//!
//! The program-wide counters (`Status::global`) are not records of a fixed shape:
//! their names are declared where they are counted (`vip_common::global::NAMES` for
//! the data plane's, `exhaustion::counters` for the agent's resources, the snapshot
//! for the agent's advertisement, address and announcement counters), and every
//! view iterates the map they are collected in.

use std::{fmt, marker::PhantomData, ops::Deref};

use serde::{
    de::{IgnoredAny, MapAccess, Visitor},
    ser::SerializeMap,
    Deserialize, Deserializer, Serialize, Serializer,
};
use vip_common::{BalanceStats, EipStats, Route6Stats, VipStats};

/// How Prometheus is told to read a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (while the agent and the data plane live); samples end in `_total`.
    Counter,
    /// Any value: a high-water mark, for example.
    Gauge,
}

/// A column of `vip status`'s table: its header and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub header: &'static str,
    pub width: usize,
}

/// One counter of a record `T`.
pub struct Counter<T> {
    /// Its key in the status JSON: the record's field.
    pub key: &'static str,
    /// Its Prometheus family, after the `vip_` prefix.
    pub metric: &'static str,
    /// The family's help text.
    pub help: &'static str,
    pub kind: Kind,
    /// Its column in `vip status`'s table, if the table shows it.
    pub column: Option<Column>,
    pub get: fn(&T) -> u64,
    /// Sets it (reading a status back from JSON).
    pub set: fn(&mut T, u64),
}

/// A record with a table of counters.
pub trait Counted: Default + 'static {
    /// Its counters, in the order every view shows them.
    const COUNTERS: &'static [Counter<Self>];
}

/// A record's counters as they appear in a status: serialized as one JSON key per
/// entry of its table, in table order, and read back by key (a key the table does
/// not know is skipped, one it lacks stays 0, so statuses of older and newer agents
/// read). Status records flatten it (`#[serde(flatten)]`) among their other fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts<T>(pub T);

impl<T> Deref for Counts<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Counted> Serialize for Counts<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(T::COUNTERS.len()))?;
        for c in T::COUNTERS {
            m.serialize_entry(c.key, &(c.get)(&self.0))?;
        }
        m.end()
    }
}

impl<'de, T: Counted> Deserialize<'de> for Counts<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ByKey<T>(PhantomData<T>);
        impl<'de, T: Counted> Visitor<'de> for ByKey<T> {
            type Value = Counts<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut t = T::default();
                while let Some(key) = map.next_key::<String>()? {
                    match T::COUNTERS.iter().find(|c| c.key == key) {
                        Some(c) => (c.set)(&mut t, map.next_value()?),
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Counts(t))
            }
        }
        d.deserialize_map(ByKey(PhantomData))
    }
}

/// `table!` entries: `field: Kind "metric" [column("HEADER", width)] "help";`.
macro_rules! table {
    (@column) => { None };
    (@column $header:literal, $width:literal) => {
        Some(Column { header: $header, width: $width })
    };
    ($record:ty {
        $( $field:ident: $kind:ident $metric:literal $( column($header:literal, $width:literal) )? $help:literal; )*
    }) => {
        impl Counted for $record {
            const COUNTERS: &'static [Counter<Self>] = &[$(
                Counter {
                    key: stringify!($field),
                    metric: $metric,
                    help: $help,
                    kind: Kind::$kind,
                    column: table!(@column $( $header, $width )?),
                    get: |r: &$record| r.$field,
                    set: |r: &mut $record, v| r.$field = v,
                },
            )*];
        }
    };
}

/// A record the agent keeps, with its table: the struct is generated from the
/// entries (one `u64` field each), so its fields are declared here only.
macro_rules! record {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $field:ident: $kind:ident $metric:literal $help:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }
        table!($name { $( $field: $kind $metric $help; )* });
    };
}

// The data plane's records (vip-common, one copy per CPU, summed by the reader).

table!(VipStats {
    rx_packets: Counter "rx_packets" column("RX_PKTS", 10) "IP packets addressed to the VIP";
    rx_bytes: Counter "rx_bytes" column("RX_BYTES", 12) "Bytes of those packets";
    arp_replies: Counter "arp_replies" column("ARP", 8) "ARP requests answered by the data plane";
    nd_replies: Counter "nd_replies" column("ND", 8) "Neighbour solicitations answered by the data plane";
    passed: Counter "passed" "VIP packets passed to the local stack";
    redirected: Counter "redirected" column("REDIRECT", 10) "VIP packets redirected to another interface";
    forwarded: Counter "forwarded" column("FORWARD", 10) "VIP packets forwarded to the active node";
    lease_expired: Counter "lease_expired" "VIP packets passed because the lease had expired";
});

table!(EipStats {
    in_packets: Counter "eip_in_packets" "Packets to the elastic IP sent to the VIP's owner";
    in_bytes: Counter "eip_in_bytes" "Bytes of those packets";
    out_packets: Counter "eip_out_packets" "Packets from the VIP sent out as the elastic IP";
    out_bytes: Counter "eip_out_bytes" "Bytes of those packets";
    to_kernel: Counter "eip_to_kernel" "Translated packets handed to the kernel to route";
    owner_changes: Counter "eip_owner_changes" "VIP owner changes learned from ARP";
    arp_replies: Counter "eip_arp_replies" "ARP requests for the elastic IP answered";
    owner_refused: Counter "eip_owner_refused" "ARP naming the VIP from a non-node, dropped";
});

table!(Route6Stats {
    in_packets: Counter "route6_in_packets" "Packets to the routed IPv6 VIP sent to its owner by XDP";
    in_bytes: Counter "route6_in_bytes" "Bytes of those packets";
    to_kernel: Counter "route6_to_kernel" "Packets to the routed IPv6 VIP left to the kernel to route";
    owner_changes: Counter "route6_owner_changes" "VIP owner changes learned from neighbour advertisements";
    owner_refused: Counter "route6_owner_refused" "Neighbour discovery naming the VIP from a non-node, dropped";
});

// What the director sent one member (its `bytes` are counted, not shown).
table!(BalanceStats {
    flows: Counter "balance_member_flows" "New flows the director assigned to each member";
    packets: Counter "balance_member_packets" "Packets the director sent to each member of a balanced group";
});

// The agent's records.

record! {
    /// What a group's election counted.
    pub struct ElectionCounters {
        adverts_sent: Counter "adverts_sent" "Advertisements sent";
        adverts_received: Counter "adverts_received" "Advertisements accepted";
        split_brains: Counter "split_brains" "Two actives seen (partition healed)";
        /// Times our lease ran out while we were active (we were stopped past it).
        leases_lost: Counter "leases_lost" "Times the lease ran out while active (the agent was stalled past it): it stopped answering and listened again";
    }
}

record! {
    /// Advertisements a group's agent refused, by why.
    pub struct AdvertErrors {
        auth_failures: Counter "advert_auth_failures" "Advertisements that failed authentication";
        replays: Counter "advert_replays" "Replayed advertisements ignored";
        malformed: Counter "advert_malformed" "Malformed advertisements ignored";
        unknown_peers: Counter "advert_unknown_peers" "Advertisements from addresses that are not peers";
        /// Authenticated datagrams in an epoch not verified yet (the sender was
        /// challenged): a peer that just restarted, or a replay of an earlier epoch.
        unverified: Counter "advert_unverified" "Authenticated advertisements in an epoch not verified yet (the sender was challenged)";
    }
}

record! {
    /// A standby's probing of the active's data plane (see `crate::echo`).
    pub struct EchoCounters {
        probes: Counter "echo_probes" "Echo probes this standby sent to the active's data plane";
        replies: Counter "echo_replies" "Echo replies received";
        /// The longest run of consecutive unanswered probes (a takeover needs `misses`).
        longest_streak: Gauge "echo_longest_streak" "Longest run of consecutive unanswered probes (a takeover needs echo_misses)";
    }
}

/// The Prometheus family of every entry of `T`'s table, in order (`vip_` included).
pub fn families<T: Counted>() -> impl Iterator<Item = (String, Kind)> {
    T::COUNTERS
        .iter()
        .map(|c| (format!("vip_{}", c.metric), c.kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Every entry's key, family, help and kind, for the checks below.
    fn all() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
        fn of<T: Counted>(
            record: &'static str,
        ) -> impl Iterator<Item = (&'static str, &'static str, &'static str, &'static str)>
        {
            T::COUNTERS
                .iter()
                .map(move |c| (record, c.key, c.metric, c.help))
        }
        of::<VipStats>("vip")
            .chain(of::<EipStats>("eip"))
            .chain(of::<Route6Stats>("route6"))
            .chain(of::<BalanceStats>("member"))
            .chain(of::<ElectionCounters>("election"))
            .chain(of::<AdvertErrors>("election"))
            .chain(of::<EchoCounters>("echo"))
            .collect()
    }

    #[test]
    fn keys_and_families_are_unique_and_helped() {
        let all = all();
        let mut keys = HashSet::new();
        let mut metrics = HashSet::new();
        for (record, key, metric, help) in &all {
            // Records that share a JSON object (the election's two) share keys' space.
            assert!(keys.insert((record, key)), "{record}.{key} twice");
            assert!(metrics.insert(metric), "family vip_{metric} twice");
            assert!(
                !help.is_empty() && !help.ends_with('.'),
                "{metric}: {help:?}"
            );
            assert!(
                metric
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{metric}"
            );
        }
    }

    #[test]
    fn each_entry_reads_and_writes_its_own_field() {
        fn check<T: Counted + PartialEq + fmt::Debug>() {
            for (i, c) in T::COUNTERS.iter().enumerate() {
                let mut t = T::default();
                (c.set)(&mut t, 1000 + i as u64);
                assert_eq!((c.get)(&t), 1000 + i as u64, "{}", c.key);
                for o in T::COUNTERS.iter().filter(|o| o.key != c.key) {
                    assert_eq!((o.get)(&t), 0, "setting {} moved {}", c.key, o.key);
                }
            }
        }
        check::<VipStats>();
        check::<EipStats>();
        check::<Route6Stats>();
        check::<BalanceStats>();
        check::<ElectionCounters>();
        check::<AdvertErrors>();
        check::<EchoCounters>();
    }

    #[test]
    fn counts_serialize_in_table_order_and_read_back() {
        fn check<T: Counted + Copy + PartialEq + fmt::Debug>() {
            let mut t = T::default();
            for (i, c) in T::COUNTERS.iter().enumerate() {
                (c.set)(&mut t, 1 + i as u64);
            }
            let json = serde_json::to_string(&Counts(t)).unwrap();
            let keys: Vec<String> = T::COUNTERS
                .iter()
                .enumerate()
                .map(|(i, c)| format!("\"{}\":{}", c.key, 1 + i))
                .collect();
            assert_eq!(json, format!("{{{}}}", keys.join(",")));
            assert_eq!(serde_json::from_str::<Counts<T>>(&json).unwrap().0, t);
        }
        check::<VipStats>();
        check::<EipStats>();
        check::<Route6Stats>();
        check::<BalanceStats>();
        check::<ElectionCounters>();
        check::<AdvertErrors>();
        check::<EchoCounters>();
        // An older agent's status lacks a counter, a newer one's has one more: both read.
        let old: Counts<VipStats> =
            serde_json::from_str(r#"{"rx_packets":9,"later_counter":1}"#).unwrap();
        assert_eq!(
            old.0,
            VipStats {
                rx_packets: 9,
                ..Default::default()
            }
        );
        assert!(serde_json::from_str::<Counts<VipStats>>(r#"{"rx_packets":"x"}"#).is_err());
    }
}
