//! Uploads: the signed header with every check that needs no data, then the encrypted stream,
//! decrypted and parsed while it arrives.

use std::sync::Arc;

use kura_api::{Action, RequestBody, SignedRequest, UploadHeader, UploadResponse};
use kura_crypto::channel::AnswerKey;
use kura_crypto::{DataKey, StreamDecoder};
use kura_engine::UploadFormat;
use kura_ledger::Event;

use super::{Batch, Service, State, StoredDataset, store};
use crate::ServiceError;

/// An accepted upload header waiting for its stream.
pub(super) struct Pending {
    /// Hash of the signed header: the stream's answer is signed as the answer to it.
    request: String,
    /// The header call's answer key: the stream's answer is its answer number 1.
    answer: Option<Arc<AnswerKey>>,
    party: String,
    /// What arrives: a dataset's file, or a model file (`[[models]]`).
    target: Target,
    format: UploadFormat,
    key: DataKey,
    context: Vec<u8>,
    created: std::time::Instant,
    /// Where the batch goes: the store, and its location as the log records it.
    store: Arc<dyn object_store::ObjectStore>,
    /// How a cluster's executors reach `store` ([`store::Origin`], secret).
    origin: Arc<zeroize::Zeroizing<String>>,
    location: String,
    append: bool,
}

/// What an upload provides.
enum Target {
    Dataset(kura_contract::Dataset),
    Model(kura_contract::ModelFile),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::Dataset(d) => &d.name,
            Target::Model(m) => &m.name,
        }
    }
}

/// A store that refused a write. The refusal goes to the log every party and the host read, and
/// the store's own words can name an access key: they are dropped, and the refusal says what
/// to check.
fn store_refused(_: &kura_engine::EngineError) -> ServiceError {
    tracing::warn!("a dataset's store refused a write");
    ServiceError::Refused(
        "the dataset's store could not be written, so nothing was kept (check its location, \
         endpoint and credentials)"
            .into(),
    )
}

/// Writes the batches that arrive on `pieces` into `writer`, and completes the file at the
/// `None` that marks the end of the upload: if the sender stops before that, or a write fails,
/// nothing is completed. Returns the rows written and what was written (the size and the
/// footer's hash).
fn write_file(
    mut writer: kura_engine::stored::FileWriter,
    pieces: std::sync::mpsc::Receiver<Option<kura_engine::RecordBatch>>,
) -> Result<(u64, kura_engine::stored::Written), ServiceError> {
    while let Ok(piece) = pieces.recv() {
        match piece {
            Some(batch) => {
                if let Err(e) = writer.write(&batch) {
                    writer.abort();
                    return Err(store_refused(&e));
                }
            }
            None => {
                let rows = writer.rows();
                return writer
                    .finish()
                    .map(|written| (rows, written))
                    .map_err(|e| store_refused(&e));
            }
        }
    }
    writer.abort();
    // The parsing side refused the file: its reason is the one given.
    Err(ServiceError::BadRequest(
        "the upload ended before its file".into(),
    ))
}

/// How long a ticket stays valid, and how many may wait at once.
const TICKET_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);
const MAX_PENDING_UPLOADS: usize = 64;

pub(super) type KeptColumns =
    std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

