//! Facts about this machine that decide whether an image can run here.

/// `uname` fields: (nodename, release, version).
pub fn uname() -> (String, String, String) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid utsname.
    unsafe { libc::uname(&mut u) };
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    (s(&u.nodename), s(&u.release), s(&u.version))
}

/// XCR0, the xsave feature set the kernel enabled (it shapes the FPU part
/// of every signal frame); 0 without OSXSAVE.
pub fn xsave_features() -> u64 {
    let osxsave = std::arch::x86_64::__cpuid(1).ecx & (1 << 27) != 0;
    if !osxsave {
        return 0;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: xgetbv with ecx=0 is allowed in user mode when OSXSAVE is set.
    unsafe { std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (hi as u64) << 32 | lo as u64
}
