//! Classic BPF (the language of `tcpdump` filters and of `SO_ATTACH_FILTER`), pure functions
//! over instructions and packet bytes: [`validate`] checks a program the way the kernel's
//! `bpf_check_classic` does (only the opcodes its interpreter knows, jumps inside the
//! program, constant divisors and shifts in range, scratch memory indexes below 16, a return
//! at the end), and [`run`] evaluates it on a packet like libpcap's `bpf_filter` does.
//!
//! The in-kernel interpreter (`agent-ebpf/src/filter.rs`) implements the same semantics, so
//! [`run`] is its oracle in the tests:
//! - A, X and the 16 scratch words M[] start at 0;
//! - loads are big-endian; a load past the end of the packet makes the program return 0;
//! - `len` is the packet's length on the wire, which may be more than the bytes at hand;
//! - division or modulo by a zero X returns 0; a shift by X >= 32 gives 0;
//! - the returned value is the number of bytes to keep, 0 = reject the packet.
//!
//! Ancillary loads (`SKF_AD_*`, negative absolute offsets) are refused by [`validate`]:
//! libpcap never emits them for an offline (dead) handle.

use agent_common::FilterInsn;
use thiserror::Error;

/// Most instructions of a program (the kernel's `BPF_MAXINSNS`).
pub const MAX_INSNS: usize = agent_common::FILTER_MAX_INSNS;
/// Scratch memory words (`BPF_MEMWORDS`).
pub const MEM_WORDS: u32 = 16;

/// The opcodes the kernel's classic BPF interpreter accepts (`bpf_check_classic`).
pub mod op {
    pub const LD_W_ABS: u16 = 0x20;
    pub const LD_H_ABS: u16 = 0x28;
    pub const LD_B_ABS: u16 = 0x30;
    pub const LD_W_IND: u16 = 0x40;
    pub const LD_H_IND: u16 = 0x48;
    pub const LD_B_IND: u16 = 0x50;
    pub const LD_W_LEN: u16 = 0x80;
    pub const LD_IMM: u16 = 0x00;
    pub const LD_MEM: u16 = 0x60;
    pub const LDX_IMM: u16 = 0x01;
    pub const LDX_MEM: u16 = 0x61;
    pub const LDX_W_LEN: u16 = 0x81;
    pub const LDX_B_MSH: u16 = 0xb1;
    pub const ST: u16 = 0x02;
    pub const STX: u16 = 0x03;
    pub const ALU_ADD_K: u16 = 0x04;
    pub const ALU_ADD_X: u16 = 0x0c;
    pub const ALU_SUB_K: u16 = 0x14;
    pub const ALU_SUB_X: u16 = 0x1c;
    pub const ALU_MUL_K: u16 = 0x24;
    pub const ALU_MUL_X: u16 = 0x2c;
    pub const ALU_DIV_K: u16 = 0x34;
    pub const ALU_DIV_X: u16 = 0x3c;
    pub const ALU_OR_K: u16 = 0x44;
    pub const ALU_OR_X: u16 = 0x4c;
    pub const ALU_AND_K: u16 = 0x54;
    pub const ALU_AND_X: u16 = 0x5c;
    pub const ALU_LSH_K: u16 = 0x64;
    pub const ALU_LSH_X: u16 = 0x6c;
    pub const ALU_RSH_K: u16 = 0x74;
    pub const ALU_RSH_X: u16 = 0x7c;
    pub const ALU_NEG: u16 = 0x84;
    pub const ALU_MOD_K: u16 = 0x94;
    pub const ALU_MOD_X: u16 = 0x9c;
    pub const ALU_XOR_K: u16 = 0xa4;
    pub const ALU_XOR_X: u16 = 0xac;
    pub const JMP_JA: u16 = 0x05;
    pub const JMP_JEQ_K: u16 = 0x15;
    pub const JMP_JEQ_X: u16 = 0x1d;
    pub const JMP_JGT_K: u16 = 0x25;
    pub const JMP_JGT_X: u16 = 0x2d;
    pub const JMP_JGE_K: u16 = 0x35;
    pub const JMP_JGE_X: u16 = 0x3d;
    pub const JMP_JSET_K: u16 = 0x45;
    pub const JMP_JSET_X: u16 = 0x4d;
    pub const RET_K: u16 = 0x06;
    pub const RET_A: u16 = 0x16;
    pub const MISC_TAX: u16 = 0x07;
    pub const MISC_TXA: u16 = 0x87;
}

