//! Attaching the capture programs to interfaces: tcx links when the kernel has them, the
//! `clsact` qdisc and netlink filters otherwise. Everything is undone when [`Attached`] is
//! dropped: tcx links and netlink filters go with the programs (aya detaches them), and a
//! `clsact` qdisc capagent added itself is deleted afterwards.

use std::process::{Command, Stdio};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, Xdp, XdpMode,
        tc::{self, NlOptions, TcAttachOptions, TcAttachType},
    },
};

use super::{CaptureError, Iface};
use crate::kernel::{self, KernelError};

pub const PROG_INGRESS: &str = "capture_ingress";
pub const PROG_EGRESS: &str = "capture_egress";
pub const PROG_XDP: &str = "capture_xdp";

/// How the programs were attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tcx,
    Clsact,
}

/// The loaded object with its programs attached; dropping it detaches everything.
pub struct Attached {
    ebpf: Option<Ebpf>,
    /// Interfaces on which capagent added the `clsact` qdisc (deleted on drop).
    added_qdiscs: Vec<String>,
    pub mode: Option<Mode>,
}

impl Attached {
    pub fn new(ebpf: Ebpf) -> Self {
        Attached {
            ebpf: Some(ebpf),
            added_qdiscs: Vec::new(),
            mode: None,
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

    fn attach_xdp(&mut self, iface: &Iface) -> Result<(), CaptureError> {
        let prog: &mut Xdp = self
            .ebpf()
            .program_mut(PROG_XDP)
            .expect("loaded by attach_all")
            .try_into()
            .expect("an XDP program");
        prog.attach_to_if_index(iface.ifindex, XdpMode::Default)
            .map_err(|e| CaptureError::Attach {
                iface: iface.name.clone(),
                dir: "ingress (xdp)",
                reason: e.to_string(),
            })?;
        tracing::debug!(iface = iface.name, "attached (xdp)");
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
        if !self.added_qdiscs.contains(&iface.name) {
            match tc::qdisc_add_clsact(&iface.name) {
                Ok(()) => self.added_qdiscs.push(iface.name.clone()),
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
        for dev in self.added_qdiscs.drain(..) {
            let ok = Command::new("tc")
                .args(["qdisc", "del", "dev", &dev, "clsact"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!(
                    "capagent: could not remove the clsact qdisc added on {dev}: run `tc qdisc del dev {dev} clsact`"
                );
            }
        }
    }
}
