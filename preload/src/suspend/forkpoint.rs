//! The point where a thread's life forks between "checkpoint taken, go on"
//! and "restarted from the image".
//!
//! `ckpt_fork_point(ctx, first, restart, arg)` saves the callee-saved
//! registers, the stack pointer and a resume address into `ctx`, then calls
//! `first(arg)` and returns. The thread's snapshot (copy-on-write child or
//! frozen memory) is taken while `first` runs, so in the image the frames
//! above the saved stack pointer are exactly as they were at the save. At
//! restart the restorer loads `ctx` and jumps to the resume address with the
//! restorer's header in `rdx`; the routine then calls `restart(arg, header)`
//! and returns to its caller as if `first` had returned.
//!
//! Writing this in assembly (instead of a setjmp-like call from Rust) keeps
//! the compiler out of it: Rust has no `returns_twice`, and a stack slot
//! reused after the save could otherwise hold a stale value on the second
//! return.

use ckrun_proto::SavedContext;

core::arch::global_asm!(
    ".text",
    ".globl ckpt_fork_point",
    ".hidden ckpt_fork_point",
    ".type ckpt_fork_point,@function",
    "ckpt_fork_point:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    // Entry rsp is 8 mod 16; six pushes keep it so; realign for the calls.
    "sub rsp, 8",
    "mov r12, rdx",
    "mov r13, rcx",
    "mov [rdi], rbx",
    "mov [rdi + 8], rbp",
    "mov [rdi + 16], r12",
    "mov [rdi + 24], r13",
    "mov [rdi + 32], r14",
    "mov [rdi + 40], r15",
    "mov [rdi + 48], rsp",
    "lea rax, [rip + 2f]",
    "mov [rdi + 56], rax",
    "mov rdi, rcx",
    "call rsi",
    "jmp 3f",
    // Resumed by the restorer: callee-saved registers and rsp come from ctx,
    // rdx holds the restorer header.
    "2:",
    "mov rdi, r13",
    "mov rsi, rdx",
    "call r12",
    "3:",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".size ckpt_fork_point, . - ckpt_fork_point",
);

pub type FirstFn = extern "C" fn(arg: u64);
pub type RestartFn = extern "C" fn(arg: u64, restorer_header: u64);

extern "C" {
    fn ckpt_fork_point(ctx: *mut SavedContext, first: FirstFn, restart: RestartFn, arg: u64);
}

/// Saves the calling thread's resume context into `ctx` and runs `first`;
/// after a restart from a snapshot taken during `first`, runs `restart`
/// instead. Either way, returns once the chosen function returns.
pub fn fork_point(ctx: &mut SavedContext, first: FirstFn, restart: RestartFn, arg: u64) {
    // SAFETY: ctx is a valid, writable SavedContext; both functions are
    // plain extern "C" functions; the routine preserves the C ABI
    // (callee-saved registers, stack alignment) on both return paths.
    unsafe { ckpt_fork_point(ctx, first, restart, arg) }
}
