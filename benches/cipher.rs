//! What the SSH ciphers alone cost per GiB, on one core: the part of a jump host's CPU per
//! byte that no change to the bastion's own code can remove. `scripts/bench-vs-openssh`
//! measures the rest beside it (a plain TCP relay as the floor of the socket work).
//!
//! The implementations are the ones a russh session runs in drawbridge: OpenSSH's
//! `chacha20-poly1305@openssh.com` (ChaCha20 on the length and the payload, Poly1305 over
//! both) through russh itself (OpenSSL's libcrypto with our fork's `openssl-chacha`
//! feature, aws-lc otherwise; the first line says which), with aws-lc's for comparison, and
//! AES-128-GCM (aws-lc) with the SSH nonce sequence, sealing and opening full 32 KiB
//! channel packets in place, as a forward does in each direction.
//!
//! `cargo bench --bench cipher` prints one line per cipher and direction, in the form
//! `seal chacha20-poly1305: <seconds> s/GiB (<MB/s>)`; `-- --mib N` sets the amount
//! (default 1024). bench/RESULTS.md has the figures measured here.

use std::time::Instant;

use aws_lc_rs::aead::chacha20_poly1305_openssh as openssh;
use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// A packet as russh builds it for a full channel packet: 4 bytes of length, 1 of padding
/// length, the CHANNEL_DATA header (1 + 4 + 4), 32 KiB of data, padding to the block.
const PACKET: usize = 4 + 1 + 9 + 32 * 1024 + 6;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn report(what: &str, bytes: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what}: {:.3} s/GiB ({:.0} MB/s)",
        secs * GIB / bytes as f64,
        bytes as f64 / secs / 1e6
    );
}

fn gcm_nonce(iv: &[u8; 12], seq: u64) -> Nonce {
    // RFC 5647: the invocation counter is the IV's last 8 bytes, incremented per packet
    let mut n = *iv;
    let counter = u64::from_be_bytes([n[4], n[5], n[6], n[7], n[8], n[9], n[10], n[11]]);
    n[4..].copy_from_slice(&counter.wrapping_add(seq).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn main() -> anyhow::Result<()> {
    let mut mib = 1024usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--mib"
            && let Some(v) = args.next()
        {
            mib = v.parse()?;
        }
    }
    let packets = (mib * 1024 * 1024).div_ceil(PACKET).max(1);
    let bytes = packets * PACKET;
    let mut buf = vec![0x5a_u8; PACKET];
    let key = [7u8; openssh::KEY_LEN];

    // chacha20-poly1305@openssh.com, as russh's sessions run it
    println!(
        "chacha20-poly1305 in russh runs on: {}",
        russh::cipher::chacha20_poly1305_implementation()
    );
    let name = &russh::cipher::CHACHA20_POLY1305;
    let no_cipher = || anyhow::anyhow!("russh has no chacha20-poly1305");
    let mut sealing = russh::cipher::bench::sealing_key(name, &key).ok_or_else(no_cipher)?;
    let mut opening = russh::cipher::bench::opening_key(name, &key).ok_or_else(no_cipher)?;
    let mut tag = vec![0u8; sealing.tag_len()];
    let start = Instant::now();
    for seq in 0..packets {
        sealing.seal(seq as u32, &mut buf, &mut tag);
        std::hint::black_box(&tag);
    }
    report("seal chacha20-poly1305", bytes, start);
    // Opening needs packets that authenticate: sealing one per sequence number first would
    // double the work, so the same sequence number is used for every packet (the cost
    // does not depend on it).
    let mut sealed = vec![0x5a_u8; PACKET];
    sealing.seal(0, &mut sealed, &mut tag);
    sealed.extend_from_slice(&tag);
    let mut packet = sealed.clone();
    let start = Instant::now();
    for _ in 0..packets {
        packet.copy_from_slice(&sealed);
        opening
            .open(0, &mut packet)
            .map_err(|_| anyhow::anyhow!("chacha20-poly1305: a packet did not authenticate"))?;
    }
    report(
        "open chacha20-poly1305 (with a 32 KiB copy per packet)",
        bytes,
        start,
    );
    let start = Instant::now();
    for _ in 0..packets {
        packet.copy_from_slice(&sealed);
    }
    report("  the copy alone", bytes, start);

    // aws-lc's own chacha20-poly1305@openssh.com, which russh used before (for comparison)
    let sealing = openssh::SealingKey::new(&key);
    let mut tag = [0u8; openssh::TAG_LEN];
    let start = Instant::now();
    for seq in 0..packets {
        sealing.seal_in_place(seq as u32, &mut buf, &mut tag);
        std::hint::black_box(&tag);
    }
    report(
        "seal chacha20-poly1305, aws-lc (for comparison)",
        bytes,
        start,
    );

    // aes128-gcm@openssh.com: the length travels in clear as associated data
    let iv = [3u8; 12];
    let gcm = LessSafeKey::new(
        UnboundKey::new(&AES_128_GCM, &key[..16])
            .map_err(|_| anyhow::anyhow!("AES-128-GCM: bad key length"))?,
    );
    let start = Instant::now();
    for seq in 0..packets {
        let (len, body) = buf.split_at_mut(4);
        let t = gcm
            .seal_in_place_separate_tag(gcm_nonce(&iv, seq as u64), Aad::from(&*len), body)
            .map_err(|_| anyhow::anyhow!("AES-128-GCM: seal failed"))?;
        std::hint::black_box(&t);
    }
    report("seal aes128-gcm", bytes, start);
    let mut sealed = vec![0x5a_u8; PACKET];
    let (len, body) = sealed.split_at_mut(4);
    let tag = gcm
        .seal_in_place_separate_tag(gcm_nonce(&iv, 0), Aad::from(&*len), body)
        .map_err(|_| anyhow::anyhow!("AES-128-GCM: seal failed"))?;
    sealed.extend_from_slice(tag.as_ref());
    let mut buf = sealed.clone();
    let start = Instant::now();
    for _ in 0..packets {
        buf.copy_from_slice(&sealed);
        let (len, body) = buf.split_at_mut(4);
        gcm.open_in_place(gcm_nonce(&iv, 0), Aad::from(&*len), body)
            .map_err(|_| anyhow::anyhow!("AES-128-GCM: a packet did not authenticate"))?;
    }
    report(
        "open aes128-gcm (with a 32 KiB copy per packet)",
        bytes,
        start,
    );
    Ok(())
}
