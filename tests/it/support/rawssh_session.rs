//! An encrypting raw SSH client, for the rows that need hand-made packets after key
//! exchange and authentication (docs/threats.md T20): a real key exchange (curve25519-sha256,
//! RFC 8731, with the strict-KEX marker), `aes128-ctr` + `hmac-sha2-256` both ways
//! (RFC 4344, RFC 6668), public-key user authentication with a certificate (RFC 4252 §7,
//! PROTOCOL.certkeys), then whatever payloads a test builds (RFC 4254). Every read is
//! bounded.
//!
//! The server's signature over the exchange hash is verified, with the host key it sent;
//! that key is not checked against the host CA (a test connects to the bastion it
//! started, on 127.0.0.1).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use aws_lc_rs::cipher::{
    AES_128, DecryptionContext, EncryptionContext, StreamingDecryptingKey, StreamingEncryptingKey,
    UnboundCipherKey,
};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::{agreement, digest, hmac, rand};
use russh::keys::signature::{Signer, Verifier};
use ssh_key::encoding::{Decode, Encode};

use super::rawssh::{self, Raw, put_string, put_u32};

pub const MSG_DISCONNECT: u8 = 1;
pub const MSG_IGNORE: u8 = 2;
pub const MSG_DEBUG: u8 = 4;
pub const MSG_SERVICE_ACCEPT: u8 = 6;
pub const MSG_EXT_INFO: u8 = 7;
pub const MSG_USERAUTH_FAILURE: u8 = 51;
pub const MSG_USERAUTH_SUCCESS: u8 = 52;
pub const MSG_USERAUTH_BANNER: u8 = 53;
pub const MSG_GLOBAL_REQUEST: u8 = 80;
pub const MSG_REQUEST_FAILURE: u8 = 82;
pub const MSG_CHANNEL_OPEN_CONFIRMATION: u8 = 91;
pub const MSG_CHANNEL_OPEN_FAILURE: u8 = 92;
pub const MSG_CHANNEL_WINDOW_ADJUST: u8 = 93;
pub const MSG_CHANNEL_DATA: u8 = 94;

/// Our identification string (without CR LF).
const V_C: &str = "SSH-2.0-rawssh_test";
/// AES block size: packets are padded to a multiple of it.
const BLOCK: usize = 16;
/// hmac-sha2-256 tag length.
const MAC_LEN: usize = 32;
/// The longest packet we take from the server.
const MAX_PACKET: usize = 256 * 1024 + 64;

/// An encrypted, keyed SSH connection driven by hand.
pub struct Session {
    s: TcpStream,
    /// Encrypted bytes read but not consumed yet.
    buf: Vec<u8>,
    /// The packet being read: its first block (decrypted) and its `packet_length`.
    head: Option<(Vec<u8>, usize)>,
    enc: StreamingEncryptingKey,
    dec: StreamingDecryptingKey,
    mac_c: hmac::Key,
    mac_s: hmac::Key,
    seq_c: u32,
    seq_s: u32,
    pub session_id: Vec<u8>,
    /// CHANNEL_DATA received while waiting for something else, per channel (ours).
    pub data: std::collections::HashMap<u32, Vec<u8>>,
}

/// What a read found.
#[derive(Debug)]
pub enum Recv {
    Packet(Vec<u8>),
    /// EOF or reset.
    Closed,
    TimedOut,
}

/// How an encrypted connection ended, as seen by [`Session::wait_closed`].
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the fields not asserted on are shown when an assertion fails"
)]
pub struct Ending {
    /// Closed (EOF or reset) within the limit.
    pub closed: bool,
    /// An SSH_MSG_DISCONNECT's reason code and description, if the server sent one.
    pub disconnect: Option<(u32, String)>,
    /// The message numbers of the other packets that came before.
    pub messages: Vec<u8>,
    pub after: Duration,
}

