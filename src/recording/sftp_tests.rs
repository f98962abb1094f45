#![allow(clippy::unwrap_used)]

use super::*;

/// Bytes captured from OpenSSH's `sftp -D` talking to `/usr/lib/openssh/sftp-server`:
/// `put` of a 10000-byte file, `get` of a 12-byte one, `mkdir`, `rename`, `rm`, `rmdir`,
/// and a `get` of a missing file (refused by `stat` before any open).
const CLIENT: &[u8] = include_bytes!("testdata/sftp-client.bin");
const SERVER: &[u8] = include_bytes!("testdata/sftp-server.bin");
const ROOT: &str = "/tmp/sftpcap/root";

/// Splits a stream into whole packets (length included).
fn packets(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = 4 + u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        out.push(&b[..n]);
        b = &b[n..];
    }
    out
}

/// A packet's request id (`None` for INIT and VERSION).
fn id_of(p: &[u8]) -> Option<u32> {
    (p[4] > 2).then(|| u32::from_be_bytes(p[5..9].try_into().unwrap()))
}

/// Feeds the capture as it happened: each request, then the replies to what was asked so
/// far; each packet in chunks of `chunk(i)` bytes.
fn replay(obs: &mut SftpObserver, mut chunk: impl FnMut() -> usize) -> Vec<SftpOp> {
    let mut ops = Vec::new();
    let server = packets(SERVER);
    let mut next = 0;
    let mut asked = std::collections::HashSet::new();
    let mut feed = |bytes: &[u8], client: bool, obs: &mut SftpObserver, ops: &mut Vec<SftpOp>| {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = chunk().clamp(1, rest.len());
            let (a, b) = rest.split_at(n);
            ops.extend(if client {
                obs.client_bytes(a)
            } else {
                obs.server_bytes(a)
            });
            rest = b;
        }
    };
    for p in packets(CLIENT) {
        asked.insert(id_of(p));
        feed(p, true, obs, &mut ops);
        while next < server.len() && asked.contains(&id_of(server[next])) {
            feed(server[next], false, obs, &mut ops);
            next += 1;
        }
    }
    assert_eq!(next, server.len(), "every reply fed");
    ops
}

fn expected() -> Vec<String> {
    [
        format!("sftp open {ROOT}/upload.bin for write (create, truncate)"),
        format!("sftp close {ROOT}/upload.bin: read 0 bytes, wrote 10000 bytes"),
        format!("sftp open {ROOT}/dl/hello.txt for read"),
        format!("sftp close {ROOT}/dl/hello.txt: read 12 bytes, wrote 0 bytes"),
        format!("sftp mkdir {ROOT}/newdir"),
        format!("sftp rename {ROOT}/upload.bin to {ROOT}/newdir/moved.bin"),
        format!("sftp remove {ROOT}/newdir/moved.bin"),
        format!("sftp rmdir {ROOT}/newdir"),
    ]
    .to_vec()
}

fn shown(ops: &[SftpOp]) -> Vec<String> {
    ops.iter().map(ToString::to_string).collect()
}

#[test]
fn a_real_openssh_session_yields_each_file_operation_with_byte_counts() {
    let mut obs = SftpObserver::new();
    let ops = replay(&mut obs, || usize::MAX);
    assert_eq!(shown(&ops), expected());
    assert!(obs.finish().is_empty());
}

#[test]
fn any_chunking_yields_the_same_operations() {
    for size in [1, 2, 3, 5, 7, 64, 4096] {
        let mut obs = SftpObserver::new();
        assert_eq!(
            shown(&replay(&mut obs, || size)),
            expected(),
            "chunks of {size}"
        );
    }
    let mut rng = Rng(7);
    for _ in 0..20 {
        let mut obs = SftpObserver::new();
        let ops = replay(&mut obs, || (rng.next() % 300) as usize + 1);
        assert_eq!(shown(&ops), expected());
    }
}

/// A packet: length, type, fields.
fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = std::iter::once(kind)
        .chain(fields.iter().flat_map(|f| f.iter().copied()))
        .collect();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

