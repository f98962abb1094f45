//! How full the disk holding the audit log is. A full disk stops issuance and logins for
//! everyone (a record that cannot be written refuses its action), so `/healthz` warns
//! before that happens and `/metrics` shows the space left.

use std::path::Path;

/// Free space below this fraction of the disk is "nearly full".
pub const WARN_FREE_FRACTION: f64 = 0.05;
/// Free space below this many bytes is "nearly full" whatever the disk's size.
pub const WARN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// Space on one file system, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeSpace {
    /// Available to an unprivileged writer (what drawbridge can still use).
    pub available: u64,
    pub total: u64,
}

/// The space on the file system holding `file` (its folder, so this works before the
/// file exists). `None` when it cannot be read.
pub fn free_space(file: &Path) -> Option<FreeSpace> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let st = rustix::fs::statvfs(dir).ok()?;
    let unit = st.f_frsize.max(1);
    Some(FreeSpace {
        available: st.f_bavail.saturating_mul(unit),
        total: st.f_blocks.saturating_mul(unit),
    })
}

/// Whether `space` is nearly full, as a line for `/healthz`.
pub fn warning(space: FreeSpace) -> Option<String> {
    let fraction = if space.total == 0 {
        1.0
    } else {
        space.available as f64 / space.total as f64
    };
    if fraction >= WARN_FREE_FRACTION && space.available >= WARN_FREE_BYTES {
        return None;
    }
    Some(format!(
        "the disk holding the audit log is nearly full: {} MiB ({:.1}%) free; when it is \
         full, issuance and logins stop",
        space.available / (1024 * 1024),
        fraction * 100.0
    ))
}

/// [`warning`] for the disk holding the audit log at `file`.
pub fn audit_disk_warning(file: &Path) -> Option<String> {
    free_space(file).and_then(warning)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nearly_full_by_fraction_or_by_bytes() {
        let gib = 1024 * 1024 * 1024;
        assert!(
            warning(FreeSpace {
                available: 50 * gib,
                total: 100 * gib
            })
            .is_none()
        );
        let w = warning(FreeSpace {
            available: 4 * gib,
            total: 100 * gib,
        })
        .unwrap();
        assert!(w.contains("4096 MiB (4.0%) free"), "{w}");
        assert!(
            warning(FreeSpace {
                available: 100 * 1024 * 1024,
                total: gib
            })
            .is_some()
        );
    }

    #[test]
    fn reads_the_disk_of_a_file_that_does_not_exist_yet() {
        let dir = tempfile::tempdir().unwrap();
        let s = free_space(&dir.path().join("audit.log")).unwrap();
        assert!(s.total > 0 && s.available <= s.total);
    }
}
