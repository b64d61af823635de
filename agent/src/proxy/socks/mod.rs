//! SOCKS 4, 4a and 5: pure, incremental parsers ([`v4`], [`v5`]) and the server
//! ([`server`]).
//!
//! Every parser takes all bytes received so far and answers [`Parse::Incomplete`] (need more
//! bytes), [`Parse::Done`] (the message and the bytes it took; what follows belongs to the
//! next stage) or an error. Each message has a fixed maximum size, checked on the bytes
//! received so far, so the limits hold however the client splits its writes.

pub mod server;
pub mod v4;
pub mod v5;

use crate::proxy::target::Target;

/// What a parser made of the bytes so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parse<T> {
    /// More bytes are needed.
    Incomplete,
    /// The message and how many bytes it took.
    Done(T, usize),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("unsupported SOCKS version {0}")]
    Version(u8),
    #[error("unsupported username/password sub-negotiation version {0} (RFC 1929 uses 1)")]
    AuthVersion(u8),
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("{0} longer than 255 bytes")]
    TooLong(&'static str),
    #[error("empty or malformed host name")]
    BadHost,
    #[error("empty user name")]
    EmptyUser,
    #[error("truncated message")]
    Truncated,
}

/// A host name from the wire: 1-255 printable ASCII bytes (no spaces or control bytes);
/// names that are addresses become addresses.
pub(crate) fn host_target(name: &[u8], port: u16) -> Result<Target, SocksError> {
    if name.is_empty() || name.len() > 255 || !name.iter().all(|b| b.is_ascii_graphic()) {
        return Err(SocksError::BadHost);
    }
    let name = std::str::from_utf8(name).map_err(|_| SocksError::BadHost)?;
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Target::ip(std::net::SocketAddr::new(ip, port)),
        Err(_) => Target::name(name, port),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Feeds `bytes` to `parse` one byte more at a time, as a client writing byte by byte
    /// would; checks that no prefix is taken for a whole message.
    pub fn feed_bytewise<T: std::fmt::Debug>(
        bytes: &[u8],
        parse: impl Fn(&[u8]) -> Result<Parse<T>, SocksError>,
    ) -> Result<(T, usize), SocksError> {
        for end in 0..=bytes.len() {
            match parse(&bytes[..end])? {
                Parse::Incomplete => continue,
                Parse::Done(t, n) => {
                    assert_eq!(n, end, "a message ends where its last byte arrives");
                    return Ok((t, n));
                }
            }
        }
        Err(SocksError::Truncated)
    }

    #[test]
    fn host_names() {
        assert_eq!(host_target(b"a.b", 1).unwrap(), Target::name("a.b", 1));
        assert_eq!(
            host_target(b"10.0.0.1", 2).unwrap(),
            Target::ip("10.0.0.1:2".parse().unwrap())
        );
        assert_eq!(host_target(b"", 1), Err(SocksError::BadHost));
        assert_eq!(host_target(b"a b", 1), Err(SocksError::BadHost));
        assert_eq!(host_target(b"\xff", 1), Err(SocksError::BadHost));
    }
}
