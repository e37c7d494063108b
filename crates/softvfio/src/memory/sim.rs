//! Simulated memory (placeholder: being written).
