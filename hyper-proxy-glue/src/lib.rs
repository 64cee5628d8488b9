//! The HTTP front (being written).
