//! Shared memory between the supervisor and its worker processes: a
//! `memfd` the children inherit, mapped shared by whoever reads or writes
//! it. The counter block (`shared_stats.rs`) and the topic audiences
//! (`shared_audience.rs`) are both made and mapped here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A zeroed memfd of `len` bytes named `name`, inherited by exec'd
/// children (no close-on-exec).
pub fn memfd(name: &std::ffi::CStr, len: usize) -> io::Result<OwnedFd> {
    // SAFETY: a C string; no CLOEXEC so exec'd children inherit it.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone()?).set_len(len as u64)?;
    Ok(fd)
}

/// Maps the first `len` bytes of `fd`, shared and writable: page-aligned.
/// The caller unmaps it (or keeps it for the process's life).
pub fn map(fd: &OwnedFd, len: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: mapping a file we own, shared, for `len` bytes; nothing in
    // this process is at the address the kernel picks.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr)
}
