//! Append-only file storage: one JSON line per entry, fsynced before an append returns.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kura_crypto::{SecretIdentity, b64};
use time::format_description::well_known::Rfc3339;

use crate::{ENTRY_DOMAIN, EntryBody, Event, GENESIS, LedgerError, LogEntry};

/// The log of one state directory, written by the current enclave key.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    file: File,
    entries: Vec<LogEntry>,
    signer: Arc<SecretIdentity>,
}

impl Ledger {
    /// Opens (or creates) the log at `path`. Existing entries are loaded and their chain
    /// checked (signatures are checked by [`crate::verify_chain`], which needs the evidence
    /// verifier). A partial last line, left by a crash during an append that was therefore
    /// never acknowledged, is cut off.
    pub fn open(path: &Path, signer: Arc<SecretIdentity>) -> Result<Self, LedgerError> {
        let mut entries = Vec::new();
        let mut good_len = 0u64;
        if path.exists() {
            let reader = BufReader::new(File::open(path)?);
            let mut offset = 0u64;
            for line in reader.split(b'\n') {
                let line = line?;
                let len = line.len() as u64 + 1;
                let Ok(entry) = serde_json::from_slice::<LogEntry>(&line) else {
                    break;
                };
                entries.push(entry);
                offset += len;
                good_len = offset;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() > good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        let mut ledger = Self {
            path: path.to_path_buf(),
            file,
            entries,
            signer,
        };
        ledger.check_links()?;
        Ok(ledger)
    }

    fn check_links(&mut self) -> Result<(), LedgerError> {
        let mut prev = GENESIS.to_string();
        for (i, e) in self.entries.iter().enumerate() {
            let body = e.parse_body()?;
            if body.seq != i as u64 || body.prev != prev {
                return Err(LedgerError::Broken {
                    seq: i as u64,
                    reason: "stored log does not chain; refusing to append to it".into(),
                });
            }
            prev = e.hash();
        }
        Ok(())
    }

    /// Appends `event`, durably, and returns the stored entry.
    pub fn append(&mut self, event: Event) -> Result<LogEntry, LedgerError> {
        let body = EntryBody {
            seq: self.entries.len() as u64,
            prev: self
                .entries
                .last()
                .map_or_else(|| GENESIS.to_string(), LogEntry::hash),
            time: time::OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .expect("RFC 3339 formatting of now"),
            event,
        };
        let body = serde_json::to_string(&body).expect("entry serialises");
        let signature = b64::encode(self.signer.sign(ENTRY_DOMAIN, body.as_bytes()));
        let entry = LogEntry { body, signature };
        let mut line = serde_json::to_vec(&entry).expect("entry serialises");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.entries.push(entry.clone());
        Ok(entry)
    }

    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
