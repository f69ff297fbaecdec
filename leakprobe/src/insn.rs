//! The one x86-64 instruction form leakprobe needs to recognise: `lock add|sub %r64, disp8(%base)`.
//!
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

#[cfg(test)]
mod tests {
    use super::*;

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
