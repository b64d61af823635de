//! Changing traffic in flight: `--replace` rules over the bytes a proxy relays
//! ([`rule`]: parsing a rule; [`stream`]: applying rules to one direction of a stream as it
//! arrives, matches split across reads included).

pub mod rule;
pub mod stream;
