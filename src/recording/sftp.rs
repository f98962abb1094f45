//! [`SftpObserver`]: the file operations of an `sftp` subsystem channel (what `sftp`,
//! `scp` and `rsync`-over-sftp do), read from the bytes the bastion relays.
//!
//! It is fed the client→server and server→client bytes as they pass, in any chunking,
//! and yields operations: a file opened (for read, write, ...), closed (with the bytes
//! read and written through its handle), renamed, removed, a folder made or removed. It
//! reads SFTP version 3 (what OpenSSH speaks): each packet is `uint32 length`, `byte
//! type`, `uint32 request id`, fields. Requests wait for their reply (`STATUS`, `HANDLE`,
//! `DATA`) to say whether they succeeded.
//!
//! The input is hostile: every buffer and table is bounded ([`PREFIX_MAX`],
//! [`MAX_PENDING`], [`MAX_HANDLES`], [`PATH_MAX`]), a packet it cannot read is skipped by
//! its length, and it never panics. Feed the client's bytes before passing them on, so a
//! reply never arrives before its request.

use std::collections::HashMap;

/// Bytes of a packet kept to read its fields (the rest is only counted): enough for two
/// 4 KiB paths (a rename).
pub const PREFIX_MAX: usize = 9 + 2 * (4 + 4096) + 64;
/// For `WRITE` (client) and `DATA` (server) only the fields before the data are kept.
const DATA_PREFIX_MAX: usize = 9 + 4 + HANDLE_MAX + 8 + 4;
/// Requests waiting for their reply at most; more are not tracked (and counted).
pub const MAX_PENDING: usize = 1024;
/// Bytes of paths held by waiting requests at most.
const PENDING_PATH_BYTES: usize = 64 * 1024;
/// Open file handles tracked at most.
pub const MAX_HANDLES: usize = 128;
/// A path is kept to this many bytes (cut on a character boundary).
pub const PATH_MAX: usize = 512;
/// Handles longer than this are not tracked (OpenSSH's are 4 bytes).
const HANDLE_MAX: usize = 256;

// Packet types (draft-ietf-secsh-filexfer-02, version 3).
const INIT: u8 = 1;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const EXTENDED: u8 = 200;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;

// `OPEN` flags.
const FXF_READ: u32 = 0x01;
const FXF_WRITE: u32 = 0x02;
const FXF_APPEND: u32 = 0x04;
const FXF_CREAT: u32 = 0x08;
const FXF_TRUNC: u32 = 0x10;
const FXF_EXCL: u32 = 0x20;

/// How a file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
}

impl OpenFlags {
    fn from_bits(b: u32) -> OpenFlags {
        OpenFlags {
            read: b & FXF_READ != 0,
            write: b & FXF_WRITE != 0,
            append: b & FXF_APPEND != 0,
            create: b & FXF_CREAT != 0,
            truncate: b & FXF_TRUNC != 0,
            exclusive: b & FXF_EXCL != 0,
        }
    }
}

impl std::fmt::Display for OpenFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match (self.read, self.write) {
            (true, true) => "for read and write",
            (false, true) => "for write",
            (true, false) => "for read",
            (false, false) => "with no access",
        };
        f.write_str(how)?;
        let extra: Vec<&str> = [
            (self.create, "create"),
            (self.truncate, "truncate"),
            (self.append, "append"),
            (self.exclusive, "exclusive"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// What the server answered to a request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure(pub u32);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.0 {
            1 => "end of file",
            2 => "no such file",
            3 => "permission denied",
            4 => "failure",
            5 => "bad message",
            6 => "no connection",
            7 => "connection lost",
            8 => "operation unsupported",
            _ => return write!(f, "status {}", self.0),
        };
        f.write_str(name)
    }
}

