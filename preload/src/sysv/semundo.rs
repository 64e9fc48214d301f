//! This process's SysV semaphore undo adjustments (SEM_UNDO), read for
//! the coordinator while the tree is stopped for a checkpoint.
//!
//! The kernel shows them to no one, but a process can probe its own:
//! semop calls that always fail, and fail with ERANGE or EAGAIN depending
//! on the adjustment, change nothing (`ckrun_proto::semadj` explains the
//! arithmetic). So the agent keeps no table of its own: the kernel's
//! numbers are read as they are at the checkpoint, whoever reset them
//! since (a SETVAL or SETALL of any process, inside the tree or not, an
//! IPC_RMID), across fork (a child starts with none) and exec (they stay,
//! the agent's memory does not), for threads (one list for all), and also
//! for adjustments made with raw syscalls. The semop wrappers stay as
//! they were: no cost on the program's own calls.
//!
//! The coordinator names the job's semaphore sets ([`kind::SEM_PROBE`]);
//! the leader, its process's other threads parked, probes them and
//! answers with the non-zero adjustments. Runs in the leader's signal
//! handler: raw syscalls, buffers on the stack, no allocation.

use crate::channel::send_msg;
use crate::sys;
use ckrun_proto::semadj::{self, SemOp, MAX_SHIFT_OPS};
use ckrun_proto::{kind, read_pod, SemProbeEnd, SemSet, SemUndo, MAX_PROBE_SETS};

/// Semaphores tested by one call ("is any adjustment of these > 0?"):
/// at most four operations each (a shift by 32767 or -32768 takes two
/// pairs), and the blocker: 65, within SEMOPM's default of 500. A kernel
/// set up with less (E2BIG) is probed one semaphore at a time.
const GROUP: usize = 16;
const OPS: usize = GROUP * 4 + 1;
const _: () = assert!(OPS > MAX_SHIFT_OPS);
/// Records per SEM_UNDO message.
const BATCH: usize = 64;
/// A group whose values changed under its probes (a process outside the
/// tree) is probed again this many times.
const TRIES: u32 = 3;

/// Answers one SEM_PROBE (`body`: its SemSet records): SEM_UNDO
/// messages, then SEM_UNDO_END.
pub(crate) fn answer(body: &[u8]) {
    let mut batch = [SemUndo::default(); BATCH];
    let mut n = 0;
    let mut end = SemProbeEnd::default();
    let size = core::mem::size_of::<SemSet>();
    for rec in body.chunks_exact(size).take(MAX_PROBE_SETS) {
        let Some(set) = read_pod::<SemSet>(rec) else { continue };
        let r = probe_set(set, &mut |u| {
            batch[n] = u;
            n += 1;
            if n == BATCH {
                send_msg(kind::SEM_UNDO, &batch);
                end.entries += n as u32;
                n = 0;
            }
        });
        if let Err(e) = r {
            if end.errno == 0 {
                end.errno = e;
                end.unreadable_id = set.id;
            }
        }
    }
    if n > 0 {
        send_msg(kind::SEM_UNDO, &batch[..n]);
        end.entries += n as u32;
    }
    send_msg(kind::SEM_UNDO_END, &[end]);
}