/// Why a program is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidProgram {
    #[error("the program is empty")]
    Empty,
    #[error("the program has {0} instructions, at most {MAX_INSNS} are allowed")]
    TooLong(usize),
    #[error("instruction {pc}: unknown opcode {code:#06x}")]
    Opcode { pc: usize, code: u16 },
    #[error("instruction {pc}: jump past the end of the program")]
    Jump { pc: usize },
    #[error("instruction {pc}: scratch memory index {k} (at most {})", MEM_WORDS - 1)]
    MemIndex { pc: usize, k: u32 },
    #[error("instruction {pc}: division by a constant zero")]
    DivByZero { pc: usize },
    #[error("instruction {pc}: shift by {k} bits")]
    Shift { pc: usize, k: u32 },
    #[error("instruction {pc}: ancillary load (negative offset {k:#x}) not supported")]
    Ancillary { pc: usize, k: u32 },
    #[error("instruction {pc}: reads scratch memory word {k} before any store to it")]
    MemUnset { pc: usize, k: u32 },
    #[error("the program does not end with a return")]
    NoReturn,
}

/// Checks `prog` like the kernel does before it runs a classic BPF program.
pub fn validate(prog: &[FilterInsn]) -> Result<(), InvalidProgram> {
    use op::*;
    if prog.is_empty() {
        return Err(InvalidProgram::Empty);
    }
    if prog.len() > MAX_INSNS {
        return Err(InvalidProgram::TooLong(prog.len()));
    }
    let n = prog.len();
    for (pc, i) in prog.iter().enumerate() {
        let next = pc + 1;
        match i.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS if i.k >= 0x8000_0000 => {
                return Err(InvalidProgram::Ancillary { pc, k: i.k });
            }
            LD_W_ABS | LD_H_ABS | LD_B_ABS | LD_W_IND | LD_H_IND | LD_B_IND | LD_W_LEN | LD_IMM
            | LDX_IMM | LDX_W_LEN | LDX_B_MSH | ALU_ADD_K | ALU_ADD_X | ALU_SUB_K | ALU_SUB_X
            | ALU_MUL_K | ALU_MUL_X | ALU_DIV_X | ALU_OR_K | ALU_OR_X | ALU_AND_K | ALU_AND_X
            | ALU_LSH_X | ALU_RSH_X | ALU_NEG | ALU_MOD_X | ALU_XOR_K | ALU_XOR_X | RET_K
            | RET_A | MISC_TAX | MISC_TXA => {}
            LD_MEM | LDX_MEM | ST | STX if i.k >= MEM_WORDS => {
                return Err(InvalidProgram::MemIndex { pc, k: i.k });
            }
            LD_MEM | LDX_MEM | ST | STX => {}
            ALU_DIV_K | ALU_MOD_K if i.k == 0 => return Err(InvalidProgram::DivByZero { pc }),
            ALU_DIV_K | ALU_MOD_K => {}
            ALU_LSH_K | ALU_RSH_K if i.k >= 32 => {
                return Err(InvalidProgram::Shift { pc, k: i.k });
            }
            ALU_LSH_K | ALU_RSH_K => {}
            JMP_JA => {
                if (i.k as usize) >= n - next {
                    return Err(InvalidProgram::Jump { pc });
                }
            }
            JMP_JEQ_K | JMP_JEQ_X | JMP_JGT_K | JMP_JGT_X | JMP_JGE_K | JMP_JGE_X | JMP_JSET_K
            | JMP_JSET_X => {
                if next + usize::from(i.jt.max(i.jf)) >= n {
                    return Err(InvalidProgram::Jump { pc });
                }
            }
            code => return Err(InvalidProgram::Opcode { pc, code }),
        }
    }
    match prog[n - 1].code {
        op::RET_K | op::RET_A => {}
        _ => return Err(InvalidProgram::NoReturn),
    }
    check_loads_and_stores(prog)
}

