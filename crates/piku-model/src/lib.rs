//! The piku app model (being written).
