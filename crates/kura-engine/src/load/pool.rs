//! The pool of parsing threads that every upload shares.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use datafusion::arrow::record_batch::RecordBatch;

use crate::EngineError;

/// Parses one piece of a file (a CSV block, Parquet row groups) into record batches.
pub(super) type Job = Box<dyn FnOnce() -> Result<Vec<RecordBatch>, EngineError> + Send>;
pub(super) type Parsed = (usize, Result<Vec<RecordBatch>, EngineError>);

/// Parses the pieces of one file on every core and gives their batches back in file order.
/// The threads start with the first piece.
#[derive(Debug, Default)]
pub(super) struct Parallel {
    pub(super) pool: Option<Pool>,
    /// Pieces handed out, and parsed pieces received back (by piece number).
    pub(super) sent: usize,
    pub(super) parsed: Vec<Option<Vec<RecordBatch>>>,
    /// Pieces whose batches [`Parallel::ready`] already gave out.
    pub(super) taken: usize,
}

impl Parallel {
    /// Hands `job` to a thread, waiting while every thread already has two pieces queued (a
    /// fast sender waits rather than piling up plaintext). Collects what is done, and stops at
    /// the first refusal.
    pub(super) fn submit(&mut self, job: Job) -> Result<(), EngineError> {
        let pool = self.pool.get_or_insert_with(Pool::start);
        pool.jobs
            .as_ref()
            .expect("pool open")
            .send((self.sent, job))
            .map_err(|_| stopped())?;
        self.sent += 1;
        while let Ok(parsed) = pool.parsed.try_recv() {
            receive(&mut self.parsed, parsed)?;
        }
        Ok(())
    }

    /// The batches of the pieces parsed so far that follow, in file order, those already given
    /// out: what a caller can pass on before the file has ended.
    pub(super) fn ready(&mut self) -> Result<Vec<RecordBatch>, EngineError> {
        if let Some(pool) = &self.pool {
            while let Ok(parsed) = pool.parsed.try_recv() {
                receive(&mut self.parsed, parsed)?;
            }
        }
        let mut out = Vec::new();
        while let Some(Some(piece)) = self.parsed.get_mut(self.taken) {
            out.append(piece);
            self.taken += 1;
        }
        Ok(out)
    }

    /// Waits for every piece: the batches of all of them not yet given out, in file order.
    pub(super) fn finish(mut self) -> Result<Vec<RecordBatch>, EngineError> {
        if let Some(mut pool) = self.pool.take() {
            pool.jobs = None;
            for _ in self.parsed.iter().flatten().count()..self.sent {
                let parsed = pool.parsed.recv().map_err(|_| stopped())?;
                receive(&mut self.parsed, parsed)?;
            }
        }
        Ok(self
            .parsed
            .into_iter()
            .skip(self.taken)
            .flatten()
            .flatten()
            .collect())
    }
}

fn panicked() -> EngineError {
    EngineError::Execution("the file could not be decoded (the decoder failed on it)".into())
}

pub(super) fn stopped() -> EngineError {
    EngineError::Execution("a parsing thread stopped".into())
}

/// One thread per core, taking jobs from a shared queue.
pub(super) struct Pool {
    pub(super) jobs: Option<SyncSender<(usize, Job)>>,
    pub(super) parsed: Receiver<Parsed>,
    pub(super) workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Pool {
    pub(super) fn start() -> Self {
        let n = crate::cores();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(usize, Job)>(2 * n);
        let (done, parsed) = std::sync::mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..n)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().expect("queue lock").recv();
                        let Ok((index, job)) = job else { break };
                        // A decoder that panics on a file refuses that file; the thread and
                        // the pool go on (a panic must not take the enclave's uploads down).
                        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
                            .unwrap_or_else(|_| Err(panicked()));
                        if done.send((index, parsed)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            parsed,
            workers,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Files a parsed block under its number, or stops at a refusal.
pub(super) fn receive(
    blocks: &mut Vec<Option<Vec<RecordBatch>>>,
    (index, parsed): Parsed,
) -> Result<(), EngineError> {
    if blocks.len() <= index {
        blocks.resize_with(index + 1, || None);
    }
    blocks[index] = Some(parsed?);
    Ok(())
}
