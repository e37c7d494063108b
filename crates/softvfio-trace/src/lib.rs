//! ptrace supervisor (placeholder: being written).
