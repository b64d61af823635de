//! Attaching the capture programs to interfaces: tcx links when the kernel has them, the
//! `clsact` qdisc and netlink filters otherwise (or when `CAPAGENT_TC_MODE` forces a mode).
//! Everything is undone when [`Attached`] is dropped: tcx links and netlink filters go with
//! the programs (aya detaches them), and a `clsact` qdisc capagent added itself is deleted
//! afterwards, unless someone else's filters are on it by then. Filters a killed capagent
//! left are removed at the next start ([`super::hygiene`]).

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions, TcAttachType},
    },
};

use super::{CaptureError, Iface, hygiene};
use crate::kernel::{self, KernelError};

pub use agent_common::capture::progs::{
    EGRESS as PROG_EGRESS, INGRESS as PROG_INGRESS, XDP as PROG_XDP,
};

/// How the programs were attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcx,
    Clsact,
}

/// The environment variable that forces an attachment mode: `tcx`, `clsact` or `auto` (tcx
/// when the kernel has it, else clsact; the default).
pub const TC_MODE_ENV: &str = "CAPAGENT_TC_MODE";

impl Mode {
    /// Parses a [`TC_MODE_ENV`] value: `None` for `auto`.
    pub fn parse_forced(value: &str) -> Result<Option<Mode>, CaptureError> {
        match value {
            "tcx" => Ok(Some(Mode::Tcx)),
            "clsact" => Ok(Some(Mode::Clsact)),
            "auto" | "" => Ok(None),
            other => Err(CaptureError::TcMode(other.to_string())),
        }
    }
}

/// The loaded object with its programs attached; dropping it detaches everything.
pub struct Attached {
    ebpf: Option<Ebpf>,
    /// Interfaces on which capagent added the `clsact` qdisc (deleted on drop).
    added_qdiscs: Vec<Iface>,
    /// The mode in use, or forced (`None`: tcx when possible, else clsact).
    pub mode: Option<Mode>,
    /// Interfaces whose driver refused native XDP, where the XDP program runs in generic
    /// (SKB) mode.
    pub xdp_generic: Vec<String>,
}

impl Attached {
    pub fn new(ebpf: Ebpf, forced: Option<Mode>) -> Self {
        Attached {
            ebpf: Some(ebpf),
            added_qdiscs: Vec::new(),
            mode: forced,
            xdp_generic: Vec::new(),
        }
    }

