//! HTTP-level tests of the sandbox.
