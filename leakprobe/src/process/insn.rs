//! The few x86-64 instruction forms leakprobe needs to recognise.
//!
//! `lock add|sub %r64, disp8(%base)`:
//! Node's `NodeArrayBufferAllocator::Free` starts with one (it decrements the allocator's byte
//! counter). The kernel cannot place a uprobe on a LOCK-prefixed instruction, so a probe at such
//! an entry goes on the next instruction instead: this form writes only memory and flags, so
//! the argument registers and the return address are unchanged there. The same instruction
//! also tells where the counter lives.

/// Length in bytes of every instruction [`decode_locked_rmw`] accepts.
pub const LOCKED_RMW_LEN: usize = 5;

/// The arithmetic of a locked read-modify-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `lock add`.
    Add,
    /// `lock sub`.
    Sub,
}

/// A decoded `lock add|sub %r64, disp8(%base)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockedRmw {
    /// Add or subtract.
    pub op: Op,
    /// Base register number (0 = rax … 7 = rdi; r8–r15 are not accepted).
    pub base: u8,
    /// Memory displacement.
    pub disp: i8,
}

/// Register number of rdi, the first argument (`this` in a C++ method).
pub const RDI: u8 = 7;

/// Decodes the instruction at the start of `code`: `F0 (48|4C) (01|29) ModRM disp8` where
/// ModRM.mod = 01 (8-bit displacement) and ModRM.rm is a plain base register (not 100 = SIB).
pub fn decode_locked_rmw(code: &[u8]) -> Option<LockedRmw> {
    let [0xF0, 0x48 | 0x4C, opcode, modrm, disp, ..] = *code else {
        return None;
    };
    let op = match opcode {
        0x01 => Op::Add,
        0x29 => Op::Sub,
        _ => return None,
    };
    let base = modrm & 0b111;
    (modrm >> 6 == 0b01 && base != 0b100).then_some(LockedRmw { op, base, disp: disp as i8 })
}

/// Length of a direct call, `E8 rel32`.
const CALL_LEN: usize = 5;

/// Where the direct calls (`E8 rel32`) in `code` (which starts at virtual address `start`) to
/// any of `targets` return to: offsets in `code` of the instruction after each.
pub fn returns_from_calls_to(code: &[u8], start: u64, targets: &[u64]) -> Vec<usize> {
    code.windows(CALL_LEN)
        .enumerate()
        .filter_map(|(at, call)| {
            let &[0xE8, a, b, c, d] = call else { return None };
            let next = start.wrapping_add((at + CALL_LEN) as u64);
            let target = next.wrapping_add_signed(i32::from_le_bytes([a, b, c, d]).into());
            targets.contains(&target).then_some(at + CALL_LEN)
        })
        .collect()
}

/// Register number of rsp.
const RSP: u8 = 4;

