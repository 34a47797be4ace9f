//! CSV: the header checked against the contract, then blocks cut at record boundaries and
//! parsed on every core; errors name a line and a column, never a value.

use std::io::Cursor;
use std::sync::{Arc, Mutex};

use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use kura_contract::Dataset;
use kura_crypto::extend_zeroizing;
use zeroize::{Zeroize, Zeroizing};

use super::pool::Parallel;
use super::*;
use crate::EngineError;

/// CSV plaintext handed to one parsing thread at a time: large enough that a block's fixed
/// costs vanish, small enough that every core gets work and little plaintext waits in memory.
#[cfg(not(fuzzing))]
pub(super) const CSV_BLOCK: usize = 4 << 20;
/// Under the fuzzer, blocks of a few records, so that its small inputs are cut too.
#[cfg(fuzzing)]
pub(super) const CSV_BLOCK: usize = 64;
/// A CSV block's buffer: a block, plus room for the decrypted chunk (1 MiB from kura's client)
/// that crosses its end, so that the buffer seldom has to grow.
pub(super) const CSV_BUFFER: usize = CSV_BLOCK + CSV_BLOCK / 2;
/// A header line longer than this is refused rather than buffered without bound.
pub(super) const MAX_HEADER: usize = 1 << 20;

/// CSV cut into blocks at record boundaries, each parsed by a pool thread.
///
/// A newline ends a record only outside quotes: a quoted field may hold newlines (RFC 4180,
/// which is what the Arrow reader parses). The scanner tracks quote parity from the start of
/// the file, so it never cuts inside a field.
#[derive(Debug, Default)]
pub(super) struct CsvIngest {
    /// The file's columns, in file order, once the header line has arrived.
    pub(super) schema: Option<SchemaRef>,
    /// Plaintext not yet handed to a parser (it starts at a record boundary).
    pub(super) pending: Zeroizing<Vec<u8>>,
    /// How much of `pending` the scanner has read.
    pub(super) scanned: usize,
    /// Whether the scanner is inside a quoted field.
    pub(super) quoted: bool,
    /// End of the last complete record in `pending` (0: none yet).
    pub(super) boundary: usize,
    /// Newlines scanned in `pending`, and those before `boundary`.
    pub(super) newlines: u64,
    pub(super) newlines_at_boundary: u64,
    /// Line number of the first line of `pending`.
    pub(super) line: u64,
    pub(super) parallel: Parallel,
    pub(super) spares: Spares,
}

/// Block buffers the parsing threads are done with, zeroized, for the blocks to come. Reusing
/// them spares the kernel faulting in and clearing fresh pages for every block, which the
/// profile of a CSV upload found to cost as much as copying the plaintext into them.
#[derive(Debug, Default, Clone)]
pub(super) struct Spares(pub(super) Arc<Mutex<Vec<Zeroizing<Vec<u8>>>>>);

impl Spares {
    /// An empty buffer with room for a block.
    pub(super) fn take(&self) -> Zeroizing<Vec<u8>> {
        let spare = self.0.lock().expect("spares lock").pop();
        let mut buf = spare.unwrap_or_else(|| Zeroizing::new(Vec::with_capacity(CSV_BUFFER)));
        buf.clear();
        buf
    }

    /// Zeroizes `buf` and keeps it for a later block. Its spare capacity needs no zeroizing:
    /// whoever shortens a buffer zeroizes what it cuts off (`CsvIngest::cut`), so plaintext
    /// only ever sits in its first `len` bytes. A buffer not kept is zeroized whole on drop.
    pub(super) fn give(&self, mut buf: Zeroizing<Vec<u8>>) {
        buf.as_mut_slice().zeroize();
        let mut spares = self.0.lock().expect("spares lock");
        // Never more than the blocks in flight at once; more would only hold memory.
        if spares.len() < 4 * crate::cores() {
            spares.push(buf);
        }
    }
}

/// A block of whole CSV records.
pub(super) struct Block {
    pub(super) first_line: u64,
    pub(super) bytes: Zeroizing<Vec<u8>>,
}

/// Where a CSV value failed to parse, and why, in words that never quote the file: arrow's
/// messages carry the value and the whole row (identifiers included), which must not reach the
/// refusal, the audit log or the wire. Only numbers are taken from them; anything else becomes
/// a fixed sentence. `line_of` gives the file line of the block's record (counted from 0).
pub(super) fn csv_problem(
    e: &ArrowError,
    line_of: impl Fn(u64) -> u64,
    schema: &SchemaRef,
) -> String {
    let text = e.to_string();
    // The number that follows `marker` in `text`.
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let column = |i: u64| {
        schema.fields().get(i as usize).map_or_else(
            || format!("number {}", i + 1),
            |f| format!("{:?}", f.name()),
        )
    };
    let type_of = |i: u64| {
        schema
            .fields()
            .get(i as usize)
            .map_or_else(|| "its declared type".into(), |f| f.data_type().to_string())
    };
    // Value errors count records from 0 within the block; record errors from 1.
    if let (Some(c), Some(l)) = (number_after("for column "), number_after(" at line ")) {
        return format!(
            "line {}, column {}: the value is not a valid {}",
            line_of(l),
            column(c),
            type_of(c)
        );
    }
    if let (Some(c), Some(l)) = (
        number_after("Error parsing column "),
        number_after(" at line "),
    ) {
        return format!(
            "line {}, column {}: the value is not a valid {}",
            line_of(l),
            column(c),
            type_of(c)
        );
    }
    if let Some(l) = number_after("incorrect number of fields for line ") {
        return format!(
            "line {}: the record does not have {} fields",
            line_of(l.saturating_sub(1)),
            schema.fields().len()
        );
    }
    if let (Some(l), Some(f)) = (
        number_after("UTF-8 data for line "),
        number_after(" and field "),
    ) {
        return format!(
            "line {}, column {}: the value is not valid UTF-8",
            line_of(l.saturating_sub(1)),
            column(f.saturating_sub(1))
        );
    }
    format!(
        "a CSV record at or after line {} could not be read (details are withheld: they may \
         quote the data)",
        line_of(0)
    )
}

