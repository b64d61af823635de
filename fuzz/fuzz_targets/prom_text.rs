//! Arbitrary bytes as what `capagent status` reads: an HTTP response from the metrics
//! endpoint and the Prometheus text exposition in it. Neither parser panics; a body found is
//! the tail of the response; and what the daemon's own exposition writes for any job name
//! and error text parses back to the same labels and values.
#![no_main]

use capagent::daemon::{metrics::Registry, promtext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = promtext::response_body(data) {
        assert!(data.ends_with(body.as_bytes()));
    }
    let text = String::from_utf8_lossy(data);
    for s in promtext::parse(&text) {
        assert!(!s.name.is_empty());
    }
    // Round trip: a job named by the input (names are checked by the configuration, labels
    // are escaped whatever they hold).
    let (name, kind) = text.split_at(text.floor_char_boundary(text.len() / 2));
    let registry = Registry::default();
    let jobs = registry.set_jobs(&[(name.to_string(), kind.to_string())]);
    jobs[0].ended(Some(text.to_string()));
    let samples = promtext::parse(&registry.render());
    let state = samples
        .iter()
        .find(|s| s.name == "capagent_job_state")
        .expect("the state sample parses back");
    assert_eq!(state.label("job"), Some(name));
    assert_eq!(state.label("kind"), Some(kind));
    assert_eq!(state.label("error"), Some(&*text));
    let errors = samples
        .iter()
        .find(|s| s.name == "capagent_job_errors_total")
        .expect("the errors sample parses back");
    assert_eq!(errors.value, 1.0);
});
