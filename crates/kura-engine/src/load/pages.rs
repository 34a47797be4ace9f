//! A bound on what one Parquet page may decompress to.
//!
//! The decoder allocates and fills each page to the size its header declares, whatever the
//! column chunk's metadata says, so a small page of zstd or gzip can ask for gigabytes (a
//! decompression bomb). [`PageBound`] sits between the decoder and the file: every page header
//! is read through `get_read`, and it reads the header's `uncompressed_page_size` (Thrift
//! compact field 2) first and refuses a page above the bound before the decoder sees it.
//!
//! Only the header's top level is interpreted; everything else is skipped by its Thrift type.
//! Where a header repeats the field, the largest value counts, so the decoder cannot be made to
//! read a value this check did not.

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::reader::{ChunkReader, Length};

/// Largest uncompressed page kura decodes. Writers make pages of about 1 MiB.
pub(crate) const MAX_PAGE: u64 = 256 << 20;
/// Largest page header read (statistics make headers long; not this long).
const MAX_HEADER: u64 = 16 << 20;
/// Deepest nesting of structs, lists and maps in a header (the format nests three deep).
const MAX_DEPTH: usize = 16;

/// A [`ChunkReader`] that refuses a page whose header declares more than `max` bytes.
#[derive(Debug)]
pub(crate) struct PageBound<R> {
    inner: R,
    max: u64,
    /// The declared size of the first page refused, for the reason the upload gets.
    refused: Arc<AtomicU64>,
}

impl<R> PageBound<R> {
    pub(crate) fn new(inner: R, max: u64) -> (Self, Arc<AtomicU64>) {
        let refused = Arc::new(AtomicU64::new(0));
        let reader = Self {
            inner,
            max,
            refused: refused.clone(),
        };
        (reader, refused)
    }
}

impl<R: ChunkReader> Length for PageBound<R> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

impl<R: ChunkReader> ChunkReader for PageBound<R> {
    type T = R::T;

    /// The decoder reads each page header from here.
    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        let header = self.inner.get_read(start)?;
        let declared = declared_page_size(&mut header.take(MAX_HEADER))
            .map_err(|e| ParquetError::General(format!("page header: {e}")))?;
        if declared > self.max {
            let _ =
                self.refused
                    .compare_exchange(0, declared, Ordering::Relaxed, Ordering::Relaxed);
            return Err(ParquetError::General(format!(
                "a page declares {declared} bytes uncompressed, more than {}",
                self.max
            )));
        }
        self.inner.get_read(start)
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<bytes::Bytes> {
        self.inner.get_bytes(start, length)
    }
}

/// The largest `uncompressed_page_size` (field 2, i32) at the top level of the Thrift compact
/// struct `r` begins with; 0 if there is none.
pub(crate) fn declared_page_size(r: &mut impl Read) -> Result<u64, &'static str> {
    let mut largest = 0u64;
    let mut last_id = 0i16;
    loop {
        let byte = read_u8(r)?;
        if byte == 0 {
            return Ok(largest);
        }
        let (kind, id) = field_header(r, byte, &mut last_id)?;
        if id == 2 && kind == I32 {
            let value = zigzag(varint(r)?);
            largest = largest.max(u64::try_from(value).unwrap_or(0));
        } else {
            skip(r, kind, 0)?;
        }
    }
}

const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const I8: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

fn read_u8(r: &mut impl Read) -> Result<u8, &'static str> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).map_err(|_| "it ends early")?;
    Ok(b[0])
}

fn varint(r: &mut impl Read) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = read_u8(r)?;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint is too long")
}

fn zigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A field's type and id: the id is a delta on the previous one, or follows in full.
fn field_header(r: &mut impl Read, byte: u8, last_id: &mut i16) -> Result<(u8, i16), &'static str> {
    let kind = byte & 0x0f;
    let delta = byte >> 4;
    let id = if delta == 0 {
        i16::try_from(zigzag(varint(r)?)).map_err(|_| "a field id is out of range")?
    } else {
        last_id.wrapping_add(i16::from(delta))
    };
    *last_id = id;
    Ok((kind, id))
}

fn skip_bytes(r: &mut impl Read, n: u64) -> Result<(), &'static str> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink()).map_err(|_| "unreadable")?;
    if copied == n {
        Ok(())
    } else {
        Err("it ends early")
    }
}

/// Skips one element of a list, set or map: there a boolean is a byte of its own.
fn skip_element(r: &mut impl Read, kind: u8, depth: usize) -> Result<(), &'static str> {
    match kind {
        BOOL_TRUE | BOOL_FALSE => skip_bytes(r, 1),
        _ => skip(r, kind, depth),
    }
}

