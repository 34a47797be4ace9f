//! An upload's plaintext formats, both halves: which layouts the enclave parses, and the
//! footer-first framing in which kura's client sends a Parquet file (written here by
//! [`footer_first`], read by the enclave with [`footer_first_prefix`]).

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

/// The plaintext layout of an upload, named in its signed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadFormat {
    /// CSV with a header line naming the contract's columns.
    #[serde(rename = "csv")]
    Csv,
    /// A Parquet file as it is: its metadata comes last, so it is gathered whole, then decoded.
    #[serde(rename = "parquet")]
    Parquet,
    /// A Parquet file sent metadata first, so that each row group is decoded as soon as its
    /// bytes have arrived and the file is never held whole: [`FOOTER_FIRST_PREFIX`] bytes
    /// holding the file's length and the footer's length (u64, little-endian); the footer (the
    /// file's last bytes: its metadata, the metadata's 4-byte length, `PAR1`); then the rest of
    /// the file from its first byte. kura's client sends Parquet files this way.
    #[serde(rename = "parquet-footer-first")]
    ParquetFooterFirst,
    /// An ONNX model file (a `[[models]]` entry of the contract), gathered whole: its SHA-256
    /// must be the one the contract pins.
    #[serde(rename = "onnx")]
    Onnx,
}

/// The two lengths that open a footer-first Parquet stream.
pub const FOOTER_FIRST_PREFIX: usize = 16;

/// The file's length and the footer's length, from the first [`FOOTER_FIRST_PREFIX`] bytes of
/// a footer-first stream (`None` when fewer bytes are given).
pub fn footer_first_prefix(head: &[u8]) -> Option<(u64, u64)> {
    let word = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
    Some((word(0)?, word(8)?))
}

/// The client's half: what goes before the rest of `file` in a footer-first stream (the
/// prefix and the footer), and the length of that rest; `file` is left at its start.
pub fn footer_first(file: &mut (impl Read + Seek)) -> std::io::Result<(Vec<u8>, u64)> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let len = file.seek(SeekFrom::End(0))?;
    if len < 12 {
        return Err(bad(format!("{len} bytes is too short for a Parquet file")));
    }
    let mut end = [0u8; 8];
    file.seek(SeekFrom::End(-8))?;
    file.read_exact(&mut end)?;
    if &end[4..] != b"PAR1" {
        return Err(bad("not a Parquet file (it does not end with PAR1)".into()));
    }
    let footer = u64::from(u32::from_le_bytes(end[..4].try_into().expect("4 bytes"))) + 8;
    if footer + 4 > len {
        return Err(bad(format!(
            "not a Parquet file (a footer of {footer} bytes in a file of {len})"
        )));
    }
    let mut head = Vec::with_capacity(FOOTER_FIRST_PREFIX + footer as usize);
    head.extend_from_slice(&len.to_le_bytes());
    head.extend_from_slice(&footer.to_le_bytes());
    file.seek(SeekFrom::Start(len - footer))?;
    file.take(footer).read_to_end(&mut head)?;
    file.seek(SeekFrom::Start(0))?;
    Ok((head, len - footer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_first_puts_the_footer_first_and_names_both_lengths() {
        // A stand-in with Parquet's trailer: body, a 6-byte "metadata", its length, PAR1.
        let mut file = b"PAR1body-bytes".to_vec();
        file.extend_from_slice(b"META!!");
        file.extend_from_slice(&6u32.to_le_bytes());
        file.extend_from_slice(b"PAR1");
        let mut cursor = std::io::Cursor::new(file.clone());
        let (head, rest) = footer_first(&mut cursor).unwrap();
        assert_eq!(cursor.position(), 0, "left at its start");
        assert_eq!(footer_first_prefix(&head), Some((file.len() as u64, 14)));
        assert_eq!(&head[FOOTER_FIRST_PREFIX..], &file[file.len() - 14..]);
        assert_eq!(rest, file.len() as u64 - 14);
        assert_eq!(footer_first_prefix(&head[..15]), None);

        for (bad, why) in [
            (b"PAR1".to_vec(), "too short"),
            (b"PAR1 something else".to_vec(), "does not end with PAR1"),
            (
                [&[0u8; 8][..], &1000u32.to_le_bytes(), b"PAR1"].concat(),
                "a footer of 1008",
            ),
        ] {
            let err = footer_first(&mut std::io::Cursor::new(bad)).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
    }

    #[test]
    fn formats_keep_their_wire_names() {
        for (f, name) in [
            (UploadFormat::Csv, "\"csv\""),
            (UploadFormat::Parquet, "\"parquet\""),
            (UploadFormat::ParquetFooterFirst, "\"parquet-footer-first\""),
            (UploadFormat::Onnx, "\"onnx\""),
        ] {
            assert_eq!(serde_json::to_string(&f).unwrap(), name);
        }
        let err = serde_json::from_str::<UploadFormat>("\"xlsx\"").unwrap_err();
        assert!(err.to_string().contains("parquet-footer-first"), "{err}");
    }
}
