//! Key release: after a restart (or an upgrade to a measurement the contract accepts), each
//! provider opens its stored batches' keys from the log and releases them to the new enclave
//! instance, which reads the dataset from storage again: nothing is uploaded twice.

use kura_api::{Action, ReleaseRequest, ReleaseResponse, SignedRequest};
use kura_crypto::DataKey;
use kura_ledger::Event;

use super::{Service, store};
use crate::ServiceError;

impl Service {
    pub(crate) async fn release(
        &self,
        req: SignedRequest,
    ) -> Result<ReleaseResponse, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let Action::Release(release) = &body.action else {
            return Err(ServiceError::BadRequest(
                "release needs a release action".into(),
            ));
        };
        let party = party.name.clone();
        self.release_checked(&party, release).await
    }

    async fn release_checked(
        &self,
        party: &str,
        release: &ReleaseRequest,
    ) -> Result<ReleaseResponse, ServiceError> {
        let name = &release.dataset;
        let dataset = self.contract.dataset(name).ok_or_else(|| {
            ServiceError::NotFound(format!("dataset {name:?} is not in the contract"))
        })?;
        if dataset.provider != party {
            return Err(ServiceError::Forbidden(format!(
                "party {party:?} is not the provider of dataset {name:?}"
            )));
        }
        // The state lock is held until the release is logged: no run, upload or deletion
        // interleaves with it.
        let mut state = self.state.lock().await;
        if let Some(why) = state.deleted.get(name) {
            return Err(ServiceError::Refused(format!(
                "dataset {name:?} was deleted ({why}); its keys are never taken again"
            )));
        }
        let held = state.datasets.get(name).ok_or_else(|| {
            ServiceError::NotFound(format!("the log records no stored batch of {name:?}"))
        })?;
        if held.table().is_some() {
            return Err(ServiceError::Refused(format!(
                "the keys of {name:?} were already released to this enclave instance"
            )));
        }
        let mut wanted: Vec<&str> = held.batches.iter().map(|b| b.id.as_str()).collect();
        let mut given: Vec<&str> = release.keys.iter().map(|k| k.batch.as_str()).collect();
        wanted.sort_unstable();
        given.sort_unstable();
        if wanted != given {
            return Err(ServiceError::BadRequest(format!(
                "a release carries the key of every batch of {name:?} the log records ({}), and \
                 no other",
                wanted.len()
            )));
        }
        let (store, origin) = match (&held.store, &release.storage) {
            (Some(store), None) => (store.clone(), held.origin.clone()),
            (_, Some(storage)) if storage.url == held.location => (
                store::s3(storage)?,
                Some(store::Origin::Bucket(storage.clone()).text()),
            ),
            _ => {
                return Err(ServiceError::BadRequest(format!(
                    "dataset {name:?} is stored at {}: the release must carry that bucket's \
                     credentials",
                    held.location
                )));
            }
        };
        let contract_id = self.contract.id().as_str();
        let me = self.identity.public().fingerprint();
        let mut open = Vec::with_capacity(held.batches.len());
        for batch in &held.batches {
            let sealed = &release
                .keys
                .iter()
                .find(|k| k.batch == batch.id)
                .expect("the sets are equal")
                .key;
            let info = kura_api::release_info(contract_id, name, &batch.id, &me);
            let key =
                kura_crypto::open(&self.identity, self.contract.crypto.kem, &info, b"", sealed)
                    .ok()
                    .and_then(|bytes| DataKey::from_bytes(&bytes).ok())
                    .ok_or_else(|| {
                        ServiceError::BadRequest(format!(
                            "the key of batch {} was not sealed to this enclave instance for it",
                            batch.id
                        ))
                    })?;
            let written = batch.written().ok_or_else(|| {
                ServiceError::Refused(format!(
                    "batch {} was logged without the hash of its file, so it cannot be \
                     checked and is not opened",
                    batch.id
                ))
            })?;
            let file = kura_engine::stored::StoredFile::open(
                store.clone(),
                object_store::path::Path::from(batch.object.as_str()),
                written,
                key,
                kura_api::file_aad(contract_id, name, &batch.id),
                dataset,
            )
            .await;
            let file = match file {
                Ok(file) => file,
                Err(e) => {
                    // What the host put in the store is on the record, for every party.
                    // In fixed words: the store's own (a provider's server's) could be anything.
                    let reason = if e.to_string().contains("is not the file the enclave wrote") {
                        "the stored file is not the file the enclave wrote"
                    } else {
                        "the stored file could not be read or opened with its key"
                    };
                    self.log(Event::BatchRefused {
                        dataset: name.clone(),
                        party: party.to_string(),
                        batch: batch.id.clone(),
                        reason: reason.into(),
                    })
                    .await?;
                    return Err(ServiceError::Refused(format!("batch {}: {e}", batch.id)));
                }
            };
            open.push(std::sync::Arc::new(file));
        }
        let batches: Vec<String> = held.batches.iter().map(|b| b.id.clone()).collect();
        let rows = open.iter().map(|f| f.rows).sum();
        let receipt = self
            .log(Event::KeysReleased {
                dataset: name.clone(),
                party: party.to_string(),
                batches: batches.clone(),
            })
            .await?;
        let held = state.datasets.get_mut(name).expect("checked above");
        held.store = Some(store);
        held.origin = origin;
        held.open = open;
        Ok(ReleaseResponse {
            dataset: name.clone(),
            batches: batches.len() as u64,
            rows,
            receipt,
        })
    }
}