/// Skips one value of `kind`.
fn skip(r: &mut impl Read, kind: u8, depth: usize) -> Result<(), &'static str> {
    if depth > MAX_DEPTH {
        return Err("it nests too deep");
    }
    match kind {
        BOOL_TRUE | BOOL_FALSE => Ok(()),
        I8 => skip_bytes(r, 1),
        I16 | I32 | I64 => varint(r).map(drop),
        DOUBLE => skip_bytes(r, 8),
        UUID => skip_bytes(r, 16),
        BINARY => {
            let n = varint(r)?;
            skip_bytes(r, n)
        }
        LIST | SET => {
            let head = read_u8(r)?;
            let n = match head >> 4 {
                15 => varint(r)?,
                n => u64::from(n),
            };
            for _ in 0..n {
                skip_element(r, head & 0x0f, depth + 1)?;
            }
            Ok(())
        }
        MAP => {
            let n = varint(r)?;
            if n == 0 {
                return Ok(());
            }
            let types = read_u8(r)?;
            for _ in 0..n {
                skip_element(r, types >> 4, depth + 1)?;
                skip_element(r, types & 0x0f, depth + 1)?;
            }
            Ok(())
        }
        STRUCT => {
            let mut last_id = 0i16;
            loop {
                let byte = read_u8(r)?;
                if byte == 0 {
                    return Ok(());
                }
                let (kind, _) = field_header(r, byte, &mut last_id)?;
                skip(r, kind, depth + 1)?;
            }
        }
        _ => Err("an unknown Thrift type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn zz(v: i64) -> Vec<u8> {
        let mut u = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = vec![];
        loop {
            let b = (u & 0x7f) as u8;
            u >>= 7;
            if u == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    /// A page header as writers encode it: type, uncompressed size, compressed size, then a
    /// nested data page header with statistics holding a binary, then stop.
    fn header(uncompressed: i64, extra: &[u8]) -> Vec<u8> {
        let mut h = vec![0x15];
        h.extend(zz(0)); // 1: type = DATA_PAGE
        h.push(0x15);
        h.extend(zz(uncompressed)); // 2: uncompressed_page_size
        h.push(0x15);
        h.extend(zz(100)); // 3: compressed_page_size
        h.extend_from_slice(extra);
        h.push(0x5c); // 8: data_page_header (struct, delta 5)
        h.push(0x15);
        h.extend(zz(10)); // 1: num_values
        h.push(0x4c); // 5: statistics (struct, delta 4)
        h.push(0x18); // 1: max (binary)
        h.push(3);
        h.extend_from_slice(b"abc");
        h.push(0x19); // 2: a list of 2 bools
        h.push(0x21);
        h.extend([1, 2]);
        h.push(0); // end of statistics
        h.push(0); // end of data_page_header
        h.push(0); // end
        h
    }

    #[test]
    fn the_declared_size_is_read_past_nested_values() {
        assert_eq!(
            declared_page_size(&mut header(1 << 20, &[]).as_slice()),
            Ok(1 << 20)
        );
        // The field repeated further on (by a long-form id): the larger counts.
        let mut again = vec![0x05];
        again.extend(zz(2));
        again.extend(zz(3 << 30));
        assert_eq!(
            declared_page_size(&mut header(10, &again).as_slice()),
            Ok(3 << 30)
        );
        assert_eq!(declared_page_size(&mut header(-5, &[]).as_slice()), Ok(0));
        assert!(declared_page_size(&mut &header(10, &[])[..9]).is_err());
    }

    /// A real file from arrow's writer: one zstd page of 8 MiB of zeros, a few KiB on disk.
    #[test]
    fn the_decoder_reads_every_page_header_through_the_bound() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::record_batch::RecordBatch;
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::arrow::arrow_reader::{
            ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
        };
        use datafusion::parquet::basic::{Compression, ZstdLevel};
        use datafusion::parquet::file::properties::WriterProperties;

        let rows = 1 << 20;
        let batch =
            RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![0i64; rows])) as _)])
                .unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_dictionary_enabled(false)
            .set_data_page_size_limit(64 << 20)
            .set_data_page_row_count_limit(rows)
            .set_write_batch_size(rows)
            .build();
        let mut file = Vec::new();
        let mut w = ArrowWriter::try_new(&mut file, batch.schema(), Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert!(file.len() < 64 << 10, "{} bytes", file.len());
        let file = bytes::Bytes::from(file);
        let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::default()).unwrap();
        let read = |max: u64| {
            let (reader, refused) = PageBound::new(file.clone(), max);
            let rows: Result<usize, _> =
                ParquetRecordBatchReaderBuilder::new_with_metadata(reader, meta.clone())
                    .build()
                    .unwrap()
                    .map(|b| b.map(|b| b.num_rows()))
                    .sum();
            (rows, refused.load(Ordering::Relaxed))
        };
        let (got, refused) = read(4 << 20);
        assert!(got.is_err());
        assert!(refused >= (8 << 20), "{refused}");
        let (got, refused) = read(MAX_PAGE);
        assert_eq!((got.unwrap(), refused), (rows, 0));
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_size_or_a_reason_and_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let _ = declared_page_size(&mut bytes.as_slice());
        }

        #[test]
        fn headers_with_any_size_and_any_unknown_fields_read_right(
            size in 0i64..i64::from(i32::MAX),
            blob in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            // An unknown binary field 7 (delta 4 from field 3) before the nested struct.
            let mut extra = vec![0x48];
            let mut len = vec![];
            let mut n = blob.len() as u64;
            loop {
                let b = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 { len.push(b); break; }
                len.push(b | 0x80);
            }
            extra.extend(len);
            extra.extend(&blob);
            // The nested struct's delta is from field 7 now: make it a long-form id 8.
            let mut h = header(size, &extra);
            let at = h.iter().rposition(|b| *b == 0x5c).unwrap();
            h.splice(at..=at, [0x0c, 16]);
            prop_assert_eq!(declared_page_size(&mut h.as_slice()), Ok(size as u64));
        }
    }
}
