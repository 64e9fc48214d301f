//! The arithmetic of SysV semaphore undo adjustments (semadj), shared by
//! the agent, which reads its own process's adjustments at a checkpoint,
//! and the restore, which gives each restored process its own again.
//!
//! The kernel keeps one adjustment per process (its threads share it) and
//! semaphore: a semop with SEM_UNDO of `sem_op` does `semadj -= sem_op`,
//! and when the process exits the kernel adds semadj to the semaphore's
//! value. No interface reads it, and only the process itself changes it,
//! by semops with SEM_UNDO (or a SETVAL/SETALL by anyone, which zeroes it,
//! or IPC_RMID). Two properties of the kernel's semop (`ipc/sem.c`,
//! `perform_atomic_semop_slow`, used whenever one call names a semaphore
//! more than once) make it readable and settable without changing
//! anything anyone sees:
//!
//! 1. the operations of one call are applied in order, each checked
//!    against what the previous ones left: a value below 0 would block
//!    (EAGAIN with IPC_NOWAIT); a value above SEMVMX (32767), or an
//!    adjustment outside [-32768, 32767], is ERANGE. On either, every
//!    operation of the call is taken back and nothing else happens (no
//!    wake-up; sempid and sem_otime are updated only by calls that
//!    succeed);
//! 2. a pair `+c`, `-c` on one semaphore, one of the two with SEM_UNDO, in
//!    the order that keeps the value within [0, SEMVMX], leaves the value
//!    as it was and moves semadj by `+c` (SEM_UNDO on the `-c`) or `-c`.
//!
//! [`shift`] moves semadj by any `delta` with such pairs, each of at most
//! `max(value, SEMVMX - value)` (at least 16384), so the value never
//! leaves the range and ends as it began:
//!
//! - **Setting** (restart): a new process, whose adjustment is 0, that
//!   makes the semop `shift(adj)` has `adj`, the value unchanged.
//! - **Reading** (checkpoint): `shift(delta)` followed by [`blocker`]
//!   (-32768, which no value can take) always fails, changing nothing. It
//!   fails with ERANGE exactly when `semadj + delta` leaves [-32768,
//!   32767] (the shift is monotonic, so it leaves the range at some step
//!   iff it does at the end) and with EAGAIN otherwise: with
//!   `delta = above(t)` it tells whether semadj > t, and [`read`] finds
//!   semadj by bisection in at most 17 calls.
//!
//! Probing one semaphore per call would do, but one call can test a whole
//! group of semaphores at once ("is any adjustment > 0?"): a process with
//! no adjustments, the usual case, costs two calls per group.

/// Largest value of a semaphore.
pub const SEMVMX: i32 = 32767;
/// The range of an adjustment.
pub const ADJ_MIN: i32 = -32768;
pub const ADJ_MAX: i32 = 32767;
/// `sem_flg` bits.
pub const SEM_UNDO: i16 = 0x1000;
pub const IPC_NOWAIT: i16 = 0o4000;
/// Most operations [`shift`] makes for a `delta` in [-65535, 65535]
/// (four pairs of at least 16384).
pub const MAX_SHIFT_OPS: usize = 8;

/// One operation of a semop call: the layout of the kernel's `struct
/// sembuf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SemOp {
    pub num: u16,
    pub op: i16,
    pub flg: i16,
}

/// Writes to `out` the operations on semaphore `num`, whose value is
/// `value`, that move this process's adjustment by `delta` and leave the
/// value as it is (see the module doc); returns how many. `None`: `out` is
/// too short, or `delta` is beyond any adjustment's reach (|delta| >
/// 65535) or `value` beyond SEMVMX.
pub fn shift(num: u16, value: u16, delta: i32, out: &mut [SemOp]) -> Option<usize> {
    let v = value as i32;
    if v > SEMVMX || !(-65535..=65535).contains(&delta) {
        return None;
    }
    // v + chunk <= SEMVMX or v - chunk >= 0, whichever has more room.
    let chunk = (SEMVMX - v).max(v);
    // Raising semadj is a decrement with SEM_UNDO, lowering it an increment.
    let (plus_flags, minus_flags) =
        if delta > 0 { (IPC_NOWAIT, SEM_UNDO | IPC_NOWAIT) } else { (SEM_UNDO | IPC_NOWAIT, IPC_NOWAIT) };
    let mut left = delta.abs();
    let mut n = 0;
    while left > 0 {
        let c = left.min(chunk);
        left -= c;
        let plus = SemOp { num, op: c as i16, flg: plus_flags };
        let minus = SemOp { num, op: -(c as i16), flg: minus_flags };
        // Up first while there is room above (v + c <= SEMVMX); else
        // c > SEMVMX - v, so c <= chunk = v and down first stays >= 0.
        let pair = if v + c <= SEMVMX { [plus, minus] } else { [minus, plus] };
        out.get_mut(n..n + 2)?.copy_from_slice(&pair);
        n += 2;
    }
    Some(n)
}

/// An operation no value can take (value - 32768 < 0): ends a probe, so
/// that the call fails whatever the shifts before it did.
pub fn blocker(num: u16) -> SemOp {
    SemOp { num, op: i16::MIN, flg: IPC_NOWAIT }
}

