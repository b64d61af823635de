//! Integration tests of `capagent proxy socks` (filled in below).
