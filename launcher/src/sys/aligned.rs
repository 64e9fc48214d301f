//! Page-aligned byte buffers, for `O_DIRECT` I/O: the kernel moves data
//! straight between such a buffer and the disk only if its address, length
//! and file offset are all multiples of the device's block size.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};

/// The alignment asked of direct I/O. 4096 covers every block size in
/// common use (512-byte and 4 KiB sector devices alike).
pub const DIRECT_ALIGN: usize = 4096;

/// A zero-initialized, `DIRECT_ALIGN`-aligned byte buffer of fixed length.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A buffer of at least `len` bytes, rounded up to whole blocks.
    pub fn new(len: usize) -> Self {
        let len = round_up(len.max(1));
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, DIRECT_ALIGN).expect("buffer sizes are far below isize::MAX")
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of len initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this very layout.
        unsafe { dealloc(self.ptr, Self::layout(self.len)) }
    }
}

/// `n` rounded up to a multiple of `DIRECT_ALIGN`.
pub fn round_up(n: usize) -> usize {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::new(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[8191] = 1;
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(4096), 4096);
        assert_eq!(round_up(4097), 8192);
    }
}