fn u32b(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn s(v: &[u8]) -> Vec<u8> {
    let mut out = u32b(v.len() as u32);
    out.extend_from_slice(v);
    out
}

#[test]
fn refusals_and_files_left_open_are_reported() {
    let mut obs = SftpObserver::new();
    let mut ops = obs.client_bytes(&packet(
        OPEN,
        &[&u32b(1), &s(b"/etc/shadow"), &u32b(FXF_READ), &u32b(0)],
    ));
    ops.extend(obs.server_bytes(&packet(
        STATUS,
        &[&u32b(1), &u32b(3), &s(b"denied"), &s(b"")],
    )));
    ops.extend(obs.client_bytes(&packet(REMOVE, &[&u32b(2), &s(b"/nope")])));
    ops.extend(obs.server_bytes(&packet(STATUS, &[&u32b(2), &u32b(2), &s(b""), &s(b"")])));
    ops.extend(obs.client_bytes(&packet(
        OPEN,
        &[
            &u32b(3),
            &s(b"/tmp/a\x1b[2J"),
            &u32b(FXF_READ | FXF_WRITE),
            &u32b(0),
        ],
    )));
    ops.extend(obs.server_bytes(&packet(HANDLE, &[&u32b(3), &s(b"h1")])));
    ops.extend(obs.client_bytes(&packet(
        WRITE,
        &[&u32b(4), &s(b"h1"), &[0; 8], &s(b"hello")],
    )));
    // A reply to nothing asked, and a DATA claiming more than it carries.
    ops.extend(obs.server_bytes(&packet(STATUS, &[&u32b(99), &u32b(0)])));
    ops.extend(obs.client_bytes(&packet(READ, &[&u32b(5), &s(b"h1"), &[0; 8], &u32b(100)])));
    let mut data = packet(DATA, &[&u32b(5), &u32b(1000)]);
    data.extend_from_slice(b"abc");
    let len = (data.len() - 4) as u32;
    data[..4].copy_from_slice(&len.to_be_bytes());
    ops.extend(obs.server_bytes(&data));
    ops.extend(obs.finish());
    assert_eq!(
        shown(&ops),
        [
            "sftp open /etc/shadow for read: refused (permission denied)",
            "sftp remove /nope: refused (no such file)",
            "sftp open /tmp/a\x1b[2J for read and write",
            "sftp close /tmp/a\x1b[2J (open at the end): read 3 bytes, wrote 5 bytes",
        ]
    );
}

#[test]
fn a_flood_of_requests_is_bounded_and_counted() {
    let mut obs = SftpObserver::new();
    let long = vec![b'p'; 10_000];
    for id in 0..5000u32 {
        obs.client_bytes(&packet(
            OPEN,
            &[&u32b(id), &s(&long), &u32b(FXF_READ), &u32b(0)],
        ));
    }
    assert!(obs.pending.len() <= MAX_PENDING);
    assert!(obs.pending_bytes <= PENDING_PATH_BYTES);
    // Every handle granted: the table stays bounded.
    for id in 0..5000u32 {
        obs.server_bytes(&packet(HANDLE, &[&u32b(id), &s(&id.to_be_bytes())]));
    }
    assert!(obs.handles.len() <= MAX_HANDLES);
    let end = obs.finish();
    let Some(SftpOp::Untracked { requests }) = end.last() else {
        panic!("{end:?}")
    };
    assert!(*requests > 4000, "{requests}");
    // Paths are cut.
    assert!(end.iter().all(|op| op.to_string().len() < PATH_MAX + 100));
}

#[test]
fn a_huge_declared_length_keeps_only_a_bounded_prefix() {
    let mut obs = SftpObserver::new();
    obs.client_bytes(&u32::MAX.to_be_bytes());
    obs.client_bytes(&[OPEN]);
    for _ in 0..100 {
        obs.client_bytes(&[b'x'; 65536]);
        assert!(obs.client.prefix.len() <= PREFIX_MAX);
    }
    let mut obs = SftpObserver::new();
    obs.server_bytes(&u32::MAX.to_be_bytes());
    obs.server_bytes(&[DATA]);
    obs.server_bytes(&[b'x'; 65536]);
    assert!(obs.server.prefix.len() <= DATA_PREFIX_MAX);
}

/// xorshift64: a fixed sequence, so a failure is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_never_panic_and_stay_bounded() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let mut obs = SftpObserver::new();
        for _ in 0..50 {
            let n = (rng.next() % 200) as usize;
            let b = rng.bytes(n);
            if rng.next().is_multiple_of(2) {
                obs.client_bytes(&b);
            } else {
                obs.server_bytes(&b);
            }
        }
        assert!(obs.client.prefix.len() <= PREFIX_MAX && obs.server.prefix.len() <= PREFIX_MAX);
        obs.finish();
    }
}

#[test]
fn random_well_framed_packets_never_panic() {
    // Valid framing and types with random fields: reaches every parser branch.
    let kinds_c = [
        INIT, OPEN, CLOSE, READ, WRITE, REMOVE, MKDIR, RMDIR, RENAME, EXTENDED, 0, 255,
    ];
    let kinds_s = [STATUS, HANDLE, DATA, 2, 104, 105, 0];
    let mut rng = Rng(42);
    for _ in 0..300 {
        let mut obs = SftpObserver::new();
        for _ in 0..100 {
            let client = rng.next().is_multiple_of(2);
            let kinds: &[u8] = if client { &kinds_c } else { &kinds_s };
            let kind = kinds[(rng.next() % kinds.len() as u64) as usize];
            let id = u32b((rng.next() % 8) as u32);
            let handle = s(&[(rng.next() % 3) as u8]);
            let n = (rng.next() % 40) as usize;
            let tail = rng.bytes(n);
            let p = packet(kind, &[&id, &handle, &tail]);
            let split = (rng.next() as usize) % (p.len() + 1);
            let (a, b) = p.split_at(split);
            if client {
                obs.client_bytes(a);
                obs.client_bytes(b);
            } else {
                obs.server_bytes(a);
                obs.server_bytes(b);
            }
        }
        obs.finish();
    }
}

#[test]
fn an_idle_observer_after_a_transfer_is_small() {
    let mut obs = SftpObserver::new();
    replay(&mut obs, || 4096);
    let held = obs.client.prefix.capacity() + obs.server.prefix.capacity();
    eprintln!(
        "idle sftp observer: {} bytes inline + {held} bytes of buffers",
        std::mem::size_of::<SftpObserver>()
    );
    assert!(held <= 2 * 1024, "{held}");
}

/// The fuzz target's seed (`fuzz/make-seeds`) is the real session in the target's framing:
/// fed the way the target feeds it, it yields the real operations.
#[test]
fn the_fuzz_seed_replays_the_real_session() {
    let seed = include_bytes!("../../fuzz/seeds/sftp_observer/openssh-session");
    let mut obs = SftpObserver::new();
    let mut ops = Vec::new();
    let mut rest: &[u8] = seed;
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head >> 1).min(tail.len());
        let (piece, after) = tail.split_at(n);
        ops.extend(if head & 1 == 0 {
            obs.client_bytes(piece)
        } else {
            obs.server_bytes(piece)
        });
        rest = after;
    }
    assert_eq!(shown(&ops), expected());
}
