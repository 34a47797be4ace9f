//! Parquet, streamed footer first: the footer is checked against the contract before any row
//! group arrives, and row groups are decoded on every core as they complete.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::parquet::file::reader::{ChunkReader, Length};
use kura_contract::Dataset;
use kura_crypto::extend_zeroizing;
use zeroize::{Zeroize, Zeroizing};

use super::pages::{MAX_PAGE, PageBound};
use super::pool::Parallel;
use super::*;
use crate::EngineError;

pub(super) use kura_api::FOOTER_FIRST_PREFIX;
/// A Parquet footer longer than this is refused rather than buffered without bound.
pub(super) const MAX_FOOTER: u64 = 64 << 20;
/// A row group's buffer is reserved whole up to this size (the size comes from the file's
/// metadata, so it is not trusted further); a bigger row group grows its buffer.
pub(super) const MAX_RESERVE: u64 = 256 << 20;
/// Reserved past a row group's bytes: a chunk as kura's client sends them (1 MiB), twice.
pub(super) const SEGMENT_SLACK: usize = 2 << 20;
pub(super) const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

pub(super) fn load_parquet(
    shape: &Arc<Shape>,
    mut file: Zeroizing<Vec<u8>>,
) -> Result<Vec<RecordBatch>, EngineError> {
    // The reader wants `Bytes`: take the buffer over without a copy.
    let bytes = bytes::Bytes::from(std::mem::take(&mut *file));
    let parsed = decode_parquet(shape, &bytes);
    zeroize_unless_shared(bytes);
    parsed
}

/// Zeroizes plaintext the decoder is done with, unless a batch still points into it (then it
/// is part of the held data).
pub(super) fn zeroize_unless_shared(bytes: bytes::Bytes) {
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.zeroize();
    }
}

/// A Parquet file kura's own checks refuse, with kura's reason.
pub(super) fn unreadable(dataset: &Dataset, why: impl std::fmt::Display) -> EngineError {
    EngineError::schema(&dataset.name, format!("not a readable Parquet file: {why}"))
}

/// A Parquet decoding error, without the decoder's words (which may quote a value).
pub(super) fn undecodable(dataset: &Dataset) -> EngineError {
    unreadable(
        dataset,
        "its metadata or a column chunk could not be decoded",
    )
}

