//! The SSH front (russh): certificate authentication and `direct-tcpip` forwarding.

pub mod verify;
