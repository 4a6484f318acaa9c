//! Devices a tensor can live on.
//!
//! `Cuda` and `Wgpu` exist in every build so that configuration, CLI parsing and error
//! messages do not depend on features; asking for storage on them fails with a typed error
//! instead ([`Device::ensure_available`]).

use crate::error::{Error, Result};
use std::fmt;

/// Where a tensor's data lives. The `usize` is the device ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
    Wgpu(usize),
}

impl Device {
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Backend name: "cpu", "cuda" or "wgpu" (matches the cargo feature names).
    pub fn backend_name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda(_) => "cuda",
            Device::Wgpu(_) => "wgpu",
        }
    }

    /// Whether tensors can be created on this device in this build.
    ///
    /// Errors: [`Error::BackendNotCompiled`] when the backend's cargo feature is off, and
    /// [`Error::Unsupported`] when it is on, because this crate does not have GPU tensor
    /// storage yet (the feature only reserves the name).
    pub fn ensure_available(&self) -> Result<()> {
        let (name, compiled) = match self {
            Device::Cpu => return Ok(()),
            Device::Cuda(_) => ("cuda", cfg!(feature = "cuda")),
            Device::Wgpu(_) => ("wgpu", cfg!(feature = "wgpu")),
        };
        if compiled {
            Err(Error::Unsupported(format!(
                "device {self}: the {name} feature is enabled but bitnet-core has no {name} \
                 tensor storage yet; use Device::Cpu"
            )))
        } else {
            Err(Error::BackendNotCompiled(name))
        }
    }

    /// Parse "cpu", "cuda", "cuda:1", "wgpu", "wgpu:0" (the form [`Display`](fmt::Display)
    /// writes). Returns `None` for anything else.
    pub fn parse(s: &str) -> Option<Device> {
        let s = s.trim().to_ascii_lowercase();
        let (name, ordinal) = match s.split_once(':') {
            Some((n, o)) => (n.to_string(), o.parse().ok()?),
            None => (s, 0),
        };
        match name.as_str() {
            "cpu" if ordinal == 0 => Some(Device::Cpu),
            "cuda" => Some(Device::Cuda(ordinal)),
            "wgpu" => Some(Device::Wgpu(ordinal)),
            _ => None,
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Wgpu(i) => write!(f, "wgpu:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse() {
        for d in [Device::Cpu, Device::Cuda(1), Device::Wgpu(0)] {
            assert_eq!(Device::parse(&d.to_string()), Some(d));
        }
        assert_eq!(Device::parse("cuda"), Some(Device::Cuda(0)));
        assert_eq!(Device::parse("tpu"), None);
        assert_eq!(Device::parse("cuda:x"), None);
    }

    #[test]
    fn gpu_devices_report_missing_backend() {
        assert!(Device::Cpu.ensure_available().is_ok());
        let e = Device::Cuda(0).ensure_available().unwrap_err();
        if cfg!(feature = "cuda") {
            assert!(matches!(e, Error::Unsupported(_)));
        } else {
            assert!(matches!(e, Error::BackendNotCompiled("cuda")));
        }
        let e = Device::Wgpu(0).ensure_available().unwrap_err();
        if cfg!(feature = "wgpu") {
            assert!(matches!(e, Error::Unsupported(_)));
        } else {
            assert!(matches!(e, Error::BackendNotCompiled("wgpu")));
        }
    }
}
