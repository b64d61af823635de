//! Changing traffic in flight: `--replace` rules over the bytes a proxy relays
//! ([`rule`]: parsing a rule; [`stream`]: applying rules to one direction of a stream as it
//! arrives, matches split across reads included); `--hook`: an external program that may
//! change each message ([`hook`]).

pub mod hook;
pub mod rule;
pub mod stream;
