//! Changing traffic in flight: `--replace` rules over the bytes a proxy relays
//! ([`rule`]: parsing a rule; [`stream`]: applying rules to one direction of a stream as it
//! arrives, matches split across reads included); the HTTP rules (`--replace-http`,
//! `--set-header`, `--drop-header`, `--anticomp`, `--decode-bodies`): [`http_rule`] parses
//! them, [`http`] applies them to HTTP/1.x messages (bodies decoded with [`codec`]).

pub mod chain;
pub mod codec;
pub mod http;
pub mod http_rule;
pub mod rule;
pub mod stream;
