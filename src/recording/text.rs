//! Terminal bytes to text for the recording: asciicast holds JSON strings, so bytes are
//! decoded as UTF-8, invalid bytes replaced (U+FFFD), and a valid sequence split across
//! two writes is kept whole by carrying its first bytes to the next write.

/// A UTF-8 decoder that carries an incomplete sequence (at most 3 bytes) between chunks.
#[derive(Debug, Default)]
pub(crate) struct Utf8Carry {
    carry: [u8; 4],
    len: usize,
}

impl Utf8Carry {
    /// Appends the text of `bytes` (after what was carried) to `out`.
    pub(crate) fn decode_into(&mut self, mut bytes: &[u8], out: &mut String) {
        // Complete the carried sequence first, one byte at a time (at most 3).
        while self.len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            if b & 0xC0 != 0x80 {
                // Not a continuation: the carried bytes were an invalid sequence.
                out.push(char::REPLACEMENT_CHARACTER);
                self.len = 0;
                break;
            }
            self.carry[self.len] = b;
            self.len += 1;
            bytes = rest;
            match std::str::from_utf8(&self.carry[..self.len]) {
                Ok(s) => {
                    out.push_str(s);
                    self.len = 0;
                }
                Err(e) if e.error_len().is_some() => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.len = 0;
                }
                Err(_) if self.len >= 4 => {
                    out.push(char::REPLACEMENT_CHARACTER);
                    self.len = 0;
                }
                Err(_) => {}
            }
        }
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    out.push_str(s);
                    return;
                }
                Err(e) => {
                    let (valid, rest) = bytes.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            bytes = rest.get(n..).unwrap_or_default();
                        }
                        None => {
                            // An incomplete sequence at the end (1 to 3 bytes): carry it.
                            let n = rest.len().min(3);
                            self.carry[..n].copy_from_slice(&rest[..n]);
                            self.len = n;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// What is still carried, replaced (at the end of the recording).
    pub(crate) fn finish_into(&mut self, out: &mut String) {
        if self.len > 0 {
            out.push(char::REPLACEMENT_CHARACTER);
            self.len = 0;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Appends `s` as a JSON string (quotes included) to `out`, escaped exactly as
/// `serde_json` escapes it. Runs of plain bytes are copied whole: this is the recorder's
/// hot path for bulk output.
pub(crate) fn json_string_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `s` with control characters (newline, ESC, ...) written as `\u{..}`, and nothing else
/// changed: a marker or a path shown later in a terminal cannot drive it.
pub(crate) fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
    crate::util::cut(s, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> String {
        let mut d = Utf8Carry::default();
        let mut out = String::new();
        for c in chunks {
            d.decode_into(c, &mut out);
        }
        d.finish_into(&mut out);
        out
    }

    #[test]
    fn a_sequence_split_across_writes_stays_whole() {
        let euro = "€".as_bytes(); // 3 bytes
        let emoji = "🦀".as_bytes(); // 4 bytes
        assert_eq!(decode(&[&euro[..1], &euro[1..]]), "€");
        assert_eq!(decode(&[&euro[..2], &euro[2..]]), "€");
        assert_eq!(
            decode(&[&emoji[..1], &emoji[1..2], &emoji[2..3], &emoji[3..]]),
            "🦀"
        );
        assert_eq!(decode(&[b"a\xe2", b"\x82\xacb"]), "a€b");
    }

    #[test]
    fn json_strings_are_what_serde_json_writes() {
        let mut all: String = (0u32..0x80).filter_map(char::from_u32).collect();
        all.push_str("é€🦀\u{2028}\u{fffd}\u{7f}\u{9b}");
        let mut cases = vec![String::new(), all.clone(), "plain".into(), "\"\\".into()];
        for c in all.chars() {
            cases.push(format!("a{c}b"));
        }
        for case in cases {
            let mut out = Vec::new();
            json_string_into(&mut out, &case);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&case).unwrap(),
                "{case:?}"
            );
        }
    }

    #[test]
    fn only_control_characters_are_escaped() {
        assert_eq!(
            escape_controls("rm 'a b' \"c\"\\d\n\x1b[2J\u{9b}"),
            "rm 'a b' \"c\"\\d\\u{a}\\u{1b}[2J\\u{9b}"
        );
    }

    #[test]
    fn invalid_bytes_are_replaced_and_the_rest_kept() {
        assert_eq!(decode(&[b"a\xffb"]), "a\u{fffd}b");
        assert_eq!(decode(&[b"a\xe2", b"b"]), "a\u{fffd}b");
        assert_eq!(decode(&[b"a\xe2\x82"]), "a\u{fffd}");
        assert_eq!(decode(&[b"\xc0\xaf"]), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn every_split_of_mixed_text_decodes_as_the_whole() {
        let text = "héllo € 🦀 wörld\n\x1b[31mred\x1b[0m";
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                assert_eq!(
                    decode(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    text,
                    "{i} {j}"
                );
            }
        }
    }
}
