//! The restorer: a small position-independent routine, copied into its
//! own reservation, that executes the restore plan's steps as raw
//! syscalls once nothing of ckrun may be used any more (ckrun's own
//! memory is unmapped by one of those steps).
//!
//! It interprets a table of 80-byte operations:
//!
//! | word | 0 kind | 1 nr | 2..7 args | 8 check | 9 expected |
//!
//! kind 1: syscall `nr(args)`; kind 2: clone3(args[0], args[1]), the new
//! thread enters the context at args[2]; kind 3: enter the context at
//! args[0]. check 0: none, 1: result must equal `expected`, 2: result must
//! not be an error. On a failed check it sends the prepared RESTORE_FAILED
//! message on the report fd and exits with status 70.
//!
//! "Entering a context" loads the callee-saved registers and the stack
//! pointer a parked thread saved at its fork point in the agent, puts the
//! restorer header in rdx, and jumps to the saved resume address.

use super::plan::{data_len, Op, RestorePlan, RESTORER_STACK};
use crate::image::manifest::ProcessImage;
use crate::sys::proc::CloneArgs;
use crate::sys::PAGE_SIZE;
use anyhow::{bail, Result};
use ckrun_proto::{kind, restorer_header as rh};

core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl ckrun_restorer_start",
    ".hidden ckrun_restorer_start",
    "ckrun_restorer_start:",
    // rdi: header. r12 header, r13 ops, r14 op count, r15 index, rbx op.
    "mov r12, rdi",
    "mov rsp, [r12 + 24]",
    "mov r13, [r12 + 8]",
    "mov r14, [r12 + 16]",
    "xor r15d, r15d",
    "xor ebx, ebx",
    ".Lrst_loop:",
    "cmp r15, r14",
    "jae .Lrst_fail",
    "imul rbx, r15, 80",
    "add rbx, r13",
    "mov rax, [rbx]",
    "cmp rax, 1",
    "je .Lrst_syscall",
    "cmp rax, 2",
    "je .Lrst_clone",
    "cmp rax, 3",
    "je .Lrst_jump",
    "jmp .Lrst_fail",
    ".Lrst_syscall:",
    "mov rax, [rbx + 8]",
    "mov rdi, [rbx + 16]",
    "mov rsi, [rbx + 24]",
    "mov rdx, [rbx + 32]",
    "mov r10, [rbx + 40]",
    "mov r8, [rbx + 48]",
    "mov r9, [rbx + 56]",
    "syscall",
    "jmp .Lrst_check",
    ".Lrst_clone:",
    "mov eax, 435",
    "mov rdi, [rbx + 16]",
    "mov rsi, [rbx + 24]",
    "syscall",
    "test rax, rax",
    "jnz .Lrst_check",
    // The new thread: no stack of its own yet, and it needs none.
    "mov rcx, [rbx + 32]",
    "jmp .Lrst_enter",
    ".Lrst_jump:",
    "mov rcx, [rbx + 16]",
    ".Lrst_enter:",
    "mov rdx, r12",
    "mov rbx, [rcx]",
    "mov rbp, [rcx + 8]",
    "mov r12, [rcx + 16]",
    "mov r13, [rcx + 24]",
    "mov r14, [rcx + 32]",
    "mov r15, [rcx + 40]",
    "mov rsp, [rcx + 48]",
    "mov eax, 1",
    "jmp qword ptr [rcx + 56]",
    ".Lrst_check:",
    "mov rcx, [rbx + 64]",
    "test rcx, rcx",
    "jz .Lrst_next",
    "cmp rcx, 1",
    "jne .Lrst_nonneg",
    "cmp rax, [rbx + 72]",
    "jne .Lrst_fail",
    "jmp .Lrst_next",
    ".Lrst_nonneg:",
    "cmp rax, -4095",
    "jae .Lrst_fail",
    ".Lrst_next:",
    "inc r15",
    "jmp .Lrst_loop",
    ".Lrst_fail:",
    "mov [r12 + 64], r15",
    "mov [r12 + 72], rax",
    "xor ecx, ecx",
    "test rbx, rbx",
    "jz .Lrst_report",
    "mov rcx, [rbx + 8]",
    ".Lrst_report:",
    "mov [r12 + 80], rcx",
    "mov eax, 1",
    "mov rdi, [r12 + 32]",
    "lea rsi, [r12 + 56]",
    "mov edx, 32",
    "syscall",
    "mov eax, 231",
    "mov edi, 70",
    "syscall",
    "ud2",
    ".globl ckrun_restorer_end",
    ".hidden ckrun_restorer_end",
    "ckrun_restorer_end:",
);

