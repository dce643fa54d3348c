//! Test harness: a real `redis-server` (the end-to-end harness's, killed when dropped; a missing
//! `redis-server` fails the test loudly, it never skips), and build fixtures.

// Each test binary uses part of it.
#![allow(dead_code)]

pub mod fixtures;

#[allow(unused_imports)]
pub use kiln_tests::RedisServer;
