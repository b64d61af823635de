//! Filter expressions of `capagent capture` (tcpdump's syntax): compiled by libpcap
//! ([`libpcap`], the reference compiler, so the semantics are exactly tcpdump's) into classic
//! BPF, once per link type of the captured interfaces, checked by [`cbpf::validate`], then
//! handed to the in-kernel interpreter (`agent-ebpf/src/filter.rs`), which runs it on every
//! packet before it is copied. [`cbpf::run`] evaluates the same programs in userspace.

pub mod cbpf;
pub mod libpcap;

use agent_common::FilterInsn;
use thiserror::Error;

use super::LinkType;

#[derive(Debug, Error)]
pub enum FilterError {
    #[error("bad filter expression '{expr}': {message}")]
    Compile { expr: String, message: String },
    #[error("filter expression '{expr}' cannot run in the kernel: {reason}")]
    Invalid {
        expr: String,
        reason: cbpf::InvalidProgram,
    },
}

/// A filter expression compiled for some link types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub expr: String,
    programs: Vec<(LinkType, Vec<FilterInsn>)>,
}

impl LinkType {
    /// libpcap's `DLT_*` value.
    fn dlt(self) -> std::ffi::c_int {
        match self {
            LinkType::Ethernet => libpcap::DLT_EN10MB,
            LinkType::Raw => libpcap::DLT_RAW,
        }
    }
}

impl Filter {
    /// The filter given as command-line words (joined by spaces, like tcpdump), `None` when
    /// there are none or they are blank.
    pub fn expression(words: &[String]) -> Option<String> {
        let expr = words.join(" ");
        (!expr.trim().is_empty()).then_some(expr)
    }

    /// Compiles `expr` for each of `linktypes` and checks that the kernel side can run the
    /// programs.
    pub fn compile(
        expr: &str,
        linktypes: impl IntoIterator<Item = LinkType>,
    ) -> Result<Filter, FilterError> {
        let _span = tracing::debug_span!("filter", expr).entered();
        let mut programs: Vec<(LinkType, Vec<FilterInsn>)> = Vec::new();
        for lt in linktypes {
            if programs.iter().any(|(l, _)| *l == lt) {
                continue;
            }
            let prog =
                libpcap::compile(expr, lt.dlt()).map_err(|message| FilterError::Compile {
                    expr: expr.to_string(),
                    message,
                })?;
            cbpf::validate(&prog).map_err(|reason| FilterError::Invalid {
                expr: expr.to_string(),
                reason,
            })?;
            tracing::debug!(?lt, insns = prog.len(), "compiled");
            programs.push((lt, prog));
        }
        Ok(Filter {
            expr: expr.to_string(),
            programs,
        })
    }

    /// The program for packets of link type `lt` (compiled by [`Filter::compile`]).
    pub fn program(&self, lt: LinkType) -> Option<&[FilterInsn]> {
        self.programs
            .iter()
            .find(|(l, _)| *l == lt)
            .map(|(_, p)| p.as_slice())
    }

    /// The link types compiled for, in order.
    pub fn linktypes(&self) -> impl Iterator<Item = LinkType> + '_ {
        self.programs.iter().map(|(l, _)| *l)
    }

    /// Userspace evaluation: how many bytes of the packet to keep (0 = rejected); `None`
    /// when the filter was not compiled for `lt`.
    pub fn eval(&self, lt: LinkType, data: &[u8], wirelen: u32) -> Option<u32> {
        self.program(lt).map(|p| cbpf::run(p, data, wirelen))
    }
}

#[cfg(test)]
mod tests;