/// One file operation. `Display` gives the recording's marker text (paths as sent, cut
/// to [`PATH_MAX`]; the recorder escapes control characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftpOp {
    Open {
        path: String,
        flags: OpenFlags,
        /// `Some` when the server refused.
        failed: Option<Failure>,
    },
    /// A handle closed, or still open when the session ended (`at_end`).
    Close {
        path: String,
        read: u64,
        written: u64,
        at_end: bool,
    },
    Rename {
        from: String,
        to: String,
        failed: Option<Failure>,
    },
    Remove {
        path: String,
        failed: Option<Failure>,
    },
    Mkdir {
        path: String,
        failed: Option<Failure>,
    },
    Rmdir {
        path: String,
        failed: Option<Failure>,
    },
    /// Requests not tracked because too many were waiting at once (reported at the end).
    Untracked { requests: u64 },
}

impl std::fmt::Display for SftpOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let refused = |f: &mut std::fmt::Formatter<'_>, failed: &Option<Failure>| match failed {
            Some(why) => write!(f, ": refused ({why})"),
            None => Ok(()),
        };
        match self {
            SftpOp::Open {
                path,
                flags,
                failed,
            } => {
                write!(f, "sftp open {path} {flags}")?;
                refused(f, failed)
            }
            SftpOp::Close {
                path,
                read,
                written,
                at_end,
            } => write!(
                f,
                "sftp close {path}{}: read {read} bytes, wrote {written} bytes",
                if *at_end { " (open at the end)" } else { "" }
            ),
            SftpOp::Rename { from, to, failed } => {
                write!(f, "sftp rename {from} to {to}")?;
                refused(f, failed)
            }
            SftpOp::Remove { path, failed } => {
                write!(f, "sftp remove {path}")?;
                refused(f, failed)
            }
            SftpOp::Mkdir { path, failed } => {
                write!(f, "sftp mkdir {path}")?;
                refused(f, failed)
            }
            SftpOp::Rmdir { path, failed } => {
                write!(f, "sftp rmdir {path}")?;
                refused(f, failed)
            }
            SftpOp::Untracked { requests } => write!(
                f,
                "sftp: {requests} requests not followed (too many waiting at once)"
            ),
        }
    }
}

/// A request waiting for its reply.
#[derive(Debug)]
enum Request {
    Open { path: String, flags: OpenFlags },
    Read { handle: Vec<u8> },
    Rename { from: String, to: String },
    Remove { path: String },
    Mkdir { path: String },
    Rmdir { path: String },
}

impl Request {
    fn path_bytes(&self) -> usize {
        match self {
            Request::Open { path, .. }
            | Request::Remove { path }
            | Request::Mkdir { path }
            | Request::Rmdir { path } => path.len(),
            Request::Rename { from, to } => from.len() + to.len(),
            Request::Read { handle } => handle.len(),
        }
    }
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    read: u64,
    written: u64,
}

/// Splits one direction's bytes into packets, keeping only a bounded prefix of each.
#[derive(Debug, Default)]
struct Framer {
    head: [u8; 4],
    head_len: usize,
    /// Bytes of the current packet not yet seen (0: reading a length).
    remaining: u32,
    /// The current packet's length.
    total: u32,
    prefix: Vec<u8>,
    cap: usize,
}

impl Framer {
    /// Feeds bytes; calls `packet(prefix, total_len)` for each complete packet.
    fn feed(&mut self, mut bytes: &[u8], data_kind: u8, mut packet: impl FnMut(&[u8], u32)) {
        while !bytes.is_empty() {
            if self.remaining == 0 {
                let n = (4 - self.head_len).min(bytes.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&bytes[..n]);
                self.head_len += n;
                bytes = &bytes[n..];
                if self.head_len == 4 {
                    self.head_len = 0;
                    self.total = u32::from_be_bytes(self.head);
                    self.remaining = self.total;
                    self.prefix.clear();
                    self.cap = PREFIX_MAX;
                    // An empty packet carries nothing: skip it.
                }
                continue;
            }
            let n = (self.remaining as usize).min(bytes.len());
            let room = self.cap.saturating_sub(self.prefix.len()).min(n);
            self.prefix.extend_from_slice(&bytes[..room]);
            if self.prefix.first() == Some(&data_kind) {
                self.cap = DATA_PREFIX_MAX;
                self.prefix.truncate(DATA_PREFIX_MAX);
            }
            bytes = &bytes[n..];
            // n ≤ remaining, which is a u32.
            self.remaining -= n as u32;
            if self.remaining == 0 {
                packet(&self.prefix, self.total);
                self.prefix.clear();
                if self.prefix.capacity() > 1024 {
                    self.prefix.shrink_to(256);
                }
            }
        }
    }
}

