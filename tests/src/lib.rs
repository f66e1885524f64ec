//! End-to-end tests live in `tests/`; the local mesh harness will live here.
