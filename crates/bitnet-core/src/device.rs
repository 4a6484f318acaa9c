//! Devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device { Cpu }
