//! SFTP bytes relayed through a recorded session: `SftpObserver` must follow any input,
//! in any chunking, in bounded memory and without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut obs = drawbridge::recording::sftp::SftpObserver::new();
    // The first byte of each 17-byte piece picks the direction.
    for piece in data.chunks(17) {
        if let Some((&dir, rest)) = piece.split_first() {
            if dir & 1 == 0 {
                obs.client_bytes(rest);
            } else {
                obs.server_bytes(rest);
            }
        }
    }
    for op in obs.finish() {
        let _ = op.to_string();
    }
});
