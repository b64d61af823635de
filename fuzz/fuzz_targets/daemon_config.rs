//! Arbitrary text as a daemon configuration file: parsing never panics; an error's line and
//! column are inside the text (line 1 column 1 at most for an empty file); every job of a
//! file that parses has a valid name, a known kind and an argv the CLI parser can be given
//! (which must not panic either, whatever the flags).
#![no_main]

use capagent::daemon::config::{Config, check_job};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(e.line >= 1 && e.line <= lines, "line {} of {lines}", e.line);
            let line = text.split('\n').nth(e.line - 1).unwrap_or("");
            assert!(
                e.column >= 1 && e.column <= line.chars().count() + 1,
                "column {} of {:?}",
                e.column,
                line
            );
            assert!(!e.message.is_empty());
        }
        Ok(c) => {
            for job in &c.jobs {
                assert!(!job.name.is_empty() && !job.name.contains('/'));
                assert!(!job.argv.is_empty());
                let _ = check_job(job);
            }
        }
    }
});