/// Reads SFTP fields from a packet prefix; `None` when it is short.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    }
    fn string(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A path; one longer than the kept prefix is taken as far as it goes (the fields
    /// after it are then missing), so an over-long path still shows.
    fn path(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let b = self.take(n.min(self.0.len()))?;
        Some(path_text(b))
    }
}

/// A path as recorded: lossy UTF-8, cut to [`PATH_MAX`] bytes.
fn path_text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    super::text::cut(&s, PATH_MAX).to_string()
}

/// Follows one `sftp` subsystem channel. See the module docs.
#[derive(Debug, Default)]
pub struct SftpObserver {
    client: Framer,
    server: Framer,
    pending: HashMap<u32, Request>,
    pending_bytes: usize,
    handles: HashMap<Vec<u8>, OpenFile>,
    untracked: u64,
}

impl SftpObserver {
    pub fn new() -> SftpObserver {
        SftpObserver::default()
    }

    /// Bytes the client sent toward the server (feed them before passing them on).
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Vec<SftpOp> {
        let mut ops = Vec::new();
        let mut framer = std::mem::take(&mut self.client);
        framer.feed(bytes, WRITE, |p, total| {
            self.client_packet(p, total, &mut ops)
        });
        self.client = framer;
        ops
    }

    /// Bytes the server sent toward the client.
    pub fn server_bytes(&mut self, bytes: &[u8]) -> Vec<SftpOp> {
        let mut ops = Vec::new();
        let mut framer = std::mem::take(&mut self.server);
        framer.feed(bytes, DATA, |p, total| {
            self.server_packet(p, total, &mut ops)
        });
        self.server = framer;
        ops
    }

    /// The channel ended: files still open, and requests not followed.
    pub fn finish(self) -> Vec<SftpOp> {
        let mut files: Vec<OpenFile> = self.handles.into_values().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut ops: Vec<SftpOp> = files
            .into_iter()
            .map(|f| SftpOp::Close {
                path: f.path,
                read: f.read,
                written: f.written,
                at_end: true,
            })
            .collect();
        if self.untracked > 0 {
            ops.push(SftpOp::Untracked {
                requests: self.untracked,
            });
        }
        ops
    }

    fn wait_for_reply(&mut self, id: u32, req: Request) {
        let bytes = req.path_bytes();
        if self.pending.len() >= MAX_PENDING
            || self.pending_bytes + bytes > PENDING_PATH_BYTES
            || self.pending.contains_key(&id)
        {
            self.untracked += 1;
            return;
        }
        self.pending_bytes += bytes;
        self.pending.insert(id, req);
    }

    fn reply_to(&mut self, id: u32) -> Option<Request> {
        let req = self.pending.remove(&id)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(req.path_bytes());
        Some(req)
    }