/// Decodes a whole Parquet file, one row group per job on the parsing pool, in file order.
/// When this returns, no job holds `bytes` any more.
pub(super) fn decode_parquet(
    shape: &Arc<Shape>,
    bytes: &bytes::Bytes,
) -> Result<Vec<RecordBatch>, EngineError> {
    let dataset = &shape.declared;
    let meta =
        ArrowReaderMetadata::load(bytes, reader_options()).map_err(|_| undecodable(dataset))?;
    check_parquet_schema(dataset, &meta)?;
    // Every column chunk inside the data, as the footer-first path checks: the decoder panics
    // on a negative offset (found by the `parquet_footer_first` fuzz target).
    let trailer = bytes.len().saturating_sub(8);
    let metadata_len = bytes
        .get(trailer..trailer + 4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let body_len = (bytes.len() as u64).saturating_sub(u64::from(metadata_len) + 8);
    segments(dataset, &meta, body_len)?;
    let meta = with_string_views(dataset, meta)?;
    let mut parallel = Parallel::default();
    for group in 0..meta.metadata().num_row_groups() {
        let (shape, bytes, meta) = (shape.clone(), bytes.clone(), meta.clone());
        parallel.submit(Box::new(move || {
            decode_row_groups(&shape, bytes, meta, vec![group])
        }))?;
    }
    parallel.finish()
}

/// How every Parquet upload is read: without the Arrow schema a writer may embed in the footer.
/// Its types are the Parquet schema's anyway (which is checked against the contract), and
/// decoding it means decoding the sender's flatbuffers, where arrow-ipc panics on some inputs
/// (found by the `parquet_footer_first` fuzz target: a field of type NONE).
fn reader_options() -> ArrowReaderOptions {
    ArrowReaderOptions::new().with_skip_arrow_metadata(true)
}

/// The file must carry the contract's columns, each in a type that converts losslessly.
pub(super) fn check_parquet_schema(
    dataset: &Dataset,
    meta: &ArrowReaderMetadata,
) -> Result<(), EngineError> {
    let schema = meta.schema();
    check_names(dataset, schema.fields().iter().map(|f| f.name().as_str()))?;
    for field in schema.fields() {
        let declared = dataset.column(field.name()).expect("checked");
        if !compatible(field.data_type(), declared.ty) {
            return Err(EngineError::schema(
                &dataset.name,
                format!(
                    "column {:?} has type {} in the file, but the contract declares {}",
                    field.name(),
                    field.data_type(),
                    declared.ty.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// The reader's metadata, set to decode text straight into string views (the type text is held
/// as), which spares a copy of every string.
pub(super) fn with_string_views(
    dataset: &Dataset,
    meta: ArrowReaderMetadata,
) -> Result<ArrowReaderMetadata, EngineError> {
    let fields: Vec<Field> = meta
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let options = reader_options().with_schema(Arc::new(Schema::new(fields)));
    ArrowReaderMetadata::try_new(meta.metadata().clone(), options).map_err(|_| undecodable(dataset))
}

/// Decodes `row_groups`, only the kept columns of them.
pub(super) fn decode_row_groups<R: ChunkReader + 'static>(
    shape: &Shape,
    reader: R,
    meta: ArrowReaderMetadata,
    row_groups: Vec<usize>,
) -> Result<Vec<RecordBatch>, EngineError> {
    let dataset = &shape.declared;
    // The file's columns are flat (checked against the contract), so roots are columns.
    let kept = meta
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| shape.kept.column(f.name()).is_some())
        .map(|(i, _)| i);
    let mask = ProjectionMask::roots(meta.parquet_schema(), kept);
    let (reader, refused) = PageBound::new(reader, MAX_PAGE);
    // A page refused for its size is named as such; other failures say nothing of the data.
    let failed = || match refused.load(std::sync::atomic::Ordering::Relaxed) {
        0 => undecodable(dataset),
        size => unreadable(
            dataset,
            format!(
                "a page declares {size} bytes uncompressed, more than the {} MiB kura decodes \
                 (writers make pages of about 1 MiB; this looks like a decompression bomb)",
                MAX_PAGE >> 20
            ),
        ),
    };
    ParquetRecordBatchReaderBuilder::new_with_metadata(reader, meta)
        .with_projection(mask)
        .with_row_groups(row_groups)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|_| failed())?
        .map(|batch| {
            let batch = to_contract_order(&shape.kept, batch.map_err(|_| failed())?)?;
            Ok(own_strings(batch))
        })
        .collect()
}

/// String views decoded from Parquet point into the file's pages. Held data gets buffers of its
/// own (none at all when every string is short enough to sit inline in its view, as codes and
/// categories are), so that the file's plaintext can be zeroized and freed after decoding.
pub(super) fn own_strings(batch: RecordBatch) -> RecordBatch {
    use datafusion::arrow::array::{Array, AsArray};
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as Arc<dyn Array>,
            _ => c.clone(),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).expect("same schema")
}

/// A Parquet file arriving footer first ([`UploadFormat::ParquetFooterFirst`]): the prefix and
/// footer are gathered and checked against the contract before any data arrives; then each row
/// group's bytes are gathered in a buffer of their own and decoded on the pool as soon as they
/// are complete. Bytes outside row groups (the leading magic, page indexes) are not kept.
#[derive(Debug, Default)]
pub(super) struct FooterFirst {
    /// The prefix and the footer, until both are complete.
    pub(super) head: Zeroizing<Vec<u8>>,
    pub(super) body: Option<Box<ParquetBody>>,
}

#[derive(Debug)]
pub(super) struct ParquetBody {
    pub(super) meta: ArrowReaderMetadata,
    pub(super) file_len: u64,
    /// The file without its footer: the bytes that follow the footer in the stream.
    pub(super) body_len: u64,
    pub(super) received: u64,
    /// The body's byte ranges that hold row groups, in file order.
    pub(super) segments: Vec<Segment>,
    /// The segment being gathered, and its bytes so far.
    pub(super) next: usize,
    pub(super) current: Zeroizing<Vec<u8>>,
    pub(super) parallel: Parallel,
}

/// Row groups whose column chunks all lie in `start..end`.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) row_groups: Vec<usize>,
}

impl FooterFirst {
    pub(super) fn push(&mut self, shape: &Arc<Shape>, mut piece: &[u8]) -> Result<(), EngineError> {
        let dataset = &shape.declared;
        while self.body.is_none() && !piece.is_empty() {
            let wanted = if self.head.len() < FOOTER_FIRST_PREFIX {
                FOOTER_FIRST_PREFIX
            } else {
                FOOTER_FIRST_PREFIX + self.footer_len(dataset)? as usize
            };
            let take = (wanted - self.head.len()).min(piece.len());
            extend_zeroizing(&mut self.head, &piece[..take]);
            piece = &piece[take..];
            if self.head.len() == wanted && wanted > FOOTER_FIRST_PREFIX {
                self.body = Some(Box::new(ParquetBody::start(dataset, &self.head)?));
                self.head = Zeroizing::default();
            }
        }
        match &mut self.body {
            Some(body) => body.push(shape, piece),
            None => Ok(()),
        }
    }

    /// The footer's length, from the prefix, checked against the file's length and the limit.
    pub(super) fn footer_len(&self, dataset: &Dataset) -> Result<u64, EngineError> {
        let (file_len, footer_len) = prefix(&self.head);
        let refuse = |why: String| Err(unreadable(dataset, why));
        if footer_len > MAX_FOOTER {
            return refuse(format!(
                "its footer of {footer_len} bytes exceeds the limit of {} MiB",
                MAX_FOOTER >> 20
            ));
        }
        if footer_len < 8 || footer_len + 4 > file_len {
            return refuse(format!(
                "a footer of {footer_len} bytes does not fit a file of {file_len} bytes"
            ));
        }
        Ok(footer_len)
    }

    pub(super) fn finish(self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        let Some(body) = self.body else {
            return Err(unreadable(
                &shape.declared,
                "the upload ended before the file's footer was complete",
            ));
        };
        body.finish(shape)
    }
}

/// The file's length and its footer's length, from the first 16 bytes of `head`.
pub(super) fn prefix(head: &[u8]) -> (u64, u64) {
    kura_api::footer_first_prefix(head).expect("a whole prefix")
}

impl ParquetBody {
    /// Reads the footer at the end of `head` (after the prefix) and checks the file's schema
    /// and layout.
    pub(super) fn start(dataset: &Dataset, head: &[u8]) -> Result<Self, EngineError> {
        let (file_len, footer_len) = prefix(head);
        let footer = &head[FOOTER_FIRST_PREFIX..];
        let refuse = |why: &str| unreadable(dataset, why);
        let (metadata, tail) = footer.split_at(footer.len() - 8);
        if &tail[4..] != PARQUET_MAGIC {
            return Err(refuse("its footer does not end with PAR1"));
        }
        let metadata_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        if u64::from(metadata_len) + 8 != footer_len {
            return Err(refuse("the footer's length does not match its metadata's"));
        }
        let metadata =
            ParquetMetaDataReader::decode_metadata(metadata).map_err(|_| undecodable(dataset))?;
        let meta = ArrowReaderMetadata::try_new(Arc::new(metadata), reader_options())
            .map_err(|_| undecodable(dataset))?;
        check_parquet_schema(dataset, &meta)?;
        let meta = with_string_views(dataset, meta)?;
        let body_len = file_len - footer_len;
        let segments = segments(dataset, &meta, body_len)?;
        Ok(Self {
            meta,
            file_len,
            body_len,
            received: 0,
            segments,
            next: 0,
            current: Zeroizing::default(),
            parallel: Parallel::default(),
        })
    }

    pub(super) fn push(&mut self, shape: &Arc<Shape>, mut piece: &[u8]) -> Result<(), EngineError> {
        let dataset = &shape.declared;
        if self.received + piece.len() as u64 > self.body_len {
            return Err(unreadable(
                dataset,
                format!(
                    "the upload is longer than the {} bytes the file declares",
                    self.file_len
                ),
            ));
        }
        while !piece.is_empty() {
            let at = self.received;
            let (take, keep) = match self.segments.get(self.next) {
                None => (piece.len() as u64, false),
                Some(s) if at < s.start => ((s.start - at).min(piece.len() as u64), false),
                Some(s) => ((s.end - at).min(piece.len() as u64), true),
            };
            let (now, rest) = piece.split_at(take as usize);
            if at < PARQUET_MAGIC.len() as u64 {
                let expected = &PARQUET_MAGIC[at as usize..];
                let n = expected.len().min(now.len());
                if now[..n] != expected[..n] {
                    return Err(unreadable(dataset, "the file does not start with PAR1"));
                }
            }
            if keep {
                if self.current.capacity() == 0 {
                    let s = &self.segments[self.next];
                    // Room for the decrypted chunk that crosses the segment's end too, so
                    // that appending it in place does not make the buffer grow.
                    self.current = Zeroizing::new(Vec::with_capacity(
                        (s.end - s.start).min(MAX_RESERVE) as usize + SEGMENT_SLACK,
                    ));
                }
                extend_zeroizing(&mut self.current, now);
            }
            self.received += take;
            piece = rest;
            self.dispatch_complete(shape)?;
        }
        Ok(())
    }

    /// Whether the next bytes belong to a row group's segment, so can be appended to its
    /// buffer directly ([`Ingest::push_with`]).
    pub(super) fn in_row_group(&self) -> bool {
        self.segments
            .get(self.next)
            .is_some_and(|s| (s.start..s.end).contains(&self.received))
            && self.current.capacity() > 0
    }

    /// Takes in what was appended to the current segment's buffer from `start` on: what falls
    /// past the segment's end is taken out and pushed as any other bytes.
    pub(super) fn appended(&mut self, shape: &Arc<Shape>, start: usize) -> Result<(), EngineError> {
        let room = self.segments[self.next].end - self.received;
        let added = (self.current.len() - start) as u64;
        if added <= room {
            self.received += added;
            return self.dispatch_complete(shape);
        }
        let end = start + room as usize;
        let past = Zeroizing::new(self.current[end..].to_vec());
        self.current[end..].zeroize();
        self.current.truncate(end);
        self.received += room;
        self.dispatch_complete(shape)?;
        self.push(shape, &past)
    }

    /// Hands every segment whose bytes have all arrived to the pool.
    pub(super) fn dispatch_complete(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        while let Some(s) = self.segments.get(self.next) {
            if self.received < s.end {
                return Ok(());
            }
            let chunk = RowGroupBytes {
                start: s.start,
                file_len: self.file_len,
                bytes: bytes::Bytes::from(std::mem::take(&mut *self.current)),
            };
            let (shape, meta, row_groups) =
                (shape.clone(), self.meta.clone(), s.row_groups.clone());
            self.parallel.submit(Box::new(move || {
                let bytes = chunk.bytes.clone();
                let parsed = decode_row_groups(&shape, chunk, meta, row_groups);
                zeroize_unless_shared(bytes);
                parsed
            }))?;
            self.next += 1;
        }
        Ok(())
    }

    pub(super) fn finish(mut self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        if self.received != self.body_len {
            return Err(unreadable(
                &shape.declared,
                format!(
                    "the upload ended {} bytes before the end of the file",
                    self.body_len - self.received
                ),
            ));
        }
        self.dispatch_complete(shape)?;
        self.parallel.finish()
    }
}

/// Where the row groups lie in the body. Each is decoded once its bytes have arrived, which
/// needs them laid out in file order without overlap, as writers do; a file laid out otherwise
/// is decoded in one piece at the end.
pub(super) fn segments(
    dataset: &Dataset,
    meta: &ArrowReaderMetadata,
    body_len: u64,
) -> Result<Vec<Segment>, EngineError> {
    let mut segments = Vec::new();
    for (i, group) in meta.metadata().row_groups().iter().enumerate() {
        let mut range: Option<(u64, u64)> = None;
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let (start, len) = (
                u64::try_from(start),
                u64::try_from(column.compressed_size()),
            );
            let (Ok(start), Ok(len)) = (start, len) else {
                return Err(unreadable(dataset, "a column chunk has a negative offset"));
            };
            let end = start.saturating_add(len);
            if start < PARQUET_MAGIC.len() as u64 || end > body_len {
                return Err(unreadable(
                    dataset,
                    format!("row group {i} has a column chunk outside the file's data"),
                ));
            }
            range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        if let Some((start, end)) = range {
            segments.push(Segment {
                start,
                end,
                row_groups: vec![i],
            });
        }
    }
    if segments.windows(2).all(|w| w[0].end <= w[1].start) {
        return Ok(segments);
    }
    let start = segments.iter().map(|s| s.start).min().unwrap_or(0);
    let end = segments.iter().map(|s| s.end).max().unwrap_or(0);
    Ok(vec![Segment {
        start,
        end,
        row_groups: segments.into_iter().flat_map(|s| s.row_groups).collect(),
    }])
}

/// Some of a Parquet file's bytes, read at the file's offsets; reading outside them is an
/// error (the metadata said the row group lies within them).
pub(super) struct RowGroupBytes {
    pub(super) start: u64,
    pub(super) file_len: u64,
    pub(super) bytes: bytes::Bytes,
}

impl Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for RowGroupBytes {
    type T = bytes::buf::Reader<bytes::Bytes>;

    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        let to_end = (self.start + self.bytes.len() as u64).saturating_sub(start);
        Ok(bytes::Buf::reader(self.get_bytes(start, to_end as usize)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<bytes::Bytes> {
        start
            .checked_sub(self.start)
            .and_then(|from| {
                let to = from.checked_add(length as u64)?;
                (to <= self.bytes.len() as u64)
                    .then(|| self.bytes.slice(from as usize..to as usize))
            })
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "{length} bytes at offset {start} lie outside the row group"
                ))
            })
    }
}
