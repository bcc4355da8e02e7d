//! The activator binary (being written).

fn main() {}