/// The file line on which record `record` (from 0) of `block` starts: newlines inside quoted
/// fields are part of their record.
pub(super) fn line_of_record(block: &Block, record: u64) -> u64 {
    let (mut line, mut records, mut quoted) = (block.first_line, 0, false);
    for &b in block.bytes.iter() {
        if records == record {
            break;
        }
        match b {
            b'"' => quoted = !quoted,
            b'\n' => {
                line += 1;
                if !quoted {
                    records += 1;
                }
            }
            _ => {}
        }
    }
    line
}

pub(super) fn parse_block(
    shape: &Shape,
    schema: &SchemaRef,
    block: &Block,
) -> Result<Vec<RecordBatch>, EngineError> {
    let bad = |e: &ArrowError| {
        EngineError::schema(
            &shape.declared.name,
            csv_problem(e, |record| line_of_record(block, record), schema),
        )
    };
    // The block is in memory already: read it in place rather than through a `BufReader`.
    let reader = ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_batch_size(BATCH_ROWS)
        .build_buffered(Cursor::new(&block.bytes[..]))
        .map_err(|e| bad(&e))?;
    reader
        .map(|batch| to_contract_order(&shape.kept, batch.map_err(|e| bad(&e))?))
        .collect()
}

impl CsvIngest {
    /// Reads what was appended to `pending`: the header line first, then record boundaries;
    /// hands a block to the pool once enough has gathered.
    pub(super) fn advance(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        let dataset = &shape.declared;
        if self.schema.is_none() {
            let Some(end) = memchr::memchr(b'\n', &self.pending) else {
                if self.pending.len() > MAX_HEADER {
                    return Err(EngineError::schema(
                        &dataset.name,
                        "the CSV header line is longer than 1 MiB",
                    ));
                }
                return Ok(());
            };
            self.header(dataset, end)?;
        }
        self.scan();
        if self.pending.len() >= CSV_BLOCK && self.boundary > 0 {
            self.cut(shape)?;
        }
        Ok(())
    }

    /// Reads the header line (which ends at `end`) and removes it from `pending`.
    pub(super) fn header(&mut self, dataset: &Dataset, end: usize) -> Result<(), EngineError> {
        let header = std::str::from_utf8(&self.pending[..end])
            .map_err(|_| EngineError::schema(&dataset.name, "the CSV header is not UTF-8"))?
            .trim_end_matches('\r');
        if header.trim().is_empty() {
            return Err(EngineError::schema(
                &dataset.name,
                "the CSV file has no header line",
            ));
        }
        let names: Vec<&str> = header
            .split(',')
            .map(|h| h.trim().trim_matches('"'))
            .collect();
        check_names(dataset, names.iter().copied())?;
        self.schema = Some(Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, arrow_type(dataset.column(n).expect("checked").ty), true))
                .collect::<Vec<_>>(),
        )));
        let rest = (end + 1).min(self.pending.len());
        let mut tail = self.spares.take();
        extend_zeroizing(&mut tail, &self.pending[rest..]);
        self.pending = tail;
        self.line = 2;
        Ok(())
    }

    /// Finds record boundaries in the bytes not yet scanned.
    pub(super) fn scan(&mut self) {
        let mut at = self.scanned;
        while let Some(found) = memchr::memchr2(b'"', b'\n', &self.pending[at..]) {
            at += found;
            if self.pending[at] == b'"' {
                self.quoted = !self.quoted;
            } else {
                self.newlines += 1;
                if !self.quoted {
                    self.boundary = at + 1;
                    self.newlines_at_boundary = self.newlines;
                }
            }
            at += 1;
        }
        self.scanned = self.pending.len();
    }

    /// Hands the complete records of `pending` to the pool.
    pub(super) fn cut(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        let mut rest = self.spares.take();
        extend_zeroizing(&mut rest, &self.pending[self.boundary..]);
        let mut bytes = std::mem::replace(&mut self.pending, rest);
        // The tail was copied to `rest`; it must not linger in the block's spare capacity.
        bytes[self.boundary..].zeroize();
        bytes.truncate(self.boundary);
        let block = Block {
            first_line: self.line,
            bytes,
        };
        self.scanned -= self.boundary;
        self.newlines -= self.newlines_at_boundary;
        self.line += self.newlines_at_boundary;
        self.boundary = 0;
        self.newlines_at_boundary = 0;
        let (shape, schema) = (shape.clone(), self.schema.clone().expect("header read"));
        let spares = self.spares.clone();
        self.parallel.submit(Box::new(move || {
            let parsed = parse_block(&shape, &schema, &block);
            spares.give(block.bytes);
            parsed
        }))
    }

    pub(super) fn finish(mut self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        if self.schema.is_none() {
            let end = memchr::memchr(b'\n', &self.pending).unwrap_or(self.pending.len());
            self.header(&shape.declared, end)?;
        }
        let schema = self.schema.clone().expect("header read");
        let last = Block {
            first_line: self.line,
            bytes: std::mem::take(&mut self.pending),
        };
        if self.parallel.sent == 0 {
            // Everything fit in one block: no threads needed.
            return parse_block(shape, &schema, &last);
        }
        let shape = shape.clone();
        self.parallel
            .submit(Box::new(move || parse_block(&shape, &schema, &last)))?;
        self.parallel.finish()
    }
}
