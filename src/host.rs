//! Facts about the host the daemon runs on (free disk space for the disk-pressure alarm), the
//! one process limit it adjusts (open files), the identity an admin command drops to, and the
//! process-exit hook storage needs. The only module that imports `libc`.

use std::ffi::CString;
use std::path::Path;

/// Bytes available to unprivileged users on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable memory of the
    // right type; statvfs only writes into it.
    let r = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail * st.f_frsize)
}

/// Raises the soft limit on open files to the hard limit (the unit sets `LimitNOFILE=16384`;
/// a shell's default soft limit is often 1024). Returns the soft limit now in force. The API's
/// connection cap (`api.max_connections`) must stay well below it so that broker, cloud and
/// watchdog sockets can always be opened.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        r.rlim_cur = r.rlim_max;
    }
    Ok(r.rlim_cur)
}

/// Registers `f` to run when the process exits (`atexit(3)`): after `main` returns or on
/// `std::process::exit`, before the handlers registered earlier (they run in reverse order).
/// Returns false if the C library refused (no room for another handler).
pub fn at_exit(f: extern "C" fn()) -> bool {
    // SAFETY: `f` is a plain function with C linkage and no arguments, valid for the whole
    // life of the process; atexit only stores the pointer.
    unsafe { libc::atexit(f) == 0 }
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Drops root for `uid`/`gid` for the rest of the process (no supplementary groups), so that
/// files an admin command creates belong to the daemon's user.
pub fn become_user(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers; a null list with length 0 clears the groups. The
    // order (groups, gid, then uid) is the one that keeps the right to change the others.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temp_dir_has_some_free_space_and_bad_paths_fail() {
        assert!(super::free_bytes(&std::env::temp_dir()).unwrap() > 0);
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}