/// The registers whose values at the start of `code` (right after a call) the code adds to the
/// call's result (rax) before it returns it, or `None` where the code does anything else first.
/// The forms: `add` between two registers (`REX.W 01|03`, either way round: `add %rax,%r13`
/// then `mov %r13,%rax` as node 20–24 have, or `add %r13,%rax`, as node 18), `add $imm8,%rsp`,
/// `pop` (a popped register is not read after), `ret`. Register numbers are x86's: 1 = rcx …
/// 15 = r15.
pub fn added_to_result(mut code: &[u8]) -> Option<Vec<u8>> {
    let mut added = Vec::new();
    let mut popped = [false; 16];
    // The register holding the running sum.
    let mut sum = 0u8;
    loop {
        code = match *code {
            [0xC3, ..] => return (sum == 0 && !added.is_empty()).then_some(added),
            [0x48, 0x83, 0xC4, _, ref rest @ ..] => rest,
            [op @ 0x58..=0x5F, ref rest @ ..] => {
                popped[usize::from(op - 0x58)] = true;
                rest
            }
            [0x41, op @ 0x58..=0x5F, ref rest @ ..] => {
                popped[usize::from(op - 0x58 + 8)] = true;
                rest
            }
            [rex @ (0x48 | 0x49 | 0x4C | 0x4D), opcode @ (0x01 | 0x03 | 0x89 | 0x8B), modrm, ref rest @ ..]
                if modrm >> 6 == 0b11 =>
            {
                let reg = ((rex >> 2) & 1) << 3 | (modrm >> 3) & 0b111;
                let rm = (rex & 1) << 3 | modrm & 0b111;
                let (to, from) = if matches!(opcode, 0x01 | 0x89) { (rm, reg) } else { (reg, rm) };
                let fresh = |r: u8| r != sum && r != RSP && !popped[usize::from(r)] && !added.contains(&r);
                match opcode {
                    0x01 | 0x03 if to == sum && fresh(from) => added.push(from),
                    // The sum moves into the other register.
                    0x01 | 0x03 if from == sum && sum == 0 && added.is_empty() && fresh(to) => {
                        added.push(to);
                        sum = to;
                    }
                    0x89 | 0x8B if from == sum && to == 0 => sum = 0,
                    _ => return None,
                }
                rest
            }
            _ => return None,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_registers_added_to_a_calls_result() {
        // Heap::CommittedMemory after its call to CommittedOldGenerationMemory. Node 20 and 22:
        // add %rax,%r13; mov %r13,%rax; pop %r12; pop %r13; pop %rbp; ret.
        let node20 = [0x49, 0x01, 0xc5, 0x4c, 0x89, 0xe8, 0x41, 0x5c, 0x41, 0x5d, 0x5d, 0xc3];
        assert_eq!(added_to_result(&node20), Some(vec![13]));
        // Node 24: add %rax,%r12; mov %r12,%rax; pop %r12; pop %r13; pop %rbp; ret.
        let node24 = [0x49, 0x01, 0xc4, 0x4c, 0x89, 0xe0, 0x41, 0x5c, 0x41, 0x5d, 0x5d, 0xc3];
        assert_eq!(added_to_result(&node24), Some(vec![12]));
        // Node 18: add $0x8,%rsp; add %r13,%rax; pop %rbx; add %r12,%rax; pop %r12; pop %r13;
        // pop %rbp; ret.
        let node18 = [
            0x48, 0x83, 0xc4, 0x08, 0x4c, 0x01, 0xe8, 0x5b, 0x4c, 0x01, 0xe0, 0x41, 0x5c, 0x41, 0x5d, 0x5d,
            0xc3,
        ];
        assert_eq!(added_to_result(&node18), Some(vec![13, 12]));
        // add %rcx,%rax in the 03 form (add r/m to reg).
        assert_eq!(added_to_result(&[0x48, 0x03, 0xc1, 0xc3]), Some(vec![1]));
    }

    #[test]
    fn anything_else_after_the_call_is_not_read() {
        // Nothing added; the sum left in another register; a register added after its pop;
        // rsp added; a memory operand; another instruction; no ret.
        assert_eq!(added_to_result(&[0xc3]), None);
        assert_eq!(added_to_result(&[0x49, 0x01, 0xc5, 0xc3]), None);
        assert_eq!(added_to_result(&[0x41, 0x5d, 0x4c, 0x01, 0xe8, 0xc3]), None);
        assert_eq!(added_to_result(&[0x48, 0x01, 0xe0, 0xc3]), None);
        assert_eq!(added_to_result(&[0x49, 0x01, 0x45, 0x08, 0xc3]), None);
        assert_eq!(added_to_result(&[0x48, 0x29, 0xc8, 0xc3]), None);
        assert_eq!(added_to_result(&[0x4c, 0x01, 0xe8]), None);
        assert_eq!(added_to_result(&[]), None);
    }

    #[test]
    fn finds_direct_calls_to_a_target() {
        // node 20: at 0x10f058e, call 0x10ed110 (e8 7d cb ff ff); a call elsewhere is not it.
        let code = [0x90, 0xe8, 0x7d, 0xcb, 0xff, 0xff, 0xe8, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(returns_from_calls_to(&code, 0x10f058d, &[0x10ed110]), vec![6]);
        assert_eq!(returns_from_calls_to(&code, 0x10f058d, &[0x10f0598]), vec![11]);
        assert!(returns_from_calls_to(&code, 0x10f058d, &[0x1234]).is_empty());
        assert!(returns_from_calls_to(&code[..4], 0x10f058d, &[0x10ed110]).is_empty(), "truncated");
    }

    #[test]
    fn decodes_the_forms_node_uses() {
        // node 20 Free: lock sub %rdx,0x10(%rdi)
        assert_eq!(
            decode_locked_rmw(&[0xf0, 0x48, 0x29, 0x57, 0x10, 0x48]),
            Some(LockedRmw { op: Op::Sub, base: RDI, disp: 0x10 })
        );
        // node 20 AllocateUninitialized: lock add %r12,0x10(%rbx)
        assert_eq!(
            decode_locked_rmw(&[0xf0, 0x4c, 0x01, 0x63, 0x10]),
            Some(LockedRmw { op: Op::Add, base: 3, disp: 0x10 })
        );
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(decode_locked_rmw(&[0x90, 0x48, 0x29, 0x57, 0x10]), None, "no lock prefix");
        assert_eq!(decode_locked_rmw(&[0xf0, 0x48, 0x29, 0x97, 0x10, 0, 0, 0]), None, "disp32");
        assert_eq!(decode_locked_rmw(&[0xf0, 0x48, 0x29, 0x54, 0x24]), None, "SIB byte");
        assert_eq!(decode_locked_rmw(&[0xf0, 0x49, 0x29, 0x57, 0x10]), None, "r8-r15 base");
        assert_eq!(decode_locked_rmw(&[0xf0, 0x48, 0x0f, 0xc1, 0x57]), None, "xadd");
        assert_eq!(decode_locked_rmw(&[0xf0, 0x48, 0x29]), None, "truncated");
        assert_eq!(decode_locked_rmw(&[]), None);
    }
}