/// Like the kernel's `check_load_and_stores`: on every path, a scratch memory word is stored
/// before it is loaded (so no program depends on M[]'s initial value).
fn check_loads_and_stores(prog: &[FilterInsn]) -> Result<(), InvalidProgram> {
    use op::*;
    // Words surely stored on every path reaching each instruction.
    let mut masks = vec![u16::MAX; prog.len()];
    let mut valid: u16 = 0;
    for (pc, i) in prog.iter().enumerate() {
        valid &= masks[pc];
        let bit = 1u16 << (i.k & 15);
        match i.code {
            ST | STX => valid |= bit,
            LD_MEM | LDX_MEM if valid & bit == 0 => {
                return Err(InvalidProgram::MemUnset { pc, k: i.k });
            }
            JMP_JA => {
                masks[pc + 1 + i.k as usize] &= valid;
                valid = u16::MAX;
            }
            JMP_JEQ_K | JMP_JEQ_X | JMP_JGT_K | JMP_JGT_X | JMP_JGE_K | JMP_JGE_X | JMP_JSET_K
            | JMP_JSET_X => {
                masks[pc + 1 + usize::from(i.jt)] &= valid;
                masks[pc + 1 + usize::from(i.jf)] &= valid;
                valid = u16::MAX;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Big-endian load of `size` (1, 2 or 4) bytes at `off`, `None` past the end of `data`.
fn load(data: &[u8], off: u64, size: usize) -> Option<u32> {
    let off = usize::try_from(off).ok()?;
    let b = data.get(off..off.checked_add(size)?)?;
    Some(b.iter().fold(0u32, |a, &x| (a << 8) | u32::from(x)))
}

/// Runs `prog` on a packet whose first bytes are `data` and whose length on the wire is
/// `wirelen`; returns how many bytes to keep (0 = rejected). Never panics: an instruction
/// [`validate`] would refuse makes it return 0.
pub fn run(prog: &[FilterInsn], data: &[u8], wirelen: u32) -> u32 {
    use op::*;
    let (mut a, mut x) = (0u32, 0u32);
    let mut m = [0u32; MEM_WORDS as usize];
    let mut pc = 0usize;
    // Jumps only go forward: at most one step per instruction.
    for _ in 0..prog.len() {
        let Some(i) = prog.get(pc) else { return 0 };
        pc += 1;
        let k = i.k;
        let ind = u64::from(x) + u64::from(k);
        let mem = (k < MEM_WORDS).then_some(k as usize);
        let jump = |cond: bool| pc + usize::from(if cond { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS | LD_H_ABS | LD_B_ABS | LD_W_IND | LD_H_IND | LD_B_IND => {
                let size = match i.code & 0x18 {
                    0x00 => 4,
                    0x08 => 2,
                    _ => 1,
                };
                let off = if i.code & 0xe0 == 0x20 {
                    u64::from(k)
                } else {
                    ind
                };
                match load(data, off, size) {
                    Some(v) => a = v,
                    None => return 0,
                }
            }
            LD_W_LEN => a = wirelen,
            LDX_W_LEN => x = wirelen,
            LD_IMM => a = k,
            LDX_IMM => x = k,
            LD_MEM => match mem {
                Some(j) => a = m[j],
                None => return 0,
            },
            LDX_MEM => match mem {
                Some(j) => x = m[j],
                None => return 0,
            },
            LDX_B_MSH => match load(data, u64::from(k), 1) {
                Some(v) => x = (v & 0xf) << 2,
                None => return 0,
            },
            ST => match mem {
                Some(j) => m[j] = a,
                None => return 0,
            },
            STX => match mem {
                Some(j) => m[j] = x,
                None => return 0,
            },
            ALU_ADD_K => a = a.wrapping_add(k),
            ALU_ADD_X => a = a.wrapping_add(x),
            ALU_SUB_K => a = a.wrapping_sub(k),
            ALU_SUB_X => a = a.wrapping_sub(x),
            ALU_MUL_K => a = a.wrapping_mul(k),
            ALU_MUL_X => a = a.wrapping_mul(x),
            ALU_DIV_K | ALU_DIV_X | ALU_MOD_K | ALU_MOD_X => {
                let d = if i.code & 0x08 == 0 { k } else { x };
                if d == 0 {
                    return 0;
                }
                a = if i.code & 0xf0 == 0x30 { a / d } else { a % d };
            }
            ALU_OR_K => a |= k,
            ALU_OR_X => a |= x,
            ALU_AND_K => a &= k,
            ALU_AND_X => a &= x,
            ALU_XOR_K => a ^= k,
            ALU_XOR_X => a ^= x,
            ALU_LSH_K | ALU_LSH_X => {
                let s = if i.code & 0x08 == 0 { k } else { x };
                a = a.checked_shl(s).unwrap_or(0);
            }
            ALU_RSH_K | ALU_RSH_X => {
                let s = if i.code & 0x08 == 0 { k } else { x };
                a = a.checked_shr(s).unwrap_or(0);
            }
            ALU_NEG => a = a.wrapping_neg(),
            MISC_TAX => x = a,
            MISC_TXA => a = x,
            RET_K => return k,
            RET_A => return a,
            JMP_JA => match pc.checked_add(k as usize) {
                Some(t) => pc = t,
                None => return 0,
            },
            JMP_JEQ_K => pc = jump(a == k),
            JMP_JEQ_X => pc = jump(a == x),
            JMP_JGT_K => pc = jump(a > k),
            JMP_JGT_X => pc = jump(a > x),
            JMP_JGE_K => pc = jump(a >= k),
            JMP_JGE_X => pc = jump(a >= x),
            JMP_JSET_K => pc = jump(a & k != 0),
            JMP_JSET_X => pc = jump(a & x != 0),
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use op::*;

    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> FilterInsn {
        FilterInsn { code, jt, jf, k }
    }

    #[test]
    fn validate_refuses_what_the_kernel_refuses() {
        let ret = ins(RET_K, 0, 0, 1);
        assert_eq!(validate(&[]), Err(InvalidProgram::Empty));
        assert_eq!(validate(&[ret]), Ok(()));
        assert_eq!(
            validate(&vec![ret; MAX_INSNS + 1]),
            Err(InvalidProgram::TooLong(MAX_INSNS + 1))
        );
        assert_eq!(validate(&vec![ret; MAX_INSNS]), Ok(()));
        assert_eq!(
            validate(&[ins(LD_IMM, 0, 0, 1)]),
            Err(InvalidProgram::NoReturn)
        );
        assert_eq!(
            validate(&[ins(0x0e, 0, 0, 0), ret]),
            Err(InvalidProgram::Opcode { pc: 0, code: 0x0e })
        );
        // LD|H|IMM and a JMP with an unknown operation.
        assert!(validate(&[ins(0x08, 0, 0, 0), ret]).is_err());
        assert!(validate(&[ins(0x55, 0, 0, 0), ret, ret]).is_err());
        assert!(validate(&[ins(0x115, 0, 0, 0), ret, ret]).is_err());
        assert_eq!(
            validate(&[ins(JMP_JA, 0, 0, 1), ret]),
            Err(InvalidProgram::Jump { pc: 0 })
        );
        assert_eq!(validate(&[ins(JMP_JA, 0, 0, 0), ret]), Ok(()));
        assert_eq!(
            validate(&[ins(JMP_JA, 0, 0, u32::MAX), ret]),
            Err(InvalidProgram::Jump { pc: 0 })
        );
        assert_eq!(validate(&[ins(JMP_JEQ_K, 1, 0, 0), ret, ret]), Ok(()));
        assert_eq!(
            validate(&[ins(JMP_JEQ_K, 0, 2, 0), ret, ret]),
            Err(InvalidProgram::Jump { pc: 0 })
        );
        assert_eq!(
            validate(&[ins(ST, 0, 0, 16), ret]),
            Err(InvalidProgram::MemIndex { pc: 0, k: 16 })
        );
        assert_eq!(
            validate(&[ins(LDX_MEM, 0, 0, 3), ret]),
            Err(InvalidProgram::MemUnset { pc: 0, k: 3 })
        );
        // Stored on one branch only.
        assert_eq!(
            validate(&[
                ins(JMP_JEQ_K, 0, 1, 0),
                ins(ST, 0, 0, 3),
                ins(LD_MEM, 0, 0, 3),
                ret
            ]),
            Err(InvalidProgram::MemUnset { pc: 2, k: 3 })
        );
        assert_eq!(
            validate(&[
                ins(ST, 0, 0, 3),
                ins(JMP_JEQ_K, 0, 1, 0),
                ins(ST, 0, 0, 4),
                ins(LD_MEM, 0, 0, 3),
                ret
            ]),
            Ok(())
        );
        assert_eq!(
            validate(&[ins(ALU_DIV_K, 0, 0, 0), ret]),
            Err(InvalidProgram::DivByZero { pc: 0 })
        );
        assert_eq!(
            validate(&[ins(ALU_LSH_K, 0, 0, 32), ret]),
            Err(InvalidProgram::Shift { pc: 0, k: 32 })
        );
        assert_eq!(
            validate(&[ins(LD_H_ABS, 0, 0, 0xffff_f000), ret]),
            Err(InvalidProgram::Ancillary {
                pc: 0,
                k: 0xffff_f000
            })
        );
    }

    #[test]
    fn loads_are_big_endian_and_bounded() {
        let data = [0x12, 0x34, 0x56, 0x78, 0x9a];
        let prog = |code, k| [ins(code, 0, 0, k), ins(RET_A, 0, 0, 0)];
        assert_eq!(run(&prog(LD_W_ABS, 0), &data, 5), 0x1234_5678);
        assert_eq!(run(&prog(LD_W_ABS, 1), &data, 5), 0x3456_789a);
        assert_eq!(run(&prog(LD_W_ABS, 2), &data, 5), 0);
        assert_eq!(run(&prog(LD_H_ABS, 3), &data, 5), 0x789a);
        assert_eq!(run(&prog(LD_B_ABS, 4), &data, 5), 0x9a);
        assert_eq!(run(&prog(LD_B_ABS, 5), &data, 5), 0);
        // `len` is the length on the wire, not the bytes at hand.
        assert_eq!(run(&prog(LD_W_LEN, 0), &data, 1500), 1500);
        // X + k, no wrap-around.
        let ind = [
            ins(LDX_IMM, 0, 0, 2),
            ins(LD_H_IND, 0, 0, 1),
            ins(RET_A, 0, 0, 0),
        ];
        assert_eq!(run(&ind, &data, 5), 0x789a);
        let wrap = [
            ins(LDX_IMM, 0, 0, u32::MAX),
            ins(LD_B_IND, 0, 0, 1),
            ins(RET_A, 0, 0, 0),
        ];
        assert_eq!(run(&wrap, &data, 5), 0);
        // The IPv4 header length idiom: X = 4 * (P[k] & 0xf).
        let msh = [
            ins(LDX_B_MSH, 0, 0, 0),
            ins(MISC_TXA, 0, 0, 0),
            ins(RET_A, 0, 0, 0),
        ];
        assert_eq!(run(&msh, &[0x45], 1), 20);
    }

    #[test]
    fn alu_jumps_memory_and_returns() {
        let run0 = |p: &[FilterInsn]| run(p, &[], 0);
        let alu = |code, a, x| {
            run0(&[
                ins(LDX_IMM, 0, 0, x),
                ins(LD_IMM, 0, 0, a),
                ins(code, 0, 0, 0),
                ins(RET_A, 0, 0, 0),
            ])
        };
        assert_eq!(alu(ALU_ADD_X, u32::MAX, 2), 1);
        assert_eq!(alu(ALU_SUB_X, 1, 2), u32::MAX);
        assert_eq!(alu(ALU_MUL_X, 0x8000_0000, 2), 0);
        assert_eq!(alu(ALU_DIV_X, 7, 2), 3);
        assert_eq!(alu(ALU_MOD_X, 7, 2), 1);
        // Division by a zero X ends the program with 0, whatever would follow.
        assert_eq!(alu(ALU_DIV_X, 7, 0), 0);
        assert_eq!(alu(ALU_MOD_X, 7, 0), 0);
        assert_eq!(alu(ALU_LSH_X, 1, 31), 0x8000_0000);
        assert_eq!(alu(ALU_LSH_X, 1, 32), 0);
        assert_eq!(alu(ALU_RSH_X, 0x8000_0000, 40), 0);
        assert_eq!(alu(ALU_XOR_X, 0xff, 0x0f), 0xf0);
        assert_eq!(alu(ALU_NEG, 1, 0), u32::MAX);
        assert_eq!(
            run0(&[
                ins(LD_IMM, 0, 0, 9),
                ins(ST, 0, 0, 15),
                ins(LDX_MEM, 0, 0, 15),
                ins(LD_IMM, 0, 0, 0),
                ins(MISC_TXA, 0, 0, 0),
                ins(RET_A, 0, 0, 0),
            ]),
            9
        );
        // jeq #5, jt 1 -> ret #111, else ret #222.
        let jeq = |a| {
            run0(&[
                ins(LD_IMM, 0, 0, a),
                ins(JMP_JEQ_K, 1, 0, 5),
                ins(RET_K, 0, 0, 222),
                ins(RET_K, 0, 0, 111),
            ])
        };
        assert_eq!((jeq(5), jeq(6)), (111, 222));
        assert_eq!(
            run0(&[
                ins(JMP_JA, 0, 0, 1),
                ins(RET_K, 0, 0, 1),
                ins(RET_K, 0, 0, 2)
            ]),
            2
        );
        // Invalid programs never panic.
        assert_eq!(run0(&[ins(JMP_JA, 0, 0, u32::MAX)]), 0);
        assert_eq!(run0(&[ins(LD_MEM, 0, 0, 99), ins(RET_A, 0, 0, 0)]), 0);
        assert_eq!(run0(&[ins(LD_IMM, 0, 0, 1)]), 0);
        assert_eq!(run0(&[]), 0);
    }
}
