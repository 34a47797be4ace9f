//! Where datasets rest: the service's own store (a directory of the host's) or a provider's
//! S3-compatible bucket, reached with the provider's credentials. Either way the store holds
//! only files the enclave encrypted ([`kura_engine::stored`]); their keys are sealed to their
//! providers in the log and released to each enclave instance by them.

use std::sync::Arc;

use kura_api::Storage;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::ServiceError;

/// The location the log records for the service's own store.
pub(crate) const LOCAL: &str = kura_api::LOCAL_STORE;

/// The service's own store: `dir`, created if absent.
pub(crate) fn local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>, ServiceError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ServiceError::Start(format!("cannot create the store directory: {e}")))?;
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| ServiceError::Start(format!("cannot open the store directory: {e}")))?;
    Ok(Arc::new(store))
}

/// The provider's bucket, reached with exactly the credentials given: nothing is taken from
/// the environment or an instance metadata service, which the host controls.
pub(crate) fn s3(storage: &Storage) -> Result<Arc<dyn ObjectStore>, ServiceError> {
    // The refusal is logged: it never quotes the location, which could carry a credential.
    let refused = |why: &str| ServiceError::BadRequest(format!("the storage: {why}"));
    let rest = storage
        .url
        .strip_prefix("s3://")
        .ok_or_else(|| refused("only s3:// locations are supported"))?;
    // The location goes into the log every party (and the host) reads: it must not carry a
    // credential (`s3://KEY:SECRET@bucket`) or options.
    if rest.contains(['@', '?', '#', ':']) {
        return Err(refused(
            "the location must be s3://bucket/prefix, without credentials or options",
        ));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(refused("the location names no bucket"));
    }
    if storage.access_key_id.is_empty() || storage.secret_access_key.is_empty() {
        return Err(refused("credentials are required"));
    }
    let mut builder = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(storage.region.as_deref().unwrap_or("us-east-1"))
        .with_access_key_id(&storage.access_key_id)
        .with_secret_access_key(&storage.secret_access_key)
        .with_allow_http(storage.allow_http);
    if let Some(endpoint) = &storage.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(token) = &storage.session_token {
        builder = builder.with_token(token);
    }
    // The error could quote a credential: say only that the settings were refused.
    let store = builder
        .build()
        .map_err(|_| refused("the settings do not make an S3 client"))?;
    let prefix = prefix.trim_matches('/');
    Ok(if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    })
}

/// How another enclave of this contract (a cluster's executor) reaches a dataset's store: the
/// service's directory (which it must share, as on one machine or a network file system) or
/// the provider's bucket with its credentials. Secret: it travels only inside the cluster's
/// mutual TLS, within a plan ([`kura_cluster::codec`]).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Origin {
    Local(std::path::PathBuf),
    Bucket(Storage),
}

impl Origin {
    pub(crate) fn text(&self) -> Arc<zeroize::Zeroizing<String>> {
        Arc::new(zeroize::Zeroizing::new(
            serde_json::to_string(self).expect("origins serialise"),
        ))
    }
}

/// Opens the store an [`Origin`] names (on an executor). A directory must exist already.
pub(crate) fn open_origin(text: &str) -> Result<Arc<dyn ObjectStore>, ServiceError> {
    let origin: Origin = serde_json::from_str(text)
        .map_err(|_| ServiceError::BadRequest("a malformed store origin".into()))?;
    match origin {
        Origin::Local(dir) => {
            let store =
                object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|_| {
                    ServiceError::BadRequest(format!(
                        "the coordinator's store {} is not reachable from this executor",
                        dir.display()
                    ))
                })?;
            Ok(Arc::new(store))
        }
        Origin::Bucket(storage) => s3(&storage),
    }
}

/// The path of a batch's file in its store.
pub(crate) fn object(contract_id: &str, dataset: &str, batch: &str) -> Path {
    Path::from_iter(["kura", contract_id, dataset, &format!("{batch}.parquet")])
}

/// Deletes the objects at `paths`, returning how many were deleted (an object already gone
/// counts). Failures are logged for the operator, with no more than the path.
pub(crate) async fn delete_objects(store: &dyn ObjectStore, paths: &[Path]) -> usize {
    let mut deleted = 0;
    for path in paths {
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            // The store's own words can name an access key: the operator gets the path.
            Err(_) => tracing::error!(%path, "cannot delete a stored file"),
        }
    }
    deleted
}

/// Deletes from the service's store every file of this contract that the log does not record
/// as a batch of a dataset still there: the file of an upload cut short before it was logged
/// (its key died with that instance), or of a deletion interrupted before its files went.
pub(crate) async fn sweep(
    store: &dyn ObjectStore,
    dir: &std::path::Path,
    contract_id: &str,
    state: &super::State,
) {
    use futures_util::TryStreamExt;
    let live: std::collections::HashSet<&str> = state
        .datasets
        .values()
        .filter(|d| d.location == LOCAL)
        .flat_map(|d| d.batches.iter().map(|b| b.object.as_str()))
        .collect();
    let prefix = Path::from_iter(["kura", contract_id]);
    let listed: Result<Vec<_>, _> = store.list(Some(&prefix)).try_collect().await;
    let stray: Vec<Path> = match listed {
        Ok(objects) => objects
            .into_iter()
            .map(|o| o.location)
            .filter(|p| !live.contains(p.as_ref()))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list the store");
            return;
        }
    };
    if !stray.is_empty() {
        let n = delete_objects(store, &stray).await;
        tracing::info!(files = n, "deleted stored files the log does not keep");
    }
    // A file being written is staged beside its final name (`NAME#N`) and never listed: one
    // left by an instance that stopped mid-upload goes too.
    let staged = staged_files(&dir.join("kura").join(contract_id));
    for path in &staged {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::error!(error = %e, "cannot delete a staged file");
        }
    }
    if !staged.is_empty() {
        tracing::info!(
            files = staged.len(),
            "deleted files an interrupted upload left"
        );
    }
}

fn staged_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(staged_files(&path));
        } else if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains('#'))
        {
            out.push(path);
        }
    }
    out
}
