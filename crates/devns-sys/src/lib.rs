//! The kernel operations rustix does not wrap (or wraps only unsafely), each
//! as one small safe function. Every `unsafe` block states the invariant it
//! relies on; nothing here makes a decision.

pub mod ns;
pub mod process;
pub mod signal;
