//! The raw bpf(2) call aya 0.14 has no wrapper for, and the byte view it takes of
//! plain-data values. Nothing else in the crate calls bpf(2) directly.

use std::os::fd::{AsRawFd as _, BorrowedFd};

/// A plain-data value's bytes, as a map key or value (or a program's input).
pub(super) fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: `aya::Pod` types are repr(C) plain data with no implicit padding (vip's
    // have explicit padding fields and size asserts in vip-common), so every byte of
    // `v` is initialised; the slice borrows `v` for its length.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// BPF_MAP_UPDATE_BATCH: `count` keys and values, laid out back to back.
pub(super) fn update_batch(
    fd: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> std::io::Result<()> {
    /// The `batch` member of union bpf_attr.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags: 0,
        flags: 0,
    };
    // SAFETY: attr points at valid key and value buffers of `count` entries for the
    // duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.count != count {
        return Err(std::io::Error::other(format!(
            "batch update stopped after {} of {count} entries",
            attr.count
        )));
    }
    Ok(())
}
