//! Durable storage of the log in an embedded database (redb). An append is acknowledged only
//! after its transaction committed with immediate durability, so a crash at any point leaves
//! either the whole entry or none of it, and never loses an acknowledged one.

use std::path::Path;
use std::sync::Arc;

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use kura_crypto::{SecretIdentity, b64};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::merkle::{HEAD_DOMAIN, Receipt, SignedTreeHead, TreeHead};
use crate::{ENTRY_DOMAIN, EntryBody, Event, GENESIS, LedgerError, LogEntry};

/// seq → the entry's JSON (body text and signature).
const ENTRIES: TableDefinition<u64, &str> = TableDefinition::new("entries");

/// The log of one state directory, written by the current enclave key.
pub struct Ledger {
    db: Database,
    entries: Vec<LogEntry>,
    tree: MemoryBackedTree<Sha256, Vec<u8>>,
    signer: Arc<SecretIdentity>,
    /// The latest time this log has recorded or been shown in a party's signed request: its
    /// clock never goes behind it, whatever the host does to the guest clock.
    floor: OffsetDateTime,
    /// The last head signed, and when: reused for [`HEAD_REUSE`] while the log and its clock's
    /// floor stay as they were. A head costs an Ed25519 and an ML-DSA-65 signature (0.2 to
    /// 0.6 ms), made while the service holds the log; a flood of evidence requests or a long
    /// listing of receipts would otherwise sign one each.
    head: std::sync::Mutex<Option<(std::time::Instant, SignedTreeHead)>>,
}

/// How long a signed tree head is served again before a fresh one is signed.
const HEAD_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn text(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("RFC 3339 formatting of a time")
}

impl Ledger {
    /// Opens (or creates) the log database at `path` and checks that the stored entries chain.
    /// Signatures are checked by [`crate::verify_chain`], which needs the evidence verifier.
    /// The database is locked: a second service cannot open the same log.
    pub fn open(path: &Path, signer: Arc<SecretIdentity>) -> Result<Self, LedgerError> {
        let db = Database::create(path)?;
        let mut entries = Vec::new();
        {
            let read = db.begin_read()?;
            match read.open_table(ENTRIES) {
                Ok(table) => {
                    for row in table.iter()? {
                        let (seq, json) = row?;
                        let entry: LogEntry = serde_json::from_str(json.value())
                            .map_err(|e| LedgerError::Malformed(e.to_string()))?;
                        if seq.value() != entries.len() as u64 {
                            return Err(LedgerError::Broken {
                                seq: seq.value(),
                                reason: "stored log has a gap".into(),
                            });
                        }
                        entries.push(entry);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut tree = MemoryBackedTree::new();
        let mut prev = GENESIS.to_string();
        let mut floor = OffsetDateTime::UNIX_EPOCH;
        for (i, e) in entries.iter().enumerate() {
            let body = e.parse_body()?;
            if let Ok(t) = OffsetDateTime::parse(&body.time, &Rfc3339) {
                floor = floor.max(t);
            }
            if body.seq != i as u64 || body.prev != prev {
                return Err(LedgerError::Broken {
                    seq: i as u64,
                    reason: "stored log does not chain; refusing to append to it".into(),
                });
            }
            prev = e.hash();
            tree.push(e.body.as_bytes().to_vec());
        }
        Ok(Self {
            db,
            entries,
            tree,
            signer,
            floor,
            head: std::sync::Mutex::new(None),
        })
    }

    /// The log's clock: the guest clock, but never earlier than any time this log recorded or
    /// was shown ([`Ledger::observe`]).
    pub fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc().max(self.floor)
    }

    /// Moves the clock's floor up to `t` (the time of a party's signed request).
    pub fn observe(&mut self, t: OffsetDateTime) {
        if t > self.floor {
            self.floor = t;
            *self.head.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Appends `event` durably and returns its receipt.
    pub fn append(&mut self, event: Event) -> Result<Receipt, LedgerError> {
        let seq = self.entries.len() as u64;
        let body = EntryBody {
            seq,
            prev: self
                .entries
                .last()
                .map_or_else(|| GENESIS.to_string(), LogEntry::hash),
            time: text(self.now()),
            event,
        };
        let body = serde_json::to_string(&body).expect("entry serialises");
        let signature = b64::encode(self.signer.sign(ENTRY_DOMAIN, body.as_bytes()));
        let entry = LogEntry { body, signature };
        let json = serde_json::to_string(&entry).expect("entry serialises");
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(ENTRIES)?;
            table.insert(seq, json.as_str())?;
        }
        txn.commit()?;
        *self.head.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        self.floor = self.now();
        self.tree.push(entry.body.as_bytes().to_vec());
        self.entries.push(entry);
        Ok(self.receipt(seq).expect("just appended"))
    }

    pub fn entries(&self) -> &[LogEntry] {
        &self.entries
    }

    /// The current tree head, signed by this instance's key (within the last [`HEAD_REUSE`]).
    pub fn tree_head(&self) -> SignedTreeHead {
        let mut cached = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, head)) = cached.as_ref()
            && at.elapsed() < HEAD_REUSE
        {
            return head.clone();
        }
        let head = self.sign_head();
        *cached = Some((std::time::Instant::now(), head.clone()));
        head
    }

    fn sign_head(&self) -> SignedTreeHead {
        let head = TreeHead {
            size: self.tree.len(),
            root: hex::encode(self.tree.root().as_bytes()),
            time: text(self.now()),
            enclave_key: self.signer.public().to_text(),
        };
        let body = serde_json::to_string(&head).expect("head serialises");
        let signature = b64::encode(self.signer.sign(HEAD_DOMAIN, body.as_bytes()));
        let pq_signature = self
            .signer
            .sign_post_quantum(HEAD_DOMAIN, body.as_bytes())
            .map(b64::encode);
        SignedTreeHead {
            body,
            signature,
            pq_signature,
        }
    }

    /// A receipt for entry `seq` under the current tree head.
    pub fn receipt(&self, seq: u64) -> Option<Receipt> {
        let entry = self.entries.get(seq as usize)?.clone();
        let proof = self.tree.prove_inclusion(seq as usize);
        Some(Receipt {
            entry,
            index: seq,
            tree_head: self.tree_head(),
            inclusion: b64::encode(proof.as_bytes()),
        })
    }

    /// A consistency proof (base64) from the tree of the first `old_size` entries to now.
    pub fn consistency(&self, old_size: u64) -> Result<String, LedgerError> {
        let size = self.tree.len();
        if old_size > size {
            return Err(LedgerError::Proof(format!(
                "this log has {size} entries, fewer than the {old_size} you saw: it was rolled back or forked"
            )));
        }
        if old_size == 0 || old_size == size {
            return Ok(String::new());
        }
        let proof = self.tree.prove_consistency((size - old_size) as usize);
        Ok(b64::encode(proof.as_bytes()))
    }
}
