//! The on-disk compile cache: compiled plugins (native code) keyed by the wasm's hash.
//!
//! Loading a cached file runs its native code inside the server, so the cache must be a place
//! only this process's user can write: the directory is created `0700`, and is refused (with a
//! message naming `plugin_runtime.cache_dir`) when it is a symlink, belongs to another user, or
//! is open to group or others. The default lives under the temp directory with the user id in
//! its name, so users of one machine never share it. Each file is sealed: it starts with the
//! SHA-256 of its key and contents, checked before the contents are handed to wasmtime, so a
//! truncated, corrupted or swapped file is compiled again instead of loaded.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Length of the seal in front of every cached file.
const SEAL_BYTES: usize = 32;

/// The default cache directory: per user, under the temp directory.
pub fn default_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("realtime-plugin-cache-{uid}"))
}

/// Creates `dir` (0700) when missing and checks that only this user can write it.
pub fn prepare_private_dir(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|error| format!("cannot create {}: {error}", parent.display()))?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(format!("cannot create {}: {error}", dir.display())),
    }
    check_private(dir)
}

/// Refuses a symlink, a non-directory, another owner, or write or read access for others.
fn check_private(dir: &Path) -> Result<(), String> {
    let metadata = std::fs::symlink_metadata(dir)
        .map_err(|error| format!("cannot inspect {}: {error}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let problem = if metadata.file_type().is_symlink() {
        Some("is a symlink".to_owned())
    } else if !metadata.is_dir() {
        Some("is not a directory".to_owned())
    } else if metadata.uid() != uid {
        Some(format!(
            "belongs to uid {}, not to this process's uid {uid}",
            metadata.uid()
        ))
    } else if metadata.mode() & 0o077 != 0 {
        Some(format!(
            "has mode {:o}; group and others must have no access",
            metadata.mode() & 0o777
        ))
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "the plugin compile cache {} {problem}: compiled plugins are native code this \
             process runs, so the cache must be private (remove it, or set \
             plugin_runtime.cache_dir to a directory of this user with mode 0700)",
            dir.display()
        )),
    }
}

fn seal(key: &str, contents: &[u8]) -> [u8; SEAL_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(contents);
    hasher.finalize().into()
}

/// The cached contents for `key` if the file exists, is this user's own regular file, and its
/// seal matches; `None` otherwise (the caller compiles again).
pub fn read(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let path = file_for(dir, key);
    let metadata = std::fs::symlink_metadata(&path).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !metadata.is_file() || metadata.uid() != uid || metadata.mode() & 0o022 != 0 {
        tracing::warn!(path = %path.display(), "plugin cache file is not this user's private file; compiling again");
        return None;
    }
    let mut bytes = std::fs::read(&path).ok()?;
    if bytes.len() < SEAL_BYTES || bytes[..SEAL_BYTES] != seal(key, &bytes[SEAL_BYTES..]) {
        tracing::warn!(path = %path.display(), "plugin cache file does not match its key; compiling again");
        return None;
    }
    bytes.drain(..SEAL_BYTES);
    Some(bytes)
}

/// Writes the sealed file for `key` (write, then rename: a reader never sees half a file).
pub fn write(dir: &Path, key: &str, contents: &[u8]) -> Result<(), String> {
    let path = file_for(dir, key);
    let mut sealed = Vec::with_capacity(SEAL_BYTES + contents.len());
    sealed.extend_from_slice(&seal(key, contents));
    sealed.extend_from_slice(contents);
    let partial = path.with_extension(format!("partial-{:08x}", rand::random::<u32>()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|error| error.to_string())?;
    std::io::Write::write_all(&mut file, &sealed).map_err(|error| error.to_string())?;
    std::fs::rename(&partial, &path).map_err(|error| error.to_string())
}

fn file_for(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.cwasm"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(label: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "realtime-cache-test-{label}-{:016x}",
            rand::random::<u64>()
        ))
    }

    #[test]
    fn a_new_cache_directory_is_created_private() {
        let dir = scratch("new");
        prepare_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cache_directory_others_can_write_is_refused() {
        let dir = scratch("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = prepare_private_dir(&dir).unwrap_err();
        assert!(error.contains("plugin_runtime.cache_dir"), "{error}");
        assert!(error.contains("777"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlinked_cache_directory_is_refused() {
        let target = scratch("target");
        prepare_private_dir(&target).unwrap();
        let link = scratch("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = prepare_private_dir(&link).unwrap_err();
        assert!(error.contains("symlink"), "{error}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&target).unwrap();
    }

    #[test]
    fn only_a_file_sealed_for_its_key_is_read_back() {
        let dir = scratch("seal");
        prepare_private_dir(&dir).unwrap();
        write(&dir, "key-a", b"compiled code").unwrap();
        assert_eq!(read(&dir, "key-a").as_deref(), Some(&b"compiled code"[..]));
        // Another key's file planted under this key's name.
        std::fs::copy(file_for(&dir, "key-a"), file_for(&dir, "key-b")).unwrap();
        assert_eq!(read(&dir, "key-b"), None);
        // A changed byte.
        let mut bytes = std::fs::read(file_for(&dir, "key-a")).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(file_for(&dir, "key-a"), bytes).unwrap();
        assert_eq!(read(&dir, "key-a"), None);
        assert_eq!(read(&dir, "missing"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