/// A channel the server confirmed.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    /// Our channel number.
    pub ours: u32,
    /// The server's channel number (the recipient of what we send on it).
    pub theirs: u32,
    /// How much we may send before the server adjusts the window.
    pub window: u32,
    pub max_packet: u32,
}

/// `s` as an SSH mpint (RFC 4251 §5): an unsigned big-endian number.
fn mpint(s: &[u8]) -> Vec<u8> {
    let mut n: &[u8] = s;
    while let [0, rest @ ..] = n {
        n = rest;
    }
    let mut out = Vec::new();
    if n.first().is_some_and(|b| b & 0x80 != 0) {
        put_u32(&mut out, n.len() as u32 + 1);
        out.push(0);
    } else {
        put_u32(&mut out, n.len() as u32);
    }
    out.extend_from_slice(n);
    out
}

/// Reads an SSH `string` from `r`.
fn take_string<'a>(r: &mut &'a [u8]) -> &'a [u8] {
    let n = u32::from_be_bytes(r[..4].try_into().unwrap()) as usize;
    let s = &r[4..4 + n];
    *r = &r[4 + n..];
    s
}

fn take_u32(r: &mut &[u8]) -> u32 {
    let v = u32::from_be_bytes(r[..4].try_into().unwrap());
    *r = &r[4..];
    v
}

/// RFC 4253 §7.2: HASH(K || H || letter || session_id), extended to `len` bytes.
fn derive(k: &[u8], h: &[u8], letter: u8, session_id: &[u8], len: usize) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(k);
    ctx.update(h);
    ctx.update(&[letter]);
    ctx.update(session_id);
    let mut out = ctx.finish().as_ref().to_vec();
    while out.len() < len {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(k);
        ctx.update(h);
        ctx.update(&out);
        out.extend_from_slice(ctx.finish().as_ref());
    }
    out.truncate(len);
    out
}

fn iv(bytes: &[u8]) -> FixedLength<16> {
    let a: [u8; 16] = bytes.try_into().unwrap();
    FixedLength::from(a)
}

