//! HTTP/1.x messages as bytes: heads ([`head`]: httparse with size limits) and body framing
//! ([`body`]: none, length, chunked, until close; the incremental chunked decoder). Pure
//! functions over bytes, shared by the HTTP proxies (`proxy::http`) and the HTTP rules that
//! change messages in flight (`rewrite::http`).

pub mod body;
pub mod head;
