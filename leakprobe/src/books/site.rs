//! Logical sites: the key that makes stacks of the same lines of code one site, whatever their
//! JIT addresses, tiers, builtins or depth.

use crate::stacks::frame::{Frame, FrameKind, QUEUED_NAME};

/// Whether `f` runs the user's own JavaScript (a script that is not node's).
fn user(f: &Frame) -> bool {
    f.kind == FrameKind::Js && !f.file.as_deref().is_some_and(|p| p.starts_with("node:"))
}

/// The frame a site is known by: the innermost of the user's own JavaScript, else the
/// innermost JavaScript frame, else the first frame.
pub fn site_frame(frames: &[Frame]) -> Option<&Frame> {
    frames
        .iter()
        .find(|f| user(f))
        .or_else(|| frames.iter().find(|f| f.kind == FrameKind::Js))
        .or(frames.first())
}

/// User JavaScript frames (not node's own) a site key reads up to.
pub const SITE_USER_FRAMES: usize = 4;
/// Native frames a site key reads when the stack has no JavaScript.
const SITE_NATIVE_FRAMES: usize = 6;

/// The logical site of a stack. Where it runs the user's own JavaScript (a script that is not
/// node's), its innermost such frame and that frame's JavaScript callers by function, script and
/// line, up to the [`SITE_USER_FRAMES`]th of the user's own: whatever lies under it (node's own
/// functions, builtins, unnamed JIT code, native allocators) does not split the line of code into
/// several sites. Otherwise its entry (the first native function) and its JavaScript frames; with
/// no JavaScript, its first native frames. JIT addresses, tiers, builtins and how deep the stack
/// was cut do not change it.
pub fn site_key(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[stack lost]".into();
    }
    if let Some(innermost) = frames.iter().position(user) {
        let mut parts: Vec<String> = Vec::new();
        let mut seen = 0;
        for f in &frames[innermost..] {
            match f.kind {
                FrameKind::Js => {
                    parts.push(f.kind_key());
                    seen += usize::from(user(f));
                    if seen == SITE_USER_FRAMES {
                        break;
                    }
                }
                FrameKind::Queued => parts.push(QUEUED_NAME.into()),
                _ => {}
            }
        }
        return parts.join(" ← ");
    }
    let mut parts: Vec<String> = Vec::new();
    if let Some(entry) =
        frames.iter().take_while(|f| f.kind != FrameKind::Js).find(|f| f.kind == FrameKind::Native)
    {
        parts.push(entry.name.clone());
    }
    for f in frames {
        match f.kind {
            FrameKind::Js => parts.push(f.kind_key()),
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

    #[test]
    fn a_line_of_the_users_code_is_one_site_whatever_lies_under_it() {
        let user = [js("remember", "/app/cache.js", 12), js("onRequest", "/app/server.js", 40)];
        let under: [Vec<Frame>; 4] = [
            vec![native("malloc"), native("node::Buffer::New")],
            vec![frame("[JIT 0x7f01]", FrameKind::Jit, None, None)],
            vec![frame("[JIT 0x7f02]", FrameKind::Jit, None, None), js("alloc", "node:buffer", 390)],
            vec![native("__libc_calloc"), frame("Builtins_CallFunction", FrameKind::Builtin, None, None)],
        ];
        let keys: Vec<String> =
            under.iter().map(|inner| site_key(&[inner.clone(), user.to_vec()].concat())).collect();
        assert!(keys.iter().all(|k| k == &keys[0]), "{keys:#?}");
        assert_eq!(keys[0], "remember /app/cache.js:12 ← onRequest /app/server.js:40");
        // Another caller is another path to the line: another site.
        let other = [js("remember", "/app/cache.js", 12), js("warmUp", "/app/boot.js", 3)];
        assert_ne!(site_key(&[under[0].clone(), other.to_vec()].concat()), keys[0]);
        // Only node's own code: the entry and node's functions still tell sites apart.
        let node_only = vec![native("malloc"), js("onStreamRead", "node:internal/stream_base_commons", 160)];
        assert_eq!(site_key(&node_only), "malloc ← onStreamRead node:internal/stream_base_commons:160");
    }
}
