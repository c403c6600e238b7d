//! The groups' leases and answers: `LEASES` (until when a group's leased entries
//! answer, CLOCK_BOOTTIME ns; see `vip_common::lease`) and `QUIET` (a group whose
//! handover has begun answers nothing, while its entries still steer). An extension
//! is checked and written by the kernel in one run of `vip_lease` (BPF_PROG_TEST_RUN):
//! the agent keeps that call, whatever the `test-run` feature says.

use aya::{
    maps::{Array, MapData},
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use vip_common::{lease, maps, programs};

use super::{map_err, Dataplane, DataplaneError, Result};

/// What `vip_lease` answered to an extension (see `vip_common::lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// The lease ran and now runs until the new deadline.
    Extended,
    /// The lease had run out at `found` (0: revoked); the kernel's time was `now`.
    Expired { found: u64, now: u64 },
    /// The lease was not the one expected (`found`): nothing was written.
    Changed { found: u64 },
}

/// The leases' part of the data plane.
pub(super) struct Leases {
    leases: Array<MapData, u64>,
    quiet: Array<MapData, u32>,
    /// The `LEASE_KEY` this load's `vip_lease` program expects.
    key: u64,
}

impl Leases {
    pub(super) fn take(ebpf: &mut Ebpf, key: u64) -> Result<Self> {
        Ok(Leases {
            leases: super::take(ebpf, maps::LEASES)?,
            quiet: super::take(ebpf, maps::QUIET)?,
            key,
        })
    }
}

/// BPF_PROG_TEST_RUN: `prog` over `data`, `repeat` times; its return code, the bytes
/// it left and the average time per run (the kernel averages it). The lease's call,
/// and under the `test-run` feature the tests' (`super::run`).
pub(super) fn test_run(
    prog: &Xdp,
    data: &[u8],
    repeat: u32,
) -> std::result::Result<(u32, Vec<u8>, std::time::Duration), ProgramError> {
    let mut out = vec![0u8; data.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(data);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog.test_run(opts)?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, out, r.duration))
}

impl Dataplane {
    /// Grants a group a lease until `deadline_ns` (CLOCK_BOOTTIME, `host::boottime_ns`),
    /// whatever it held: only for a decision to take the VIPs (or to forward, which
    /// never answers for them). One 8-byte array write: never torn.
    pub fn grant_lease(&mut self, group: u32, deadline_ns: u64) -> Result<()> {
        self.leases
            .leases
            .set(group, deadline_ns, 0)
            .map_err(map_err(maps::LEASES))
    }

    /// Ends a group's lease now: its leased entries stop answering at once.
    pub fn revoke_lease(&mut self, group: u32) -> Result<()> {
        self.grant_lease(group, 0)
    }

    /// Sets whether a group's entries answer ARP/NS and probes (`QUIET`): a planned
    /// handover stops answering first, while the entries still steer.
    pub fn set_quiet(&mut self, group: u32, quiet: bool) -> Result<()> {
        self.leases
            .quiet
            .set(group, u32::from(quiet), 0)
            .map_err(map_err(maps::QUIET))
    }

    /// True while a group's entries answer nothing (a handover had begun).
    pub fn quiet(&self, group: u32) -> Result<bool> {
        Ok(self
            .leases
            .quiet
            .get(&group, 0)
            .map_err(map_err(maps::QUIET))?
            != 0)
    }

    /// The deadline in force for a group (0: none).
    pub fn lease(&self, group: u32) -> Result<u64> {
        self.leases
            .leases
            .get(&group, 0)
            .map_err(map_err(maps::LEASES))
    }

    /// Extends a group's lease from `expect` to `deadline_ns`, only if `expect` is
    /// what is in force and has not run out: the kernel checks and writes in one run
    /// of `vip_lease` (see `vip_common::lease`).
    pub fn extend_lease(&mut self, group: u32, expect: u64, deadline_ns: u64) -> Result<Extension> {
        let req = lease::Request {
            magic: lease::MAGIC,
            group,
            key: self.leases.key,
            expect,
            deadline: deadline_ns,
            found: 0,
            now: 0,
        };
        // SAFETY: Request is repr(C), Copy, with no padding (size asserted).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&req as *const lease::Request).cast::<u8>(),
                std::mem::size_of::<lease::Request>(),
            )
        };
        let (action, frame, _) = test_run(self.program.xdp(programs::LEASE), bytes, 1)?;
        let back = (frame.len() == bytes.len()).then(|| {
            // SAFETY: the program wrote a Request's worth of bytes; read unaligned.
            unsafe { std::ptr::read_unaligned(frame.as_ptr().cast::<lease::Request>()) }
        });
        let (found, now) = back.map(|r| (r.found, r.now)).unwrap_or((0, 0));
        match action {
            lease::EXTENDED => Ok(Extension::Extended),
            lease::EXPIRED => Ok(Extension::Expired { found, now }),
            lease::CHANGED => Ok(Extension::Changed { found }),
            code => Err(DataplaneError::LeaseRefused(code)),
        }
    }
}