impl Service {
    /// Checks an upload header: party, dataset, format, state, and that the data key was
    /// sealed to this enclave for this upload. Returns a single-use ticket for the stream.
    /// Every refusal is logged.
    pub(crate) async fn begin_upload(
        &self,
        req: SignedRequest,
        request: &str,
        answer: Arc<AnswerKey>,
    ) -> Result<String, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let Action::Upload(header) = &body.action else {
            return Err(ServiceError::BadRequest(
                "upload needs an upload action".into(),
            ));
        };
        let party = party.name.clone();
        match self.check_upload(&party, &body, header).await {
            Ok(mut pending) => {
                pending.request = request.to_string();
                pending.answer = Some(answer);
                let ticket = kura_api::nonce();
                let mut state = self.state.lock().await;
                let now = std::time::Instant::now();
                state
                    .pending
                    .retain(|_, p| now.duration_since(p.created) < TICKET_LIFETIME);
                if state.pending.len() >= MAX_PENDING_UPLOADS {
                    return Err(ServiceError::Refused(
                        "too many uploads in progress; try again later".into(),
                    ));
                }
                state.pending.insert(ticket.clone(), pending);
                Ok(ticket)
            }
            Err(e) => Err(self.refuse_upload(&header.dataset, &party, e).await),
        }
    }

    async fn refuse_upload(&self, dataset: &str, party: &str, e: ServiceError) -> ServiceError {
        if matches!(e, ServiceError::Internal(_)) {
            return e;
        }
        let logged = self
            .log(Event::UploadRefused {
                dataset: dataset.to_string(),
                party: party.to_string(),
                reason: e.to_string(),
            })
            .await;
        match logged {
            Ok(_) => e,
            Err(log_error) => log_error,
        }
    }

    /// What a new upload must satisfy before its first byte of data (again at its end).
    async fn check_state(
        &self,
        state: &State,
        dataset: &str,
        append: bool,
        location: &str,
    ) -> Result<(), ServiceError> {
        if let Some(why) = state.deleted.get(dataset) {
            return Err(ServiceError::Refused(format!(
                "dataset {dataset:?} was deleted ({why}); the contract does not allow it to be provided again"
            )));
        }
        if state.models.contains_key(dataset) {
            return Err(ServiceError::Refused(format!(
                "model {dataset:?} was already uploaded"
            )));
        }
        if let Some(held) = state.datasets.get(dataset) {
            if !append {
                return Err(ServiceError::Refused(format!(
                    "dataset {dataset:?} was already uploaded (to add a batch, upload with --append)"
                )));
            }
            if held.location != location {
                return Err(ServiceError::Refused(format!(
                    "dataset {dataset:?} is stored at {}; a batch appended to it must go there too",
                    held.location
                )));
            }
            if held.table().is_none() {
                return Err(ServiceError::Refused(format!(
                    "dataset {dataset:?} awaits its provider's key release to this enclave \
                     instance (`kura release`) before a batch can be appended"
                )));
            }
        }
        if self.deadline_passed().await {
            return Err(ServiceError::Refused(
                "the contract's retention deadline has passed".into(),
            ));
        }
        Ok(())
    }

    async fn check_upload(
        &self,
        party: &str,
        body: &RequestBody,
        header: &UploadHeader,
    ) -> Result<Pending, ServiceError> {
        let target = match (
            self.contract.dataset(&header.dataset),
            self.contract.model(&header.dataset),
        ) {
            (Some(d), _) => Target::Dataset(d.clone()),
            (None, Some(m)) => Target::Model(m.clone()),
            (None, None) => {
                return Err(ServiceError::NotFound(format!(
                    "dataset {:?} is not in the contract",
                    header.dataset
                )));
            }
        };
        let (kind, provider) = match &target {
            Target::Dataset(d) => ("dataset", &d.provider),
            Target::Model(m) => ("model", &m.provider),
        };
        if provider != party {
            return Err(ServiceError::Forbidden(format!(
                "party {party:?} is not the provider of {kind} {:?} (its provider is {provider:?})",
                header.dataset
            )));
        }
        let format = header.format;
        match (&target, format) {
            (Target::Model(_), UploadFormat::Onnx) => {
                if header.append || header.storage.is_some() {
                    return Err(ServiceError::BadRequest(
                        "a model is uploaded once, to the enclave's memory: no --append, no \
                         storage"
                            .into(),
                    ));
                }
            }
            (Target::Model(_), _) => {
                return Err(ServiceError::BadRequest(format!(
                    "{:?} is a model: upload its ONNX file",
                    header.dataset
                )));
            }
            (Target::Dataset(_), UploadFormat::Onnx) => {
                return Err(ServiceError::BadRequest(format!(
                    "{:?} is a dataset: an ONNX file is not one",
                    header.dataset
                )));
            }
            (Target::Dataset(_), _) => {}
        }
        let dataset_name = header.dataset.clone();
        let location = kura_api::Storage::location(header.storage.as_ref());
        self.check_state(
            &*self.state.lock().await,
            &dataset_name,
            header.append,
            &location,
        )
        .await?;
        let (store, origin) = match &header.storage {
            Some(storage) => (
                store::s3(storage)?,
                store::Origin::Bucket(storage.clone()).text(),
            ),
            None => (self.local.clone(), self.local_origin.clone()),
        };
        let context =
            kura_api::upload_context(&body.contract_id, &dataset_name, &body.enclave, &body.nonce);
        let kem = self.contract.crypto.kem;
        let key_bytes = kura_crypto::open(&self.identity, kem, &context, b"", &header.wrapped_key)
            .map_err(|_| {
                ServiceError::BadRequest(format!(
                    "the data key cannot be unwrapped: it was not sealed to this enclave for this \
                     upload with the contract's KEM ({kem})"
                ))
            })?;
        let key = DataKey::from_bytes(&key_bytes)
            .map_err(|_| ServiceError::BadRequest("the data key has the wrong length".into()))?;
        Ok(Pending {
            request: String::new(),
            answer: None,
            party: party.to_string(),
            target,
            format,
            key,
            context,
            created: std::time::Instant::now(),
            store,
            origin,
            location,
            append: header.append,
        })
    }

    /// Receives the encrypted stream of a ticket. The whole body is read even after a failure,
    /// so that the sender gets the reason instead of a broken connection; nothing is kept unless
    /// every check passes. Returns the hash of the upload's signed header and its answer key
    /// with the outcome; an unknown ticket answers no request.
    #[allow(clippy::type_complexity)]
    pub(crate) async fn upload_stream<S, E>(
        &self,
        ticket: &str,
        frames: S,
    ) -> Result<(String, Arc<AnswerKey>, Result<UploadResponse, ServiceError>), ServiceError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let pending = self
            .state
            .lock()
            .await
            .pending
            .remove(ticket)
            .ok_or_else(|| {
                ServiceError::NotFound("unknown or already used upload ticket".into())
            })?;
        let (dataset, party) = (pending.target.name().to_string(), pending.party.clone());
        let request = pending.request.clone();
        let answer = pending
            .answer
            .clone()
            .ok_or_else(|| ServiceError::Internal("a ticket without its call".into()))?;
        let outcome = match self.receive(pending, frames).await {
            Ok(resp) => Ok(resp),
            Err(e) => Err(self.refuse_upload(&dataset, &party, e).await),
        };
        Ok((request, answer, outcome))
    }

    async fn receive<S, E>(
        &self,
        pending: Pending,
        mut frames: S,
    ) -> Result<UploadResponse, ServiceError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;

        let Pending {
            request,
            party,
            target,
            format,
            key,
            context,
            store,
            origin,
            location,
            append,
            ..
        } = pending;
        let dataset = match target {
            Target::Dataset(dataset) => dataset,
            Target::Model(model) => {
                return self
                    .receive_model(request, party, model, key, context, frames)
                    .await;
            }
        };
        let contract_id = self.contract.id().to_string();
        let batch = kura_api::nonce();
        let object = store::object(&contract_id, &dataset.name, &batch);
        let aad = kura_api::file_aad(&contract_id, &dataset.name, &batch);
        // Decryption, parsing and writing the encrypted file run on their own thread (parsing
        // on a pool of its own), while this task receives and hashes: the file is parsed while
        // it is still arriving, and written out as it is parsed, never held whole.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(16);
        let kept = self.kept_columns().await;
        let worker = {
            let (ds, store, object, aad) =
                (dataset.clone(), store.clone(), object.clone(), aad.clone());
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let file_key = DataKey::generate();
                let mut decoder = StreamDecoder::new(&key, &context);
                drop(key);
                // A dataset missing from the set (none is) would keep everything rather than
                // nothing.
                let keep = |column: &str| kept.get(&ds.name).is_none_or(|k| k.contains(column));
                let mut kept_ds = ds.clone();
                kept_ds.columns.retain(|c| keep(&c.name));
                let mut ingest = kura_engine::load::Ingest::keeping(&ds, format, keep);
                let mut people = kura_engine::people::OneRowPerPerson::of(&ds);
                let writer = kura_engine::stored::FileWriter::create(
                    handle,
                    store,
                    object,
                    kura_engine::arrow_schema(&kept_ds),
                    &file_key,
                    &aad,
                )
                .map_err(|e| store_refused(&e))?;
                // The file is encoded, encrypted and written on a thread of its own, while this
                // one decrypts and the pool parses: a batch goes to it as soon as it is parsed.
                let (to_writer, pieces) = std::sync::mpsc::sync_channel(4);
                let writing = std::thread::Builder::new()
                    .name("kura-writer".into())
                    .spawn(move || write_file(writer, pieces))
                    .map_err(|e| ServiceError::Internal(format!("no writing thread: {e}")))?;
                let parsed = (|| {
                    let refused = |e: kura_crypto::CryptoError| {
                        ServiceError::BadRequest(format!("encrypted stream refused: {e}"))
                    };
                    let parse =
                        |e: kura_engine::EngineError| ServiceError::BadRequest(e.to_string());
                    // A dataset of one row per person is held to it batch by batch, before a
                    // batch is written. A send fails only once the writer has failed: its error
                    // is the answer.
                    let mut send = |batches: Vec<kura_engine::RecordBatch>| {
                        for b in batches {
                            if let Some(people) = people.as_mut() {
                                people.add(&b).map_err(parse)?;
                            }
                            if to_writer.send(Some(b)).is_err() {
                                return Ok(false);
                            }
                        }
                        Ok::<_, ServiceError>(true)
                    };
                    while let Some(piece) = rx.blocking_recv() {
                        // Decrypted straight into the ingest's buffer.
                        ingest
                            .push_with(|buf| decoder.push(&piece, buf))
                            .map_err(parse)?
                            .map_err(refused)?;
                        if !send(ingest.take_ready().map_err(parse)?)? {
                            return Ok(());
                        }
                    }
                    decoder.finish().map_err(refused)?;
                    if send(ingest.finish().map_err(parse)?)? {
                        // The end of the file: only now is the object completed.
                        let _ = to_writer.send(None);
                    }
                    Ok::<_, ServiceError>(())
                })();
                drop(to_writer);
                let written = writing
                    .join()
                    .map_err(|_| ServiceError::Internal("the writing thread stopped".into()))?;
                // A refusal of the file comes first; then whatever stopped the writer.
                parsed?;
                let (rows, written) = written?;
                Ok::<_, ServiceError>((file_key, rows, written, people))
            })
        };
        let mut received = 0u64;
        let mut digest = <sha2::Sha256 as sha2::Digest>::new();
        let mut tx = Some(tx);
        while let Some(piece) = frames.next().await {
            let piece =
                piece.map_err(|e| ServiceError::BadRequest(format!("upload interrupted: {e}")))?;
            received += piece.len() as u64;
            if received > self.max_upload_bytes {
                // Past the limit, stop reading: the sender is beyond what we agreed to drain.
                return Err(ServiceError::Refused(format!(
                    "upload exceeds the service's limit of {} bytes",
                    self.max_upload_bytes
                )));
            }
            let Some(sender) = &tx else { continue };
            sha2::Digest::update(&mut digest, &piece);
            if sender.send(piece).await.is_err() {
                // The worker refused the stream; read the rest so the sender gets the reason.
                tx = None;
            }
        }
        drop(tx);
        let (file_key, rows, written, people) = worker
            .await
            // A panic's message could quote what it was parsing: the log gets no words of it.
            .map_err(|_| {
                ServiceError::Internal("the decrypting and parsing worker stopped".into())
            })??;
        let provider_key = &self
            .contract
            .party(&party)
            .expect("authenticated party")
            .public_key;
        let sealed_key = kura_crypto::seal(
            provider_key,
            self.contract.crypto.kem,
            &kura_api::file_key_info(&contract_id, &dataset.name, &batch),
            b"",
            file_key.as_bytes(),
        )
        .map_err(|e| ServiceError::Internal(format!("cannot seal the file key: {e}")))?;
        let discard = |e: ServiceError| async {
            store::delete_objects(store.as_ref(), std::slice::from_ref(&object)).await;
            e
        };
        // Read back through its key: the file is complete and of the dataset's columns.
        let file = match kura_engine::stored::StoredFile::open(
            store.clone(),
            object.clone(),
            written,
            file_key,
            aad,
            &dataset,
        )
        .await
        {
            Ok(file) => Arc::new(file),
            Err(e) => return Err(discard(store_refused(&e)).await),
        };

        let mut state = self.state.lock().await;
        if let Err(e) = self
            .check_state(&state, &dataset.name, append, &location)
            .await
        {
            return Err(discard(e).await);
        }
        // An appended batch of a dataset of one row per person brings only new people. The
        // state stays locked meanwhile, so that two appends cannot both pass against the same
        // held batches.
        if let (Some(mut people), Some(held)) = (
            people,
            state.datasets.get(&dataset.name).and_then(|d| d.table()),
        ) && let Err(e) = people.add_held(&self.contract, &held).await
        {
            return Err(discard(match e {
                kura_engine::EngineError::Refused { .. } => ServiceError::BadRequest(e.to_string()),
                _ => {
                    tracing::warn!("the batches already held could not be read");
                    ServiceError::Refused(
                        "the dataset's batches already held could not be read to check that \
                         the appended batch brings only new people, so nothing was kept"
                            .into(),
                    )
                }
            })
            .await);
        }
        let receipt = self
            .log(Event::Upload {
                dataset: dataset.name.clone(),
                provider: party,
                rows,
                ciphertext_bytes: received,
                ciphertext_sha256: hex::encode(sha2::Digest::finalize(digest)),
                request: Some(request),
                stored: Some(kura_ledger::StoredBatch {
                    batch: batch.clone(),
                    location: location.clone(),
                    object: object.to_string(),
                    bytes: written.bytes,
                    footer_sha256: hex::encode(written.footer_sha256),
                    key: sealed_key,
                }),
            })
            .await?;
        let held = state
            .datasets
            .entry(dataset.name.clone())
            .or_insert_with(|| StoredDataset {
                location,
                store: Some(store.clone()),
                origin: Some(origin.clone()),
                batches: Vec::new(),
                open: Vec::new(),
            });
        held.batches.push(Batch {
            id: batch,
            object: object.to_string(),
            bytes: written.bytes,
            footer_sha256: hex::encode(written.footer_sha256),
        });
        held.open.push(file);
        Ok(UploadResponse {
            dataset: dataset.name.clone(),
            rows,
            ciphertext_bytes: received,
            receipt,
        })
    }

    /// Receives a model file: decrypted into memory (never written anywhere), refused unless
    /// its SHA-256 is the contract's and tract can run it on rows of the features the
    /// contract's scoring analyses give it. It is held as the runnable model only, in this
    /// instance's memory: a restart loses it, and the log then records its deletion.
    async fn receive_model<S, E>(
        &self,
        request: String,
        party: String,
        model: kura_contract::ModelFile,
        key: DataKey,
        context: Vec<u8>,
        mut frames: S,
    ) -> Result<UploadResponse, ServiceError>
    where
        S: futures_util::Stream<Item = Result<axum::body::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;

        let limit = self
            .max_upload_bytes
            .min(kura_ml::onnx::MAX_MODEL_BYTES as u64);
        let mut decoder = StreamDecoder::new(&key, &context);
        drop(key);
        let mut plain = zeroize::Zeroizing::new(Vec::new());
        let mut received = 0u64;
        let mut digest = <sha2::Sha256 as sha2::Digest>::new();
        let mut failed = None;
        while let Some(piece) = frames.next().await {
            let piece =
                piece.map_err(|e| ServiceError::BadRequest(format!("upload interrupted: {e}")))?;
            received += piece.len() as u64;
            if received > limit {
                return Err(ServiceError::Refused(format!(
                    "a model file may be at most {limit} bytes"
                )));
            }
            sha2::Digest::update(&mut digest, &piece);
            if failed.is_none()
                && let Err(e) = decoder.push(&piece, &mut plain)
            {
                failed = Some(e);
            }
        }
        if let Some(e) = failed.or_else(|| decoder.finish().err()) {
            return Err(ServiceError::BadRequest(format!(
                "encrypted stream refused: {e}"
            )));
        }
        if hex::encode(kura_crypto::sha256(&plain)) != model.sha256 {
            return Err(ServiceError::Refused(format!(
                "the file is not the model the contract pins for {:?} (its SHA-256 differs)",
                model.name
            )));
        }
        let features = self
            .contract
            .analyses
            .iter()
            .filter_map(|a| a.score.as_ref())
            .find(|s| s.model == model.name)
            .map_or(0, |s| s.features.len());
        let scorer =
            tokio::task::spawn_blocking(move || kura_ml::onnx::Scorer::load(&plain, features))
                .await
                .map_err(|_| ServiceError::Internal("the model's loading stopped".into()))?
                .map_err(|e| ServiceError::Refused(e.to_string()))?;

        let mut state = self.state.lock().await;
        self.check_state(&state, &model.name, false, store::LOCAL)
            .await?;
        let receipt = self
            .log(Event::Upload {
                dataset: model.name.clone(),
                provider: party,
                rows: 0,
                ciphertext_bytes: received,
                ciphertext_sha256: hex::encode(sha2::Digest::finalize(digest)),
                request: Some(request),
                stored: None,
            })
            .await?;
        state.models.insert(model.name.clone(), Arc::new(scorer));
        Ok(UploadResponse {
            dataset: model.name,
            rows: 0,
            ciphertext_bytes: received,
            receipt,
        })
    }

    /// The columns uploads keep: those the contract's analyses read
    /// ([`kura_engine::columns_kept`]), or all if an analysis cannot be planned.
    async fn kept_columns(&self) -> Arc<KeptColumns> {
        self.kept
            .get_or_init(|| async {
                let kept = kura_engine::columns_kept(&self.contract)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!("uploads keep every column: {e}");
                        kura_engine::all_columns(&self.contract)
                    });
                for (dataset, columns) in &kept {
                    tracing::info!(dataset, ?columns, "uploads keep these columns");
                }
                Arc::new(kept)
            })
            .await
            .clone()
    }
}
