//! File plumbing for `ca/`: private files are created 0600 (never chmod-ed after the
//! fact), public files 0644, folders 0700; every write goes to a temporary file in the
//! same folder and is renamed into place, so a reader never sees half a key.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::CaError;

/// Mode of files holding private key material.
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of public files (public keys, certificates).
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of the key folder and `retired/`.
pub const DIR_MODE: u32 = 0o700;

/// Refuses a private key file that group or others may read or write.
///
/// Every loader of a private file calls this before reading it. The error says how
/// to fix it: `ca/user_ca is readable by group or others (mode 0644); run: chmod 600 ca/user_ca`.
pub fn check_private_mode(path: &Path) -> Result<(), CaError> {
    let meta = fs::metadata(path).map_err(|e| CaError::io(path, e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::InsecureMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Creates `dir` with mode 0700 when it does not exist (parents too).
pub fn create_dir(dir: &Path) -> Result<(), CaError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| CaError::io(dir, e))
}

/// Writes `contents` to `path` atomically with `mode`: a temporary file in the same
/// folder, created with that mode, flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename durable; a failure here loses nothing already renamed.
            if let Ok(d) = fs::File::open(parent) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        CaError::io(path, e)
    })
}

/// Writes `contents` to `path` only if nothing is there yet (no overwrite, even racing).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    result.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CaError::Exists(path.to_path_buf())
        } else {
            CaError::io(path, e)
        }
    })
}

/// Reads a private file after checking its mode.
pub fn read_private(path: &Path) -> Result<Vec<u8>, CaError> {
    check_private_mode(path)?;
    fs::read(path).map_err(|e| CaError::io(path, e))
}

/// Reads a public file as text.
pub fn read_public(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| CaError::io(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut buf = [0u8; 6];
    // A collision only makes create_new fail; the caller then sees an I/O error.
    let _ = getrandom::fill(&mut buf);
    path.with_file_name(format!(".{name}.tmp-{}", hex::encode(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_atomic(&p, b"one", PRIVATE_MODE).unwrap();
        write_atomic(&p, b"two", PRIVATE_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn write_new_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_new(&p, b"one", PRIVATE_MODE).unwrap();
        assert!(matches!(
            write_new(&p, b"two", PRIVATE_MODE),
            Err(CaError::Exists(_))
        ));
        assert_eq!(fs::read(&p).unwrap(), b"one");
    }

    #[test]
    fn group_readable_private_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user_ca");
        write_new(&p, b"x", PRIVATE_MODE).unwrap();
        check_private_mode(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let msg = check_private_mode(&p).unwrap_err().to_string();
        let shown = p.display();
        assert_eq!(
            msg,
            format!("{shown} is readable by group or others (mode 0644); run: chmod 600 {shown}")
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o620)).unwrap();
        assert!(
            check_private_mode(&p).is_err(),
            "group-writable is refused too"
        );
    }
}
