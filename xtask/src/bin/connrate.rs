//! `connrate`: connection setup benchmark workload (std::net only).
//!
//! * `connrate server --bind ADDR --port P`: accepts connections for ever; on each, reads
//!   one byte, writes it back, closes. Prints `{"listening":PORT}` once bound.
//! * `connrate client --addr A --count N`: N times in a row: connect, write one byte, read
//!   it back, close. Prints `{"connects":N,"secs":x,"per_sec":y,"avg_us":z}`.
use std::{
    io::{self, Read, Write},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    time::Instant,
};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "connrate",
    about = "TCP connection setup workload for capagent's benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Accepts connections for ever, echoing one byte on each.
    Server {
        #[arg(long, default_value = "::")]
        bind: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Opens COUNT connections one after the other.
    Client {
        /// HOST:PORT ([v6]:PORT).
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 2000)]
        count: u64,
    },
}

fn main() -> ExitCode {
    let r = match Cli::parse().mode {
        Mode::Server { bind, port } => server(&bind, port),
        Mode::Client { addr, count } => client(&addr, count),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn server(bind: &str, port: u16) -> io::Result<()> {
    let l = TcpListener::bind((bind, port))?;
    println!("{{\"listening\":{}}}", l.local_addr()?.port());
    io::stdout().flush()?;
    for c in l.incoming() {
        let Ok(mut c) = c else { continue };
        let mut b = [0u8; 1];
        if c.read_exact(&mut b).is_ok() {
            let _ = c.write_all(&b);
        }
    }
    Ok(())
}

fn client(addr: &str, count: u64) -> io::Result<()> {
    let start = Instant::now();
    for i in 0..count {
        let mut c = TcpStream::connect(addr)?;
        c.set_nodelay(true)?;
        let b = [(i % 251) as u8];
        c.write_all(&b)?;
        let mut r = [0u8; 1];
        c.read_exact(&mut r)?;
        if r != b {
            return Err(io::Error::other(format!("connection {i}: echo differs")));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"connects\":{count},\"secs\":{secs:.6},\"per_sec\":{:.1},\"avg_us\":{:.1}}}",
        count as f64 / secs,
        secs * 1e6 / count as f64
    );
    Ok(())
}
