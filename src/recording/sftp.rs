//! SFTP operations seen in an `sftp` subsystem channel (placeholder).
