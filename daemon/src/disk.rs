//! Free space on the state folder's file system. Uploads and submits are refused while it is
//! below `min_free_mib`, so that the store, the workers' checkpoints and the event log never
//! meet a full disk through something a client sent: sled cannot be trusted to recover from
//! a failed write in the same process, and a refused request loses nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Bytes available to this (unprivileged) process on the file system holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// `Err(message)` when fewer than `min_mib` MiB (plus `incoming` bytes about to be written)
/// are free under `dir`. A file system that cannot be asked is not refused for that.
pub fn ensure_free(dir: &Path, min_mib: u64, incoming: u64) -> Result<(), String> {
    let Ok(free) = free_bytes(dir) else {
        return Ok(());
    };
    let need = (min_mib << 20).saturating_add(incoming);
    if free < need {
        return Err(format!(
            "the server's disk is nearly full: {} MiB free in its state folder, and {} MiB \
             must stay free (min_free_mib); nothing was stored, try again when an admin \
             has made room",
            free >> 20,
            min_mib
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_huge_reserve_refuses() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(ensure_free(dir.path(), 0, 0).is_ok());
        let err = ensure_free(dir.path(), u64::MAX >> 21, 0).unwrap_err();
        assert!(err.contains("min_free_mib"), "{err}");
    }
}
