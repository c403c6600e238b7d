//! What only the integration tests and the benchmarks need (feature `test-run`):
//! frames run through the data plane with BPF_PROG_TEST_RUN, the programs themselves
//! for timing, the maps' kernel memory, and the benchmarks' generator and sink, a
//! separate object. The agent never loads or runs these, so the shipped binary
//! carries neither the code nor the benchmarks' object.

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfLoader,
};
use vip_common::{maps, programs};

use super::{leases, map_err, Dataplane, DataplaneError, Result};
use crate::config::XdpMode;

/// The benchmarks' generator and sink, a separate object that only [`BenchPrograms`]
/// loads: an agent never verifies them nor creates their maps.
static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vip-bench.bpf.o"));

/// What BPF_PROG_TEST_RUN reported for one frame.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub action: u32,
    pub frame: Vec<u8>,
    /// Average time per run.
    pub duration: std::time::Duration,
}

/// Runs `frame` through `prog` `repeat` times (the kernel averages the duration).
pub fn run(
    prog: &Xdp,
    frame: &[u8],
    repeat: u32,
) -> std::result::Result<TestOutcome, ProgramError> {
    let (action, frame, duration) = leases::test_run(prog, frame, repeat)?;
    Ok(TestOutcome {
        action,
        frame,
        duration,
    })
}

/// XDP return codes by name, for messages and tables.
pub fn action_name(code: u32) -> &'static str {
    vip_common::xdp::name(code)
}

impl Dataplane {
    /// Runs one frame through the data plane with BPF_PROG_TEST_RUN.
    pub fn test_run(&self, frame: &[u8]) -> std::result::Result<TestOutcome, ProgramError> {
        run(self.program(), frame, 1)
    }

    /// The data-plane program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &Xdp {
        self.program.xdp(programs::VIP)
    }

    /// The do-nothing program the benchmarks measure as their floor.
    pub fn pass_program(&self) -> &Xdp {
        self.program.xdp(programs::PASS)
    }

    /// Kernel memory charged to each map of the VIPs (its `memlock` in
    /// /proc/self/fdinfo).
    pub fn map_memory(&self) -> Vec<(&'static str, u64)> {
        self.vips.memory()
    }
}

/// The benchmarks' generator (`vip_bench_tx`) and counting sink (`vip_bench_sink`),
/// loaded from their own object, apart from any data plane.
pub struct BenchPrograms {
    ebpf: Ebpf,
}

impl BenchPrograms {
    pub fn load() -> Result<Self> {
        if BENCH_OBJECT.is_empty() {
            return Err(DataplaneError::Stub);
        }
        let mut ebpf = EbpfLoader::new().load(BENCH_OBJECT)?;
        for name in [programs::BENCH_TX, programs::BENCH_SINK] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing("benchmark XDP program"))?
                .try_into()?;
            prog.load()?;
        }
        Ok(BenchPrograms { ebpf })
    }

    /// Sends `repeat` frames built from `frame` (see `vip_bench_tx`) out of interface
    /// `ifindex` of the calling thread's namespace, through the generator in
    /// live-frames mode. `Ok(false)`: this kernel refuses the mode (EPERM, whatever the
    /// program; seen with 6.18), and the caller sends with an AF_PACKET socket instead.
    pub fn live_frames(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> std::result::Result<bool, ProgramError> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex (the kernel wants data_end == the frame's length).
        let mut ctx = Vec::with_capacity(24);
        for v in [0u32, frame.len() as u32, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&v.to_ne_bytes());
        }
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(64);
        match self.generator().test_run(opts) {
            Ok(_) => Ok(true),
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The generator, for BPF_PROG_TEST_RUN in live-frames mode.
    pub fn generator(&self) -> &Xdp {
        self.ebpf
            .program(programs::BENCH_TX)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("programs are checked at load")
    }

    /// Attaches the counting sink to `iface` (detached when `self` is dropped).
    pub fn attach_sink(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        let (aya_mode, mode_name) = match mode {
            XdpMode::Native | XdpMode::Auto => (AyaXdpMode::Driver, "native"),
            XdpMode::Skb => (AyaXdpMode::Skb, "skb"),
        };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(programs::BENCH_SINK)
            .ok_or(DataplaneError::Missing("benchmark XDP program"))?
            .try_into()?;
        prog.attach(iface, aya_mode)
            .map(|_| ())
            .map_err(|source| DataplaneError::Attach {
                iface: iface.into(),
                mode: mode_name,
                source,
            })
    }

    /// The 60-byte frame the generator sends.
    pub fn set_frame(&mut self, frame: &[u8]) -> Result<()> {
        let mut t = [0u8; 64];
        let n = frame.len().min(60);
        t[..n].copy_from_slice(&frame[..n]);
        self.set(maps::BENCH_FRAME, t)
    }

    /// Spreads the generator's frames over `n` flows (UDP source ports from the
    /// frame's own up); 0 or 1: every frame is the frame set by [`Self::set_frame`].
    pub fn set_flows(&mut self, n: u32) -> Result<()> {
        self.set(maps::BENCH_FLOWS, n)
    }

    /// Spreads the generator's frames over `n` IPv4 sources (the frame's own source
    /// address up, in its last 16 bits); 0 or 1: every frame has the frame's source.
    pub fn set_sources(&mut self, n: u32) -> Result<()> {
        self.set(maps::BENCH_SOURCES, n)
    }

    /// Writes slot 0 of the one-slot array `name`.
    fn set<V: aya::Pod>(&mut self, name: &'static str, value: V) -> Result<()> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::Missing(name))?;
        let mut arr = Array::<&mut MapData, V>::try_from(map).map_err(map_err(name))?;
        arr.set(0, value, 0).map_err(map_err(name))
    }

    /// Frames counted by the sink so far (summed over CPUs).
    pub fn count(&self) -> u64 {
        let Some(map) = self.ebpf.map(maps::BENCH_COUNT) else {
            return 0;
        };
        let Ok(arr) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        arr.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }
}