extern "C" {
    static ckrun_restorer_start: u8;
    static ckrun_restorer_end: u8;
}

/// Exit status of a restore child whose restorer failed.
pub const RESTORER_FAILED: i32 = 70;

fn code() -> &'static [u8] {
    // SAFETY: both symbols delimit the routine above in this binary's text,
    // which stays mapped and readable for the life of the process.
    unsafe {
        let s = core::ptr::addr_of!(ckrun_restorer_start);
        let e = core::ptr::addr_of!(ckrun_restorer_end);
        std::slice::from_raw_parts(s, e as usize - s as usize)
    }
}

const K_SYSCALL: u64 = 1;
const K_CLONE: u64 = 2;
const K_JUMP: u64 = 3;
const CHECK_EQ: u64 = 1;

const CLONE_THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS) as u64;

/// The restorer's data area, laid out for a reservation at `blob_at`.
pub struct Encoded {
    /// Bytes to copy to `blob_at + PAGE_SIZE`.
    pub data: Vec<u8>,
    pub header_addr: u64,
}

fn put(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Lays out the header, the operation table and what they point to.
/// Every restored thread takes the process's credentials from it (see
/// `crate::creds`).
pub fn encode(plan: &RestorePlan, p: &ProcessImage, exe_fd: i32, report_fd: i32) -> Result<Encoded> {
    let nthreads = p.threads.len();
    let dlen = data_len(plan.ops.len(), p.auxv.len(), nthreads) as usize;
    let base = plan.blob_at + PAGE_SIZE;
    if PAGE_SIZE + dlen as u64 + RESTORER_STACK > plan.blob_len {
        bail!("restorer data does not fit its reservation");
    }
    let mut d = vec![0u8; dlen];
    let ops_off = rh::SIZE;
    let mm_off = ops_off + plan.ops.len() * 80;
    let auxv_off = mm_off + 104;
    let threads_off = auxv_off + p.auxv.len() * 8;
    let ctx_off = |i: usize| threads_off + i * 160;

    // Header.
    put(&mut d, rh::OFF_MAGIC, rh::MAGIC);
    put(&mut d, rh::OFF_OPS, base + ops_off as u64);
    put(&mut d, rh::OFF_NOPS, plan.ops.len() as u64);
    put(&mut d, rh::OFF_STACK_TOP, (plan.blob_at + plan.blob_len) & !15);
    put(&mut d, rh::OFF_REPORT_FD, report_fd as u64);
    put(&mut d, rh::OFF_BLOB_BASE, plan.blob_at);
    put(&mut d, rh::OFF_BLOB_LEN, plan.blob_len);
    let c = &p.creds;
    put(&mut d, rh::OFF_CREDS, 1);
    put(&mut d, rh::OFF_CAP_EFFECTIVE, c.cap_effective);
    put(&mut d, rh::OFF_CAP_PERMITTED, c.cap_permitted);
    put(&mut d, rh::OFF_CAP_INHERITABLE, c.cap_inheritable);
    put(&mut d, rh::OFF_CAP_BOUNDING, c.cap_bounding);
    put(&mut d, rh::OFF_CAP_AMBIENT, c.cap_ambient);
    put(&mut d, rh::OFF_SECUREBITS, c.securebits as u64);
    put(&mut d, rh::OFF_NO_NEW_PRIVS, c.no_new_privs as u64);
    put(&mut d, rh::OFF_DUMPABLE, c.dumpable as u64);
    d[rh::OFF_FAIL_MSG..rh::OFF_FAIL_MSG + 4].copy_from_slice(&kind::RESTORE_FAILED.to_ne_bytes());
    d[rh::OFF_FAIL_MSG + 4..rh::OFF_FAIL_MSG + 8].copy_from_slice(&1u32.to_ne_bytes());

    // PR_SET_MM_MAP's struct prctl_mm_map.
    let m = &p.mm;
    for (i, v) in [
        m.start_code,
        m.end_code,
        m.start_data,
        m.end_data,
        m.start_brk,
        m.brk,
        m.start_stack,
        m.arg_start,
        m.arg_end,
        m.env_start,
        m.env_end,
        base + auxv_off as u64,
    ]
    .iter()
    .enumerate()
    {
        put(&mut d, mm_off + 8 * i, *v);
    }
    d[mm_off + 96..mm_off + 100].copy_from_slice(&((p.auxv.len() * 8) as u32).to_ne_bytes());
    d[mm_off + 100..mm_off + 104].copy_from_slice(&(exe_fd as u32).to_ne_bytes());
    for (i, w) in p.auxv.iter().enumerate() {
        put(&mut d, auxv_off + 8 * i, *w);
    }

    // Per thread: context, clone_args, tid.
    for (i, t) in p.threads.iter().enumerate() {
        let o = ctx_off(i);
        for (j, r) in t.ctx.iter().enumerate() {
            put(&mut d, o + 8 * j, *r);
        }
        let tid_addr = base + (o + 152) as u64;
        d[o + 152..o + 156].copy_from_slice(&t.tid.to_ne_bytes());
        let ca = CloneArgs {
            flags: CLONE_THREAD_FLAGS,
            tls: t.fs_base,
            set_tid: tid_addr,
            set_tid_size: 1,
            ..Default::default()
        };
        for (j, v) in [
            ca.flags,
            ca.pidfd,
            ca.child_tid,
            ca.parent_tid,
            ca.exit_signal,
            ca.stack,
            ca.stack_size,
            ca.tls,
            ca.set_tid,
            ca.set_tid_size,
            ca.cgroup,
        ]
        .iter()
        .enumerate()
        {
            put(&mut d, o + 64 + 8 * j, *v);
        }
    }

    // Operations.
    for (i, op) in plan.ops.iter().enumerate() {
        let w: [u64; 10] = match *op {
            Op::Mremap { from, len, to } => {
                let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
                [K_SYSCALL, libc::SYS_mremap as u64, from, len, len, flags, to, 0, CHECK_EQ, to]
            }
            Op::Munmap { start, len } => [K_SYSCALL, libc::SYS_munmap as u64, start, len, 0, 0, 0, 0, CHECK_EQ, 0],
            Op::SetMm => [
                K_SYSCALL,
                libc::SYS_prctl as u64,
                libc::PR_SET_MM as u64,
                libc::PR_SET_MM_MAP as u64,
                base + mm_off as u64,
                104,
                0,
                0,
                CHECK_EQ,
                0,
            ],
            Op::CloseExe => [K_SYSCALL, libc::SYS_close as u64, exe_fd as u64, 0, 0, 0, 0, 0, CHECK_EQ, 0],
            Op::SetFs { base: fs } => [K_SYSCALL, libc::SYS_arch_prctl as u64, 0x1002, fs, 0, 0, 0, 0, CHECK_EQ, 0],
            Op::CloneThread(t) => {
                let o = ctx_off(t);
                [K_CLONE, 435, base + o as u64 + 64, 88, base + o as u64, 0, 0, 0, CHECK_EQ, p.threads[t].tid as u64]
            }
            Op::Signal { tid, sig } => {
                [K_SYSCALL, libc::SYS_tgkill as u64, p.pid as u64, tid as u64, sig as u64, 0, 0, 0, CHECK_EQ, 0]
            }
            Op::ExitThread => [K_SYSCALL, libc::SYS_exit as u64, 0, 0, 0, 0, 0, 0, 0, 0],
            Op::Jump(t) => [K_JUMP, 0, base + ctx_off(t) as u64, 0, 0, 0, 0, 0, 0, 0],
        };
        for (j, v) in w.iter().enumerate() {
            put(&mut d, ops_off + i * 80 + 8 * j, *v);
        }
    }
    Ok(Encoded { data: d, header_addr: base })
}

/// Maps the reservation, copies the routine and its data in, and jumps.
/// Never returns: the restorer becomes the restored program.
///
/// # Safety
/// Every thread but the caller must have exited, all signals must be
/// blocked and the caller's rseq area unregistered: the restorer unmaps
/// everything this process had.
pub unsafe fn launch(plan: &RestorePlan, enc: &Encoded) -> Result<std::convert::Infallible> {
    let code = code();
    if code.len() as u64 > PAGE_SIZE {
        bail!("restorer larger than a page");
    }
    let at = plan.blob_at;
    // SAFETY: MAP_FIXED_NOREPLACE only takes free address space, which the
    // plan reserved for the restorer.
    let r = unsafe {
        libc::mmap(
            at as *mut _,
            plan.blob_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if r as u64 != at {
        bail!("cannot map the restorer at {at:#x}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the reservation is ours, writable, and large enough for the
    // code page plus the encoded data (checked by `encode`).
    unsafe {
        std::ptr::copy_nonoverlapping(code.as_ptr(), at as *mut u8, code.len());
        std::ptr::copy_nonoverlapping(enc.data.as_ptr(), (at + PAGE_SIZE) as *mut u8, enc.data.len());
        if libc::mprotect(at as *mut _, PAGE_SIZE as usize, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            bail!("cannot make the restorer executable: {}", std::io::Error::last_os_error());
        }
        std::arch::asm!("jmp {entry}", entry = in(reg) at, in("rdi") enc.header_addr, options(noreturn));
    }
}
