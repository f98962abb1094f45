//! SFTP bytes relayed through a recorded session: `SftpObserver` must follow any input,
//! in any chunking, in bounded memory and without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut obs = drawbridge::recording::sftp::SftpObserver::new();
    // Pieces: a head byte (bit 0: the direction, 0 client to server; bits 1-7: the length
    // of the piece, 0 to 127 bytes), then the piece.
    let mut rest = data;
    while let Some((&head, tail)) = rest.split_first() {
        let n = usize::from(head >> 1).min(tail.len());
        let (piece, after) = tail.split_at(n);
        if head & 1 == 0 {
            obs.client_bytes(piece);
        } else {
            obs.server_bytes(piece);
        }
        rest = after;
    }
    for op in obs.finish() {
        let _ = op.to_string();
    }
});
