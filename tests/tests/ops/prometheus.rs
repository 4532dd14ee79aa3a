//! A real Prometheus against a live stack (written below).
