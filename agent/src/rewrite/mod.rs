//! Changing traffic in flight: `--replace` rules over the bytes a proxy relays
//! ([`rule`]: parsing a rule; [`stream`]: applying rules to one direction of a stream as it
//! arrives, matches split across reads included); the HTTP rules (`--replace-http`,
//! `--set-header`, `--drop-header`, `--anticomp`, `--decode-bodies`): [`http_rule`] parses
//! them, [`http`] applies them to HTTP/1.x messages (bodies decoded with [`codec`]);
//! [`chain`] runs both on a direction; `--hook`: an external program that may change each
//! message ([`hook`]).

pub mod chain;
pub mod codec;
pub mod hook;
pub mod http;
pub mod http_rule;
pub mod rule;
pub mod stream;
