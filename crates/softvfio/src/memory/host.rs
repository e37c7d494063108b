//! Real process memory (placeholder: being written).