impl Session {
    /// Connects, exchanges banners and keys (curve25519-sha256, strict KEX, ssh-ed25519
    /// host key, aes128-ctr, hmac-sha2-256, no compression). Panics when the server does
    /// not take part properly.
    pub fn connect(addr: SocketAddr) -> Session {
        let mut raw = Raw::connect(addr);
        raw.send_banner();
        let v_s = raw.read_banner();
        assert!(v_s.starts_with("SSH-2.0-"), "server banner {v_s:?}");
        let i_c = rawssh::kexinit(&format!("curve25519-sha256,{}", rawssh::STRICT_C));
        raw.send_packet(&i_c);
        let i_s = raw.read_packet().expect("server KEXINIT");
        let lists = rawssh::parse_kexinit(&i_s).expect("a KEXINIT");
        for (i, want) in [
            (0, "curve25519-sha256"),
            (0, rawssh::STRICT_S),
            (1, "ssh-ed25519"),
            (2, "aes128-ctr"),
            (3, "aes128-ctr"),
            (4, "hmac-sha2-256"),
            (5, "hmac-sha2-256"),
        ] {
            assert!(
                lists[i].iter().any(|a| a == want),
                "the server does not offer {want}: {lists:?}"
            );
        }

        let rng = rand::SystemRandom::new();
        let eph = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let q_c = eph.compute_public_key().unwrap().as_ref().to_vec();
        let mut init = vec![rawssh::MSG_KEX_ECDH_INIT];
        put_string(&mut init, &q_c);
        raw.send_packet(&init);
        let reply = raw.read_packet().expect("KEX_ECDH_REPLY");
        assert_eq!(
            reply.first(),
            Some(&rawssh::MSG_KEX_ECDH_REPLY),
            "{reply:?}"
        );
        let mut r = &reply[1..];
        let k_s = take_string(&mut r).to_vec();
        let q_s = take_string(&mut r).to_vec();
        let sig = take_string(&mut r).to_vec();
        let secret = agreement::agree_ephemeral(
            eph,
            agreement::UnparsedPublicKey::new(&agreement::X25519, &q_s),
            (),
            |k| Ok(k.to_vec()),
        )
        .expect("X25519");
        let k = mpint(&secret);
        let mut hashed = Vec::new();
        put_string(&mut hashed, V_C.as_bytes());
        put_string(&mut hashed, v_s.as_bytes());
        put_string(&mut hashed, &i_c);
        put_string(&mut hashed, &i_s);
        put_string(&mut hashed, &k_s);
        put_string(&mut hashed, &q_c);
        put_string(&mut hashed, &q_s);
        hashed.extend_from_slice(&k);
        let h = digest::digest(&digest::SHA256, &hashed).as_ref().to_vec();
        let host_key = ssh_key::PublicKey::from_bytes(&k_s).expect("host key blob");
        let signature = ssh_key::Signature::decode(&mut sig.as_slice()).expect("signature");
        Verifier::verify(&host_key, &h, &signature)
            .expect("the host key's signature over the exchange hash");

        raw.send_packet(&[rawssh::MSG_NEWKEYS]);
        let newkeys = raw.read_packet().expect("NEWKEYS");
        assert_eq!(newkeys, [rawssh::MSG_NEWKEYS]);

        // The first exchange hash is the session id.
        let sid = h.clone();
        let key = |letter, len| derive(&k, &h, letter, &sid, len);
        let enc = StreamingEncryptingKey::less_safe_ctr(
            UnboundCipherKey::new(&AES_128, &key(b'C', 16)).unwrap(),
            EncryptionContext::Iv128(iv(&key(b'A', 16))),
        )
        .unwrap();
        let dec = StreamingDecryptingKey::ctr(
            UnboundCipherKey::new(&AES_128, &key(b'D', 16)).unwrap(),
            DecryptionContext::Iv128(iv(&key(b'B', 16))),
        )
        .unwrap();
        let mac_c = hmac::Key::new(hmac::HMAC_SHA256, &key(b'E', 32));
        let mac_s = hmac::Key::new(hmac::HMAC_SHA256, &key(b'F', 32));
        let buf = raw.take_buffered();
        Session {
            s: raw.s,
            buf,
            head: None,
            enc,
            dec,
            mac_c,
            mac_s,
            // Strict KEX: sequence numbers start again at 0 after NEWKEYS.
            seq_c: 0,
            seq_s: 0,
            session_id: sid,
            data: Default::default(),
        }
    }

    /// Connects and logs in as `user` with `cert` (for `key`); panics when refused.
    pub fn login(
        addr: SocketAddr,
        user: &str,
        key: &ssh_key::PrivateKey,
        cert: &ssh_key::Certificate,
    ) -> Session {
        let mut s = Session::connect(addr);
        assert!(s.authenticate(user, key, cert), "the login was refused");
        s
    }

    pub fn set_write_timeout(&self, t: Duration) {
        self.s.set_write_timeout(Some(t)).unwrap();
    }

