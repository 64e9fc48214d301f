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

/// The xsave state components a program's threads can use, by XCR0 bit,
/// grouped as CPUs advertise them (AVX-512 takes three components, AMX
/// and MPX two). Components of IA32_XSS (supervisor state: PT, CET...)
/// are the kernel's, never in XCR0.
const XSAVE_FEATURES: [(&str, u64); 8] = [
    ("x87", 1 << 0),
    ("SSE", 1 << 1),
    ("AVX", 1 << 2),
    ("MPX", 1 << 3 | 1 << 4),
    ("AVX-512", 1 << 5 | 1 << 6 | 1 << 7),
    ("PKRU (memory protection keys)", 1 << 9),
    ("AMX", 1 << 17 | 1 << 18),
    ("APX", 1 << 19),
];

/// The features of which `bits` (XCR0 bits) hold some component, by name;
/// bits of no known feature as `xsave component N`.
pub fn xsave_feature_names(bits: u64) -> Vec<String> {
    let mut names: Vec<String> =
        XSAVE_FEATURES.iter().filter(|(_, mask)| bits & mask != 0).map(|(name, _)| name.to_string()).collect();
    let known = XSAVE_FEATURES.iter().fold(0, |all, (_, mask)| all | mask);
    names.extend((0..64).filter(|b| bits & !known & (1 << b) != 0).map(|b| format!("xsave component {b}")));
    names
}

/// Why a program that may use the xsave features `needed` (the XCR0 of
/// the machine that checkpointed it) cannot run on a CPU with `have`: the
/// features it lacks, named; None if it has them all.
///
/// XCR0 rather than the components in use in each thread's saved state
/// (the XSTATE_BV of its signal frame): a thread whose AVX-512 registers
/// are in their initial state at the checkpoint still runs code chosen
/// for AVX-512 (glibc picks its string functions, and libraries their
/// kernels, once, from CPUID and XCR0), which faults with SIGILL where
/// the CPU lacks it. Since every restart needs all of the image's, the
/// XCR0 of each machine the program ran on is within the last one's.
pub fn missing_xsave_features(needed: u64, have: u64) -> Option<String> {
    let missing = needed & !have;
    (missing != 0).then(|| {
        format!(
            "this CPU lacks {} (xsave components {missing:#x}), which the program may use: it was checkpointed on a \
             CPU with xsave features {needed:#x}, this one has {have:#x}",
            xsave_feature_names(missing).join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_features_are_named() {
        // An AVX-512 machine's image on an AVX2 one.
        let why = missing_xsave_features(0xe7, 0x7).unwrap();
        assert!(why.starts_with("this CPU lacks AVX-512 (xsave components 0xe0)"), "{why}");
        let why = missing_xsave_features(0x6_02e7, 0xe7).unwrap();
        assert!(why.contains("lacks PKRU (memory protection keys), AMX (xsave components 0x60200)"), "{why}");
        assert!(missing_xsave_features(0x7, 0xe7).is_none());
        assert_eq!(xsave_feature_names(1 << 30 | 1), ["x87", "xsave component 30"]);
    }
}
