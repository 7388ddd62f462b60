//! The cloud receiver (see `hema3n-receiver`).