    fn encrypt(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + BLOCK];
        let n = self.enc.update(plain, &mut out).unwrap().written().len();
        assert_eq!(n, plain.len(), "CTR wrote a different length");
        out.truncate(n);
        out
    }

    fn decrypt(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; data.len() + BLOCK];
        let n = self.dec.update(data, &mut out).unwrap().written().len();
        assert_eq!(n, data.len(), "CTR wrote a different length");
        out.truncate(n);
        out
    }

    /// Sends one packet carrying `payload`; false when the write failed or timed out
    /// (the server closed, or stopped reading).
    pub fn send(&mut self, payload: &[u8]) -> bool {
        let mut pad = BLOCK - (5 + payload.len()) % BLOCK;
        if pad < 4 {
            pad += BLOCK;
        }
        let len = 1 + payload.len() + pad;
        let mut p = Vec::with_capacity(4 + len + MAC_LEN);
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.push(pad as u8);
        p.extend_from_slice(payload);
        let mut padding = vec![0u8; pad];
        rand::fill(&mut padding).unwrap();
        p.extend_from_slice(&padding);
        let mut ctx = hmac::Context::with_key(&self.mac_c);
        ctx.update(&self.seq_c.to_be_bytes());
        ctx.update(&p);
        let tag = ctx.sign();
        let mut out = self.encrypt(&p);
        out.extend_from_slice(tag.as_ref());
        self.seq_c = self.seq_c.wrapping_add(1);
        self.s.write_all(&out).is_ok()
    }

    /// Encrypts `bytes` with the connection's cipher and sends them as they are: no
    /// framing, no MAC (to claim a packet length no packet may have). False when the
    /// write failed.
    pub fn send_encrypted_bytes(&mut self, bytes: &[u8]) -> bool {
        let out = self.encrypt(bytes);
        self.s.write_all(&out).is_ok()
    }

    fn fill(&mut self, deadline: Instant) -> Option<Recv> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(Recv::TimedOut);
        }
        self.s
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) => Some(Recv::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                None
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(_) => Some(Recv::Closed),
        }
    }

    /// A whole packet's payload from `buf`, if there is one; an error on a bad length or
    /// MAC.
    fn parse(&mut self) -> Result<Option<Vec<u8>>, String> {
        if self.head.is_none() {
            if self.buf.len() < BLOCK {
                return Ok(None);
            }
            let first: Vec<u8> = self.buf.drain(..BLOCK).collect();
            let plain = self.decrypt(&first);
            let len = u32::from_be_bytes(plain[..4].try_into().unwrap()) as usize;
            if !(12..=MAX_PACKET).contains(&len) || !(len + 4).is_multiple_of(BLOCK) {
                return Err(format!("server sent packet length {len}"));
            }
            self.head = Some((plain, len));
        }
        let len = self.head.as_ref().unwrap().1;
        let rest = 4 + len - BLOCK;
        if self.buf.len() < rest + MAC_LEN {
            return Ok(None);
        }
        let (mut packet, _) = self.head.take().unwrap();
        let enc: Vec<u8> = self.buf.drain(..rest).collect();
        packet.extend_from_slice(&self.decrypt(&enc));
        let tag: Vec<u8> = self.buf.drain(..MAC_LEN).collect();
        let mut signed = self.seq_s.to_be_bytes().to_vec();
        signed.extend_from_slice(&packet);
        hmac::verify(&self.mac_s, &signed, &tag).map_err(|_| "bad MAC from the server")?;
        self.seq_s = self.seq_s.wrapping_add(1);
        let pad = packet[4] as usize;
        match packet.get(5..(4 + len).saturating_sub(pad)) {
            Some(p) if !p.is_empty() => Ok(Some(p.to_vec())),
            _ => Err(format!(
                "server sent padding length {pad} in a {len}-byte packet"
            )),
        }
    }

    /// Reads one packet within `limit`.
    pub fn recv(&mut self, limit: Duration) -> Recv {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(p) = self.parse().unwrap() {
                return Recv::Packet(p);
            }
            if let Some(end) = self.fill(deadline) {
                return end;
            }
        }
    }

    /// Handles transport noise (IGNORE, DEBUG, EXT_INFO, a global request: answered with a
    /// failure when it wants a reply) and channel traffic (data is kept in
    /// [`Session::data`]; window adjusts dropped); gives back any other message.
    fn handle(&mut self, p: Vec<u8>) -> Option<Vec<u8>> {
        match p[0] {
            MSG_IGNORE | MSG_DEBUG | MSG_EXT_INFO | MSG_CHANNEL_WINDOW_ADJUST => None,
            MSG_GLOBAL_REQUEST => {
                let mut r = &p[1..];
                take_string(&mut r);
                if r.first() == Some(&1) {
                    self.send(&[MSG_REQUEST_FAILURE]);
                }
                None
            }
            MSG_CHANNEL_DATA => {
                let mut r = &p[1..];
                let ours = take_u32(&mut r);
                let data = take_string(&mut r);
                self.data.entry(ours).or_default().extend_from_slice(data);
                None
            }
            _ => Some(p),
        }
    }

    /// The next message within `limit` that [`Session::handle`] does not take.
    pub fn next_message(&mut self, limit: Duration) -> Recv {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) => {
                    if let Some(p) = self.handle(p) {
                        return Recv::Packet(p);
                    }
                }
                other => return other,
            }
        }
    }

    /// The next message (see [`Session::next_message`]) within 10 s, which must be one of
    /// `types`.
    pub fn expect(&mut self, types: &[u8], what: &str) -> Vec<u8> {
        match self.next_message(Duration::from_secs(10)) {
            Recv::Packet(p) if types.contains(&p[0]) => p,
            other => panic!("{what}: expected message {types:?}, got {other:?}"),
        }
    }

    /// SERVICE_REQUEST ssh-userauth, then USERAUTH_REQUEST publickey with the certificate
    /// as the public key blob, signed by `key` over the session id (RFC 4252 §7). Whether
    /// the server accepted it.
    pub fn authenticate(
        &mut self,
        user: &str,
        key: &ssh_key::PrivateKey,
        cert: &ssh_key::Certificate,
    ) -> bool {
        self.authenticate_signed(user, cert, |signed| {
            let sig: ssh_key::Signature = key.try_sign(signed).unwrap();
            let mut sig_blob = Vec::new();
            sig.encode(&mut sig_blob).unwrap();
            sig_blob
        })
    }

    /// Like [`Session::authenticate`], with the signature blob made by `sign` from the
    /// signed data (for signers ssh-key does not have, e.g. a software security key).
    pub fn authenticate_signed(
        &mut self,
        user: &str,
        cert: &ssh_key::Certificate,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> bool {
        let mut p = vec![rawssh::MSG_SERVICE_REQUEST];
        put_string(&mut p, b"ssh-userauth");
        self.send(&p);
        self.expect(&[MSG_SERVICE_ACCEPT], "service request");
        let blob = cert.to_bytes().unwrap();
        // The blob starts with its own algorithm name (PROTOCOL.certkeys).
        let alg = take_string(&mut blob.as_slice()).to_vec();
        let mut req = vec![rawssh::MSG_USERAUTH_REQUEST];
        put_string(&mut req, user.as_bytes());
        put_string(&mut req, b"ssh-connection");
        put_string(&mut req, b"publickey");
        req.push(1);
        put_string(&mut req, &alg);
        put_string(&mut req, &blob);
        let mut signed = Vec::new();
        put_string(&mut signed, &self.session_id);
        signed.extend_from_slice(&req);
        let sig_blob = sign(&signed);
        put_string(&mut req, &sig_blob);
        self.send(&req);
        loop {
            let p = self.expect(
                &[
                    MSG_USERAUTH_SUCCESS,
                    MSG_USERAUTH_FAILURE,
                    MSG_USERAUTH_BANNER,
                ],
                "user authentication",
            );
            match p[0] {
                MSG_USERAUTH_SUCCESS => return true,
                MSG_USERAUTH_FAILURE => return false,
                _ => {}
            }
        }
    }

    /// Sends CHANNEL_OPEN `direct-tcpip` to `host:port` as our channel `ours`, offering
    /// `window`, with `extra` bytes after the last field.
    pub fn send_direct_tcpip(
        &mut self,
        ours: u32,
        window: u32,
        host: &str,
        port: u32,
        extra: &[u8],
    ) {
        let mut p = vec![rawssh::MSG_CHANNEL_OPEN];
        put_string(&mut p, b"direct-tcpip");
        put_u32(&mut p, ours);
        put_u32(&mut p, window);
        put_u32(&mut p, 32768);
        put_string(&mut p, host.as_bytes());
        put_u32(&mut p, port);
        put_string(&mut p, b"127.0.0.1");
        put_u32(&mut p, 40000);
        p.extend_from_slice(extra);
        self.send(&p);
    }

    /// Opens a `direct-tcpip` channel to `host:port`: the confirmation, or the failure's
    /// reason code and description.
    pub fn open_direct_tcpip(
        &mut self,
        ours: u32,
        host: &str,
        port: u32,
    ) -> Result<Opened, (u32, String)> {
        self.send_direct_tcpip(ours, 1 << 21, host, port, &[]);
        let p = self.expect(
            &[MSG_CHANNEL_OPEN_CONFIRMATION, MSG_CHANNEL_OPEN_FAILURE],
            "channel open",
        );
        let mut r = &p[1..];
        assert_eq!(take_u32(&mut r), ours);
        if p[0] == MSG_CHANNEL_OPEN_FAILURE {
            let code = take_u32(&mut r);
            let text = String::from_utf8_lossy(take_string(&mut r)).into_owned();
            return Err((code, text));
        }
        Ok(Opened {
            ours,
            theirs: take_u32(&mut r),
            window: take_u32(&mut r),
            max_packet: take_u32(&mut r),
        })
    }

    /// CHANNEL_DATA on `ch`; false when the write failed or timed out.
    pub fn send_data(&mut self, ch: &Opened, data: &[u8]) -> bool {
        let mut p = vec![MSG_CHANNEL_DATA];
        put_u32(&mut p, ch.theirs);
        put_string(&mut p, data);
        self.send(&p)
    }

    /// CHANNEL_WINDOW_ADJUST on `ch` by `amount`.
    pub fn send_window_adjust(&mut self, ch: &Opened, amount: u32) -> bool {
        let mut p = vec![MSG_CHANNEL_WINDOW_ADJUST];
        put_u32(&mut p, ch.theirs);
        put_u32(&mut p, amount);
        self.send(&p)
    }

    /// Reads (and decrypts) until data on our channel `ours` contains `needle`, at most
    /// `limit`. Panics on a message other than noise and channel traffic.
    pub fn wait_data(&mut self, ours: u32, needle: &[u8], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self
                .data
                .get(&ours)
                .is_some_and(|d| d.windows(needle.len()).any(|w| w == needle))
            {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) => {
                    if let Some(p) = self.handle(p) {
                        panic!("message {} while waiting for channel data", p[0]);
                    }
                }
                Recv::Closed | Recv::TimedOut => return false,
            }
        }
    }

    /// Reads until the server closes, at most `limit`, decrypting what it can: notes a
    /// DISCONNECT and the other messages before it. Stops decrypting (but keeps waiting)
    /// once something does not parse.
    pub fn wait_closed(&mut self, limit: Duration) -> Ending {
        let started = Instant::now();
        let deadline = started + limit;
        let mut disconnect = None;
        let mut messages = Vec::new();
        let mut garbled = false;
        let closed = loop {
            if !garbled {
                match self.parse() {
                    Ok(Some(p)) => {
                        if p[0] == MSG_DISCONNECT && p.len() >= 9 {
                            let mut r = &p[1..];
                            let code = take_u32(&mut r);
                            let text = String::from_utf8_lossy(take_string(&mut r)).into_owned();
                            disconnect = Some((code, text));
                        } else {
                            messages.push(p[0]);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(_) => garbled = true,
                }
            }
            if garbled {
                self.buf.clear();
            }
            match self.fill(deadline) {
                Some(Recv::Closed) => break true,
                Some(_) => break false,
                None => {}
            }
        };
        Ending {
            closed,
            disconnect,
            messages,
            after: started.elapsed(),
        }
    }
}
