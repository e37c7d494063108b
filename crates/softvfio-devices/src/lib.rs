//! Device models (placeholder: being written).
