//! Integration tests of `capagent proxy forward` (filled in below).
