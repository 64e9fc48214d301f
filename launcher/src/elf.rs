//! Is a program dynamically linked? LD_PRELOAD cannot reach a static
//! binary, so ckrun refuses one up front instead of running it unprotected.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
pub enum Linkage {
    Dynamic,
    Static,
    /// `#!` script: what matters is its interpreter.
    Script(PathBuf),
    NotElf,
}

pub fn linkage(path: &Path) -> std::io::Result<Linkage> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?.take(64 * 1024).read_to_end(&mut head)?;
    Ok(classify(&head))
}

const PT_INTERP: u32 = 3;
const PT_DYNAMIC: u32 = 2;

pub fn classify(b: &[u8]) -> Linkage {
    if let Some(rest) = b.strip_prefix(b"#!") {
        let line = rest.split(|&c| c == b'\n').next().unwrap_or_default();
        let interp = String::from_utf8_lossy(line).split_whitespace().next().unwrap_or_default().to_string();
        return Linkage::Script(PathBuf::from(interp));
    }
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return Linkage::NotElf;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap()) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    let mut dynamic = false;
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            break;
        }
        let t = u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        if t == PT_INTERP {
            return Linkage::Dynamic;
        }
        dynamic |= t == PT_DYNAMIC;
    }
    // A static-pie has PT_DYNAMIC but no interpreter: still static for us.
    let _ = dynamic;
    Linkage::Static
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(linkage(&exe).unwrap(), Linkage::Dynamic);
    }

    #[test]
    fn scripts_and_junk() {
        assert_eq!(classify(b"#!/usr/bin/env python3\nprint()"), Linkage::Script("/usr/bin/env".into()));
        assert_eq!(classify(b"hello"), Linkage::NotElf);
    }
}
