//! Request heads as they arrive: how much of a first head is looked at.

/// The most bytes of a connection's first request head that are read (or peeked) at once: the
/// parking of new connections looks no further, and the relay's first read reserves this much.
pub const FIRST_HEAD_BYTES: usize = 8192;
