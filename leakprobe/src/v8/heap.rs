//! The V8 heap read from outside: a census of which objects it holds, by type ([`census`],
//! taken by [`take`]), who holds them ([`retainers`], naming them with [`holders`], as
//! [`chain`]s), and what a large container holds ([`contents`]). Their parts: [`layout`] (the
//! offsets from the metadata), [`pages`] (finding V8's pages), [`walk`] (walking a page object
//! by object), [`reader`] (a target's heap, opened once for all of them).

pub mod census;
pub mod chain;
pub mod contents;
pub mod holders;
pub mod layout;
pub mod pages;
pub mod reader;
pub mod retainers;
pub mod scan;
pub mod take;
pub mod walk;

#[cfg(test)]
mod contents_tests;
#[cfg(test)]
mod tests;
