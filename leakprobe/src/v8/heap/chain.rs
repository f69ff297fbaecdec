//! What a retainer chain says: its links (how each holder refers to the next: a variable, a
//! property, an element, an entry), the chains of one type's samples, and a chain as one line
//! of text, nearest first, the way DevTools lists retainers.

use serde::Serialize;

use super::census::{Kind, Stopped};

/// How a holder refers to what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// A variable of a scope (a context slot).
    Variable,
    /// A named property of an object.
    Property,
    /// An element of an Array (or of an object's indexed elements).
    Element,
    /// An entry of a Map or Set.
    Entry,
    /// A closure's or an inner scope's reference to the scope it was made in: a function's
    /// scope lives as long as its closures.
    Scope,
    /// One of V8's own fields: a typed array's ArrayBuffer, ...
    Internal,
}

/// One step of a chain: the object below is held by `holder` as `name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Link {
    /// How it is held.
    pub kind: LinkKind,
    /// The variable's or property's name.
    pub name: Option<String>,
    /// The holder as DevTools names it: `Set (12,000 entries)`, `Timeout`,
    /// `module scope of app.js`, `scope of attachWatcher (ws.js)`.
    pub holder: String,
}

/// One retainer chain, shared by some of the samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Chain {
    /// Samples held through it.
    pub samples: u32,
    /// The nearest named holder: the first variable or property name on the chain.
    pub holder: Option<String>,
    /// Nearest first.
    pub links: Vec<Link>,
    /// The chain in one line, nearest first.
    pub text: String,
    /// It ends at a scope's variable, a timer list or a pending Promise's reactions (not cut
    /// short by the depth limit).
    pub complete: bool,
}

/// Who holds the objects of one type.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Retainers {
    /// The isolate's heap (as in the census).
    pub heap: String,
    /// As in the census.
    pub kind: Kind,
    /// As in the census.
    pub label: String,
    /// Samples searched.
    pub sampled: u32,
    /// Samples left out because their object moved or died since the census.
    pub stale: u32,
    /// Samples for which no holder was found.
    pub unexplained: u32,
    /// Most samples first, at most three (`MAX_CHAINS`).
    pub chains: Vec<Chain>,
}

/// The result of one search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetainerSearch {
    /// One per type asked for that had samples.
    pub types: Vec<Retainers>,
    /// Passes over the heap.
    pub passes: u32,
    /// Pointers to a searched object found in objects whose type holds no pointers there
    /// (strings, byte arrays, free space: not references), or in V8's code and feedback
    /// (optimized code's constants, inline caches: not what the program keeps): left out.
    pub rejected_hits: u64,
    /// References found to an address that held another object by the end of the pass (the
    /// object found died and its address was reused while the target ran): left out.
    pub moved_hits: u64,
    /// Bytes read from the target.
    pub bytes_read: u64,
    /// Wall time spent.
    pub elapsed_ms: f64,
    /// Set when a cap stopped the search (chains are then shorter).
    pub stopped_early: Option<Stopped>,
}

/// `n` with thousands separators: `412,000`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A chain in one line, nearest first, the way DevTools lists retainers: each holder with the
/// name it is held by above it, e.g. `requestLog (Array, 412,000 elements) ← module scope of
/// access-log.js`; a property that holds the object itself comes first (`_onTimeout ←
/// Timeout (in a timer list)`).
pub fn chain_text(links: &[Link]) -> String {
    let mut parts = Vec::new();
    if let Some(first) = links.first() {
        if matches!(first.kind, LinkKind::Property | LinkKind::Variable) {
            parts.push(first.name.clone().unwrap_or_else(|| "(unnamed slot)".into()));
        }
    }
    for (k, link) in links.iter().enumerate() {
        if link.kind == LinkKind::Variable && k + 1 == links.len() {
            parts.push(link.holder.clone());
            break;
        }
        match links.get(k + 1) {
            Some(up) if matches!(up.kind, LinkKind::Variable | LinkKind::Property) => {
                parts.push(format!("{} ({})", up.name.as_deref().unwrap_or("(unnamed slot)"), link.holder))
            }
            _ => parts.push(link.holder.clone()),
        }
    }
    parts.join(" ← ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: LinkKind, name: Option<&str>, holder: &str) -> Link {
        Link { kind, name: name.map(String::from), holder: holder.into() }
    }

    #[test]
    fn chains_read_like_devtools() {
        let set = [
            link(LinkKind::Entry, None, "Set, 12,000 entries"),
            link(LinkKind::Variable, Some("openSessions"), "module scope of app.js"),
        ];
        assert_eq!(chain_text(&set), "openSessions (Set, 12,000 entries) ← module scope of app.js");
        let timer = [link(LinkKind::Property, Some("_onTimeout"), "Timeout (in a timer list)")];
        assert_eq!(chain_text(&timer), "_onTimeout ← Timeout (in a timer list)");
        let queue = [
            link(LinkKind::Internal, None, "FastBuffer"),
            link(LinkKind::Property, Some("chunk"), "Object {chunk, encoding, callback}"),
            link(LinkKind::Element, None, "Array, 57 elements"),
            link(LinkKind::Property, Some("buffered"), "WritableState"),
            link(LinkKind::Variable, Some("state"), "scope of f (x.js)"),
        ];
        assert_eq!(
            chain_text(&queue),
            "chunk (FastBuffer) ← Object {chunk, encoding, callback} ← buffered (Array, 57 elements) \
             ← state (WritableState) ← scope of f (x.js)"
        );
        let variable = [link(LinkKind::Variable, Some("Session"), "module scope of app.js")];
        assert_eq!(chain_text(&variable), "Session ← module scope of app.js");
        assert_eq!(thousands(412_000), "412,000");
        assert_eq!(thousands(12), "12");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }
}