/// Hands each non-zero adjustment of this process in `set` to `emit`.
/// A set that is gone has none (IPC_RMID drops them). Err: an errno.
pub fn probe_set(set: SemSet, emit: &mut dyn FnMut(SemUndo)) -> Result<(), i32> {
    if set.nsems > u16::MAX as u32 + 1 {
        return Err(libc::EFBIG);
    }
    let mut first = 0;
    let mut group = GROUP;
    while first < set.nsems {
        let n = group.min((set.nsems - first) as usize);
        match probe_group(set.id, first as u16, n, emit) {
            Ok(()) => first += n as u32,
            Err(libc::E2BIG) if group > 1 => group = 1,
            Err(libc::EINVAL | libc::EIDRM) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Semaphores `first..first + n` of set `id`.
fn probe_group(id: i32, first: u16, n: usize, emit: &mut dyn FnMut(SemUndo)) -> Result<(), i32> {
    for _ in 0..TRIES {
        let mut values = [0u16; GROUP];
        read_values(id, first, &mut values[..n])?;
        let mut found = [(0u16, 0i32); GROUP];
        let mut nfound = 0;
        let any =
            beyond(id, first, &values[..n], semadj::above(0))? || beyond(id, first, &values[..n], semadj::below(0))?;
        if any {
            for (i, &v) in values[..n].iter().enumerate() {
                let num = first + i as u16;
                let adj = semadj::read(|delta| beyond(id, num, &[v], delta))?;
                if adj != 0 {
                    found[nfound] = (num, adj);
                    nfound += 1;
                }
            }
        }
        // The probes chose their operations by these values: only if none
        // changed meanwhile are their answers the adjustments.
        let mut after = [0u16; GROUP];
        read_values(id, first, &mut after[..n])?;
        if after[..n] == values[..n] {
            for &(num, adj) in &found[..nfound] {
                emit(SemUndo { id, num: num as u32, adj });
            }
            return Ok(());
        }
    }
    Err(libc::EAGAIN)
}

fn read_values(id: i32, first: u16, out: &mut [u16]) -> Result<(), i32> {
    for (i, v) in out.iter_mut().enumerate() {
        let r = sys::sem_getval(id, first as u32 + i as u32);
        if r < 0 {
            return Err(-r as i32);
        }
        *v = r as u16;
    }
    Ok(())
}

/// Whether shifting the adjustment of each of semaphores `first..`
/// (values `values`) by `delta` would leave the range for any of them: a
/// semop that fails either way and changes nothing.
fn beyond(id: i32, first: u16, values: &[u16], delta: i32) -> Result<bool, i32> {
    let mut ops = [SemOp::default(); OPS];
    let mut k = 0;
    for (i, &v) in values.iter().enumerate() {
        k += semadj::shift(first + i as u16, v, delta, &mut ops[k..OPS - 1]).ok_or(libc::E2BIG)?;
    }
    if k == 0 {
        return Ok(false); // no shift: nothing leaves the range
    }
    ops[k] = semadj::blocker(first);
    match sys::semop(id, &ops[..=k]) {
        r if r == -(libc::ERANGE as i64) => Ok(true),
        r if r == -(libc::EAGAIN as i64) => Ok(false),
        // The blocker cannot succeed; were it to, the shifts would have
        // happened: say so rather than report numbers.
        0 => Err(libc::EPROTO),
        r => Err(-r as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: i32, num: u16, op: i16, undo: bool) {
        let flg = if undo { semadj::SEM_UNDO } else { 0 };
        assert_eq!(sys::semop(id, &[SemOp { num, op, flg }]), 0, "semop {num} {op}");
    }

    fn probe(id: i32, nsems: u32) -> Vec<(u32, i32)> {
        let mut got = Vec::new();
        probe_set(SemSet { id, nsems }, &mut |u| {
            assert_eq!(u.id, id);
            got.push((u.num, u.adj));
        })
        .unwrap();
        got
    }

    fn values(id: i32, n: u16) -> Vec<i64> {
        (0..n).map(|i| sys::sem_getval(id, i as u32)).collect()
    }

    #[test]
    fn the_kernels_adjustments_are_read_and_left_as_they_are() {
        // SAFETY: plain SysV calls on a set this test makes and removes;
        // this test's thread shares the test process's undo list, and no
        // other test uses the set.
        unsafe {
            let n = 20u16; // two groups
            let id = libc::semget(libc::IPC_PRIVATE, n as i32, libc::IPC_CREAT | 0o600);
            assert!(id >= 0);
            let mut init: Vec<u16> = (0..n).map(|i| [10, 0, 32767, 16384][i as usize % 4]).collect();
            assert_eq!(libc::semctl(id, 0, libc::SETALL, init.as_mut_ptr()), 0);
            assert_eq!(probe(id, n as u32), vec![]);
            op(id, 0, -3, true); // adj +3
            op(id, 1, 5, true); // adj -5
            op(id, 2, -32767, true); // adj +32767
            op(id, 16, -1, true);
            op(id, 16, -1, true); // adj +2, in the second group
            op(id, 19, 2, false); // no adjustment
            let before = values(id, n);
            let pid_before = libc::semctl(id, 16, libc::GETPID);
            assert_eq!(probe(id, n as u32), vec![(0, 3), (1, -5), (2, 32767), (16, 2)]);
            assert_eq!(values(id, n), before, "the probe changed a value");
            assert_eq!(libc::semctl(id, 16, libc::GETPID), pid_before);

            // SETVAL zeroes the adjustments of that semaphore, and a fork
            // starts with none.
            assert_eq!(libc::semctl(id, 1, libc::SETVAL, 9), 0);
            assert_eq!(probe(id, n as u32), vec![(0, 3), (2, 32767), (16, 2)]);
            let child = libc::fork();
            if child == 0 {
                // Raw syscalls only: the test process has other threads.
                let mut found = 0;
                let r = probe_set(SemSet { id, nsems: n as u32 }, &mut |_| found += 1);
                libc::_exit(if r.is_ok() && found == 0 { 0 } else { 1 });
            }
            let mut st = 0;
            assert_eq!(libc::waitpid(child, &mut st, 0), child);
            assert_eq!(st, 0, "the forked child read adjustments");

            // Gone: none, and no error.
            assert_eq!(libc::semctl(id, 0, libc::IPC_RMID), 0);
            assert_eq!(probe(id, n as u32), vec![]);
        }
    }

    #[test]
    fn sem_op_is_the_kernels_sembuf() {
        assert_eq!(core::mem::size_of::<SemOp>(), core::mem::size_of::<libc::sembuf>());
        assert_eq!(semadj::SEM_UNDO as i32, libc::SEM_UNDO);
        assert_eq!(semadj::IPC_NOWAIT as i32, libc::IPC_NOWAIT);
    }
}
