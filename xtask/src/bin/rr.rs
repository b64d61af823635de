//! `rr`: the benchmark workload, a request/response and bulk-stream generator over TCP.
//!
//! It is a compiled program (std::net only) so that the workload is never the bottleneck of a
//! tracing benchmark. Each mode prints one JSON object per line on stdout:
//!
//! * `rr server --port P --size S`: accepts one connection and echoes every S-byte message
//!   (read exactly S, write S) until EOF. Prints `{"listening":PORT}` once bound (so
//!   `--port 0` works), then `{"round_trips":N}` at exit.
//! * `rr client --addr A --count N --size S`: N round trips of S bytes (write S, read S), with
//!   TCP_NODELAY. Prints `{"round_trips":N,"secs":x,"rps":y}`; the clock starts after
//!   connect.
//! * `rr bulk-server --port P`: accepts one connection, reads until EOF, closes. Prints
//!   `{"listening":PORT}`, then `{"bytes":B,"secs":x,"mbps":y}`.
//! * `rr bulk-client --addr A --bytes B --chunk C`: writes B bytes of a deterministic pattern
//!   (byte at offset i is `i as u8`), shuts down its write side and waits for the server to
//!   close. Prints `{"bytes":B,"secs":x,"mbps":y}` (mbps = megabits per second, 10^6).
use std::{
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::ExitCode,
    time::Instant,
};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "rr",
    about = "TCP request/response and bulk workload for capagent's benchmarks"
)]
struct Cli {
    /// Run on this CPU only (sched_setaffinity), e.g. to keep client and server on one CPU.
    #[arg(long, global = true)]
    cpu: Option<usize>,
    #[command(subcommand)]
    mode: Mode,
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Echo server for `rr client`: accepts one connection, echoes SIZE-byte messages.
    Server {
        /// Port to listen on (0 = any free port; the bound port is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Ping-pong client: COUNT round trips of SIZE bytes.
    Client {
        /// Server address, e.g. 127.0.0.1:5000.
        #[arg(long)]
        addr: String,
        /// Number of round trips.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Bulk sink: accepts one connection, reads until EOF.
    BulkServer {
        /// Port to listen on (0 = any free port; the bound port is printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
    },
    /// Bulk source: writes BYTES bytes in CHUNK-byte writes.
    BulkClient {
        /// Server address, e.g. 127.0.0.1:5000.
        #[arg(long)]
        addr: String,
        /// Total bytes to send.
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        /// Bytes per write call.
        #[arg(long, default_value_t = 65536)]
        chunk: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(cpu) = cli.cpu
        && let Err(err) = pin_to(cpu)
    {
        eprintln!("rr: cannot pin to CPU {cpu}: {err}");
        return ExitCode::from(1);
    }
    let result = match cli.mode {
        Mode::Server { port, bind, size } => server(&bind, port, size),
        Mode::Client { addr, count, size } => client(&addr, count, size),
        Mode::BulkServer { port, bind } => bulk_server(&bind, port),
        Mode::BulkClient { addr, bytes, chunk } => bulk_client(&addr, bytes, chunk),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rr: {err}");
            ExitCode::from(1)
        }
    }
}

fn listen(bind: &str, port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind((bind, port))?;
    let port = listener.local_addr()?.port();
    let mut out = io::stdout().lock();
    writeln!(out, "{{\"listening\":{port}}}")?;
    out.flush()?;
    Ok(listener)
}

/// The payload: byte at stream offset `i` is `i as u8`. Returns a buffer of `len + 256`
/// bytes so that `&buf[off % 256..][..n]` is the pattern at offset `off` for any n <= len.
fn pattern(len: usize) -> Vec<u8> {
    (0..len + 256).map(|i| i as u8).collect()
}

fn server(bind: &str, port: u16, size: usize) -> io::Result<()> {
    let listener = listen(bind, port)?;
    let (mut stream, _) = listener.accept()?;
    drop(listener);
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; size.max(1)];
    let mut round_trips = 0u64;
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
        stream.write_all(&buf)?;
        round_trips += 1;
    }
    println!("{{\"round_trips\":{round_trips}}}");
    Ok(())
}

fn client(addr: &str, count: u64, size: usize) -> io::Result<()> {
    let size = size.max(1);
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let request = pattern(size);
    let request = &request[..size];
    let mut reply = vec![0u8; size];
    let start = Instant::now();
    for i in 0..count {
        stream.write_all(request)?;
        stream.read_exact(&mut reply)?;
        if reply != request {
            return Err(io::Error::other(format!(
                "round trip {i}: echo differs from request"
            )));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stream);
    let rps = count as f64 / secs.max(1e-9);
    println!("{{\"round_trips\":{count},\"secs\":{secs:.6},\"rps\":{rps:.1}}}");
    Ok(())
}

fn bulk_server(bind: &str, port: u16) -> io::Result<()> {
    let listener = listen(bind, port)?;
    let (mut stream, _) = listener.accept()?;
    drop(listener);
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let start = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stream);
    let mbps = total as f64 * 8.0 / 1e6 / secs.max(1e-9);
    println!("{{\"bytes\":{total},\"secs\":{secs:.6},\"mbps\":{mbps:.1}}}");
    Ok(())
}

fn bulk_client(addr: &str, bytes: u64, chunk: usize) -> io::Result<()> {
    let chunk = chunk.max(1);
    let mut stream = TcpStream::connect(addr)?;
    let buf = pattern(chunk);
    let start = Instant::now();
    let mut off = 0u64;
    while off < bytes {
        let n = (bytes - off).min(chunk as u64) as usize;
        let at = (off % 256) as usize;
        stream.write_all(&buf[at..at + n])?;
        off += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    // Wait until the server has read everything and closed, so the time covers delivery.
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let mbps = bytes as f64 * 8.0 / 1e6 / secs.max(1e-9);
    println!("{{\"bytes\":{bytes},\"secs\":{secs:.6},\"mbps\":{mbps:.1}}}");
    Ok(())
}
