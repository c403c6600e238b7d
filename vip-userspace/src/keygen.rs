//! `vip keygen`: a shared secret for `auth_key_file`, so that an elected group's
//! advertisements are authenticated (without one, any host on the segment can speak
//! for a peer: see `config::auth_warnings`).
//!
//! The key is 32 random bytes from getrandom(2) (which waits for the kernel's
//! generator to be seeded, as it may not be yet on a freshly booted or cloned machine)
//! written as 64 hex digits and a newline. `config::load_keys` uses a key file's bytes
//! as they are, surrounding whitespace trimmed: the 64 digits are the HMAC key, 256
//! bits of entropy, well above the 16 bytes it requires. The file is created mode 0600
//! and never replaces one that exists unless asked to (peers sharing the old key would
//! stop accepting this node's advertisements): with `force`, the new key is written
//! beside it and renamed over it, so the path never holds half a key.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// Where `vip keygen` writes by default, and what the shipped example config reads.
pub const DEFAULT_KEY_FILE: &str = "/etc/vip/auth.key";
/// Random bytes in a key (written as twice as many hex digits).
pub const KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error("{path} already exists: keep it (every peer must have the same key), or pass --force to replace it")]
    Exists { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading random bytes (getrandom): {0}")]
    Random(#[source] io::Error),
}

/// Fills `buf` from the kernel's random generator, waiting until it is seeded.
fn random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`, which is
        // valid, writable memory of that length.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A new key, as the file holds it: 64 hex digits and a newline.
pub fn new_key() -> Result<String, KeygenError> {
    let mut bytes = [0u8; KEY_BYTES];
    random(&mut bytes).map_err(KeygenError::Random)?;
    let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    Ok(text)
}

/// Writes a new key to `path` (mode 0600); refuses to replace an existing file unless
/// `force`.
pub fn write(path: &Path, force: bool) -> Result<(), KeygenError> {
    let err = |source| KeygenError::Write {
        path: path.to_path_buf(),
        source,
    };
    if !force && path.symlink_metadata().is_ok() {
        return Err(KeygenError::Exists {
            path: path.to_path_buf(),
        });
    }
    let key = new_key()?;
    // Written under a name of its own in the same directory, then renamed: with
    // `force` the old key is replaced in one step; without it, a file that appeared
    // meanwhile is still not replaced (the link below refuses).
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    let tmp = path.with_file_name(format!(".{name}.{}.new", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // Exactly 0600, whatever the umask left of it.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(key.as_bytes())?;
        f.sync_all()?;
        if force {
            fs::rename(&tmp, path)
        } else {
            fs::hard_link(&tmp, path).and_then(|()| fs::remove_file(&tmp))
        }
    })();
    match written {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            if e.kind() == io::ErrorKind::AlreadyExists && path.symlink_metadata().is_ok() {
                Err(KeygenError::Exists {
                    path: path.to_path_buf(),
                })
            } else {
                Err(err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vip-keygen-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keys_are_random_hex_that_the_config_accepts() {
        let a = new_key().unwrap();
        let b = new_key().unwrap();
        assert_eq!(a.len(), 2 * KEY_BYTES + 1);
        assert!(a.ends_with('\n'));
        assert!(a.trim_end().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        let d = dir("config");
        let key = d.join("auth.key");
        write(&key, false).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let cfg = crate::config::parse(&format!(
            "[node]\nname = \"a\"\ninterface = \"eth0\"\n\n[[group]]\nname = \"web\"\nvips = [\"10.0.0.50/24\"]\npeers = [\"10.0.0.12\"]\npriority = 100\nauth_key_file = \"{}\"\n",
            key.display()
        ))
        .unwrap();
        let keys = crate::config::load_keys(&cfg).unwrap();
        assert_eq!(keys["web"].len(), 2 * KEY_BYTES);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_existing_file_is_replaced_only_when_forced() {
        let d = dir("force");
        let key = d.join("auth.key");
        fs::write(&key, "old\n").unwrap();
        let e = write(&key, false).unwrap_err();
        assert!(matches!(e, KeygenError::Exists { .. }), "{e}");
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "old\n");
        write(&key, true).unwrap();
        let new = fs::read_to_string(&key).unwrap();
        assert_eq!(new.len(), 2 * KEY_BYTES + 1);
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Nothing left beside it; a missing directory is an error naming the path.
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
        let e = write(&d.join("missing/auth.key"), false).unwrap_err();
        assert!(e.to_string().contains("missing/auth.key"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
