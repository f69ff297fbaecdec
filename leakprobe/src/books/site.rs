//! Logical sites: the key that makes stacks of the same lines of code one site, whatever their
//! JIT addresses, tiers, builtins or depth.

use crate::stacks::frame::{Frame, FrameKind, QUEUED_NAME};

/// User JavaScript frames (not node's own) a site key reads up to.
pub const SITE_USER_FRAMES: usize = 4;
/// Native frames a site key reads when the stack has no JavaScript.
const SITE_NATIVE_FRAMES: usize = 6;

/// The logical site of a stack: its entry (the first native function) and its JavaScript
/// frames by function, script and line, up to the [`SITE_USER_FRAMES`]th of the user's own;
/// with no JavaScript, its first native frames. JIT addresses, tiers, builtins and how deep
/// the stack was cut do not change it.
pub fn site_key(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[stack lost]".into();
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(entry) =
        frames.iter().take_while(|f| f.kind != FrameKind::Js).find(|f| f.kind == FrameKind::Native)
    {
        parts.push(entry.name.clone());
    }
    let mut user = 0;
    for f in frames {
        match f.kind {
            FrameKind::Js => {
                parts.push(f.kind_key());
                if !f.file.as_deref().is_some_and(|p| p.starts_with("node:")) {
                    user += 1;
                    if user == SITE_USER_FRAMES {
                        break;
                    }
                }
            }
            FrameKind::Queued => parts.push(QUEUED_NAME.into()),
            // JavaScript that could not be named: only its address tells it apart, so stacks
            // through different unnamed code stay different sites.
            FrameKind::Jit => parts.push(f.name.clone()),
            _ => {}
        }
    }
    if !frames.iter().any(|f| matches!(f.kind, FrameKind::Js | FrameKind::Jit)) {
        parts = frames.iter().take(SITE_NATIVE_FRAMES).map(Frame::kind_key).collect();
    }
    parts.join(" ← ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stacks::frame::test_frames::{frame, js, native};

    #[test]
    fn stacks_of_one_site_share_a_key_whatever_the_tier() {
        let interpreted = vec![
            native("__memset_avx2_unaligned_erms"),
            native("v8::internal::Builtin_TypedArrayPrototypeFill"),
            frame("Builtins_InterpreterEntryTrampoline", FrameKind::Builtin, None, None),
            js("fill", "node:buffer", 1010),
            js("cacheReport", "/app/cache.js", 7),
            frame("Builtins_InterpreterEntryTrampoline", FrameKind::Builtin, None, None),
            js("onTimeout", "/app/cache.js", 20),
        ];
        // The same functions compiled: no interpreter frames, other addresses, no notes.
        let mut compiled = interpreted.clone();
        compiled.retain(|f| f.kind != FrameKind::Builtin);
        for (i, f) in compiled.iter_mut().enumerate().filter(|(_, f)| f.kind == FrameKind::Js) {
            f.addr = 0x7f00_0000 + i as u64;
            f.note = None;
        }
        assert_eq!(site_key(&interpreted), site_key(&compiled));
        assert!(site_key(&compiled).contains("cacheReport /app/cache.js:7"), "{}", site_key(&compiled));
        let mut other_line = compiled.clone();
        other_line[3] = js("cacheReport", "/app/cache.js", 9);
        assert_ne!(site_key(&compiled), site_key(&other_line));
        assert_eq!(site_key(&[]), "[stack lost]");
        let unnamed = |addr: &str| vec![native("malloc"), frame(addr, FrameKind::Jit, None, None)];
        assert_ne!(
            site_key(&unnamed("[JIT 0x1]")),
            site_key(&unnamed("[JIT 0x2]")),
            "unnamed code is not merged"
        );
    }
}
