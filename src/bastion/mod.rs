//! The SSH front (russh): certificate authentication and `direct-tcpip` forwarding.
//!
//! SKELETON: the bastion work fills this in.
