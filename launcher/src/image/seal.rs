//! The optional keyed seal of an image (`--key-file`).
//!
//! The checksums in an image catch damage, not intent: whoever can write an
//! image can recompute them. A seal is a keyed BLAKE3 hash over the manifest
//! (which holds every chunk's checksum, so it covers the page data too) and
//! the trailer's fields, made with a secret only the job's owner can read.
//! A restart given the same key refuses an image whose seal is missing or
//! does not match: an image edited, or written by anyone without the key,
//! never runs. Without `--key-file` images are not sealed, and a restart
//! checks only the checksums and the manifest's consistency.

use crate::error::CkError;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// A key derived from the key file's content.
#[derive(Clone)]
pub struct Key([u8; 32]);

/// Keys are read from small files only.
const MAX_KEY_FILE: u64 = 64 << 10;

impl Key {
    /// Reads `path`: a regular file (symlinks not followed) that only its
    /// owner can read, owned by the caller (or by root), with at least 16
    /// bytes of secret.
    pub fn load(path: &Path) -> Result<Key, CkError> {
        let env = |why: String| CkError::Environment(format!("key file {}: {why}", path.display()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| env(e.to_string()))?;
        let meta = f.metadata().map_err(|e| env(e.to_string()))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_file() || meta.len() > MAX_KEY_FILE {
            return Err(env("not a regular file of at most 64 KiB".into()));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(env(format!("owned by uid {}, not by you", meta.uid())));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(env(format!("mode {:04o}: others may read it (chmod 600)", meta.mode() & 0o7777)));
        }
        let secret = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f)))
            .map_err(|e| env(e.to_string()))?;
        if secret.iter().filter(|b| !b.is_ascii_whitespace()).count() < 16 {
            return Err(env("holds less than 16 bytes of secret".into()));
        }
        Ok(Key(blake3::derive_key("ckrun 2026 image seal v1", &secret)))
    }

    /// The seal of `covered` (manifest bytes, then the trailer's first 40).
    pub fn seal(&self, covered: &[u8]) -> [u8; 16] {
        let h = blake3::keyed_hash(&self.0, covered);
        h.as_bytes()[..16].try_into().unwrap()
    }

    /// Whether `seal` is this key's seal of `covered` (compared in
    /// constant time).
    pub fn verifies(&self, covered: &[u8], seal: &[u8; 16]) -> bool {
        let want = self.seal(covered);
        want.iter().zip(seal).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Checks an image's seal against `key`: exit 3 when it is missing or wrong.
pub fn check(img: &super::ImageReader, key: &Key) -> Result<(), CkError> {
    match &img.seal {
        None => Err(CkError::bad_image(
            img.path(),
            "the image is not sealed, and --key-file requires a seal (was it written without the key?)",
        )),
        Some((seal, covered)) if key.verifies(covered, seal) => Ok(()),
        Some(_) => Err(CkError::bad_image(
            img.path(),
            "the image's seal does not match the key (it was changed, or sealed with another key)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_verifies_only_its_bytes_with_its_key() {
        let k = Key(blake3::derive_key("t", b"secret"));
        let other = Key(blake3::derive_key("t", b"other"));
        let s = k.seal(b"manifest");
        assert!(k.verifies(b"manifest", &s));
        assert!(!k.verifies(b"manifesT", &s));
        assert!(!other.verifies(b"manifest", &s));
    }
}