/// The delta whose [`shift`] leaves the range exactly when semadj > `t`.
pub fn above(t: i32) -> i32 {
    ADJ_MAX - t
}

/// The delta whose [`shift`] leaves the range exactly when semadj < `t`.
pub fn below(t: i32) -> i32 {
    ADJ_MIN - t
}

/// Finds an adjustment, given `beyond(delta)`: whether shifting it by
/// `delta` leaves the range (a probe). Two probes for 0, 17 at most.
pub fn read<E>(mut beyond: impl FnMut(i32) -> Result<bool, E>) -> Result<i32, E> {
    let (mut lo, mut hi) = if beyond(above(0))? {
        (1, ADJ_MAX)
    } else if beyond(below(0))? {
        (ADJ_MIN, -1)
    } else {
        return Ok(0);
    };
    // semadj in [lo, hi].
    while lo < hi {
        let mid = (lo + hi) >> 1; // floor, also below 0: lo <= mid < hi
        if beyond(above(mid))? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

#[cfg(test)]
pub(crate) mod model {
    //! The kernel's semop on duplicate operations, as `ipc/sem.c` does it.
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Sem {
        pub value: i32,
        pub adj: i32,
    }

    pub const EAGAIN: i32 = 11;
    pub const ERANGE: i32 = 34;

    /// Applies `ops` to one semaphore in order; on a failure takes them
    /// all back and returns the errno (every op here carries IPC_NOWAIT).
    pub fn semop(s: &mut Sem, ops: &[SemOp]) -> Result<(), i32> {
        let before = *s;
        for o in ops {
            let op = o.op as i32;
            let value = s.value + op;
            let fail = if op == 0 && s.value != 0 || value < 0 {
                Some(EAGAIN)
            } else if value > SEMVMX || o.flg & SEM_UNDO != 0 && !(ADJ_MIN..=ADJ_MAX).contains(&(s.adj - op)) {
                Some(ERANGE)
            } else {
                None
            };
            if let Some(e) = fail {
                *s = before;
                return Err(e);
            }
            assert!(o.flg & IPC_NOWAIT != 0, "an op that could block: {o:?}");
            if o.flg & SEM_UNDO != 0 {
                s.adj -= op;
            }
            s.value = value;
        }
        Ok(())
    }

    /// A probe as the agent makes it.
    pub fn beyond(s: &mut Sem, delta: i32) -> bool {
        let mut ops = [SemOp::default(); MAX_SHIFT_OPS + 1];
        let n = shift(0, s.value as u16, delta, &mut ops).unwrap();
        ops[n] = blocker(0);
        match semop(s, &ops[..=n]) {
            Err(ERANGE) => true,
            Err(EAGAIN) => false,
            other => panic!("a probe ended {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model::*;
    use super::*;

    const VALUES: [i32; 9] = [0, 1, 7, 16383, 16384, 16385, 30000, 32766, 32767];
    const ADJS: [i32; 13] = [0, 1, -1, 2, -2, 3, -7, 100, -100, 16384, -16385, ADJ_MAX, ADJ_MIN];

    #[test]
    fn a_probe_reads_every_adjustment_and_changes_nothing() {
        for value in VALUES {
            for adj in ADJS {
                let mut s = Sem { value, adj };
                let mut probes = 0;
                let got = read::<()>(|d| {
                    probes += 1;
                    Ok(beyond(&mut s, d))
                })
                .unwrap();
                assert_eq!(got, adj, "value {value}");
                assert_eq!(s, Sem { value, adj }, "the probes changed the semaphore");
                assert!(probes <= 17 && (adj != 0 || probes == 2), "{probes} probes for {adj}");
            }
        }
    }

    #[test]
    fn a_shift_sets_the_adjustment_and_leaves_the_value() {
        for value in VALUES {
            for adj in ADJS {
                let mut ops = [SemOp::default(); MAX_SHIFT_OPS];
                let n = shift(3, value as u16, adj, &mut ops).unwrap();
                assert!(n <= 4, "{n} ops to set {adj} at value {value}");
                assert!(ops[..n].iter().all(|o| o.num == 3 && o.op != 0));
                let mut s = Sem { value, adj: 0 };
                assert_eq!(semop(&mut s, &ops[..n]), Ok(()), "value {value}, adjustment {adj}: {:?}", &ops[..n]);
                assert_eq!(s, Sem { value, adj });
            }
        }
        // The largest shifts a probe makes fit MAX_SHIFT_OPS.
        let mut ops = [SemOp::default(); MAX_SHIFT_OPS];
        for value in VALUES {
            assert!(shift(0, value as u16, above(ADJ_MIN), &mut ops).is_some());
            assert!(shift(0, value as u16, below(ADJ_MAX), &mut ops).is_some());
        }
        assert_eq!(shift(0, 5, 65536, &mut ops), None);
        assert_eq!(shift(0, 5, 40000, &mut ops[..2]), None, "too short");
        assert_eq!(shift(0, 5, 0, &mut ops), Some(0));
    }
}
