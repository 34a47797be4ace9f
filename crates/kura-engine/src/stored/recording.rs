//! A store that records every range read of it, for tests of what the host sees fetched.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::Path;

/// A store that records every range read of it.
#[derive(Debug)]
pub struct Recording {
    inner: Arc<dyn ObjectStore>,
    reads: std::sync::Mutex<Vec<String>>,
    /// How long a request waits before it reaches the store (and is recorded): a host that
    /// slows the store down, so that a run can stop while requests are still on their way.
    delay: std::time::Duration,
}

impl std::fmt::Display for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recording({})", self.inner)
    }
}

impl Recording {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::slow(inner, std::time::Duration::ZERO)
    }

    /// [`Recording::new`], each request held back by `delay` before it reaches the store.
    pub fn slow(inner: Arc<dyn ObjectStore>, delay: std::time::Duration) -> Self {
        Self {
            inner,
            reads: Default::default(),
            delay,
        }
    }

    /// What was read since the last call, in order of path and range.
    pub fn take(&self) -> Vec<String> {
        let mut reads = std::mem::take(&mut *self.reads.lock().unwrap());
        reads.sort();
        reads
    }
}

#[async_trait::async_trait]
impl ObjectStore for Recording {
    async fn put_opts(
        &self,
        location: &Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.reads
            .lock()
            .unwrap()
            .push(format!("{location} {:?}", options.range));
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures_util::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&Path>,
    ) -> futures_util::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
    {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