    pub fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf
            .as_mut()
            .expect("the eBPF object lives until drop")
    }

    /// Loads both programs and attaches them to every interface. On loopback devices every
    /// packet passes egress and then ingress: like libpcap, capagent keeps one copy, but the
    /// egress one (libpcap keeps the ingress one), because only there does the packet still
    /// carry its sending socket (loopback orphans it on transmit), i.e. its socket cookie.
    ///
    /// With `xdp`, ingress is an XDP program (a link: it goes when capagent goes) instead of
    /// the TC classifier; egress stays on TC, XDP has no egress hook.
    pub fn attach_all(&mut self, ifaces: &[Iface], xdp: bool) -> Result<(), CaptureError> {
        for prog in [PROG_INGRESS, PROG_EGRESS] {
            kernel::loaded_classifier(self.ebpf(), prog)?;
        }
        if xdp {
            kernel::loaded_xdp(self.ebpf(), PROG_XDP)?;
        }
        for iface in ifaces {
            if !iface.loopback {
                if xdp {
                    self.attach_xdp(iface)?;
                } else {
                    self.attach_one(iface, TcAttachType::Ingress)?;
                }
            }
            self.attach_one(iface, TcAttachType::Egress)?;
        }
        Ok(())
    }

    /// Attaches the XDP program in native (driver) mode, or in generic (SKB) mode when the
    /// driver refuses native mode (virtio_net without the offloads turned off, bridges,
    /// devices without XDP support); remembered in [`Attached::xdp_generic`].
    fn attach_xdp(&mut self, iface: &Iface) -> Result<(), CaptureError> {
        let prog: &mut Xdp = self
            .ebpf()
            .program_mut(PROG_XDP)
            .expect("loaded by attach_all")
            .try_into()
            .expect("an XDP program");
        let native = match prog.attach_to_if_index(iface.ifindex, XdpMode::Driver) {
            Ok(_) => {
                tracing::debug!(iface = iface.name, "attached (xdp, native)");
                return Ok(());
            }
            Err(e) => e,
        };
        tracing::debug!(iface = iface.name, "native XDP refused: {native}");
        if let Err(generic) = prog.attach_to_if_index(iface.ifindex, XdpMode::Skb) {
            return Err(CaptureError::Attach {
                iface: iface.name.clone(),
                dir: "ingress (xdp)",
                reason: format!(
                    "native XDP: {}; generic XDP: {}; capture without --xdp (TC ingress sees the same packets)",
                    errno_of(&native),
                    errno_of(&generic)
                ),
            });
        }
        tracing::debug!(iface = iface.name, "attached (xdp, generic)");
        self.xdp_generic.push(iface.name.clone());
        Ok(())
    }

    fn attach_one(&mut self, iface: &Iface, at: TcAttachType) -> Result<(), CaptureError> {
        let name = match at {
            TcAttachType::Egress => PROG_EGRESS,
            _ => PROG_INGRESS,
        };
        let mode = self.mode;
        let prog: &mut SchedClassifier = self
            .ebpf()
            .program_mut(name)
            .ok_or_else(|| KernelError::MissingProgram(name.to_string()))?
            .try_into()
            .map_err(|source| KernelError::Program {
                name: name.to_string(),
                source: Box::new(source),
            })?;
        let fail = |e: String| CaptureError::Attach {
            iface: iface.name.clone(),
            dir: if name == PROG_EGRESS {
                "egress"
            } else {
                "ingress"
            },
            reason: e,
        };
        if mode != Some(Mode::Clsact) {
            match prog.attach_with_options(
                &iface.name,
                at,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(_) => {
                    tracing::debug!(iface = iface.name, name, "attached (tcx)");
                    self.mode = Some(Mode::Tcx);
                    return Ok(());
                }
                Err(e) if mode == Some(Mode::Tcx) => return Err(fail(e.to_string())),
                Err(e) => tracing::info!("tcx attach failed ({e}), falling back to clsact"),
            }
        }
        self.mode = Some(Mode::Clsact);
        if !self.added_qdiscs.contains(iface) {
            match tc::qdisc_add_clsact(&iface.name) {
                Ok(()) => {
                    tracing::debug!(iface = iface.name, "clsact qdisc added");
                    self.added_qdiscs.push(iface.clone());
                }
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(fail(format!("adding the clsact qdisc: {e}"))),
            }
        }
        let prog: &mut SchedClassifier = self
            .ebpf()
            .program_mut(name)
            .expect("loaded above")
            .try_into()
            .expect("a classifier");
        prog.attach_with_options(
            &iface.name,
            at,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|e| fail(e.to_string()))?;
        tracing::debug!(iface = iface.name, name, "attached (clsact)");
        Ok(())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        // Programs first: this detaches the tcx links and removes the netlink filters.
        drop(self.ebpf.take());
        for iface in self.added_qdiscs.drain(..) {
            hygiene::remove_clsact_if_empty(&iface.name, iface.ifindex as i32);
        }
    }
}

/// The errno of a failed attachment as `EOPNOTSUPP (Operation not supported)`, or the error
/// itself when it carries none.
fn errno_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
        {
            return match crate::output::text::errno(code.unsigned_abs().into()) {
                Some((name, desc)) => format!("{name} ({desc})"),
                None => format!("errno {code}"),
            };
        }
        cur = err.source();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_modes() {
        assert_eq!(Mode::parse_forced("tcx").unwrap(), Some(Mode::Tcx));
        assert_eq!(Mode::parse_forced("clsact").unwrap(), Some(Mode::Clsact));
        assert_eq!(Mode::parse_forced("auto").unwrap(), None);
        assert_eq!(
            Mode::parse_forced("netlink").unwrap_err().to_string(),
            "CAPAGENT_TC_MODE must be tcx, clsact or auto, not \"netlink\""
        );
    }
}