    fn client_packet(&mut self, prefix: &[u8], total: u32, ops: &mut Vec<SftpOp>) {
        let mut f = Fields(prefix);
        let Some(kind) = f.u8() else { return };
        if kind == INIT {
            return;
        }
        let Some(id) = f.u32() else { return };
        match kind {
            OPEN => {
                if let Some(path) = f.path() {
                    let flags = OpenFlags::from_bits(f.u32().unwrap_or(0));
                    self.wait_for_reply(id, Request::Open { path, flags });
                }
            }
            READ => {
                if let Some(handle) = f.string()
                    && self.handles.contains_key(handle)
                {
                    self.wait_for_reply(
                        id,
                        Request::Read {
                            handle: handle.to_vec(),
                        },
                    );
                }
            }
            WRITE => {
                let Some(handle) = f.string() else { return };
                let (Some(_offset), Some(declared)) = (f.u64(), f.u32()) else {
                    return;
                };
                // The data actually in the packet: 1 + 4 + (4 + handle) + 8 + 4 bytes before it.
                let header = 21 + handle.len() as u64;
                let actual = u64::from(total).saturating_sub(header);
                if let Some(file) = self.handles.get_mut(handle) {
                    file.written = file.written.saturating_add(u64::from(declared).min(actual));
                }
            }
            CLOSE => {
                if let Some(handle) = f.string()
                    && let Some(file) = self.handles.remove(handle)
                {
                    ops.push(SftpOp::Close {
                        path: file.path,
                        read: file.read,
                        written: file.written,
                        at_end: false,
                    });
                }
            }
            REMOVE => {
                if let Some(path) = f.path() {
                    self.wait_for_reply(id, Request::Remove { path });
                }
            }
            MKDIR => {
                if let Some(path) = f.path() {
                    self.wait_for_reply(id, Request::Mkdir { path });
                }
            }
            RMDIR => {
                if let Some(path) = f.path() {
                    self.wait_for_reply(id, Request::Rmdir { path });
                }
            }
            RENAME => self.rename(id, &mut f),
            EXTENDED if f.string() == Some(b"posix-rename@openssh.com") => {
                self.rename(id, &mut f);
            }
            _ => {}
        }
    }

    /// A rename's two paths (the second empty when the first was too long to keep).
    fn rename(&mut self, id: u32, f: &mut Fields<'_>) {
        if let Some(from) = f.path() {
            let to = f.path().unwrap_or_default();
            self.wait_for_reply(id, Request::Rename { from, to });
        }
    }

    fn server_packet(&mut self, prefix: &[u8], total: u32, ops: &mut Vec<SftpOp>) {
        let mut f = Fields(prefix);
        let Some(kind) = f.u8() else { return };
        let Some(id) = f.u32() else { return };
        let Some(req) = self.reply_to(id) else { return };
        match kind {
            STATUS => {
                let code = f.u32().unwrap_or(4);
                let failed = (code != 0).then_some(Failure(code));
                match req {
                    Request::Open { path, flags } => ops.push(SftpOp::Open {
                        path,
                        flags,
                        // A STATUS to an OPEN is always a refusal, even one saying "ok".
                        failed: Some(failed.unwrap_or(Failure(4))),
                    }),
                    Request::Rename { from, to } => ops.push(SftpOp::Rename { from, to, failed }),
                    Request::Remove { path } => ops.push(SftpOp::Remove { path, failed }),
                    Request::Mkdir { path } => ops.push(SftpOp::Mkdir { path, failed }),
                    Request::Rmdir { path } => ops.push(SftpOp::Rmdir { path, failed }),
                    Request::Read { .. } => {}
                }
            }
            HANDLE => {
                if let Request::Open { path, flags } = req {
                    if let Some(handle) = f.string()
                        && handle.len() <= HANDLE_MAX
                        && self.handles.len() < MAX_HANDLES
                    {
                        self.handles.insert(
                            handle.to_vec(),
                            OpenFile {
                                path: path.clone(),
                                read: 0,
                                written: 0,
                            },
                        );
                    }
                    ops.push(SftpOp::Open {
                        path,
                        flags,
                        failed: None,
                    });
                }
            }
            DATA => {
                if let Request::Read { handle } = req
                    && let Some(declared) = f.u32()
                    && let Some(file) = self.handles.get_mut(&handle)
                {
                    // 1 + 4 + 4 bytes before the data.
                    let actual = u64::from(total).saturating_sub(9);
                    file.read = file.read.saturating_add(u64::from(declared).min(actual));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "sftp_tests.rs"]
mod tests;
